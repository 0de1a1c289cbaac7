"""The fine-tuning path on real Fashion-MNIST: pretrained body, new head, model.fit."""

import numpy as np
import tf_keras as keras
import zoo
from helpers import manifest_entry, write_manifest


def real_batch(data_dir, n=512):
    images, labels = next(iter(zoo.load_dataset(
        "fashion_mnist", "train", batch_size=n, training=False, data_dir=data_dir
    )))
    return images.numpy(), labels.numpy()


def test_new_head_fine_tunes_on_real_data(fashion_mnist_data_dir, tmp_path, monkeypatch):
    images, labels = real_batch(fashion_mnist_data_dir)
    assert images.dtype == np.float32 and images.max() > 1.0  # raw pixels into the model

    # Stand-in for pretrained weights: a body trained briefly on all ten classes.
    base = zoo.load("xnor_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    base.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                 run_eagerly=True)  # 8 steps: cheaper than tracing; the fine-tune below is traced
    base.fit(images, labels, epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "xnor_resnet20-fmnist.h5"
    base.save_weights(path)
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    write_manifest(tmp_path / "manifest.json", [manifest_entry("xnor_resnet20", path)])

    five = labels < 5
    x, y = images[five], labels[five]
    model = zoo.load("xnor_resnet20", weights="fashion_mnist", classes=5)
    assert model.output_shape == (None, 5)
    np.testing.assert_array_equal(
        model.get_layer("stage3_block3_conv2").get_weights()[0],
        base.get_layer("stage3_block3_conv2").get_weights()[0],
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.evaluate(x, y, verbose=0)[0]
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    after = model.evaluate(x, y, verbose=0)[0]
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after < before
