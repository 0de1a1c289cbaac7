"""`zoo train` / `training.train`: every method's recipe on real batches, checkpoints and
resume (after a SIGKILL), NaN handling, bad input, and the artifacts of a finished run."""

import argparse
import dataclasses
import inspect
import json
import logging
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from helpers import sha256
from larq_compute_engine.tflite.python.interpreter import Interpreter
from zoo import registry
from zoo.cli import main as zoo_main
from zoo.export import op_histogram, to_inference
from zoo.schemes import rbnn

from training import artifacts, checkpoint, logs, loop, publish
from training import cli as training_cli
from training.settings import SETTINGS
from training.recipes import Recipe, recipe_class, recipe_for

RUN = ["rbnn_resnet20", "--dataset", "fashion_mnist", "--epochs", "2", "--batch-size", "32", "--train-images", "128",
       "--test-images", "64"]
SHAPE = (28, 28, 1)


def test_a_finished_run_leaves_checkpoint_logs_weights_manifest_entry_and_tflite(fashion_mnist_data_dir, tmp_path,
                                                                                   monkeypatch, capsys, caplog):
    """One two-epoch `zoo train` run (RBNN: its callbacks and state too), all its artifacts."""
    with caplog.at_level(logging.INFO, logger="zoo"):
        assert zoo_main(["train", *RUN, "--data-dir", fashion_mnist_data_dir, "--output", str(tmp_path), "--quiet"]) == 0
    assert [record.getMessage() for record in caplog.records if record.name == "zoo"] == []  # its own files, loaded
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["command"] == "zoo train " + " ".join(RUN)
    assert report["model"] == "rbnn_resnet20" and report["recipe"]["name"] == "RBNNRecipe"
    assert report["recipe"]["epochs"] == 2 and report["train_images_per_epoch"] == 128
    assert 0.0 <= report["best_val_accuracy"] <= 1.0

    # checkpoint, history (CSV, JSON), curves, TensorBoard
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0002"]
    history = logs.read_history(tmp_path)
    recipe = recipe_for("rbnn_resnet20", 2, 32)
    assert [row["epoch"] for row in history] == [1, 2] and history == report["history"]
    assert [row["lr"] for row in history] == pytest.approx([recipe.learning_rate_at(e) for e in range(2)])
    assert all(0 < row["rbnn_sign_flips"] < 1 and math.isfinite(row["loss"]) for row in history)
    csv_lines = (tmp_path / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(csv_lines) == 3
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    for part in ("train", "validation"):
        assert list((tmp_path / "tensorboard" / part).glob("events.out.tfevents.*"))

    # the manifest entry: the zoo's own parser accepts it, zoo.load verifies and loads the
    # file by tag, and the loaded model reproduces the stated accuracy on the same images
    entry = json.loads((tmp_path / "manifest_entry.json").read_text())
    weights_file = tmp_path / entry["file"]
    assert entry["sha256"] == sha256(weights_file) == report["weights"]["sha256"]
    assert entry["size"] == weights_file.stat().st_size and entry["metrics"]["test_images"] == 64
    assert report["weights"]["storage"] in artifacts.storages(set())
    (tmp_path / "manifest.json").write_text(json.dumps({"entries": [entry]}))
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    assert [e.as_dict() for e in registry.manifest_entries()] == [entry]
    model = zoo.load("rbnn_resnet20", weights="fashion_mnist")
    images, labels = artifacts.first_examples(
        zoo.load_dataset("fashion_mnist", "test", batch_size=32, take=64, data_dir=fashion_mnist_data_dir), 64)
    assert round(100 * np.mean(model.predict(images, verbose=0).argmax(1) == labels), 2) == entry["metrics"]["top1"]
    for layer in rbnn.rbnn_layers(model):  # the schedule position of the last epoch travelled with the weights
        assert layer.kernel_quantizer.t.numpy() == pytest.approx(rbnn.sign_schedule(1, 2)["t_weights"], rel=1e-3)

    # the .tflite runs, and its parity report is what the interpreter gives
    tflite = report["tflite"]
    flatbuffer = (tmp_path / tflite["file"]).read_bytes()
    assert len(flatbuffer) == tflite["file_bytes"] and op_histogram(flatbuffer)["LceBconv2d"] == 18
    assert tflite["ops"]["LceBconv2d"] == 18 and tflite["binary_layers"] == 18
    lce = Interpreter(flatbuffer, num_threads=2).predict(images)
    keras_inference = to_inference(model).predict(images, verbose=0)
    assert tflite["parity"]["samples"] == tflite["keras_parity"]["samples"] == 64
    assert np.mean(lce.argmax(1) == keras_inference.argmax(1)) == tflite["parity"]["top1_agreement"] >= 0.95
    # the training form against its inference form: a near-zero pre-activation whose sign
    # flips under the folded arithmetic takes a sample down another path (measured 63 of 64
    # within 1e-4, the other at 4 % of the largest output, same top-1): the bar of test_deploy
    assert tflite["keras_parity"]["share_within_1e-4"] >= 0.95 and tflite["keras_parity"]["top1_agreement"] >= 0.95

    # publishing: the file goes next to the manifest, the entry gets its reload check;
    # publishing again is refused before anything is copied unless asked to replace the
    # entry; a changed weights file is refused and not copied
    manifest = tmp_path / "pretrained" / "manifest.json"
    published = publish.publish(tmp_path, manifest, check_images=64, data_dir=fashion_mnist_data_dir)
    shipped = manifest.read_bytes()
    (manifest.parent / entry["file"]).write_bytes(b"the shipped file")
    capsys.readouterr()
    assert publish.main([str(tmp_path), "--manifest", str(manifest), "--check-images", "64",
                         "--data-dir", fashion_mnist_data_dir]) == 2
    assert capsys.readouterr().err == (
        f"training.publish: error: {manifest} already has rbnn_resnet20/fashion_mnist (top1 {entry['metrics']['top1']} "
        f"%); this run's is {entry['metrics']['top1']} %. Pass --replace (replace=True) to replace it.\n")
    assert manifest.read_bytes() == shipped and (manifest.parent / entry["file"]).read_bytes() == b"the shipped file"
    assert publish.main([str(tmp_path), "--manifest", str(manifest), "--check-images", "64",
                         "--data-dir", fashion_mnist_data_dir, "--replace"]) == 0
    assert published["metrics"]["top1_first_64"] == entry["metrics"]["top1"]
    assert [row["name"] for row in json.loads(manifest.read_text())["entries"]] == ["rbnn_resnet20"]
    assert sha256(manifest.parent / entry["file"]) == entry["sha256"]
    with open(weights_file, "ab") as handle:
        handle.write(b"\0")
    (manifest.parent / entry["file"]).unlink()
    with pytest.raises(ValueError, match="sha256"):
        publish.publish(tmp_path, manifest, check_images=64, data_dir=fashion_mnist_data_dir, replace=True)
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json"]


def test_training_train_is_zoo_train_as_a_function():
    import training

    assert training.train is loop.train


def test_weights_are_stored_in_float16_only_where_that_keeps_the_accuracy(tmp_path):
    """A model whose two logits float16 rounds to a tie: float16 would change its answer."""
    x = np.ones((4, 1), np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, np.ones(4, np.int64))).batch(4)

    def dense_model(kernel):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, use_bias=False, name="dense")])
        model.get_layer("dense").set_weights([np.array([kernel], np.float32)])
        return model

    def load(path):
        model = dense_model([0.0, 0.0])
        model.load_weights(path)
        return model

    chosen = {}
    for kernel in ([1.0001, 1.0002], [0.5, 1.0]):  # float16: (1.0, 1.0), a tie / exactly representable
        dense_model(kernel).save_weights(tmp_path / "float32.h5")
        target = tmp_path / f"{kernel[0]}.h5"
        stored = artifacts.store_weights(tmp_path / "float32.h5", target, load, data)
        chosen[stored.storage] = load(str(target)).get_layer("dense").get_weights()[0]
        assert stored.correct == 4 and stored.candidates[stored.storage]["correct"] == 4
    assert set(chosen) == {"float32", "float16"}
    np.testing.assert_array_equal(chosen["float32"], np.array([[1.0001, 1.0002]], np.float32))


def test_a_storage_is_lossless_within_a_tenth_of_a_point_and_one_percent_of_predictions():
    assert artifacts.lossless({"correct": 7172, "changed_predictions": 48}, 7177, 10_000)  # xnor_resnet20's float16
    assert artifacts.lossless({"correct": 7187, "changed_predictions": 100}, 7177, 10_000)
    assert not artifacts.lossless({"correct": 7166, "changed_predictions": 20}, 7177, 10_000)
    assert not artifacts.lossless({"correct": 7177, "changed_predictions": 101}, 7177, 10_000)
    assert not artifacts.lossless({"correct": 3915, "changed_predictions": 3856}, 3901, 10_000)  # chaotic float16


def test_resume_with_a_checkpoint_of_another_run_is_refused(tmp_path, capsys):
    settings = {"model": "rbnn_resnet20", "dataset": "fashion_mnist", "method": "rbnn", "epochs": 2, "batch_size": 32,
                "train_images": None, "teacher": None, "seed": 0}
    checkpoint.write_checkpoint(keras.Sequential(), {"run": settings, "epochs_done": 1, "history": [{"epoch": 1}]},
                                tmp_path / "checkpoints")
    base = ["--dataset", "fashion_mnist", "--output", str(tmp_path), "--quiet"]
    assert zoo_main(["train", "bnn_resnet20", *base, "--resume"]) == 2
    assert "is of rbnn_resnet20 on fashion_mnist, not bnn_resnet20" in capsys.readouterr().err
    assert zoo_main(["train", "rbnn_resnet20", *base, "--resume", "--epochs", "5"]) == 2
    assert "epochs 5 (the run has 2)" in capsys.readouterr().err
    assert zoo_main(["train", "rbnn_resnet20", *base]) == 2
    message = capsys.readouterr().err
    assert "already holds a checkpoint" in message and "pass --resume" in message


def test_unknown_dataset_and_missing_data_say_how_to_get_it(tmp_path, monkeypatch, capsys):
    assert zoo_main(["train", "bnn_resnet20", "--dataset", "fashion_mnst", "--output", str(tmp_path / "a")]) == 2
    assert "Did you mean 'fashion_mnist'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert zoo_main(["train", "bnn_resnet20", "--dataset", "cifar10", "--data-dir", str(empty),
                     "--output", str(tmp_path / "b")]) == 2
    assert "tfds build cifar10" in capsys.readouterr().err
    monkeypatch.setenv("ZOO_FASHION_MNIST_DIR", str(empty))
    assert zoo_main(["train", "bnn_resnet20", "--dataset", "fashion_mnist", "--data-dir", str(empty),
                     "--output", str(tmp_path / "c")]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class DivergingRecipe(Recipe):
    """The default recipe, with a loss that turns NaN from the optimizer's fourth step on
    (a factor, not a ``tf.where`` branch: the NaN branch would poison the gradients too)."""

    def compile(self, model):
        optimizer = self.optimizer()

        def loss(labels, predictions):
            value = keras.losses.sparse_categorical_crossentropy(labels, predictions)
            return value * tf.where(optimizer.iterations >= 3, np.nan, 1.0)

        model.compile(optimizer, loss, metrics=["accuracy"])


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(fashion_mnist_data_dir, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(loop, "recipe_for", lambda name, epochs, batch, method: DivergingRecipe(epochs, batch))
    status = zoo_main(["train", "bnn_resnet20", "--dataset", "fashion_mnist", "--epochs", "3", "--batch-size", "32",
                       "--train-images", "64", "--test-images", "32", "--data-dir", fashion_mnist_data_dir,
                       "--output", str(tmp_path), "--quiet"])
    assert status == 3
    message = capsys.readouterr().err
    assert "loss became NaN or infinite at epoch 2, batch 2" in message
    assert "last good checkpoint (epoch 1 of 3)" in message and str(tmp_path / "checkpoints" / "epoch-0001") in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0001"]
    assert [row["epoch"] for row in logs.read_history(tmp_path)] == [1]
    assert (tmp_path / "curves.png").exists() and not (tmp_path / "report.json").exists()

    model = zoo.load("bnn_resnet20", weights=None, input_shape=SHAPE)
    DivergingRecipe(3, 32).compile(model)
    state = checkpoint.restore_checkpoint(model, tmp_path / "checkpoints" / "epoch-0001")
    assert state["epochs_done"] == 1 and int(model.optimizer.iterations) == 2
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_a_run_killed_mid_epoch_resumes_to_the_requested_epoch_with_its_history(fashion_mnist_data_dir, tmp_path):
    args = ["bnn_resnet20", "--dataset", "fashion_mnist", "--epochs", "2", "--batch-size", "32",
            "--train-images", "256", "--test-images", "32", "--data-dir", fashion_mnist_data_dir,
            "--output", str(tmp_path), "--no-export", "--quiet"]
    with open(tmp_path / "stderr.log", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "training", *args], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 600
        while checkpoint.latest_checkpoint(tmp_path) is None and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
            time.sleep(0.05)
        time.sleep(0.5)  # into the second epoch (8 steps)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert checkpoint.latest_checkpoint(tmp_path).name == "epoch-0001"  # killed before epoch 2 finished
    assert [row["epoch"] for row in logs.read_history(tmp_path)] == [1]

    assert zoo_main(["train", *args, "--resume"]) == 0
    history = logs.read_history(tmp_path)
    recipe = recipe_for("bnn_resnet20", 2, 32)
    assert [row["epoch"] for row in history] == [1, 2]
    assert [row["lr"] for row in history] == pytest.approx([recipe.learning_rate_at(e) for e in range(2)])
    final = tmp_path / "checkpoints" / "epoch-0002"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [final.name]  # no temporary left either
    assert checkpoint.read_state(final)["history"] == history
    assert json.loads((tmp_path / "report.json").read_text())["epochs_done"] == 2
    reader = tf.train.load_checkpoint(str(final / "ckpt"))
    assert reader.get_tensor("model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 2 * 8  # optimizer restored


def test_checkpoints_round_trip_a_wrapped_rbnn_student_its_teacher_and_the_optimizer(tmp_path):
    from zoo.distillation import Distiller, FeatureMatching, KnowledgeDistillation, stage_outputs

    def build():
        student = zoo.load("rbnn_resnet20", weights=None, input_shape=SHAPE)
        teacher = zoo.load("fp_resnet20", weights=None, input_shape=SHAPE)
        trainer = Distiller(student, teacher, terms=[KnowledgeDistillation(), FeatureMatching()],
                            taps=stage_outputs(student))
        recipe_for("rbnn_resnet20", 4, 8).compile(trainer)
        return trainer

    trainer = build()
    trainer.run_eagerly = True  # two steps: cheaper than tracing (the Distiller's step is traced in [bnn] below)
    callbacks = loop._callbacks_on(recipe_for("rbnn_resnet20", 4, 8).callbacks("rbnn_resnet20"), trainer,
                                   trainer.student, "rbnn_resnet20", 4)
    x = np.random.default_rng(0).uniform(0, 255, (16, *SHAPE)).astype(np.float32)
    first_r1 = rbnn.rbnn_layers(trainer.student)[0].r1.numpy().copy()
    trainer.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, callbacks=callbacks, verbose=0)
    assert not np.array_equal(first_r1, rbnn.rbnn_layers(trainer.student)[0].r1.numpy())  # ran on the student
    state = {"run": {"model": "rbnn_resnet20"}, "epochs_done": 1, "history": []}
    saved = checkpoint.write_checkpoint(trainer, state, tmp_path)

    fresh = build()
    assert checkpoint.restore_checkpoint(fresh, saved) == state
    for original, restored in ((trainer.student, fresh.student), (trainer.teacher, fresh.teacher)):
        for a, b in zip(original.weights, restored.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    fresh.optimizer.build(fresh.student.trainable_variables)  # slots are restored when created
    for a, b in zip(trainer.optimizer.variables(), fresh.optimizer.variables()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert int(fresh.optimizer.iterations) >= 2  # the epoch's 2 steps (RBCN's BN pass adds its own)


#: every method with a recipe of its own, and bnn for the default recipe that fp, xnor and
#: bireal share with it (distilling from a teacher: --teacher for any recipe); rbnn's runs in
#: the finished-run test above, rbcn's under MirroredStrategy in test_distributed.py
METHODS = sorted({registry.get_model_spec(name).scheme.name for name in zoo.list_models("*_resnet20")
                  if recipe_class(registry.get_model_spec(name).scheme.name) is not Recipe}
                 - {"rbnn", "rbcn"} | {"bnn"})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_checkpoints_on_real_batches(method, fashion_mnist_data_dir, tmp_path):
    name = f"{method}_resnet20"
    teacher = None
    if method == "bnn":  # a random full-precision teacher: this is about the wiring, not the accuracy
        teacher = str(tmp_path / "teacher.h5")
        zoo.load("fp_resnet20", weights=None, input_shape=SHAPE).save_weights(teacher)
    model, report = loop.train(name, "fashion_mnist", epochs=1, batch_size=16, train_images=32, test_images=16,
                               teacher=teacher, data_dir=fashion_mnist_data_dir, output=tmp_path / "run",
                               export=False, verbose=0)
    assert report["epochs_done"] == 1 and math.isfinite(report["history"][0]["loss"])
    assert 0.0 <= report["final_val_accuracy"] <= 1.0
    assert (teacher is not None) == ("kd_loss" in report["history"][0])
    assert_checkpoint_restores(name, model, tmp_path / "run", fashion_mnist_data_dir)


def assert_checkpoint_restores(name, model, output, data_dir):
    """The run's checkpoint restores into a freshly built model fit drives (the recipe's
    wrapper, its teacher built as a resumed run builds it): same weights, optimizer state.
    The BatchNorm statistics are left out: the run re-estimates them after its last
    checkpoint (training/loop.py ``_recalibrate``), and a resumed run trains from either."""
    saved = checkpoint.latest_checkpoint(output)
    settings = checkpoint.read_state(saved)["run"]
    recipe = recipe_for(name, settings["epochs"], settings["batch_size"])
    teacher = loop._teacher(recipe, settings, data_dir, SHAPE, 10, resuming=True, verbose=0)
    fresh = recipe.wrap(zoo.load(name, weights=None, input_shape=SHAPE), teacher)
    recipe.compile(fresh)
    checkpoint.restore_checkpoint(fresh, saved)
    for a, b in zip(model.weights, getattr(fresh, "student", fresh).weights):
        assert a.name == b.name
        if not a.name.endswith(("moving_mean:0", "moving_variance:0")):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert int(fresh.optimizer.iterations) >= 2  # the epoch's 2 steps (RBCN's BN pass adds its own)


def test_accuracy_pairs_each_prediction_with_its_own_labels_on_shuffled_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="glorot_uniform")(inputs))
    expected = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=1, reshuffle_each_iteration=True).batch(32)
    assert loop.accuracy(model, shuffled) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no batch"):
        loop.accuracy(model, shuffled.take(0))


def test_a_bonn_kernel_loss_weight_is_in_the_command_and_a_resume_keeps_it():
    settings = {"model": "bonn_resnet20", "dataset": "fashion_mnist", "method": "bonn", "epochs": 15, "batch_size": 128,
                "train_images": None, "teacher": None, "seed": 0, "kernel_loss_weight": 1e-5}
    assert loop.command_line(settings, "bonn", None) == ("zoo train bonn_resnet20 --dataset fashion_mnist --epochs 15 "
                                                         "--batch-size 128 --kernel-loss-weight 1e-05")
    where = Path("runs/bonn/checkpoints/epoch-0003")
    assert checkpoint.check_resumable(settings, {**settings, "kernel_loss_weight": None}, where) == settings
    for stored in (settings, {key: value for key, value in settings.items() if key != "kernel_loss_weight"}):
        with pytest.raises(checkpoint.ResumeError, match="kernel_loss_weight 0.0001"):
            checkpoint.check_resumable(stored, {**settings, "kernel_loss_weight": 1e-4}, where)


def test_a_run_leaves_the_applications_root_logging_unconfigured(fashion_mnist_data_dir, tmp_path):
    """TF's checkpoint writer logs through absl, which calls ``logging.basicConfig()`` when the
    root logger has no handler: zoo's lines then printed as ``INFO:zoo:...`` in run logs."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import logging, sys
        from training.loop import train
        train("bnn_resnet20", "fashion_mnist", epochs=1, batch_size=32, train_images=64, test_images=32,
              data_dir={fashion_mnist_data_dir!r}, output={str(tmp_path / "run")!r}, export=False, verbose=0)
        print("root handlers:", logging.getLogger().handlers, file=sys.stderr)
    """)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[-1] == "root handlers: []"


def test_the_settings_table_is_what_zoo_train_and_train_take():
    parser = argparse.ArgumentParser()
    training_cli.add_arguments(parser)
    options = {option for action in parser._actions for option in action.option_strings}
    not_settings = {"-h", "--help", "--dataset", "--data-dir", "--output", "--resume", "--strategy", "--no-export",
                    "--quiet"}
    assert {setting.flag for setting in SETTINGS} == options - not_settings
    assert {setting.key for setting in SETTINGS} <= set(inspect.signature(loop.train).parameters)
    fields = {method: {field.name for field in dataclasses.fields(recipe_class(method))}
              for method in ("bnn", "cbcn", "bonn", "rbnn", "rbcn")}
    for setting in SETTINGS:
        if setting.method is not None:  # only its method's recipe has the field
            assert setting.recipe_field in fields[setting.method] and setting.recipe_field not in fields["bnn"]
        elif setting.recipe_field is not None:
            assert setting.recipe_field in fields["bnn"]
