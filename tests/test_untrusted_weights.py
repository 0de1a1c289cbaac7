"""Hostile and malformed HDF5 weights files: refused with one line, before any data is read."""

import tracemalloc

import h5py
import numpy as np
import pytest
import tf_keras as keras
import zoo
from zoo import loading, weights
from zoo.loading import WeightsMismatchError
from zoo.weights import InvalidWeightsFile

SECRET = b"0123456789abcdef0123456789abcdef01234567"  # 40 bytes: the bias of a Dense(10)


@pytest.fixture
def model():
    """A small model whose weights file takes milliseconds to write and read."""
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(10, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn")(hidden)
    model = keras.Model(inputs, outputs)
    yield model
    keras.backend.clear_session()


@pytest.fixture
def saved(model, tmp_path):
    """The model's own weights file (Keras' HDF5 layout)."""
    path = tmp_path / "weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture
def reads(monkeypatch):
    """Records the name of every dataset whose data is read through h5py."""
    names = []

    def recording(method):
        def read(self, *args, **kwargs):
            names.append(self.name)
            return method(self, *args, **kwargs)

        return read

    for method in ("__getitem__", "__array__", "read_direct"):
        monkeypatch.setattr(h5py.Dataset, method, recording(getattr(h5py.Dataset, method)))
    return names


def replace_dataset(path, name, **create):
    """Replaces dataset ``name`` of the HDF5 file at ``path`` by ``create_dataset(**create)``."""
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, **create)


def replace_link(path, name, link):
    with h5py.File(path, "r+") as f:
        del f[name]
        f[name] = link


def assert_unchanged(model, before):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


BIAS = "/dense/dense/bias:0"


# --- data from outside the file ---------------------------------------------


def test_external_storage_is_refused_before_any_read(model, saved, tmp_path, reads):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    replace_dataset(saved, BIAS, shape=(10,), dtype="<f4", external=[(str(secret), 0, len(SECRET))])
    before = model.get_weights()

    with pytest.raises(InvalidWeightsFile) as info:
        loading.load_weights(model, saved)
    message = str(info.value)
    assert f"dataset {BIAS!r} keeps its data in external file(s) {str(secret)!r}" in message
    assert "\n" not in message
    assert reads == []
    assert_unchanged(model, before)


def test_external_storage_is_refused_by_fetch_and_zoo_load(saved, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    replace_dataset(saved, BIAS, shape=(10,), dtype="<f4", external=[(str(secret), 0, len(SECRET))])
    expected = f"dataset {BIAS!r} keeps its data in external"
    with pytest.raises(InvalidWeightsFile, match=expected):
        weights.fetch(saved.as_uri())
    with pytest.raises(InvalidWeightsFile, match=expected):  # refused by fetch, before any layer fits
        zoo.load("bnn_resnet20", weights=str(saved), input_shape=(28, 28, 1), classes=10)


@pytest.mark.parametrize(
    "make_link, expected",
    [
        (lambda other: h5py.ExternalLink(str(other), BIAS), "is an external link to"),
        (lambda other: h5py.SoftLink("/dense/dense/kernel:0"), "is a soft link to '/dense/dense/kernel:0'"),
    ],
    ids=["external_link", "soft_link"],
)
def test_links_are_refused_before_any_read(model, saved, tmp_path, reads, make_link, expected):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset(BIAS, data=np.frombuffer(SECRET, "<f4"))
    replace_link(saved, BIAS, make_link(other))

    for load in (lambda: loading.load_weights(model, saved), lambda: weights.validate_hdf5(saved)):
        with pytest.raises(InvalidWeightsFile, match=f"{BIAS!r} {expected}"):
            load()
    assert reads == []


def test_virtual_dataset_is_refused_before_any_read(model, saved, tmp_path, reads):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("secret", data=np.frombuffer(SECRET, "<f4"))
    layout = h5py.VirtualLayout(shape=(10,), dtype="<f4")
    layout[:] = h5py.VirtualSource(str(other), "secret", shape=(10,))
    with h5py.File(saved, "r+") as f:
        del f[BIAS]
        f.create_virtual_dataset(BIAS, layout)

    with pytest.raises(InvalidWeightsFile, match=f"dataset {BIAS!r} is a virtual dataset"):
        loading.load_weights(model, saved)
    assert reads == []


# --- sizes, chunks and dtypes from metadata ---------------------------------


def test_a_compressed_bomb_is_refused_from_its_shape(model, saved, reads):
    """1.5 GiB of float32 zeros declared in a file of a few kB (the chunks are never
    written, so reading them would produce the fill value: the same as compressed zeros)."""
    huge = (3 << 27,)
    replace_dataset(saved, BIAS, shape=huge, dtype="<f4", chunks=(1 << 20,), compression="gzip")
    assert saved.stat().st_size < 1 << 20

    tracemalloc.start()
    try:
        expected = r"'dense': the weights file has shape \(402653184,\) for bias, the model needs \(10,\)"
        with pytest.raises(WeightsMismatchError, match=expected):
            loading.load_weights(model, saved)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert reads == []


def test_chunks_larger_than_the_array_are_refused(model, saved, reads):
    replace_dataset(saved, BIAS, data=np.zeros(10, "<f4"), maxshape=(None,), chunks=(1 << 20,))
    with pytest.raises(InvalidWeightsFile, match=r"'dense'.*bias.*chunks of \(1048576,\)"):
        loading.load_weights(model, saved)
    assert reads == []


@pytest.mark.parametrize("data", [np.zeros(10, np.complex64), np.array([b"abcd"] * 10)], ids=["complex", "bytes"])
def test_dtypes_are_checked_before_any_read(model, saved, reads, data):
    replace_dataset(saved, BIAS, data=data)
    expected = f"'dense': the weights file has dtype {data.dtype} for bias, the model needs float32"
    with pytest.raises(WeightsMismatchError, match=expected):
        loading.load_weights(model, saved)
    assert reads == []


def test_declared_bytes_are_capped_relative_to_the_model(model, saved, reads):
    """With ``partial`` the file's extra layers are never read, but a file declaring
    far more data than the model holds is not a weights file for it."""
    with h5py.File(saved, "r+") as f:
        f.attrs["layer_names"] = [*f.attrs["layer_names"], "extra"]
        group = f.create_group("extra")
        group.attrs["weight_names"] = ["extra/kernel:0"]
        group.create_dataset("extra/kernel:0", shape=(1 << 26,), dtype="<f4", chunks=(1 << 20,), compression="gzip")

    expected = "declares 268,435,816 bytes of weights, more than the 1,050,016 allowed for a model of 360 bytes"
    with pytest.raises(WeightsMismatchError, match=expected):
        loading.load_weights(model, saved, partial=True)
    assert reads == []


# --- values -----------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, value, expected",
    [
        ("/dense/dense/kernel:0", np.nan, "layer 'dense' kernel holds 1 non-finite value"),
        (BIAS, -np.inf, "layer 'dense' bias holds 1 non-finite value"),
        ("/bn/bn/moving_variance:0", -0.5, "layer 'bn' moving_variance holds 1 negative value"),
    ],
    ids=["nan_kernel", "inf_bias", "negative_variance"],
)
def test_non_finite_weights_and_negative_variances_are_refused(model, saved, dataset, value, expected):
    with h5py.File(saved, "r+") as f:
        data = f[dataset][()]
        data.flat[3] = value
        f[dataset][...] = data
    before = model.get_weights()
    with pytest.raises(InvalidWeightsFile, match=expected):
        loading.load_weights(model, saved)
    assert_unchanged(model, before)


def test_a_good_file_still_loads(model, saved, tmp_path):
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()])
    trained = tmp_path / "trained.h5"
    model.save_weights(trained)
    expected = model.get_weights()
    loading.load_weights(model, saved)
    loading.load_weights(model, trained)
    for a, b in zip(expected, model.get_weights()):
        np.testing.assert_array_equal(a, b)

    with h5py.File(trained, "r+") as f:  # float64 copies fit float32 variables
        bias = f[BIAS][()]
        del f[BIAS]
        f.create_dataset(BIAS, data=bias.astype(np.float64))
    loading.load_weights(model, saved)
    loading.load_weights(model, trained)
    np.testing.assert_array_equal(expected[1], model.get_layer("dense").bias.numpy())


# --- malformed Keras layout -------------------------------------------------


def delete_group(f):
    del f["dense"]


def delete_weight_names(f):
    del f["dense"].attrs["weight_names"]


def name_a_missing_dataset(f):
    f["dense"].attrs["weight_names"] = ["dense/kernel:0", "dense/nosuch:0"]


def number_the_layers(f):
    f.attrs["layer_names"] = np.arange(3)


def list_one_weight(f):
    f["dense"].attrs["weight_names"] = ["dense/kernel:0"]


@pytest.mark.parametrize(
    "damage, error, expected",
    [
        (delete_group, InvalidWeightsFile, "'layer_names' lists 'dense' but the file has no group of that name"),
        (delete_weight_names, InvalidWeightsFile, "layer 'dense' has no 'weight_names' attribute"),
        (name_a_missing_dataset, InvalidWeightsFile, "layer 'dense' lists weight 'dense/nosuch:0' but has no dataset"),
        (number_the_layers, InvalidWeightsFile, "'layer_names' of '/' is not a list of names"),
        (list_one_weight, WeightsMismatchError, "Layer 'dense': the weights file has 1 arrays, the model needs 2"),
    ],
    ids=["no_layer_group", "no_weight_names", "missing_dataset", "names_not_strings", "wrong_count"],
)
def test_malformed_keras_layout_gives_one_line(model, saved, damage, error, expected):
    with h5py.File(saved, "r+") as f:
        damage(f)
    with pytest.raises(error) as info:
        loading.load_weights(model, saved)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
