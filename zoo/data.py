"""Input pipelines: TFDS datasets -> batched ``(image, label)`` ``tf.data`` pipelines.

Images are float32 **raw pixels in [0, 255]**, shaped ``(B, H, W, C)``; no
normalisation happens here (every model normalises in its own first layer).
Labels are int64 class indices.

Supported datasets and their standard preprocessing (``training=True`` /
evaluation):

=============  ===============================================  =======================
dataset        training augmentation                            evaluation
=============  ===============================================  =======================
cifar10/100    zero-pad 4, random 32x32 crop, horizontal flip    identity
mnist          zero-pad 2, random 28x28 crop                     identity
fashion_mnist  zero-pad 2, random 28x28 crop, horizontal flip    identity
imagenet2012   random resized crop (area 8-100 %, aspect         resize shorter side to
               3/4-4/3) to ``image_size`` (224), horiz. flip     256/224*size, center crop
=============  ===============================================  =======================

Padding is **zero** padding (as torchvision's ``RandomCrop(32, padding=4)``
used by the RBNN/IR-Net/ReActNet CIFAR recipes): raw pixels, so zero is black.

Randomness: shuffling and augmentation are reproducible when ``seed`` is
given (augmentation uses stateless ops seeded from
``tf.data.Dataset.random(seed)``); a new epoch re-shuffles and re-draws the
augmentations in both cases.

``fashion_mnist`` is read from TFDS's own ``fashion_mnist`` when it is already
prepared in ``data_dir``; otherwise the ``zoo_fashion_mnist`` builder
(:mod:`zoo.datasets.fashion_mnist`) is built once from the local IDX files
(``source_dir`` > ``$ZOO_FASHION_MNIST_DIR`` > ``/usr/share/datasets/fashion-mnist``,
i.e. ``apt-get install -y dataset-fashion-mnist``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from zoo._env import root_logging_untouched_by
from zoo.datasets import fashion_mnist as _fmnist

__all__ = [
    "DatasetNotFoundError",
    "SUPPORTED_DATASETS",
    "dataset_info",
    "get_builder",
    "load_dataset",
    "prepare_fashion_mnist",
    "resolve_fashion_mnist_source_dir",
]

AUTOTUNE = tf.data.AUTOTUNE


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared in the data dir (and may not be fetched)."""


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class _Spec:
    num_classes: int
    image_shape: tuple[int, int, int]  # native (H, W, C); imagenet: (None, None, 3)
    splits: dict  # split name -> number of examples
    eval_split: str
    class_names: tuple[str, ...] | None
    pad: int = 0  # pad + random crop (small datasets)
    flip: bool = False
    imagenet: bool = False


_CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(10, (32, 32, 3), {"train": 50_000, "test": 10_000}, "test",
                     _CIFAR10_NAMES, pad=4, flip=True),
    "cifar100": _Spec(100, (32, 32, 3), {"train": 50_000, "test": 10_000}, "test",
                      None, pad=4, flip=True),
    "imagenet2012": _Spec(1000, (None, None, 3),
                          {"train": 1_281_167, "validation": 50_000}, "validation",
                          None, flip=True, imagenet=True),
    "mnist": _Spec(10, (28, 28, 1), {"train": 60_000, "test": 10_000}, "test",
                   tuple(str(i) for i in range(10)), pad=2, flip=False),
    "fashion_mnist": _Spec(10, (28, 28, 1), {"train": 60_000, "test": 10_000}, "test",
                           _fmnist.CLASS_NAMES, pad=2, flip=True),
}  # fmt: skip

SUPPORTED_DATASETS: tuple[str, ...] = tuple(_SPECS)

IMAGENET_DEFAULT_SIZE = 224
_IMAGENET_RESIZE_RATIO = 256 / 224


def _spec(name: str) -> tuple[str, _Spec]:
    key = str(name).strip().lower().replace("-", "_")
    if key in _SPECS:
        return key, _SPECS[key]
    close = difflib.get_close_matches(key, SUPPORTED_DATASETS, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown dataset {name!r}.{hint} Supported datasets: {', '.join(SUPPORTED_DATASETS)}."
    )


@functools.lru_cache(maxsize=None)
def _imagenet_class_names() -> tuple[str, ...] | None:
    # WordNet synset ids shipped with TFDS (no download needed).
    try:
        return tuple(tfds.builder("imagenet2012").info.features["label"].names)
    except Exception:  # pragma: no cover - depends on the TFDS install
        return None


@root_logging_untouched_by
def dataset_info(name: str) -> dict:
    """Static facts about a supported dataset (no data access).

    Returns a dict with ``name``, ``num_classes``, ``image_shape`` (native
    ``(H, W, C)``; ``(None, None, 3)`` for imagenet2012), ``splits``
    (``{split: num_examples}``), ``eval_split`` and ``class_names`` (tuple, or
    None when unknown without the prepared data, i.e. cifar100).
    """
    key, spec = _spec(name)
    names = spec.class_names
    if key == "imagenet2012":
        names = _imagenet_class_names()
    return {
        "name": key,
        "num_classes": spec.num_classes,
        "image_shape": spec.image_shape,
        "splits": copy.deepcopy(spec.splits),
        "eval_split": spec.eval_split,
        "class_names": names,
    }


def _check_split(key: str, spec: _Spec, split: str) -> None:
    """Validates each base split name of e.g. ``"train[:90%]"`` / ``"train+test"``."""
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    for part in split.split("+"):
        base = re.sub(r"\[.*\]$", "", part.strip())
        if base not in spec.splits:
            raise ValueError(
                f"Unknown split {base!r} for dataset {key!r}; available splits: "
                f"{', '.join(spec.splits)} (TFDS slicing like 'train[:10%]' is supported)."
            )


# --------------------------------------------------------------------------- builders


def resolve_fashion_mnist_source_dir(source_dir: os.PathLike | str | None = None) -> Path:
    """``source_dir`` > ``$ZOO_FASHION_MNIST_DIR`` > ``/usr/share/datasets/fashion-mnist``."""
    return Path(source_dir) if source_dir is not None else _fmnist.default_source_dir()


@root_logging_untouched_by
def prepare_fashion_mnist(
    data_dir: os.PathLike | str | None = None,
    source_dir: os.PathLike | str | None = None,
) -> tfds.core.DatasetBuilder:
    """The ``zoo_fashion_mnist`` builder, built from local IDX files if needed.

    Idempotent: once prepared in ``data_dir`` the source files are not read.
    Raises :class:`DatasetNotFoundError` when it must be built and the source
    directory lacks the files; corrupt files raise
    :class:`zoo.datasets.fashion_mnist.IdxFormatError` naming the file.
    """
    builder = _fmnist.ZooFashionMnist(data_dir=_str_or_none(data_dir))
    if builder.is_prepared():
        return builder
    source = resolve_fashion_mnist_source_dir(source_dir)
    missing = _fmnist.missing_source_files(source) if source.is_dir() else None
    if missing is None or missing:
        what = (
            "does not exist"
            if missing is None
            else f"lacks {', '.join(missing)}"
        )
        raise DatasetNotFoundError(
            f"Dataset 'fashion_mnist' is not prepared in {builder.data_dir_root} "
            f"and the Fashion-MNIST source directory {source} {what} "
            f"(source_dir argument > ${_fmnist.ENV_VAR} > {_fmnist.DEBIAN_DIR}).\n"
            f"{_fmnist.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(source))
    )
    return builder


def _str_or_none(path) -> str | None:
    return None if path is None else os.fspath(path)


def _not_found(key: str, data_dir_root) -> DatasetNotFoundError:
    how = (
        f"  * with network access: load_dataset({key!r}, ..., download=True), or\n"
        f"    `tfds build {key} --data_dir {data_dir_root}`"
    )
    if key == "imagenet2012":
        how = (
            "  * ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar "
            "and ILSVRC2012_img_val.tar from https://image-net.org and put them into "
            f"{Path(os.fspath(data_dir_root)) / 'downloads' / 'manual'}, then run\n"
            f"    `tfds build imagenet2012 --data_dir {data_dir_root}` "
            "(or load_dataset('imagenet2012', ..., download=True))"
        )
    return DatasetNotFoundError(
        f"Dataset {key!r} is not prepared in data_dir {data_dir_root} "
        "(data_dir argument > $TFDS_DATA_DIR > ~/tensorflow_datasets). To get it:\n"
        f"{how}\n  * or pass data_dir= pointing to an existing TFDS data directory."
    )


@root_logging_untouched_by
def get_builder(
    name: str,
    *,
    data_dir: os.PathLike | str | None = None,
    download: bool = False,
    source_dir: os.PathLike | str | None = None,
) -> tfds.core.DatasetBuilder:
    """The TFDS builder behind ``name`` (see :func:`load_dataset` for resolution)."""
    key, _ = _spec(name)
    data_dir = _str_or_none(data_dir)
    if key == "fashion_mnist":
        # Only ask TFDS about its own fashion_mnist when it has a folder (it warns otherwise).
        root = Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
        if (root / "fashion_mnist").is_dir():
            tfds_builder = tfds.builder("fashion_mnist", data_dir=data_dir)
            if tfds_builder.is_prepared():
                return tfds_builder
        return prepare_fashion_mnist(data_dir, source_dir)
    builder = tfds.builder(key, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    return builder


def _read(builder, key: str, split: str, *, shuffle_files: bool, seed, decoders):
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders=decoders,
            read_config=read_config,
        )
    except AssertionError as e:  # TFDS: "Dataset ...: could not find data in ..."
        if builder.is_prepared():
            raise
        raise _not_found(key, builder.data_dir_root) from e


# --------------------------------------------------------------------------- preprocessing


def _as_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(s) for s in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return int(h), int(w)


def _pad_crop_flip(image, seed, *, pad: int, flip: bool):
    """Zero-pad ``pad`` pixels, random crop back to the input size, maybe flip."""
    shape = image.shape  # static (H, W, C) for the small datasets
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if pad:
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, shape, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.cast(image, tf.float32)


def _imagenet_train(encoded, seed, *, size: tuple[int, int]):
    """Random resized crop (Inception style) + flip, decoding only the crop."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=0.0,  # let area_range alone bound the crop area
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )  # falls back to the whole image when no crop is found
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(crop_size)
    window = tf.stack([offset_y, offset_x, height, width])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, size, method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _imagenet_eval(encoded, *, size: tuple[int, int]):
    """Resize the shorter side to 256/224 * size, then center crop ``size``."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    h, w = size
    resize_min = tf.cast(round(_IMAGENET_RESIZE_RATIO * min(h, w)), tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_min / tf.reduce_min(shape)
    new_h = tf.maximum(tf.cast(tf.round(shape[0] * scale), tf.int32), h)
    new_w = tf.maximum(tf.cast(tf.round(shape[1] * scale), tf.int32), w)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear")
    top, left = (new_h - h) // 2, (new_w - w) // 2
    return tf.image.crop_to_bounding_box(image, top, left, h, w)


def _make_preprocess(spec: _Spec, *, training: bool, image_size, channels):
    """``fn(example, seed) -> (float32 image (H, W, C), int64 label)``."""
    size = _as_hw(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if spec.imagenet:
        size = size or (IMAGENET_DEFAULT_SIZE, IMAGENET_DEFAULT_SIZE)

    def preprocess(example, seed):
        image, label = example["image"], example["label"]
        if spec.imagenet:
            if training:
                image = _imagenet_train(image, seed, size=size)
            else:
                image = _imagenet_eval(image, size=size)
            native_c = 3
        else:
            if training:
                image = _pad_crop_flip(image, seed, pad=spec.pad, flip=spec.flip)
            else:
                image = tf.cast(image, tf.float32)
            native_c = spec.image_shape[2]
            if size is not None and size != tuple(spec.image_shape[:2]):
                image = tf.image.resize(image, size, method="bilinear")
        if channels == 3 and native_c == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels == 1 and native_c == 3:
            image = tf.image.rgb_to_grayscale(image)
        out_hw = size or tuple(spec.image_shape[:2])
        image = tf.ensure_shape(image, (*out_hw, channels or native_c))
        return image, tf.cast(label, tf.int64)

    return preprocess


# --------------------------------------------------------------------------- pipeline


def _batched_pipeline(
    ds: tf.data.Dataset,
    preprocess: Callable,
    *,
    training: bool,
    batch_size: int,
    shuffle_buffer: int | None,
    seed: int | None,
    take: int | None,
    drop_remainder: bool,
) -> tf.data.Dataset:
    """The one shared tail: take -> shuffle -> (augment|transform) -> batch -> prefetch."""
    if take is not None:
        ds = ds.take(int(take))
    if training:
        if shuffle_buffer:
            ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        # One [2]-int64 seed per example for the stateless augmentation ops.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            preprocess, num_parallel_calls=AUTOTUNE, deterministic=True
        )
    else:
        ds = ds.map(
            lambda example: preprocess(example, None),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(AUTOTUNE)


@root_logging_untouched_by
def load_dataset(
    name: str,
    split: str,
    *,
    batch_size: int = 128,
    training: bool | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    data_dir: os.PathLike | str | None = None,
    shuffle_buffer: int | None = 10_000,
    seed: int | None = None,
    take: int | None = None,
    drop_remainder: bool | None = None,
    download: bool = False,
    source_dir: os.PathLike | str | None = None,
) -> tf.data.Dataset:
    """Batched ``(image, label)`` pipeline for a supported dataset.

    Args:
      name: one of :data:`SUPPORTED_DATASETS` (``ValueError`` with close
        matches otherwise).
      split: TFDS split, slicing allowed (``"train[:90%]"``); the base names
        must be the dataset's (``train``/``test``, imagenet2012
        ``train``/``validation``).
      batch_size: batch size.
      training: shuffle + augment (default: ``split.startswith("train")``);
        otherwise deterministic order and preprocessing.
      image_size: int or ``(h, w)``. imagenet2012: the crop size (default
        224). Others: bilinear resize after the dataset's own preprocessing.
      channels: ``3`` repeats a greyscale channel, ``1`` converts RGB to
        greyscale; None keeps the native channels.
      data_dir: TFDS data dir (default: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      shuffle_buffer: example shuffle buffer when training; 0/None disables
        shuffling (of files and examples).
      seed: makes shuffling and augmentation reproducible.
      take: keep only the first N examples (read order; before shuffling).
      drop_remainder: drop the last partial batch (default: ``training``).
      download: let TFDS download & prepare a missing dataset (network;
        imagenet2012 needs the manual tars). Ignored for fashion_mnist,
        which is built from local files.
      source_dir: fashion_mnist only: directory with the IDX files
        (default ``$ZOO_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``).

    Returns:
      ``tf.data.Dataset`` of ``(float32 (B, H, W, C) raw pixels in [0, 255],
      int64 (B,) labels)``.

    Raises:
      ValueError: unknown dataset, split, image_size or channels.
      DatasetNotFoundError: the data is not prepared (and cannot be built).
    """
    key, spec = _spec(name)
    _check_split(key, spec, split)
    if training is None:
        training = split.startswith("train")
    if drop_remainder is None:
        drop_remainder = bool(training)
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if take is not None and int(take) < 0:
        raise ValueError(f"take must be >= 0, got {take!r}")
    preprocess = _make_preprocess(spec, training=training, image_size=image_size, channels=channels)

    builder = get_builder(key, data_dir=data_dir, download=download, source_dir=source_dir)
    # ImageNet: keep JPEG bytes so training decodes only the random crop.
    decoders = {"image": tfds.decode.SkipDecoding()} if spec.imagenet else None
    ds = _read(
        builder,
        key,
        split,
        shuffle_files=bool(training and shuffle_buffer),
        seed=seed,
        decoders=decoders,
    )
    return _batched_pipeline(
        ds,
        preprocess,
        training=bool(training),
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        take=take,
        drop_remainder=bool(drop_remainder),
    )
