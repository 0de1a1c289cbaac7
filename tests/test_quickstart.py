"""The README's main job runs end to end (tiny settings) on the real data."""

from training import quickstart


def test_quickstart_trains_exports_converts_and_runs(fashion_mnist_data_dir, tmp_path, capsys):
    report = quickstart.main([
        "--model", "xnor_resnet20", "--epochs", "1", "--train-images", "3072",
        "--data-dir", fashion_mnist_data_dir, "--output", str(tmp_path), "--quiet",
    ])
    assert report["test_accuracy"] > 0.4  # ten classes: chance is 0.1
    assert report["binary_kernel_values"] == [-1.0, 1.0]
    assert report["lce_ops"]["LceBconv2d"] == 18
    assert (tmp_path / "xnor_resnet20-fashion_mnist.tflite").stat().st_size == report["tflite_bytes"]
    assert report["lce_top1_agreement"] >= 0.95
    assert "test accuracy" in capsys.readouterr().out
