"""Quantization-aware training of the float parts with ``tfmot.quantization.keras``.

The model is taken to its inference form (binary convs are plain Larq ``QuantConv2D``
with ±1 kernels, scales folded into BN), then the layers to compute in int8 are annotated
for TF-MOT's default 8-bit scheme one by one (``quantize_model`` rejects a model holding
Larq layers) and ``quantize_apply`` runs inside a :func:`quantize_scope` that knows the
Larq and zoo classes. The binary convs are left to Larq: they read the sign of their input
whatever its precision, and LCE converts them to ``LceBconv2d``. By default (``scope``)
the layers with float weights — stem, float shortcuts, head — compute in int8 with their
inputs and folded BN, and the binary body stays float; every layer of a full-precision
model does. Every range is calibrated on a few batches before fine-tuning (:func:`calibrate`).

Annotation, per layer:

* a float conv or dense layer and the layers TF-MOT's registry knows (ReLU, Add, pooling,
  softmax, ...): TF-MOT's own configuration; a BN right after a float conv is folded into
  it by TF-MOT's transforms;
* any other BN (after a binary conv), and the zoo's own layers that compute (the input
  normalisation, ``HardTanh``, RBNN's centring): their output is quantized (LCE fuses such
  a BN into the binary conv before it, which then writes int8);
* layers that only move values (the option-A shortcut's slicing and padding): nothing;
* anything else TF-MOT cannot handle (PReLU, a custom layer): an error naming the layer,
  or, with ``unsupported="float"``, the layer stays float with a warning.
"""

from __future__ import annotations

import logging

import larq as lq
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

from zoo.compress.common import check_plain_model, fine_tunable_inference, image_batches, is_binary_conv
from zoo.layers import CenterActivations, HardTanh, SubsampleChannelPad

qkeras = tfmot.quantization.keras
log = logging.getLogger(__name__)

UNSUPPORTED_CHOICES = ("error", "float")
SCOPES = ("auto", "float_layers", "all")


class OutputQuantizeConfig(qkeras.QuantizeConfig):
    """Quantizes a layer's output to 8 bits (moving-average range, asymmetric), as TF-MOT
    does for its activation layers; the layer's own weights, if any, stay float."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [qkeras.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                         narrow_range=False)]

    def get_config(self):
        return {}


class PassThroughQuantizeConfig(OutputQuantizeConfig):
    """No quantizer: for layers that only move values (int8 in, the same int8 out)."""

    def get_output_quantizers(self, layer):
        return []


#: the zoo's layers (and Keras' Normalization, which TF-MOT does not know) and their configs
_OWN_CONFIGS = {
    keras.layers.Normalization: OutputQuantizeConfig,
    HardTanh: OutputQuantizeConfig,
    CenterActivations: OutputQuantizeConfig,
    SubsampleChannelPad: PassThroughQuantizeConfig,
}
#: float layers TF-MOT's transforms fold a following BatchNormalization into
_FOLDS_BN = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def quantize_scope():
    """TF-MOT's ``quantize_scope`` with the Larq and zoo classes a zoo QAT model holds:
    needed to clone, load or export one."""
    return qkeras.quantize_scope({
        "OutputQuantizeConfig": OutputQuantizeConfig,
        "PassThroughQuantizeConfig": PassThroughQuantizeConfig,
        "QuantConv2D": lq.layers.QuantConv2D,
        **{cls.__name__: cls for cls in _OWN_CONFIGS},
    })


def quantize(model: keras.Model, data, *, batches: int = 4, scope: str = "auto",
             unsupported: str = "error") -> keras.Model:
    """The model prepared for quantization-aware training of its float parts (int8).

    Args:
      model: a functional zoo model (training or inference form, pruning stripped).
      data: calibration images ``(N, H, W, C)`` or a ``tf.data.Dataset`` of ``(images,
        labels)`` batches (``batches`` of them are used), from the training set. Every
        int8 range is set from them before fine-tuning (:func:`calibrate`): TF-MOT would
        start every range at [−6, 6] and move it by 0.1 % a step, clipping raw pixels at 6
        for thousands of steps. The BNs after binary convs get their real statistics from
        them too (``fine_tunable_inference``).
      scope: ``"float_layers"``: only the layers with float weights (convs, dense) compute
        in int8, with their inputs and their folded BN; the binary body between them stays
        float. ``"all"``: every layer but the binary convs computes in int8 (BN, adds and
        activations between binary convs too). ``"auto"`` (default): ``"float_layers"`` for
        a model with binary convs, ``"all"`` for a full-precision one. In an int8 binary
        body every rounding difference between TF-MOT's emulation and TFLite's integer
        kernels next to zero flips a sign, and the flips add up layer after layer:
        on a ``bnn_resnet20`` the ``.tflite`` then agreed with its Keras QAT model on 81 %
        of test images (97 % with ``"float_layers"``) at the same accuracy.
      unsupported: what to do with a layer TF-MOT cannot quantize: ``"error"`` (a
        ``ValueError`` naming it) or ``"float"`` (it stays float, with a warning; the
        converter then puts (de)quantize ops around it).

    Returns:
      A new model (``compile`` and ``fit`` it); its binary convs are the inference form's
      ±1 ``QuantConv2D`` with ``weight_clip``, fine-tuned with the straight-through
      estimator. Export it with :func:`zoo.compress.export` (or inside
      :func:`quantize_scope`).
    """
    if unsupported not in UNSUPPORTED_CHOICES:
        raise ValueError(f"unsupported must be one of {UNSUPPORTED_CHOICES}, got {unsupported!r}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    check_plain_model(model, "quantize")
    base = fine_tunable_inference(model, data, batches)
    if scope == "auto":
        scope = "float_layers" if any(is_binary_conv(layer) for layer in base.layers) else "all"
    registry = qkeras.default_8bit.Default8BitQuantizeRegistry()
    annotations, left_float = {}, []
    for layer in _int8_layers(base, scope):
        config = _annotation(base, layer, registry)
        if config is False:
            left_float.append(layer)
        else:
            annotations[layer.name] = config
    if left_float:
        described = ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in left_float)
        if unsupported == "error":
            raise ValueError(
                f"Quantization-aware training cannot quantize layer {described}: TF-MOT has no "
                "8-bit configuration for it. Pass unsupported='float' (--qat-unsupported float) to "
                "leave it float."
            )
        log.warning("QAT leaves these layers float (TF-MOT cannot quantize them): %s", described)

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if layer.name not in annotations:
            return clone
        return qkeras.quantize_annotate_layer(clone, annotations[layer.name])

    with quantize_scope():
        annotated = keras.models.clone_model(base, clone_function=annotate)
        annotated.set_weights(base.get_weights())
        quantized = qkeras.quantize_apply(annotated)
    for layer in quantized.layers:
        if isinstance(layer, QuantizeLayer):
            # Rebuilt from a config that records its build shape (tf_keras >= 2.13), TF-MOT's
            # QuantizeLayer creates its range variables twice and then rejects its own weights;
            # without the shape it builds once, when called (to_inference rebuilds from config).
            layer._build_input_shape = None
    calibrate(quantized, base, data, batches)
    return quantized


def calibrate(quantized: keras.Model, base: keras.Model, data, batches: int = 4) -> None:
    """Sets every range variable of a QAT model from the float model it was made from.

    Activation ranges (``output``, ``pre_activation``, ``quantize_layer``): min and max of
    the matching float tensor over the images, 0 included (TFLite needs it). Weight
    ranges (``kernel``): ±max|w|, per output channel or per tensor, as TF-MOT's
    ``LastValueQuantizer`` sets them at each training step.
    """
    keys: dict[tuple[str, str], int] = {}  # (kind, float layer name) -> probe output index
    targets = []
    for layer in quantized.layers:
        for variable in layer.weights:
            short = variable.name.split("/")[-1].split(":")[0]
            if not short.endswith("_min"):
                continue
            kind = short[: -len("_min")]
            maximum = next(v for v in layer.weights if v.name == variable.name.replace("_min:", "_max:"))
            if isinstance(layer, QuantizeLayer):
                key = ("output", tf.nest.flatten(layer._inbound_nodes[0].inbound_layers)[0].name)
            elif kind == "kernel":
                targets.append((variable, maximum, "kernel", base.get_layer(layer.layer.name).get_weights()[0]))
                continue
            elif kind == "pre_activation":
                key = ("pre_activation", layer.layer.name)
            else:
                key = ("output", layer.layer.name)
            keys.setdefault(key, len(keys))
            targets.append((variable, maximum, "tensor", key))
    outputs = [_pre_activation(base, name) if kind == "pre_activation" else base.get_layer(name).output
               for kind, name in keys]
    probe = keras.Model(base.inputs, outputs)
    low, high = np.zeros(len(keys)), np.zeros(len(keys))
    for images in image_batches(data, batches):
        values = probe(images, training=False)
        for i, value in enumerate(values if isinstance(values, (list, tuple)) else [values]):
            low[i], high[i] = min(low[i], float(tf.reduce_min(value))), max(high[i], float(tf.reduce_max(value)))
    ranges = {key: (low[i], high[i]) for key, i in keys.items()}
    for minimum, maximum, kind, source in targets:
        if kind == "kernel":
            axes = tuple(range(source.ndim - 1)) if minimum.shape.rank else None
            magnitude = np.max(np.abs(source), axis=axes)
            minimum.assign(-magnitude)
            maximum.assign(magnitude)
        else:
            lo, hi = ranges[source]
            minimum.assign(lo)
            maximum.assign(max(hi, lo + 1e-3))


def _pre_activation(base: keras.Model, name: str):
    """The output of layer ``name`` of ``base`` before its activation, as a graph tensor."""
    layer = base.get_layer(name)
    twin = layer.__class__.from_config({**layer.get_config(), "activation": "linear", "name": f"{name}_linear"})
    output = twin(layer.input)
    twin.set_weights(layer.get_weights())
    return output


def _int8_layers(model: keras.Model, scope: str) -> list[keras.layers.Layer]:
    """The layers to annotate, in model order."""
    candidates = [layer for layer in model.layers
                  if not isinstance(layer, keras.layers.InputLayer) and not is_binary_conv(layer)]
    if scope == "all":
        return candidates
    chosen = set()
    for layer in candidates:
        if type(layer) not in _FOLDS_BN:
            continue
        chosen.add(layer.name)
        for node in layer._inbound_nodes:  # its input, which int8 weights need quantized
            chosen.update(inbound.name for inbound in tf.nest.flatten(node.inbound_layers))
        readers = [node.outbound_layer for node in layer._outbound_nodes]
        if len(readers) == 1 and isinstance(readers[0], keras.layers.BatchNormalization):
            chosen.add(readers[0].name)  # folded into it, its output quantized
    return [layer for layer in candidates if layer.name in chosen]


def _annotation(model: keras.Model, layer: keras.layers.Layer, registry):
    """The layer's QuantizeConfig: None for TF-MOT's own, False if it has none."""
    if isinstance(layer, keras.layers.BatchNormalization):
        source = layer._inbound_nodes[0].inbound_layers
        folds = type(source) in _FOLDS_BN and source.get_config().get("activation") == "linear"
        return None if folds else OutputQuantizeConfig()
    if registry.supports(layer):
        return None
    config = _OWN_CONFIGS.get(type(layer))
    return config() if config else False
