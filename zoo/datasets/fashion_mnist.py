"""TFDS builder for Fashion-MNIST read from local IDX files (``zoo_fashion_mnist``).

TFDS's own ``fashion_mnist`` builder downloads from the internet and verifies
registered checksums, so it cannot use the copy Debian ships
(``apt-get install -y dataset-fashion-mnist`` installs the four gzipped IDX
files into ``/usr/share/datasets/fashion-mnist``).  This builder produces a
dataset with *exactly* the same features, splits and supervised keys as
``fashion_mnist``, reading the files from the TFDS manual directory
(``dl_manager.manual_dir``)::

    builder = ZooFashionMnist(data_dir=...)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=source_dir))

``zoo.data.load_dataset("fashion_mnist", ...)`` does this for you, with the
source directory resolved as ``source_dir`` argument > ``$ZOO_FASHION_MNIST_DIR``
> ``/usr/share/datasets/fashion-mnist`` (see :func:`default_source_dir`).
From the command line::

    tfds build --imports zoo.datasets zoo_fashion_mnist \\
        --manual_dir /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

__all__ = [
    "CLASS_NAMES",
    "DEBIAN_DIR",
    "ENV_VAR",
    "FILES",
    "IdxFormatError",
    "MANUAL_DOWNLOAD_INSTRUCTIONS",
    "ZooFashionMnist",
    "default_source_dir",
    "find_source_file",
    "missing_source_files",
    "read_idx",
]

#: Debian package ``dataset-fashion-mnist`` installs the files here.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable overriding the default source directory.
ENV_VAR = "ZOO_FASHION_MNIST_DIR"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_SHAPE = (28, 28, 1)

#: split -> (images file, labels file, number of examples), files without ".gz".
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Fashion-MNIST is read from local IDX files (no download). Either
  * install the Debian/Ubuntu package:  apt-get install -y dataset-fashion-mnist
    (installs them into {DEBIAN_DIR}), or
  * copy the four files
      {", ".join(f"{f}.gz" for split in FILES.values() for f in split[:2])}
    (from https://github.com/zalandoresearch/fashion-mnist, gzipped or not)
    into a directory and pass it as the TFDS manual dir
    (`tfds build --imports zoo.datasets zoo_fashion_mnist --manual_dir DIR`,
    `zoo.data.load_dataset(..., source_dir=DIR)` or ${ENV_VAR}=DIR).
"""

_CITATION = """\
@article{DBLP:journals/corr/abs-1708-07747,
  author    = {Han Xiao and Kashif Rasul and Roland Vollgraf},
  title     = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  journal   = {CoRR},
  volume    = {abs/1708.07747},
  year      = {2017},
  url       = {http://arxiv.org/abs/1708.07747},
}
"""


class IdxFormatError(ValueError):
    """An IDX file is truncated, corrupt or not the expected Fashion-MNIST file."""


def default_source_dir() -> Path:
    """``$ZOO_FASHION_MNIST_DIR`` if set (and non-empty), else the Debian dir."""
    return Path(os.environ.get(ENV_VAR) or DEBIAN_DIR)


def find_source_file(directory: os.PathLike | str, stem: str) -> Path | None:
    """Path of ``stem.gz`` (preferred) or uncompressed ``stem`` in directory."""
    directory = Path(directory)
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def missing_source_files(directory: os.PathLike | str) -> list[str]:
    """Names (``*.gz``) of the required files not present in directory."""
    return [
        f"{stem}.gz"
        for images, labels, _ in FILES.values()
        for stem in (images, labels)
        if find_source_file(directory, stem) is None
    ]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise IdxFormatError(
            f"{path}: cannot read IDX file ({type(e).__name__}: {e}); "
            "the file is truncated or corrupt. Reinstall it "
            "(apt-get install --reinstall dataset-fashion-mnist) or copy it again."
        ) from e


def read_idx(
    path: os.PathLike | str,
    *,
    expected_magic: int,
    expected_count: int | None = None,
    expected_item_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Parses an unsigned-byte IDX file (optionally gzipped) into a uint8 array.

    Checks the magic number, the header dimensions against the expected
    count/item shape, and that the payload has exactly the announced size.
    Any problem raises :class:`IdxFormatError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: IDX file not found.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: file too short ({len(data)} bytes) for an IDX header")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != expected_magic:
        raise IdxFormatError(
            f"{path}: bad IDX magic number {magic} (expected {expected_magic}); "
            "not the expected Fashion-MNIST "
            f"{'images' if expected_magic == _IMAGES_MAGIC else 'labels'} file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    if expected_count is not None and dims[0] != expected_count:
        raise IdxFormatError(
            f"{path}: header announces {dims[0]} items, expected {expected_count}"
        )
    if expected_item_shape is not None and tuple(dims[1:]) != tuple(expected_item_shape):
        raise IdxFormatError(
            f"{path}: item shape {tuple(dims[1:])}, expected {tuple(expected_item_shape)}"
        )
    size = int(np.prod(dims))
    payload = len(data) - header
    if payload != size:
        raise IdxFormatError(
            f"{path}: payload has {payload} bytes but the header {dims} "
            f"announces {size}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_split(directory: os.PathLike | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates one split: images (N, 28, 28, 1) and labels (N,)."""
    images_stem, labels_stem, count = FILES[split]
    paths = []
    for stem in (images_stem, labels_stem):
        path = find_source_file(directory, stem)
        if path is None:
            raise FileNotFoundError(
                f"{Path(directory) / (stem + '.gz')}: Fashion-MNIST file not found "
                f"(split {split!r}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        paths.append(path)
    images = read_idx(
        paths[0],
        expected_magic=_IMAGES_MAGIC,
        expected_count=count,
        expected_item_shape=IMAGE_SHAPE[:2],
    )
    labels = read_idx(paths[1], expected_magic=_LABELS_MAGIC, expected_count=count)
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise IdxFormatError(
            f"{paths[1]}: label {int(labels.max())} out of range "
            f"[0, {len(CLASS_NAMES)}); the file is corrupt"
        )
    return images.reshape((count,) + IMAGE_SHAPE), labels.astype(np.int64)


class ZooFashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST from local IDX files; same features/splits as `fashion_mnist`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (local IDX files, e.g. Debian's)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # TFDS derives this (for checksums.tsv lookup) via a code path that needs
    # the optional `importlib_resources` package for non-TFDS packages; this
    # module's real path is what it would compute anyway.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "Fashion-MNIST is a dataset of Zalando's article images "
                "consisting of a training set of 60,000 examples and a test set "
                "of 10,000 examples. Each example is a 28x28 grayscale image, "
                "associated with a label from 10 classes. Built from local IDX "
                "files (e.g. Debian's dataset-fashion-mnist package); features "
                "are identical to TFDS's `fashion_mnist`."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            source = dl_manager.manual_dir
        except AssertionError as e:  # TFDS: "does not exist or is empty"
            raise FileNotFoundError(
                f"Fashion-MNIST source directory missing or empty: {e}"
            ) from e
        # Parse and validate everything before anything is written.
        data = {split: load_split(source, split) for split in FILES}
        return {
            split: self._generate_examples(images, labels)
            for split, (images, labels) in data.items()
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        # PNG-encode in parallel with tf.data (the same `tf.image.encode_png`
        # TFDS's Image feature would apply per example, ~10x faster) and hand
        # the Image feature the encoded bytes.  Keys are indices: the files
        # are always read in the same order.
        encoded = (
            tf.data.Dataset.from_tensor_slices(images)
            .map(tf.image.encode_png, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(1024)
            .as_numpy_iterator()
        )
        index = 0
        for batch in encoded:
            for png in batch:
                yield index, {"image": png, "label": int(labels[index])}
                index += 1
        if index != len(labels):  # pragma: no cover - internal invariant
            raise RuntimeError(f"encoded {index} images for {len(labels)} labels")
