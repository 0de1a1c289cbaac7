"""zoo.load with weights: manifest tags, files, URLs, heads, and every way it can go wrong."""

import functools
import http.server
import logging
import threading

import numpy as np
import pytest
import tf_keras as keras
import zoo
from helpers import manifest_entry, random_pixels, randomize_batch_norms, sha256, write_manifest
from zoo import loading, weights


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    write_manifest(tmp_path / "manifest.json", [])  # a named manifest must exist
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture
def trained(home):
    """A bnn_resnet20 for Fashion-MNIST shape with non-default weights, saved as HDF5."""
    model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    randomize_batch_norms(model, seed=7)
    path = home / "bnn_resnet20-fmnist.h5"
    model.save_weights(path)
    return model, path


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www over HTTP on 127.0.0.1 (a random free port)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def serve(path, server, **overrides):
    """Puts a weights file on the test server; returns its manifest entry by URL."""
    root, url = server
    (root / path.name).write_bytes(path.read_bytes())
    entry = manifest_entry("bnn_resnet20", path)
    entry.pop("file")
    return {**entry, "url": f"{url}/{path.name}", **overrides}


def outputs(model, seed=0):
    return model(random_pixels(model.input_shape[1:], seed=seed), training=False).numpy()


def test_weights_from_a_path_reproduce_the_model(trained):
    model, path = trained
    loaded = zoo.load("bnn_resnet20", weights=str(path), input_shape=(28, 28, 1), classes=10)
    np.testing.assert_array_equal(outputs(model), outputs(loaded))
    assert loaded.get_layer("stage2_block1_bn1").get_weights()[2].tolist() == (
        model.get_layer("stage2_block1_bn1").get_weights()[2].tolist()
    )


def test_pretrained_tag_default_and_entry_shape(trained, home):
    model, path = trained
    write_manifest(home / "manifest.json", [manifest_entry("bnn_resnet20", path)])
    by_tag = zoo.load("bnn_resnet20", weights="fashion_mnist")
    by_default = zoo.load("bnn_resnet20")
    assert by_tag.input_shape == (None, 28, 28, 1)  # the entry's input shape
    np.testing.assert_array_equal(outputs(model), outputs(by_tag))
    np.testing.assert_array_equal(outputs(model), outputs(by_default))


def test_default_without_pretrained_weights_says_so(home, caplog):
    with caplog.at_level(logging.WARNING, logger="zoo"):
        model = zoo.load("xnor_resnet20")
    assert model.output_shape == (None, 10)
    assert "no pretrained weights for xnor_resnet20" in caplog.text
    assert len(caplog.records) == 1


def test_feature_extractor_keeps_pretrained_weights(trained, home):
    model, path = trained
    write_manifest(home / "manifest.json", [manifest_entry("bnn_resnet20", path)])
    features = zoo.load("bnn_resnet20", weights="fashion_mnist", include_top=False, pooling="avg")
    reference = keras.Model(model.input, model.get_layer("avg_pool").output)
    np.testing.assert_array_equal(outputs(reference), outputs(features))


def test_new_classes_replace_only_the_head(trained, home):
    model, path = trained
    write_manifest(home / "manifest.json", [manifest_entry("bnn_resnet20", path)])
    tuned = zoo.load("bnn_resnet20", weights="fashion_mnist", classes=5)
    assert tuned.output_shape == (None, 5)
    for layer in model.layers:
        if layer.weights and layer.name != "predictions":
            for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)


def test_weights_over_http_are_cached_and_verified(trained, home, server):
    model, path = trained
    write_manifest(home / "manifest.json", [serve(path, server)])

    loaded = zoo.load("bnn_resnet20", weights="fashion_mnist")
    np.testing.assert_array_equal(outputs(model), outputs(loaded))
    cached = weights.cache_dir() / sha256(path) / path.name
    assert cached.exists()

    (server[0] / path.name).unlink()  # the server no longer has it: the cache must serve
    np.testing.assert_array_equal(outputs(model), outputs(zoo.load("bnn_resnet20", weights="fashion_mnist")))


def test_checksum_mismatch_loads_nothing(trained, home, server):
    _, path = trained
    write_manifest(home / "manifest.json", [serve(path, server, sha256="0" * 64)])
    with pytest.raises(weights.ChecksumError):
        zoo.load("bnn_resnet20", weights="fashion_mnist")
    assert not any(p.is_file() for p in weights.cache_dir().rglob("*"))


def test_url_with_hash_fragment(trained, server):
    model, path = trained
    url = serve(path, server)["url"]
    loaded = zoo.load("bnn_resnet20", weights=f"{url}#sha256={sha256(path)}", input_shape=(28, 28, 1))
    np.testing.assert_array_equal(outputs(model), outputs(loaded))


def test_not_hdf5_and_truncated_files_are_refused(home):
    junk = home / "junk.h5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(weights.InvalidWeightsFile, match="HDF5"):
        zoo.load("bnn_resnet20", weights=str(junk))

    model = zoo.load("bnn_resnet20", weights=None)
    good = home / "good.h5"
    model.save_weights(good)
    truncated = home / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(weights.InvalidWeightsFile):
        zoo.load("bnn_resnet20", weights=str(truncated))


def test_mismatching_weights_name_the_first_bad_layer_and_change_nothing(trained):
    _, path = trained
    with pytest.raises(loading.WeightsMismatchError, match="'predictions'.*\\(64, 10\\).*\\(64, 7\\)"):
        zoo.load("bnn_resnet20", weights=str(path), input_shape=(28, 28, 1), classes=7, include_top=True)

    with pytest.raises(loading.WeightsMismatchError, match="'stem_conv'"):
        zoo.load("bnn_resnet20", weights=str(path), input_shape=(28, 28, 3))

    other = zoo.load("bnn_vgg_small", weights=None, input_shape=(28, 28, 1))
    before = [w.copy() for w in other.get_weights()]
    expected = "'stem_conv'.*\\(3, 3, 1, 16\\) for kernel, the model needs \\(3, 3, 1, 128\\)"
    with pytest.raises(loading.WeightsMismatchError, match=expected):
        loading.load_weights(other, path)
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_file_with_layers_the_model_lacks_is_refused(trained):
    _, path = trained
    smaller = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), include_top=False)
    with pytest.raises(loading.WeightsMismatchError, match="lacks"):
        loading.load_weights(smaller, path)
    loading.load_weights(smaller, path, partial=True)
