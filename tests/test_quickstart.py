"""The README's main job runs end to end (few images, one head epoch) on the shipped weights."""

import dataclasses
import json
from pathlib import Path

import pytest

import zoo  # noqa: I001  (first: selects Keras 2)
from zoo import registry
from training import quickstart

REPO = Path(__file__).resolve().parent.parent


def test_digits_are_raw_pixels_split_per_class():
    (x_train, y_train), (x_test, y_test) = quickstart.digits(28)
    assert x_train.shape[1:] == (28, 28, 1) and x_test.shape[1:] == (28, 28, 1)
    assert len(x_train) + len(x_test) == 1797
    assert 0 <= x_train.min() and 200 < x_train.max() <= 255
    assert sorted(set(y_test.tolist())) == list(range(10))


def test_quickstart_evaluates_fine_tunes_converts_and_runs(fashion_mnist_data_dir, tmp_path, capsys):
    report = quickstart.main([
        "--epochs", "1", "--eval-images", "1000", "--data-dir", fashion_mnist_data_dir,
        "--output", str(tmp_path), "--quiet", "--no-control",  # the control is the same fine_tune, from weights=None
    ])
    entry = registry.pretrained_entry("rbnn_resnet18", "fashion_mnist")
    assert abs(100 * report["fashion_mnist_test_accuracy"] - entry.metrics["top1_first_1000"]) <= 1.0
    # ten classes, chance 0.1; one epoch of the whole model (the README's figures come from the default 8)
    assert report["digits_test_accuracy"] > 0.15 and report["digits_test_accuracy_from_random_init"] is None
    assert report["fine_tune"] == {**dataclasses.asdict(quickstart.FineTune(epochs=1)), "optimizer": "adam",
                                   "schedule": "cosine", "seed": quickstart.SEED}
    assert 0.0 <= report["binary_weights_changed_by_fine_tune"] <= 1.0
    assert report["lce_bconv2d"] == report["binary_layers"] == 16
    assert report["lce_top1_agreement"] >= 0.99
    assert Path(report["tflite"]).stat().st_size == report["tflite_bytes"]
    assert report["lce_latency_ms_median"] > 0
    out = capsys.readouterr().out
    assert "fine-tuned from the pretrained weights" in out and "from random initialisation" not in out


@pytest.mark.parametrize("flags, message", [
    (["--model", "bnn_resnet18"], "--model 'bnn_resnet18' has no fashion_mnist weights; choose one of "),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--eval-images", "10001"], "--eval-images must be between 0 (all) and 10000, got 10001"),
    (["--output", "FILE/below"], "--output FILE/below: cannot make the directory (Not a directory)"),
])
def test_bad_flags_are_refused_in_one_line_before_any_work(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file, not a directory")
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("quickstart") and message in error


def test_an_output_directory_that_does_not_exist_is_made(tmp_path):
    output = tmp_path / "new" / "dir"
    assert quickstart.parse_args(["--output", str(output)]).output == str(output) and output.is_dir()


def test_the_fine_tune_settings_are_the_ones_chosen_on_held_out_digits():
    chosen = json.loads((REPO / "benchmarks" / "results" / "fine_tune_choice_rbnn_resnet18.json").read_text())
    settings = quickstart.FineTune()
    assert (chosen["model"], chosen["epochs"]) == (quickstart.parse_args([]).model, settings.epochs)
    assert (settings.learning_rate, settings.weight_decay) == (chosen["kept"]["learning_rate"],
                                                               chosen["kept"]["weight_decay"])
    assert chosen["kept"]["pretrained"]["held_out_accuracy"] == max(
        row["pretrained"]["held_out_accuracy"] for row in chosen["rows"])
