"""What the compression modules share: the inference form they work on, and checks."""

from __future__ import annotations

import copy
import dataclasses

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.export import binary_exports, quiet_logger, to_inference
from zoo.schemes.base import is_one_bit


def is_binary_conv(layer: keras.layers.Layer) -> bool:
    """A Larq conv whose input and kernel are both 1-bit (LCE runs it as ``LceBconv2d``)."""
    return isinstance(layer, lq.layers.QuantConv2D) and is_one_bit(layer.input_quantizer) and is_one_bit(
        layer.kernel_quantizer
    )


def fine_tunable_inference(model: keras.Model, data=None, batches: int = 4) -> keras.Model:
    """The model's inference form (``zoo.to_inference``), ready to fine-tune.

    Every binary conv is then a plain Larq ``QuantConv2D`` (``ste_sign`` on input and
    kernel, the ±1 kernel as latent weights) and the method's scales sit in BN. Its
    latent kernel gets Larq's ``weight_clip`` back, which ``to_inference`` drops: with the
    straight-through estimator a latent weight outside [−1, 1] gets no gradient again.

    ``to_inference`` folds a scale into BN as ``gamma = s·α``, ``moving_mean = 0``,
    ``moving_variance = 1 − ε``: right at inference, but in training mode BN normalises
    by the batch's statistics and the layer's output comes out ``std(conv)`` times too
    small. With ``data`` (images or a dataset of ``(images, labels)``), every BN after a
    binary conv is rewritten with the real statistics of its input over ``batches``
    batches and the same inference function (:func:`set_bn_affine`), so that
    fine-tuning starts from the function the model computes. Full-precision models are
    copied as they are.
    """
    check_plain_model(model, "compress")
    inference = to_inference(model) if binary_exports(model) else model
    config = copy.deepcopy(inference.get_config())
    for entry in config["layers"]:
        if is_binary_conv(inference.get_layer(entry["name"])):
            entry["config"]["kernel_constraint"] = keras.constraints.serialize(lq.constraints.WeightClip(1.0))
    result = rebuilt(inference, config)
    pairs = [(layer.name, bn) for layer in result.layers if is_binary_conv(layer)
             for bn in [batch_norm_after(layer)] if bn is not None]
    if data is not None and pairs:
        for (conv, bn), (mean, std) in zip(pairs, moments(result, [conv for conv, _ in pairs], data, batches)):
            set_bn_affine(bn, *bn_affine(bn), mean, np.square(std))
    return result


def batch_norm_after(layer: keras.layers.Layer):
    """The BatchNormalization that alone reads the layer's output, or None."""
    readers = [node.outbound_layer for node in layer._outbound_nodes]
    if len(readers) == 1 and isinstance(readers[0], keras.layers.BatchNormalization):
        return readers[0]
    return None


def bn_affine(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` of the BN at inference: ``y ↦ scale·y + shift``."""
    gamma, beta, mean, variance = bn.get_weights()
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def set_bn_affine(bn, scale, shift, mean, variance) -> None:
    """Makes the BN compute ``y ↦ scale·y + shift`` at inference, with ``mean`` and
    ``variance`` (those of its input) as moving statistics: training mode, normalising
    by a batch's statistics, then computes about the same."""
    bn.set_weights([
        (scale * np.sqrt(variance + bn.epsilon)).astype(np.float32),
        (scale * mean + shift).astype(np.float32),
        np.asarray(mean, np.float32),
        np.asarray(variance, np.float32),
    ])


def image_batches(data, batches: int):
    """The first ``batches`` batches of images of an array or a dataset of ``(images, labels)``."""
    if isinstance(data, tf.data.Dataset):
        for element in data.take(batches):
            yield element[0] if isinstance(element, (tuple, list)) else element
        return
    images = np.asarray(data, np.float32)
    for start in range(0, min(len(images), 64 * batches), 64):
        yield images[start:start + 64]


def moments(model: keras.Model, names: list[str], data, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and std of the named layers' outputs over the images."""
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    sums, squares, counts = [0.0] * len(names), [0.0] * len(names), [0] * len(names)
    for images in image_batches(data, batches):
        outputs = probe(images, training=False)
        for i, output in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            values = output.numpy().astype(np.float64).reshape(-1, output.shape[-1])
            sums[i] = sums[i] + values.sum(axis=0)
            squares[i] = squares[i] + np.square(values).sum(axis=0)
            counts[i] += len(values)
    if not all(counts):
        raise ValueError("No images in data.")
    result = []
    for total, square, count in zip(sums, squares, counts):
        mean = total / count
        result.append((mean, np.sqrt(np.maximum(square / count - mean**2, 0.0))))
    return result


def rebuilt(model: keras.Model, config: dict, weights: dict | None = None) -> keras.Model:
    """``config`` built as a model, each layer's weights from ``weights[name]`` or else
    from ``model``'s layer of the same name."""
    weights = weights or {}
    with quiet_logger("larq"):  # ±1 kernels without a constraint are meant for inference
        result = keras.Model.from_config(_without_build_configs(config))
    for layer in result.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return result


def _without_build_configs(config):
    """The config without the input shapes layers (and Larq's quantizers) recorded when
    they were built: a narrowed model builds its layers for new shapes."""
    if isinstance(config, dict):
        return {key: _without_build_configs(value) for key, value in config.items() if key != "build_config"}
    if isinstance(config, list):
        return [_without_build_configs(value) for value in config]
    return config


def check_plain_model(model, what: str) -> None:
    """A functional tf_keras model without TF-MOT wrappers, with unique layer names."""
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise TypeError(f"{what} needs a functional tf_keras Model (as zoo.load builds), got {type(model).__name__}.")
    wrapped = [layer.name for layer in model.layers if type(layer).__name__ in _TFMOT_WRAPPERS]
    if wrapped:
        raise ValueError(
            f"{what}: the model still holds TF-MOT wrappers ({', '.join(wrapped[:3])}, ...): strip "
            "pruning first (zoo.compress.strip), and quantize last."
        )
    names = [layer.name for layer in model.layers]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"{what}: layer names must be unique; duplicated: {', '.join(duplicated)}.")


_TFMOT_WRAPPERS = ("PruneLowMagnitude", "QuantizeWrapper", "QuantizeWrapperV2", "QuantizeAnnotate", "QuantizeLayer")


@dataclasses.dataclass
class Pruning:
    """A model to fine-tune with ``model.fit(..., callbacks=callbacks)``.

    ``layers`` are the layers pruned. For channel pruning ``kept`` maps each pruned conv
    to the filters it keeps and ``reference`` is the full-width inference model they were
    chosen in (:func:`zoo.compress.channels.masked` of it is what the narrow model computes).
    """

    model: keras.Model
    callbacks: list
    layers: tuple[str, ...]
    structure: str | None
    kept: dict | None = None
    reference: keras.Model | None = None


def check_sparsity(value, what: str = "target_sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1) (the fraction of weights removed), got {value!r}.")
    return float(value)
