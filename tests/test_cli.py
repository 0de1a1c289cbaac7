"""Bad input to the commands: one line naming the problem, a non-zero exit, no traceback,
nothing written; and scripts that refuse to replace shipped files without being asked."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from helpers import random_pixels
from zoo import cli

from training import checkpoint

REPO = Path(__file__).resolve().parent.parent


def one_line_error(capsys, argv: list[str]) -> str:
    """Runs ``zoo argv``; asserts exit status 2 and a single ``zoo <command>: error:`` line on
    stderr (the zoo's own lines: TensorFlow's C++ logging does not reach capsys); returns it."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"zoo {argv[0]}: error: "), lines[0]
    return lines[0]


def test_an_error_of_the_zoo_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    message = one_line_error(capsys, ["info", "bnn_resnet99"])
    assert "Unknown model 'bnn_resnet99'" in message

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_list", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["list"])


# --------------------------------------------------------------------------- convert, benchmark


def test_convert_refuses_a_malformed_weights_file(tmp_path, capsys):
    weights = tmp_path / "malformed.h5"
    with h5py.File(weights, "w") as handle:  # names a layer group it does not hold
        handle.attrs["layer_names"] = np.array([b"stem_conv"])
    message = one_line_error(capsys, ["convert", "bnn_resnet20", "-o", str(tmp_path / "x.tflite"), "--weights",
                                      str(weights), "--quiet"])
    assert str(weights) in message or weights.name in message
    assert not (tmp_path / "x.tflite").exists()


def small_tflite() -> bytes:
    module = tf.Module()
    module.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    return tf.lite.TFLiteConverter.from_concrete_functions([module.double.get_concrete_function()], module).convert()


def test_benchmark_refuses_a_file_that_is_not_a_tflite_flatbuffer(tmp_path, capsys):
    flatbuffer = small_tflite()
    (tmp_path / "notes.tflite").write_bytes(b"not a flatbuffer " * 20)
    (tmp_path / "truncated.tflite").write_bytes(flatbuffer[: len(flatbuffer) // 2])  # crashed LCE's interpreter
    message = one_line_error(capsys, ["benchmark", str(tmp_path / "notes.tflite"), "--quiet"])
    assert message.endswith("notes.tflite is not a .tflite file (no TFL3 flatbuffer identifier).")
    message = one_line_error(capsys, ["benchmark", str(tmp_path / "truncated.tflite"), "--quiet"])
    assert "truncated.tflite is not a valid .tflite file" in message


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--warmup", "-1"), ("--threads", "0")])
def test_benchmark_refuses_counts_it_cannot_time_with(flag, value, capsys):
    message = one_line_error(capsys, ["benchmark", "bnn_resnet20", flag, value, "--quiet"])
    assert f"({flag}) must be an integer of at least" in message and f"got {value}" in message


# --------------------------------------------------------------------------- data not prepared


@pytest.mark.parametrize("command", [
    ["compress", "bnn_resnet20", "--qat"],
    ["search", "--tuner", "random", "--max-trials", "1"],
], ids=["compress", "search"])
def test_compress_and_search_say_how_to_prepare_the_data(command, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ZOO_FASHION_MNIST_DIR", str(empty))
    status = cli.main([*command, "--dataset", "fashion_mnist", "--data-dir", str(empty), "-o",
                       str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    error = [line for line in err.splitlines() if line.startswith(f"zoo {command[0]}: error:")]
    assert len(error) == 1 and "Dataset 'fashion_mnist' is not prepared" in error[0]
    assert "apt-get install -y dataset-fashion-mnist" in err  # train's message: how to get the data
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- train


TRAIN = ["train", "bnn_resnet20", "--dataset", "fashion_mnist", "--quiet"]


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "0"], "--epochs must be a positive integer, got 0."),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0."),
    (["--test-images", "0"], "--test-images must be a positive integer, got 0."),
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1."),
    (["--val-images", "0"], "--val-images must be a positive integer, got 0."),
    (["--learning-rate", "0"], "--learning-rate must be a positive number, got 0.0."),
    (["--weight-decay", "nan"], "--weight-decay must be a non-negative number, got nan."),
    (["--recipe", "nosuch"], "--recipe: Unknown scheme 'nosuch'; registered schemes: fp,"),
    (["--train-images", "100"], "--train-images 100 is fewer than one batch (--batch-size 128)"),
    (["--train-images", "16", "--batch-size", "32"], "--train-images 16 is fewer than one batch (--batch-size 32)"),
    (["--teacher", "teachers/fp.h5"], "--teacher teachers/fp.h5: no such file"),
    (["--kernel-loss-weight=-1e-4"], "--kernel-loss-weight must be a non-negative number, got -0.0001."),
    (["--kernel-loss-weight", "1e-5"], "--kernel-loss-weight: Recipe (the recipe of bnn) has no kernel_loss_weight."),
    (["--kernel-loss-weight", "1e-5", "--recipe", "bonn"], "--kernel-loss-weight: bnn_resnet20 has no BONN layers"),
    (["--theta-init", "uniform"], "--theta-init: Recipe (the recipe of bnn) has no theta_init."),
    (["--theta-init", "uniform", "--recipe", "rbnn"], "--theta-init: bnn_resnet20 has no RBNN layers for θ to start"),
    (["--centre-loss-epochs", "1", "--recipe", "bonn"], "--centre-loss-epochs: BONNRecipe (the recipe of bonn) has no "
                                                        "centre_loss_epochs."),
    (["--adversarial-weight", "inf"], "--adversarial-weight must be a non-negative number, got inf."),
    (["--adversarial-weight", "0"], "--adversarial-weight: Recipe (the recipe of bnn) has no adversarial_weight."),
    (["--adversarial-weight", "0", "--recipe", "rbcn"], "--adversarial-weight: bnn_resnet20 has no rectified convs for "
                                                        "the adversarial term to train."),
])
def test_train_refuses_settings_it_would_have_replaced(flags, expected, tmp_path, capsys):
    output = tmp_path / "run"
    assert expected in one_line_error(capsys, [*TRAIN, *flags, "--output", str(output)])
    assert not output.exists()


RUN_SETTINGS = {"model": "bnn_resnet20", "dataset": "fashion_mnist", "method": "bnn", "epochs": 3, "batch_size": 32,
                "train_images": 64, "teacher": None, "seed": 0}


def a_checkpoint(output: Path, epochs_done: int = 2) -> Path:
    """A checkpoint written as a run writes it (a small model: the checks come before the model is built)."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256)])
    state = {"run": RUN_SETTINGS, "epochs_done": epochs_done, "history": [{"epoch": e + 1} for e in range(epochs_done)]}
    return checkpoint.write_checkpoint(model, state, output / checkpoint.CHECKPOINTS)


def _truncate(path: Path):
    data = (path / "ckpt.data-00000-of-00001").read_bytes()
    (path / "ckpt.data-00000-of-00001").write_bytes(data[: len(data) // 2])


def _flip_a_bit(path: Path):
    data = bytearray((path / "ckpt.data-00000-of-00001").read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the 64x256 kernel
    (path / "ckpt.data-00000-of-00001").write_bytes(bytes(data))


def _claim_more_epochs(path: Path):
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "epochs_done": 7, "history": [{}] * 7}))


@pytest.mark.parametrize("damage, expected", [
    (_truncate, "its checkpoint files are damaged or incomplete (Read less bytes than requested)"),
    (_flip_a_bit, "its checkpoint files are damaged or incomplete (TensorBundle at"),
    (lambda path: (path / "ckpt.index").unlink(), "its checkpoint files are damaged or incomplete"),
    (_claim_more_epochs, "state.json: epochs_done is 7, more than the run's 3 epochs."),
    (lambda path: (path / "state.json").write_text("[" * 200_000), "state.json: nested too deeply"),
], ids=["truncated", "bit-flipped", "index-less", "more-epochs", "deep-json"])
def test_resume_refuses_a_damaged_checkpoint_before_training(damage, expected, tmp_path, capsys):
    saved = a_checkpoint(tmp_path)
    damage(saved)
    message = one_line_error(capsys, [*TRAIN, "--resume", "--output", str(tmp_path)])
    assert f"Cannot resume from {saved}: " in message and expected in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CHECKPOINTS]  # nothing started


def test_resuming_a_finished_run_restores_without_checkpoint_warnings(tmp_path, caplog):
    """A finished run takes no optimizer step, so the optimizer's slots are never restored;
    TensorFlow warned about each (~190 lines) when the restore status was collected."""
    def build():
        model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1))
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        return model

    model = build()
    model.run_eagerly = True  # one step to create the optimizer's slots: cheaper than tracing it
    model.fit(np.zeros((4, 28, 28, 1), np.float32), np.zeros(4), epochs=1, verbose=0)
    state = {"run": {**RUN_SETTINGS, "epochs": 1}, "epochs_done": 1, "history": [{"epoch": 1}]}
    saved = checkpoint.write_checkpoint(model, state, tmp_path)
    fresh = build()
    with caplog.at_level("WARNING", logger="tensorflow"):
        assert checkpoint.restore_checkpoint(fresh, saved) == state
        del fresh
        import gc

        gc.collect()
    assert not [r for r in caplog.records if "could not be found in the restored object" in r.getMessage()]


# --------------------------------------------------------------------------- scripts and shipped files


def test_a_benchmark_refuses_to_replace_tracked_results_before_it_runs(tmp_path):
    tracked = REPO / "benchmarks" / "results" / "lce_latency_cbcn.json"
    before = tracked.read_bytes()
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lce_latency.py"), "bnn_resnet20",
                             "--input-shape", "28,28,1", "--repeats", "1", "--name", "lce_latency_cbcn"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"lce_latency.py: error: {tracked} exists; pass --overwrite to replace it, or --name to write the "
            "results under another name.") in result.stderr
    assert tracked.read_bytes() == before


def test_benchmark_results_are_replaced_only_with_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import argparse

    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)

    def parse(*argv):
        parser = argparse.ArgumentParser(prog="bench.py")
        parser.add_argument("models", nargs="+")
        parser.add_argument("--name", default=None)
        return common.parse_arguments(parser, list(argv), lambda args: "bench_" + "_vs_".join(args.models))

    assert parse("a", "b").name == "bench_a_vs_b"
    common.write_results("bench_a_vs_b", {"rows": []}, "| table |")
    with pytest.raises(SystemExit) as refused:
        parse("a", "b")
    assert refused.value.code == 2 and "bench_a_vs_b.json exists; pass --overwrite" in capsys.readouterr().err
    assert parse("a", "b", "--overwrite").overwrite
    assert parse("a", "b", "--name", "bench_smaller").name == "bench_smaller"


def test_bonn_modulation_rows_set_lambda_or_are_refused_by_name(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bonn_modulation import parse_row

    assert parse_row("lambda=1e-5") == ("inverse_mean", 1e-5)
    assert parse_row("lambda=0") == parse_row("no_kernel_loss") == ("inverse_mean", 0.0)
    assert parse_row("one") == ("one", None) and parse_row("bnn_resnet20") == ("bnn_resnet20", None)
    for bad in ("lambda=-1e-4", "lambda=nan", "lambda=inf", "lambda=", "lambda=big", "ones"):
        with pytest.raises(ValueError, match=repr(bad) if bad.startswith("lambda=") else "unknown row"):
            parse_row(bad)


def test_training_curves_give_each_models_seeds_their_mean_and_spread(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import common
    import training_curves

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(training_curves, "RESULTS", tmp_path / "results")

    def run(model, seed, final, weight_decay=1e-4, epochs=2):
        directory = tmp_path / f"{model}-s{seed}-wd{weight_decay}-e{epochs}"
        directory.mkdir()
        report = {"model": model, "validation": "held-out training images", "epochs_done": epochs,
                  "train_images_per_epoch": 100,
                  "recipe": {"name": "Recipe", "epochs": epochs, "batch_size": 10, "learning_rate": 0.1,
                             "weight_decay": weight_decay},
                  "history": [{"val_accuracy": 0.5 + epoch / 10, "test_accuracy": 0.4 + epoch / 10}
                              for epoch in range(epochs)],
                  "test_top1": final, "command": f"zoo train {model} --seed {seed}", "budget": {"seed": seed}}
        (directory / "report.json").write_text(json.dumps(report))
        return str(directory)

    runs = [run("bnn_resnet20", 0, 0.90), run("bnn_resnet20", 1, 0.88), run("bonn_resnet20", 0, 0.85)]
    training_curves.main([*runs, "--name", "curves"])
    results = json.loads((tmp_path / "results" / "curves.json").read_text())
    assert set(results["runs"]) == {"bnn_resnet20 (seed 0)", "bnn_resnet20 (seed 1)", "bonn_resnet20"}
    assert results["seeds"] == {"bnn_resnet20": {"seeds": [0, 1], "test_top1": [0.90, 0.88],
                                                 "mean": pytest.approx(0.89), "range": pytest.approx(0.02)}}
    assert "| bnn_resnet20 | 0, 1 | 90.00 / 88.00 | 89.00 % | 2.00 |" in (tmp_path / "results" / "curves.md").read_text()
    with pytest.raises(SystemExit) as refused:
        training_curves.main([runs[0], runs[0], "--name", "again", "--overwrite"])
    assert refused.value.code == 2

    # a recipe choice: one model and seed, two weight decays, each labelled by what differs
    training_curves.main([runs[0], run("bnn_resnet20", 0, 0.91, weight_decay=5e-4), runs[1], "--name", "choice"])
    results = json.loads((tmp_path / "results" / "choice.json").read_text())
    assert set(results["runs"]) == {"bnn_resnet20 (weight_decay 0.0001) (seed 0)",
                                    "bnn_resnet20 (weight_decay 0.0001) (seed 1)", "bnn_resnet20 (weight_decay 0.0005)"}
    assert list(results["seeds"]) == ["bnn_resnet20 (weight_decay 0.0001)"]

    # a second seed joins the runs an earlier table recorded, whose directories are gone
    training_curves.main(["--recorded", str(tmp_path / "results" / "curves.json"),
                          run("bonn_resnet20", 1, 0.83), "--name", "joined"])
    joined = json.loads((tmp_path / "results" / "joined.json").read_text())
    assert set(joined["runs"]) == {"bnn_resnet20 (seed 0)", "bnn_resnet20 (seed 1)", "bonn_resnet20 (seed 0)",
                                   "bonn_resnet20 (seed 1)"}
    assert joined["seeds"]["bonn_resnet20"]["test_top1"] == [0.85, 0.83]

    # one model's runs out of a table of methods, beside a longer schedule of it
    training_curves.main(["--recorded", str(tmp_path / "results" / "joined.json"), run("bnn_resnet20", 0, 0.92, epochs=3),
                          "--model", "bnn_resnet20",
                          "--mixed-budgets", "--name", "schedule"])
    schedule = json.loads((tmp_path / "results" / "schedule.json").read_text())
    assert set(schedule["runs"]) == {"bnn_resnet20 (epochs 2) (seed 0)", "bnn_resnet20 (epochs 2) (seed 1)",
                                     "bnn_resnet20 (epochs 3)"}
    assert list(schedule["seeds"]) == ["bnn_resnet20 (epochs 2)"]
    with pytest.raises(SystemExit) as refused:
        training_curves.main(["--recorded", str(tmp_path / "results" / "joined.json"), "--model", "xnor_resnet20",
                              "--name", "absent"])
    assert refused.value.code == 2 and "--model xnor_resnet20: no such run" in capsys.readouterr().err
    malformed = {**joined["runs"]["bonn_resnet20 (seed 1)"], "test_accuracy": "high"}
    for bad in ("{", '{"runs": {}}', '{"runs": {"x": {"model": "bnn_resnet20"}}}', json.dumps({"runs": {"x": malformed}})):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(SystemExit, match=r"--recorded .*bad.json: not a results file of this script"):
            training_curves.main(["--recorded", str(tmp_path / "bad.json"), "--name", "bad"])


@pytest.mark.parametrize("steps", [1, 2, 25])
def test_the_epoch_probe_records_every_epoch_however_few_its_steps(steps, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from probes import EpochProbe

    model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    model.compile("adam", "sparse_categorical_crossentropy")
    labels = np.arange(2 * steps) % 10
    data = tf.data.Dataset.from_tensor_slices((random_pixels((28, 28, 1), batch=2 * steps), labels)).batch(2)
    probe = EpochProbe(model, data, steps=steps)
    model.fit(data, epochs=2, callbacks=[probe], verbose=0)
    assert [row["epoch"] for row in probe.rows] == [1, 2]
    for row in probe.rows:
        assert all(0.0 <= row[key] <= 1.0 for key in
                   ("flipped", "flipped_first_tenth", "flipped_last_tenth", "held_out_accuracy"))


def parse_benchmark_arguments(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import argparse

    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    parser = argparse.ArgumentParser(prog="bench.py")
    parser.add_argument("--name", default="bench")
    common.parse_arguments(parser, [])


def test_the_commands_and_benchmark_scripts_drop_tensorflows_retracing_advice(tmp_path, monkeypatch, caplog):
    """It is about a caller's own tf.functions; a command that predicts with several models in a row
    (as ``zoo train``'s export checks and ``benchmarks/pretrained.py`` do) would print it to its user."""
    tensorflow_log = logging.getLogger("tensorflow")
    monkeypatch.setattr(tensorflow_log, "filters", [])
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        double = tf.function(lambda x: 2 * x)  # a function of its own: TensorFlow advises twice per function
        for value in range(6):
            double(float(value))  # a new Python number: a new trace
        advice = [record for record in caplog.records if "triggered tf.function retracing" in record.getMessage()]
        assert advice
        for run in (lambda: cli.main(["list"]), lambda: parse_benchmark_arguments(tmp_path, monkeypatch)):
            monkeypatch.setattr(tensorflow_log, "filters", [])
            caplog.clear()
            run()
            for record in advice:
                tensorflow_log.handle(record)
            tensorflow_log.warning("another warning")
            assert [record.getMessage() for record in caplog.records if record.name == "tensorflow"] == ["another warning"]
