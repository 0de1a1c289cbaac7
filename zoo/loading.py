"""``zoo.load``: a registered model, built and given its weights.

The weights file format is Keras' HDF5 weights layout (``model.save_weights("x.h5")``),
read here with h5py and matched to the model layer by layer, by name. The file is
untrusted: before any weight is read, it must hold all its data itself (no external
storage, links or virtual datasets) and every dataset's shape, dtype and chunking, read
from its metadata, must fit the model; after reading, every value must be finite and
every BatchNormalization variance non-negative. A file that fails any check leaves the
model as it was, and the error names the first layer that does not fit. Nothing is
ever unpickled.
"""

from __future__ import annotations

import logging
import math
import os

import h5py
import numpy as np
import tf_keras as keras

from zoo import registry, weights as weights_io

log = logging.getLogger("zoo")

#: layers of the classification head, replaced when ``classes`` differs from the weights'
HEAD_LAYERS = ("predictions",)
#: a weights file may declare at most this many bytes per byte of the model's weights
#: (room for float64 copies and a larger head), plus MAX_EXTRA_FILE_BYTES
MAX_FILE_BYTES_PER_MODEL_BYTE = 4
MAX_EXTRA_FILE_BYTES = 1 << 20


class WeightsMismatchError(ValueError):
    """A weights file whose layers or shapes do not fit the model."""


def load(
    name: str,
    weights: str | os.PathLike | None = "default",
    include_top: bool = True,
    input_shape=None,
    classes: int | None = None,
    **builder_kwargs,
) -> keras.Model:
    """Builds a registered model and loads its weights.

    Args:
      name: a registered model name (``zoo.list_models()``), or the path of a searched
        architecture (``zoo search``'s ``best.json``), which is registered first.
      weights: ``None`` (random initialisation), ``"default"`` (the model's first
        pretrained entry, or random initialisation with a notice when it has none), a
        pretrained tag such as ``"fashion_mnist"`` or ``"imagenet"``, or a path or
        ``file://`` / ``http(s)://`` URL of an HDF5 weights file (a URL may end in
        ``#sha256=<hex>`` to have the download verified).
      include_top: False gives the feature extractor (pretrained weights still load).
      input_shape: ``(height, width, channels)``; defaults to the pretrained entry's,
        else the architecture's.
      classes: size of the classification head. A value different from the pretrained
        entry's gives a new, randomly initialised head on the pretrained body: the
        fine-tuning path.
      **builder_kwargs: passed to the architecture builder (``pooling``,
        ``classifier_activation``, ``input_mean``, ``input_std``, ...).

    Returns:
      A ``tf_keras.Model`` that takes raw pixels (0-255). One line on the ``zoo`` logger
      (INFO) says which weights it got: tag, dataset, input shape, classes;
      ``logging.getLogger("zoo").setLevel(logging.WARNING)`` silences it.
    """
    spec = registry.get_model_spec(name)
    entry, source = _resolve_weights(spec.name, weights)  # the registered name, also for a searched .json

    classes_in_file = entry.classes if entry is not None else classes
    classes = classes_in_file if classes is None else classes
    if entry is not None:
        builder_kwargs = {**entry.builder_kwargs, **builder_kwargs}
        if input_shape is None and builder_kwargs.get("input_tensor") is None:
            input_shape = entry.input_shape
        _check_shape_fits(spec.name, entry, input_shape, builder_kwargs.get("input_tensor"),
                          pretrained_head=include_top and classes == entry.classes)
    model = spec.build(
        include_top=include_top, input_shape=input_shape, classes=classes, **builder_kwargs
    )
    if source is None:
        return model

    path = weights_io.fetch(source, entry.sha256 if entry is not None else None)
    new_head = include_top and classes_in_file is not None and classes != classes_in_file
    try:
        load_weights(model, path, skip=HEAD_LAYERS if new_head else (), partial=not include_top)
    except weights_io.InvalidWeightsFile:
        weights_io.remove_if_cached(path)
        raise
    log.info("%s", _loaded_line(spec.name, entry, source, include_top, classes if new_head else None))
    return model


def _check_shape_fits(name, entry, input_shape, input_tensor, pretrained_head: bool) -> None:
    """Pretrained weights fix the channels, and with their own head the whole input shape
    (as keras.applications' ``include_top=True`` with ImageNet weights)."""
    shape = tuple(input_tensor.shape[1:]) if input_shape is None else tuple(input_shape)
    needed = tuple(entry.input_shape)
    if shape == needed or (not pretrained_head and shape[-1:] == needed[-1:]):
        return
    weights = f"{name}'s pretrained weights {entry.tag!r} ({entry.dataset}, {entry.classes} classes)"
    if pretrained_head:
        raise WeightsMismatchError(
            f"{weights} need input_shape={needed}, got {shape}: pass input_shape={needed}, "
            f"or include_top=False (or another classes=) for other {needed[-1]}-channel sizes, "
            "or weights=None for random initialisation."
        )
    raise WeightsMismatchError(
        f"{weights} need {needed[-1]}-channel input, got input_shape={shape}: pass an input_shape "
        f"ending in {needed[-1]} (trained at {needed}), or weights=None for random initialisation."
    )


def _loaded_line(name, entry, source, include_top: bool, new_head_classes: int | None) -> str:
    """The one line ``load`` logs: which weights the model got."""
    if entry is not None:
        top1 = entry.metrics.get("top1")
        line = (
            f"{name}: pretrained weights {entry.tag!r} (trained on {entry.dataset}, "
            f"input_shape={tuple(entry.input_shape)}, {entry.classes} classes"
            + (f", measured top-1 {top1} %" if top1 is not None else "") + ", sha256 verified)"
        )
    else:
        line = f"{name}: weights from {source}"
    if not include_top:
        return line + "; feature extractor (include_top=False)"
    if new_head_classes is not None:
        return line + f"; new randomly initialised {new_head_classes}-class head"
    return line


def _resolve_weights(name, weights):
    """(pretrained entry or None, weights source or None) for ``load``'s ``weights``."""
    if weights is None:
        return None, None
    weights = os.fspath(weights)
    if weights == "default":
        entries = registry.pretrained_entries(name)
        if not entries:
            log.warning("no pretrained weights for %s yet; using random initialisation.", name)
            return None, None
        return entries[0], entries[0].source
    if "://" in weights or os.path.sep in weights or weights.endswith((".h5", ".hdf5")):
        return None, weights
    entry = registry.pretrained_entry(name, weights)
    return entry, entry.source


def load_weights(model: keras.Model, path, *, skip=(), partial: bool = False) -> None:
    """Loads an HDF5 weights file into ``model``, by layer name, every check made first.

    ``skip`` names model layers to leave as initialised (a new head). With ``partial``
    the file may hold layers the model lacks (a full model's file into its feature
    extractor); every layer of the model that has weights must be in the file. Only
    the datasets assigned to the model are read, and only once their metadata fits.
    """
    try:
        with h5py.File(path, "r") as handle:
            problem = weights_io.self_containment_problem(handle)
            if problem is not None:
                raise weights_io.InvalidWeightsFile(f"Weights file {path} is refused: {problem}.")
            stored = _file_layers(handle, path)
            matched = _match_layers(model, stored, path, skip, partial)
            _check_declared_size(model, stored, path)
            values = [(layer, variable, np.asarray(dataset[()])) for layer, variable, dataset in matched]
    except OSError as err:
        raise weights_io.InvalidWeightsFile(f"Cannot read weights file {path}: {err}") from err

    for layer, variable, value in values:
        _check_values(layer, variable, value, path)
    keras.backend.batch_set_value([(variable, value) for _, variable, value in values])


def _file_layers(handle: h5py.File, path) -> dict[str, list[h5py.Dataset]]:
    """The file's datasets by layer name, from Keras' layout; no dataset is read."""
    group = handle["model_weights"] if "model_weights" in handle else handle
    if not isinstance(group, h5py.Group) or "layer_names" not in group.attrs:
        raise weights_io.InvalidWeightsFile(
            f"{path} is HDF5 but not a Keras weights file (no 'layer_names')."
        )
    layers = {}
    for layer_name in _names(group, "layer_names", path):
        layer_group = group.get(layer_name)
        if not isinstance(layer_group, h5py.Group):
            raise weights_io.InvalidWeightsFile(
                f"Malformed weights file {path}: 'layer_names' lists {layer_name!r} "
                "but the file has no group of that name."
            )
        if "weight_names" not in layer_group.attrs:
            raise weights_io.InvalidWeightsFile(
                f"Malformed weights file {path}: layer {layer_name!r} has no 'weight_names' attribute."
            )
        datasets = []
        for weight_name in _names(layer_group, "weight_names", path):
            dataset = layer_group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise weights_io.InvalidWeightsFile(
                    f"Malformed weights file {path}: layer {layer_name!r} lists weight "
                    f"{weight_name!r} but has no dataset of that name."
                )
            datasets.append(dataset)
        layers[layer_name] = datasets
    return layers


def _names(group: h5py.Group, attribute: str, path) -> list[str]:
    """The list of names in ``group.attrs[attribute]``, as Keras writes it (str or bytes)."""
    value = np.asarray(group.attrs[attribute])
    if value.ndim != 1 or not all(isinstance(name, (str, bytes)) for name in value):
        raise weights_io.InvalidWeightsFile(
            f"Malformed weights file {path}: {attribute!r} of {group.name!r} is not a list of names."
        )
    try:
        return [name.decode() if isinstance(name, bytes) else str(name) for name in value]
    except UnicodeDecodeError as err:
        raise weights_io.InvalidWeightsFile(
            f"Malformed weights file {path}: {attribute!r} of {group.name!r} is not UTF-8 ({err})."
        ) from err


def _match_layers(model, stored, path, skip, partial):
    """(layer, variable, dataset) for every weight to load; shapes and dtypes checked."""
    matched = []
    model_layers = {layer.name for layer in model.layers}
    for layer in model.layers:
        if not layer.weights or layer.name in skip:
            continue
        if layer.name not in stored:
            raise WeightsMismatchError(
                f"Weights file {path} has no weights for layer {layer.name!r} "
                f"({type(layer).__name__}): is it for another architecture?"
            )
        datasets = stored[layer.name]
        if len(datasets) != len(layer.weights):
            raise WeightsMismatchError(
                f"Layer {layer.name!r}: the weights file has {len(datasets)} arrays, "
                f"the model needs {len(layer.weights)}."
            )
        for variable, dataset in zip(layer.weights, datasets):
            _check_metadata(layer, variable, dataset)
            matched.append((layer, variable, dataset))
    extra = [n for n, datasets in stored.items() if datasets and n not in model_layers and n not in skip]
    if extra and not partial:
        raise WeightsMismatchError(
            f"Weights file {path} has layers the model lacks, first {extra[0]!r}: "
            "is it for another architecture?"
        )
    return matched


def _check_metadata(layer, variable, dataset: h5py.Dataset) -> None:
    """Refuses a dataset whose shape, dtype or chunks do not fit ``variable``, unread."""
    if tuple(variable.shape) != dataset.shape:
        raise WeightsMismatchError(
            f"Layer {layer.name!r}: the weights file has shape {dataset.shape} for "
            f"{_short_name(variable)}, the model needs {tuple(variable.shape)} "
            "(different input_shape, classes or architecture?)."
        )
    wanted = np.dtype(variable.dtype.as_numpy_dtype)
    if _dtype_family(dataset.dtype) != _dtype_family(wanted):
        raise WeightsMismatchError(
            f"Layer {layer.name!r}: the weights file has dtype {dataset.dtype} for "
            f"{_short_name(variable)}, the model needs {wanted}."
        )
    if dataset.chunks is not None and any(c > n for c, n in zip(dataset.chunks, dataset.shape)):
        # reading any of it would decompress a whole chunk, however small the dataset
        raise weights_io.InvalidWeightsFile(
            f"Layer {layer.name!r}: the weights file stores {_short_name(variable)} of shape "
            f"{dataset.shape} in chunks of {dataset.chunks}, larger than the array."
        )


def _dtype_family(dtype: np.dtype) -> str | None:
    """'float', 'int' or 'bool' for the plain numeric dtypes a weight may have, else None."""
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return "float"
    if dtype.kind in "iu" and dtype.itemsize <= 8:
        return "int"
    return "bool" if dtype.kind == "b" else None


def _check_declared_size(model, stored, path) -> None:
    """Refuses a file whose datasets declare far more data than the model holds."""
    model_bytes = sum(math.prod(v.shape) * v.dtype.size for v in model.weights)
    declared = sum(math.prod(d.shape) * d.dtype.itemsize for layer in stored.values() for d in layer)
    limit = MAX_FILE_BYTES_PER_MODEL_BYTE * model_bytes + MAX_EXTRA_FILE_BYTES
    if declared > limit:
        raise WeightsMismatchError(
            f"Weights file {path} declares {declared:,} bytes of weights, more than the "
            f"{limit:,} allowed for a model of {model_bytes:,} bytes: is it for another architecture?"
        )


def _check_values(layer, variable, value: np.ndarray, path) -> None:
    """Refuses non-finite weights and negative BatchNormalization variances."""
    if value.dtype.kind == "f":
        bad = np.count_nonzero(~np.isfinite(value))
        if bad:
            raise weights_io.InvalidWeightsFile(
                f"Weights file {path}: layer {layer.name!r} {_short_name(variable)} holds "
                f"{bad} non-finite value(s) (NaN or infinity)."
            )
    if _short_name(variable) == "moving_variance" and np.any(value < 0):
        raise weights_io.InvalidWeightsFile(
            f"Weights file {path}: layer {layer.name!r} moving_variance holds "
            f"{np.count_nonzero(value < 0)} negative value(s); a variance cannot be negative."
        )


def _short_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]
