"""``zoo.load``: a registered model, built and given its weights.

The weights file format is Keras' HDF5 weights layout (``model.save_weights("x.h5")``),
read here with h5py and matched to the model layer by layer, by name, with every shape
checked before anything is assigned: a file that does not fit leaves the model as it
was and the error names the first layer that does not fit. Nothing is ever unpickled.
"""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import tf_keras as keras

from zoo import registry, weights as weights_io

log = logging.getLogger("zoo")

#: layers of the classification head, replaced when ``classes`` differs from the weights'
HEAD_LAYERS = ("predictions",)


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
      A ``tf_keras.Model`` that takes raw pixels (0-255).
    """
    spec = registry.get_model_spec(name)
    entry, source = _resolve_weights(spec.name, weights)  # the registered name, also for a searched .json

    if entry is not None:
        builder_kwargs = {**entry.builder_kwargs, **builder_kwargs}
        input_shape = entry.input_shape if input_shape is None else input_shape
    classes_in_file = entry.classes if entry is not None else classes
    classes = classes_in_file if classes is None else classes
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
    return model


def _resolve_weights(name, weights):
    """(pretrained entry or None, weights source or None) for ``load``'s ``weights``."""
    if weights is None:
        return None, None
    weights = os.fspath(weights)
    if weights == "default":
        entries = registry.pretrained_entries(name)
        if not entries:
            log.warning("zoo: no pretrained weights for %s yet; using random initialisation.", name)
            return None, None
        return entries[0], entries[0].source
    if "://" in weights or os.path.sep in weights or weights.endswith((".h5", ".hdf5")):
        return None, weights
    entry = registry.pretrained_entry(name, weights)
    return entry, entry.source


def _file_layers(handle: h5py.File):
    group = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" not in group.attrs:
        raise weights_io.InvalidWeightsFile(
            f"{handle.filename} is HDF5 but not a Keras weights file (no 'layer_names')."
        )
    layers = {}
    for raw in group.attrs["layer_names"]:
        layer_name = raw.decode() if isinstance(raw, bytes) else str(raw)
        layer_group = group[layer_name]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in layer_group.attrs["weight_names"]]
        layers[layer_name] = [np.asarray(layer_group[n]) for n in names]
    return layers


def load_weights(model: keras.Model, path, *, skip=(), partial: bool = False) -> None:
    """Loads an HDF5 weights file into ``model``, by layer name, all shapes checked first.

    ``skip`` names model layers to leave as initialised (a new head). With ``partial``
    the file may hold layers the model lacks (a full model's file into its feature
    extractor); every layer of the model that has weights must be in the file.
    """
    try:
        with h5py.File(path, "r") as handle:
            stored = _file_layers(handle)
    except OSError as err:
        raise weights_io.InvalidWeightsFile(f"Cannot read weights file {path}: {err}") from err

    assignments = []
    model_layers = {layer.name for layer in model.layers}
    for layer in model.layers:
        if not layer.weights or layer.name in skip:
            continue
        if layer.name not in stored:
            raise WeightsMismatchError(
                f"Weights file {path} has no weights for layer {layer.name!r} "
                f"({type(layer).__name__}): is it for another architecture?"
            )
        values = stored[layer.name]
        if len(values) != len(layer.weights):
            raise WeightsMismatchError(
                f"Layer {layer.name!r}: the weights file has {len(values)} arrays, "
                f"the model needs {len(layer.weights)}."
            )
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise WeightsMismatchError(
                    f"Layer {layer.name!r}: the weights file has shape {value.shape} for "
                    f"{variable.name.split('/')[-1].split(':')[0]}, the model needs {tuple(variable.shape)} "
                    "(different input_shape, classes or architecture?)."
                )
            assignments.append((variable, value))
    extra = [n for n, values in stored.items() if values and n not in model_layers and n not in skip]
    if extra and not partial:
        raise WeightsMismatchError(
            f"Weights file {path} has layers the model lacks, first {extra[0]!r}: "
            "is it for another architecture?"
        )
    keras.backend.batch_set_value(assignments)
