"""BatchNorm re-estimation (zoo.recalibrate_bn) and what zoo train does with it."""

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from training import loop
from zoo.recalibration import batch_norm_layers, recalibrate_bn


def _small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, x)


def _batches(count=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(3.0, 2.0, (size, 8, 8, 3)).astype(np.float32), np.zeros(size)) for _ in range(count)]


def test_the_statistics_are_the_mean_of_the_batch_statistics_and_nothing_else_changes():
    model = _small_model()
    batches = _batches()
    for layer in batch_norm_layers(model):  # stale statistics and non-trivial γ, β
        layer.set_weights([np.full(layer.gamma.shape, 1.7), np.full(layer.beta.shape, 0.3),
                           np.full(layer.gamma.shape, 9.0), np.full(layer.gamma.shape, 40.0)])
    others = {v.name: v.numpy() for v in model.weights if "moving" not in v.name}

    assert recalibrate_bn(model, batches, batches=4) == 4

    # expected: per batch, the BN input's mean and unbiased variance in a training-mode forward
    bn1_input = keras.Model(model.input, model.get_layer("conv1").output)
    bn2_input = keras.Model(model.input, model.get_layer("conv2").output)
    for layer, source in ((model.get_layer("bn1"), bn1_input), (model.get_layer("bn2"), bn2_input)):
        means, variances = [], []
        for images, _ in batches[:4]:
            values = source(images, training=True).numpy().reshape(-1, layer.gamma.shape[0])
            means.append(values.mean(0))
            variances.append(values.var(0, ddof=1))
        np.testing.assert_allclose(layer.moving_mean.numpy(), np.mean(means, 0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), np.mean(variances, 0), rtol=1e-3, atol=1e-5)
    for variable in model.weights:
        if "moving" not in variable.name:
            np.testing.assert_array_equal(variable.numpy(), others[variable.name])
    assert all(layer.momentum == 0.99 and layer.trainable for layer in batch_norm_layers(model))


def test_frozen_batch_norms_are_recalibrated_and_stay_frozen():
    model = _small_model()
    model.trainable = False
    before = model.get_layer("bn1").moving_mean.numpy().copy()
    recalibrate_bn(model, _batches(2), batches=2)
    assert not np.allclose(model.get_layer("bn1").moving_mean.numpy(), before)
    assert not model.get_layer("bn1").trainable and not model.trainable_weights


@pytest.mark.parametrize("batches, data, message", [
    (0, _batches(1), "positive integer"),
    (True, _batches(1), "positive integer"),
    (2, [], "no batch"),
])
def test_bad_arguments_are_refused(batches, data, message):
    with pytest.raises(ValueError, match=message):
        recalibrate_bn(_small_model(), data, batches=batches)


def test_a_model_without_batch_norm_is_refused():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="no BatchNormalization"):
        recalibrate_bn(keras.Model(inputs, keras.layers.Dense(2)(inputs)), [np.zeros((2, 4), np.float32)])


@pytest.mark.slow
def test_recalibration_restores_a_pretrained_model_whose_statistics_were_corrupted(fashion_mnist_data_dir):
    # measured on 512 test images: shipped 69.9 %, corrupted 7-11 % (3 seeds), recalibrated on
    # 8 batches 71.5 % (on 20 batches 71.7 %)
    test = zoo.load_dataset("fashion_mnist", "test", batch_size=256, take=512, data_dir=fashion_mnist_data_dir)
    train = zoo.load_dataset("fashion_mnist", "train", batch_size=256, training=False, take=8 * 256,
                             data_dir=fashion_mnist_data_dir)
    model = zoo.load("bnn_resnet20")
    shipped = loop.accuracy(model, test)
    rng = np.random.default_rng(0)
    for layer in batch_norm_layers(model):
        layer.moving_mean.assign(layer.moving_mean + rng.normal(0, 3, layer.moving_mean.shape).astype(np.float32))
        layer.moving_variance.assign(layer.moving_variance * 50.0)
    corrupted = loop.accuracy(model, test)
    assert corrupted < shipped - 0.2

    zoo.recalibrate_bn(model, train, batches=8)
    assert loop.accuracy(model, test) >= shipped - 0.02


def test_a_run_with_held_out_images_validates_on_them_and_reports_the_test_split(fashion_mnist_data_dir, tmp_path):
    model, report = loop.train("bnn_resnet20", "fashion_mnist", epochs=1, batch_size=32, train_images=64,
                               val_images=200, test_images=64, optimizer="adam", learning_rate=1e-3,
                               weight_decay=0.0, data_dir=fashion_mnist_data_dir, output=tmp_path / "run",
                               export=False, verbose=0)
    row = report["history"][0]
    assert report["validation"] == "held-out training images"
    assert {"val_accuracy", "test_accuracy"} <= set(row)
    assert report["recipe"]["optimizer_name"] == "adam" and report["recipe"]["learning_rate"] == 1e-3
    assert report["recipe"]["weight_decay"] == 0.0
    assert report["bn_recalibration"]["batches"] >= 1
    assert report["train_images_per_epoch"] == 64
    assert report["budget"] == {"epochs": 1, "train_images_per_epoch": 64, "held_out_images": 200, "batch_size": 32,
                                "seed": 0, "recipe": "Recipe", "optimizer": "adam", "learning_rate": 1e-3,
                                "weight_decay": 0.0, "schedule": "cosine", "teacher": None,
                                "bn_recalibration_images": 256 * report["bn_recalibration"]["batches"]}
    assert set(report["bn_recalibration"]) >= {"val_accuracy_before", "val_accuracy_after"}
    for flag in ("--val-images 200", "--optimizer adam", "--learning-rate 0.001", "--weight-decay 0.0"):
        assert flag in report["command"]
    assert loop._train_val_splits({"splits": {"train": 60_000}}, 5_000) == ("train[:55000]", "train[55000:]")
    with pytest.raises(ValueError, match="val_images must be between 1 and 59999"):
        loop._train_val_splits({"splits": {"train": 60_000}}, 60_000)
