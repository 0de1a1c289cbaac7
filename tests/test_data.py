"""Tests of the data layer: zoo.data and the zoo_fashion_mnist TFDS builder.

The real-data tests use the Debian Fashion-MNIST files through the
session-scoped ``fashion_mnist_data_dir`` fixture (tests/conftest.py, built
once). The other datasets are exercised offline with ``tfds.testing.mock_data``.
"""

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from zoo import data
from zoo.datasets import ZooFashionMnist
from zoo.datasets import fashion_mnist as fm

import tensorflow as tf  # noqa: E402  (after zoo: Keras switch)
import tensorflow_datasets as tfds  # noqa: E402

SOURCE_DIR = fm.default_source_dir()
NAMES = list(fm.CLASS_NAMES)


def _numpy(ds):
    """All (images, labels) of a batched pipeline as numpy arrays."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _raw_idx(stem):
    """Independent (header-skipping) parse of a Debian file, for cross-checks."""
    raw = gzip.open(SOURCE_DIR / f"{stem}.gz").read()
    offset = 16 if "images" in stem else 8
    return np.frombuffer(raw, np.uint8, offset=offset)


def _shift_flip_variants(image, pad, flips):
    """All crops of the zero-padded image (and their mirror images if flips)."""
    h, w = image.shape[:2]
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            out.append((crop, False))
            if flips:
                out.append((crop[:, ::-1], True))
    return out


def _explain_augmented(aug, orig, pad, flips):
    """Returns 'flip'/'noflip' if aug is a pad+crop(+flip) of orig, else None."""
    for candidate, flipped in _shift_flip_variants(orig, pad, flips):
        if np.array_equal(candidate, aug):
            return "flip" if flipped else "noflip"
    return None


# ------------------------------------------------------------------ builder, real data


@pytest.fixture(scope="module")
def real_splits(fashion_mnist_data_dir):
    """{split: (images uint8 (N,28,28,1), labels int64 (N,))} straight from TFDS."""
    builder = ZooFashionMnist(data_dir=fashion_mnist_data_dir)
    out = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True).batch(20_000)
        out[split] = tuple(np.concatenate(a) for a in zip(*tfds.as_numpy(ds)))
    return out


def test_builder_matches_tfds_fashion_mnist_features():
    builder = ZooFashionMnist(data_dir="/nonexistent-zoo-data-dir")
    reference = tfds.builder("fashion_mnist", data_dir="/nonexistent-zoo-data-dir")
    assert builder.name == "zoo_fashion_mnist"
    assert str(builder.version) == "1.0.0"
    assert builder.info.features.to_json() == reference.info.features.to_json()
    assert builder.info.features["label"].names == NAMES
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert builder.info.features["image"].dtype == tf.uint8
    assert builder.info.supervised_keys == ("image", "label")
    assert "apt-get install -y dataset-fashion-mnist" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_real_build_split_sizes(fashion_mnist_data_dir, real_splits):
    builder = ZooFashionMnist(data_dir=fashion_mnist_data_dir)
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 60_000
    assert builder.info.splits["test"].num_examples == 10_000
    assert set(builder.info.splits.keys()) == {"train", "test"}
    assert len(real_splits["train"][0]) == 60_000 == len(real_splits["train"][1])
    assert len(real_splits["test"][0]) == 10_000 == len(real_splits["test"][1])


def test_real_build_dtypes_shapes_and_labels(real_splits):
    for split, per_class in (("train", 6000), ("test", 1000)):
        images, labels = real_splits[split]
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(labels, minlength=11), [per_class] * 10 + [0])
        assert images.min() == 0 and images.max() == 255


def test_real_build_known_statistics(real_splits):
    images = real_splits["train"][0].astype(np.float64)
    # Published Fashion-MNIST normalisation constants: mean 0.2860, std 0.3530.
    assert abs(images.mean() - 0.2860 * 255) < 0.5  # 72.94
    assert abs(images.std() - 0.3530 * 255) < 0.5  # 90.02
    assert abs(real_splits["test"][0].mean() - 73.15) < 0.5


def test_real_build_keeps_image_label_pairing(real_splits):
    """Per-class pixel sums equal those of an independent parse of the raw files."""
    for split, stem in (("train", "train"), ("test", "t10k")):
        raw_x = _raw_idx(f"{stem}-images-idx3-ubyte").reshape(-1, 784).astype(np.int64)
        raw_y = _raw_idx(f"{stem}-labels-idx1-ubyte")
        images, labels = real_splits[split]
        got = np.bincount(labels, weights=images.reshape(-1, 784).sum(1), minlength=10)
        want = np.bincount(raw_y, weights=raw_x.sum(1), minlength=10)
        np.testing.assert_array_equal(got, want)
        # the multiset of images per split is the same too (order is TFDS-shuffled)
        got_rows = np.sort(images.reshape(-1, 784).sum(1) * 10 + labels)
        np.testing.assert_array_equal(got_rows, np.sort(raw_x.sum(1) * 10 + raw_y))


def test_prepare_is_idempotent_and_needs_no_source(fashion_mnist_data_dir, tmp_path):
    builder = data.prepare_fashion_mnist(fashion_mnist_data_dir, source_dir=tmp_path / "nope")
    assert builder.is_prepared() and builder.name == "zoo_fashion_mnist"


# ------------------------------------------------------------------ load_dataset, real data


def test_fashion_train_pipeline(fashion_mnist_data_dir):
    ds = data.load_dataset(
        "fashion_mnist", "train", training=True, batch_size=64, take=256, seed=0,
        data_dir=fashion_mnist_data_dir,
    )
    assert ds.element_spec[0].shape.as_list() == [64, 28, 28, 1]  # drop_remainder
    assert ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].dtype == tf.int64
    x, y = _numpy(ds)
    assert x.shape == (256, 28, 28, 1) and y.shape == (256,)
    assert 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 200  # raw pixels
    assert set(np.unique(y)) <= set(range(10)) and len(np.unique(y)) > 5


def test_fashion_augmentation_is_pad2_crop_flip(fashion_mnist_data_dir):
    kwargs = dict(batch_size=64, take=64, shuffle_buffer=0, data_dir=fashion_mnist_data_dir)
    x_aug, y_aug = _numpy(data.load_dataset("fashion_mnist", "train", training=True, seed=3, **kwargs))
    x_ref, y_ref = _numpy(data.load_dataset("fashion_mnist", "train", training=False, **kwargs))
    np.testing.assert_array_equal(y_aug, y_ref)  # same examples, same order
    assert x_aug.shape == x_ref.shape == (64, 28, 28, 1)
    assert not np.array_equal(x_aug, x_ref)
    changed = sum(not np.array_equal(a, r) for a, r in zip(x_aug, x_ref))
    assert changed > 32
    kinds = [_explain_augmented(a, r, pad=2, flips=True) for a, r in zip(x_aug, x_ref)]
    assert None not in kinds  # every image is a zero-pad-2 crop (maybe mirrored)
    # seeded: reproducible; another seed gives other augmentations
    again, _ = _numpy(data.load_dataset("fashion_mnist", "train", training=True, seed=3, **kwargs))
    np.testing.assert_array_equal(again, x_aug)
    other, _ = _numpy(data.load_dataset("fashion_mnist", "train", training=True, seed=4, **kwargs))
    assert not np.array_equal(other, x_aug)


def test_fashion_training_shuffles(fashion_mnist_data_dir):
    kwargs = dict(batch_size=100, take=1000, data_dir=fashion_mnist_data_dir)
    _, y_train = _numpy(data.load_dataset("fashion_mnist", "train", training=True, seed=0, **kwargs))
    _, y_eval = _numpy(data.load_dataset("fashion_mnist", "train", training=False, **kwargs))
    assert sorted(y_train) == sorted(y_eval)  # take happens before shuffling
    assert not np.array_equal(y_train, y_eval)


def test_fashion_eval_is_deterministic_identity(fashion_mnist_data_dir, real_splits):
    ds = data.load_dataset("fashion_mnist", "test", batch_size=500, take=1000,
                           data_dir=fashion_mnist_data_dir)
    assert ds.element_spec[0].shape.as_list() == [None, 28, 28, 1]
    x1, y1 = _numpy(ds)
    x2, y2 = _numpy(ds)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    images, labels = real_splits["test"]
    np.testing.assert_array_equal(x1, images[:1000].astype(np.float32))  # no preprocessing
    np.testing.assert_array_equal(y1, labels[:1000])
    # default: no drop_remainder when evaluating
    x3, _ = _numpy(data.load_dataset("fashion_mnist", "test", batch_size=300, take=1000,
                                     data_dir=fashion_mnist_data_dir))
    assert len(x3) == 1000


def test_fashion_image_size_and_channels(fashion_mnist_data_dir):
    ds = data.load_dataset("fashion_mnist", "test", batch_size=8, take=8, image_size=32,
                           channels=3, data_dir=fashion_mnist_data_dir)
    x, _ = _numpy(ds)
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert 0.0 <= x.min() and x.max() <= 255.0
    ds = data.load_dataset("fashion_mnist", "train", batch_size=8, take=8, image_size=(36, 30),
                           training=True, data_dir=fashion_mnist_data_dir)
    assert ds.element_spec[0].shape.as_list() == [8, 36, 30, 1]


def test_fashion_prefers_prepared_tfds_fashion_mnist(monkeypatch, tmp_path):
    ref_cls = type(tfds.builder("fashion_mnist", data_dir=str(tmp_path)))
    with pytest.raises(data.DatasetNotFoundError):  # not prepared -> zoo build from source
        data.get_builder("fashion_mnist", data_dir=tmp_path, source_dir=tmp_path / "none")
    monkeypatch.setattr(ref_cls, "is_prepared", lambda self: True)
    (tmp_path / "fashion_mnist").mkdir()  # a prepared TFDS dataset has its folder
    builder = data.get_builder("fashion_mnist", data_dir=tmp_path, source_dir=tmp_path / "none")
    assert builder.name == "fashion_mnist"


# ------------------------------------------------------------------ other datasets (mocked)


@pytest.mark.parametrize(
    "name, shape, classes", [("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100),
                             ("mnist", (28, 28, 1), 10)]
)
def test_small_datasets_mocked(name, shape, classes):
    with tfds.testing.mock_data(num_examples=40):
        train = data.load_dataset(name, "train", batch_size=16, seed=0)
        x, y = _numpy(train)
        assert x.shape == (32,) + shape and x.dtype == np.float32  # drop_remainder
        assert y.dtype == np.int64 and 0 <= y.min() and y.max() < classes
        assert 0.0 <= x.min() and x.max() <= 255.0
        xe, ye = _numpy(data.load_dataset(name, "test", batch_size=16))
        assert xe.shape == (40,) + shape and 0 <= ye.min() and ye.max() < classes
        raw = tfds.builder(name).as_dataset(split="test", as_supervised=True)
        builder_images = np.stack([im.numpy() for im, _ in raw])
        np.testing.assert_array_equal(xe, builder_images.astype(np.float32))  # eval = identity


@pytest.mark.parametrize("name, pad, flips", [("cifar10", 4, True), ("mnist", 2, False)])
def test_small_datasets_augmentation_mocked(name, pad, flips):
    with tfds.testing.mock_data(num_examples=24):
        kwargs = dict(batch_size=24, shuffle_buffer=0)
        x_aug, y_aug = _numpy(data.load_dataset(name, "train", training=True, seed=1, **kwargs))
        x_ref, y_ref = _numpy(data.load_dataset(name, "train", training=False, **kwargs))
    np.testing.assert_array_equal(y_aug, y_ref)
    kinds = [_explain_augmented(a, r, pad=pad, flips=flips) for a, r in zip(x_aug, x_ref)]
    assert None not in kinds  # zero padding, crop back to native size
    if flips:
        assert "flip" in kinds and "noflip" in kinds
    assert sum(not np.array_equal(a, r) for a, r in zip(x_aug, x_ref)) > 12


def test_mnist_resize_and_channels_mocked():
    with tfds.testing.mock_data(num_examples=8):
        x, _ = _numpy(data.load_dataset("mnist", "train", batch_size=4, image_size=32, channels=3))
        assert x.shape == (8, 32, 32, 3)
        np.testing.assert_array_equal(x[..., 0], x[..., 1])
        x, _ = _numpy(data.load_dataset("cifar10", "test", batch_size=4, channels=1))
        assert x.shape == (8, 32, 32, 1)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("image_size, expected", [(None, 224), (64, 64)])
def test_imagenet_mocked(training, image_size, expected):
    with tfds.testing.mock_data(num_examples=6):  # random-size JPEGs (5..50 px)
        split = "train" if training else "validation"
        ds = data.load_dataset("imagenet2012", split, training=training, batch_size=3,
                               image_size=image_size, seed=0)
        assert ds.element_spec[0].shape.as_list()[1:] == [expected, expected, 3]
        x, y = _numpy(ds)
        if not training:
            x2, _ = _numpy(ds)
            np.testing.assert_array_equal(x, x2)
    assert x.shape == (6, expected, expected, 3) and x.dtype == np.float32
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() < 1000
    assert 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 100


def test_dataset_info():
    info = data.dataset_info("fashion_mnist")
    assert info["num_classes"] == 10 and info["image_shape"] == (28, 28, 1)
    assert info["splits"] == {"train": 60_000, "test": 10_000}
    assert list(info["class_names"]) == NAMES and info["eval_split"] == "test"
    assert data.dataset_info("cifar10")["splits"] == {"train": 50_000, "test": 10_000}
    assert data.dataset_info("cifar100")["num_classes"] == 100
    assert data.dataset_info("mnist")["image_shape"] == (28, 28, 1)
    inet = data.dataset_info("imagenet2012")
    assert inet["splits"] == {"train": 1_281_167, "validation": 50_000}
    assert inet["eval_split"] == "validation" and inet["num_classes"] == 1000
    assert inet["class_names"] is None or len(inet["class_names"]) == 1000
    info["splits"]["train"] = 0  # returned dicts are copies
    assert data.dataset_info("fashion_mnist")["splits"]["train"] == 60_000
    assert set(data.SUPPORTED_DATASETS) == {
        "cifar10", "cifar100", "imagenet2012", "mnist", "fashion_mnist"}


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("name, close", [("cifar1O", "cifar10"), ("imagenet", "imagenet2012"),
                                         ("fashionmnist", "fashion_mnist")])
def test_unknown_dataset(name, close):
    with pytest.raises(ValueError, match=f"Did you mean '{close}'") as err:
        data.load_dataset(name, "train")
    assert "cifar100" in str(err.value) and "mnist" in str(err.value)  # lists supported
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.dataset_info(name)


def test_unknown_split():
    with pytest.raises(ValueError, match="available splits: train, test"):
        data.load_dataset("cifar10", "validation")
    with pytest.raises(ValueError, match="available splits: train, validation"):
        data.load_dataset("imagenet2012", "test")
    with pytest.raises(ValueError, match="'tarin'"):
        data.load_dataset("mnist", "tarin[:10%]")


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        data.load_dataset("mnist", "train", channels=2)
    with pytest.raises(ValueError, match="image_size"):
        data.load_dataset("mnist", "train", image_size=0)


def test_missing_cifar10_raises_dataset_not_found(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("cifar10", "train", data_dir=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert "'cifar10'" in msg and str(tmp_path) in msg
    assert f"tfds build cifar10 --data_dir {tmp_path}" in msg and "download=True" in msg


def test_missing_imagenet_explains_manual_download(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("imagenet2012", "validation", data_dir=tmp_path)
    msg = str(err.value)
    assert "ILSVRC2012_img_train.tar" in msg and str(tmp_path / "downloads" / "manual") in msg


def test_fashion_bad_source_dir(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(data.DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist") as err:
        data.load_dataset("fashion_mnist", "train", data_dir=tmp_path / "d", source_dir=missing)
    assert str(missing) in str(err.value)
    # the env var is the default source dir
    monkeypatch.setenv(fm.ENV_VAR, str(missing))
    assert data.resolve_fashion_mnist_source_dir() == missing
    assert data.resolve_fashion_mnist_source_dir(tmp_path) == tmp_path  # argument wins
    with pytest.raises(data.DatasetNotFoundError, match=str(missing)):
        data.load_dataset("fashion_mnist", "test", data_dir=tmp_path / "d")
    monkeypatch.delenv(fm.ENV_VAR)
    assert data.resolve_fashion_mnist_source_dir() == Path(fm.DEBIAN_DIR)


def test_fashion_source_dir_missing_one_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in SOURCE_DIR.iterdir():
        if not f.name.startswith("t10k-labels"):
            (src / f.name).symlink_to(f)
    with pytest.raises(data.DatasetNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_dataset("fashion_mnist", "train", data_dir=tmp_path / "d", source_dir=src)


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, compresslevel=1)


def _corrupt_truncated_gzip(path):
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _corrupt_garbage_gzip(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(blob))


def _corrupt_magic(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(_gz(struct.pack(">i", 2050) + raw[4:]))


def _corrupt_short_payload(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(_gz(raw[:-100]))


def _corrupt_count(path):
    raw = gzip.decompress(path.read_bytes())
    (count,) = struct.unpack(">i", raw[4:8])
    path.write_bytes(_gz(raw[:4] + struct.pack(">i", count - 1) + raw[8:-1]))


def _corrupt_label_value(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[20] = 42
    path.write_bytes(_gz(bytes(raw)))


@pytest.mark.parametrize(
    "stem, corrupt, match",
    [
        ("t10k-labels-idx1-ubyte", _corrupt_truncated_gzip, "truncated or corrupt"),
        ("t10k-images-idx3-ubyte", _corrupt_garbage_gzip, "truncated or corrupt"),
        ("train-images-idx3-ubyte", _corrupt_magic, "bad IDX magic number 2050 .expected 2051"),
        ("train-labels-idx1-ubyte", _corrupt_magic, "bad IDX magic number 2050 .expected 2049"),
        ("t10k-images-idx3-ubyte", _corrupt_short_payload, "payload has"),
        ("t10k-labels-idx1-ubyte", _corrupt_count, "announces 9999 items, expected 10000"),
        ("t10k-labels-idx1-ubyte", _corrupt_label_value, "label 42 out of range"),
    ],
)
def test_corrupt_idx_file(tmp_path, stem, corrupt, match):
    src = tmp_path / "src"
    src.mkdir()
    for f in SOURCE_DIR.iterdir():
        if f.name.startswith(stem):
            shutil.copyfile(f, src / f.name)
        else:
            (src / f.name).symlink_to(f)
    bad = src / f"{stem}.gz"
    corrupt(bad)
    with pytest.raises(fm.IdxFormatError, match=match) as err:
        data.load_dataset("fashion_mnist", "test", data_dir=tmp_path / "d", source_dir=src)
    assert str(bad) in str(err.value)
    assert not ZooFashionMnist(data_dir=str(tmp_path / "d")).is_prepared()


def test_read_idx_uncompressed_and_missing(tmp_path):
    raw = gzip.decompress((SOURCE_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw)
    labels = fm.read_idx(tmp_path / "t10k-labels-idx1-ubyte", expected_magic=2049,
                         expected_count=10_000)
    np.testing.assert_array_equal(labels[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    assert fm.find_source_file(tmp_path, "t10k-labels-idx1-ubyte") == tmp_path / "t10k-labels-idx1-ubyte"
    with pytest.raises(FileNotFoundError, match="nothing.gz"):
        fm.read_idx(tmp_path / "nothing.gz", expected_magic=2049)
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(fm.IdxFormatError, match="too short"):
        fm.read_idx(tmp_path / "tiny", expected_magic=2049)
