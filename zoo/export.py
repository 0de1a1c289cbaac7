"""``to_inference``: the one export mechanism every method extends (docs/methods/conventions.md#inference-contract).

It rebuilds a trained functional model with every binary training layer replaced by a
plain Larq ``QuantConv2D`` (``ste_sign`` input and kernel quantizers, a ±1 kernel, no
constraint, no bias), the layer's float pre-ops inserted before it, and its per-channel
scale folded into the BatchNormalization that follows. Which layers are binary and what
they stand for is told by the export rules the schemes register
(:func:`zoo.schemes.export_rule`); nothing else of a method survives.

A negative scale is moved into the kernel (``α·conv(A, B) = |α|·conv(A, sign(α)·B)``),
so only ``|α| ≥ 0`` is folded. That keeps folding valid across a max-pool between the
conv and its BN (VGG-small), because max-pooling commutes with a non-negative
per-channel scale.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import NamedTuple

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.layers import HardTanh
from zoo.schemes.base import BinaryExport, find_export_rule, is_one_bit

#: layers a non-negative per-channel scale passes through unchanged on its way to BN
_SCALE_COMMUTING = (keras.layers.MaxPooling2D,)


def binary_exports(model: keras.Model) -> dict[str, BinaryExport]:
    """The binary layers of a model, by name, with what each exports to."""
    exports = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"to_inference: nested model {layer.name!r} is not supported; "
                "export a flat functional model."
            )
        rule = find_export_rule(layer)
        export = rule(layer) if rule else None
        if export is not None:
            exports[layer.name] = export
    return exports


def binary_weights(model: keras.Model) -> np.ndarray:
    """Every ±1 weight the model's binary convs run with (what :func:`to_inference` exports), flat."""
    return np.concatenate([export.kernel.ravel() for export in binary_exports(model).values()])


def to_inference(model: keras.Model) -> keras.Model:
    """The inference model of a trained model: ±1 ``QuantConv2D`` + folded BatchNorm.

    The result computes the same function as ``model(x, training=False)`` (to float
    tolerance) and converts with LCE so that every binary conv becomes an
    ``LceBconv2d``.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise TypeError("to_inference needs a functional tf_keras Model (as the zoo builds).")
    exports = binary_exports(model)
    folds = {}
    for name, export in exports.items():
        signs = np.where(export.scale >= 0, 1.0, -1.0).astype(np.float32)
        export_kernel = export.kernel * signs
        magnitude = np.abs(export.scale).astype(np.float32)
        bn_name = None
        if not np.allclose(magnitude, 1.0):
            bn_name = _following_batch_norm(model, model.get_layer(name))
            if bn_name in folds:
                raise ValueError(f"to_inference: BN {bn_name!r} follows two binary convs.")
            folds[bn_name] = magnitude
        exports[name] = (export, export_kernel)

    config = _rewrite_config(model.get_config(), exports, set(folds))
    with quiet_logger("larq"):
        inference = keras.Model.from_config(config)

    for layer in inference.layers:
        if layer.name in exports:
            layer.set_weights([exports[layer.name][1]])
        elif layer.name in folds:
            layer.set_weights(_folded_bn_weights(model.get_layer(layer.name), folds[layer.name]))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return inference


def _following_batch_norm(model: keras.Model, layer: keras.layers.Layer) -> str:
    """The BN a binary conv's output reaches through scale-commuting layers only."""
    current = layer
    while True:
        consumers = _consumers(model, current)
        if len(consumers) != 1:
            break
        current = consumers[0]
        if isinstance(current, keras.layers.BatchNormalization):
            if not _per_channel(current):
                break
            return current.name
        if not isinstance(current, _SCALE_COMMUTING):
            break
    raise ValueError(
        f"to_inference: the scale of binary layer {layer.name!r} cannot be folded: its "
        "output must reach a single BatchNormalization (through max-pooling at most), "
        f"but it reaches {current.name!r} ({type(current).__name__})."
    )


def _consumers(model: keras.Model, layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers of ``model`` that take ``layer``'s output."""
    members = {id(m) for m in model.layers}
    return [node.outbound_layer for node in layer._outbound_nodes if id(node.outbound_layer) in members]


def _per_channel(bn: keras.layers.BatchNormalization) -> bool:
    return bn.axis in ([-1], [3], -1, 3)


def _batch_norm_affine(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """``(s, b)`` of a BN at inference, ``y = s·x + b``: ``s = γ/√(var + ε)``, ``b = β − mean·s``."""
    weights = dict(zip((w.name.split("/")[-1].split(":")[0] for w in bn.weights), bn.get_weights()))
    channels = weights["moving_mean"].shape[0]
    gamma = weights.get("gamma", np.ones(channels, np.float32))
    beta = weights.get("beta", np.zeros(channels, np.float32))
    s = gamma / np.sqrt(weights["moving_variance"] + bn.epsilon)
    return s, beta - weights["moving_mean"] * s


def _folded_bn_weights(bn: keras.layers.BatchNormalization, alpha: np.ndarray):
    """BN after a per-channel scale α ≥ 0 as one BN (docs/methods/conventions.md#inference-contract)."""
    s, b = _batch_norm_affine(bn)
    return _affine_bn_weights(bn, s * alpha, b)


def _affine_bn_weights(bn: keras.layers.BatchNormalization, s: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Weights (γ, β, mean, variance) that make ``bn`` (with centre and scale) compute ``s·x + b``."""
    channels = s.shape[0]
    return [
        s.astype(np.float32),
        b.astype(np.float32),
        np.zeros(channels, np.float32),
        np.full(channels, 1.0 - bn.epsilon, np.float32),
    ]


@contextlib.contextmanager
def quiet_logger(logger_name: str):
    """Keeps a logger's lines below ERROR out of a block where they do not apply.

    Larq warns that a binary kernel without a constraint may starve in training: the
    exported layers are for inference only. ``zoo train`` loads its own files to check
    them: ``zoo.load``'s line about them is not news to its user.
    """
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def inference_conv(name: str, conv_kwargs: dict) -> lq.layers.QuantConv2D:
    kwargs = dict(conv_kwargs)
    if kwargs.get("groups", 1) == 1:
        kwargs.pop("groups", None)
    with quiet_logger("larq"):
        return lq.layers.QuantConv2D(
        **kwargs,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint=None,
        use_bias=False,
        name=name,
    )


def _rewrite_config(config: dict, exports: dict, folded_bns: set[str]) -> dict:
    config = copy.deepcopy(config)
    layers = []
    for entry in config["layers"]:
        name = entry["name"]
        if name in folded_bns:
            entry["config"].update(center=True, scale=True)
        if name not in exports:
            layers.append(entry)
            continue
        export, _ = exports[name]
        if len(entry["inbound_nodes"]) != 1:
            raise ValueError(f"to_inference: layer {name!r} is shared; that is not supported.")
        inbound = entry["inbound_nodes"]
        for pre in export.pre_layers:
            if pre.weights:
                raise ValueError(f"to_inference: pre-op {pre.name!r} must not hold weights.")
            layers.append({**keras.layers.serialize(pre), "name": pre.name, "inbound_nodes": inbound})
            inbound = [[[pre.name, 0, 0, {}]]]
        conv = inference_conv(name, export.conv_kwargs)
        layers.append({**keras.layers.serialize(conv), "name": name, "inbound_nodes": inbound})
    config["layers"] = layers
    return config


def convert_lce(model: keras.Model, **converter_kwargs) -> bytes:
    """The LCE flatbuffer of a model's inference form (binary convs as ``LceBconv2d``).

    Full-precision models pass through unchanged (LCE then emits plain TFLite ops).
    ``converter_kwargs`` are those of ``larq_compute_engine.convert_keras_model``.
    """
    inference = to_inference(model) if binary_exports(model) else model
    return lce_flatbuffer(inference, **converter_kwargs)


def lce_flatbuffer(
    model: keras.Model,
    *,
    inference_input_type=None,
    inference_output_type=None,
    target: str = "arm",
    experimental_default_int8_range=None,
) -> bytes:
    """``larq_compute_engine.convert_keras_model`` without its SavedModel round trip.

    LCE's converter first writes the model as a SavedModel and, when that fails, converts
    the frozen graph instead. This is that second route, taken directly: the same MLIR
    passes and operators, several seconds less a model (the tests convert every model).
    Like LCE, it quantizes to int8 only when the graph holds fake-quant ops (or a
    default int8 range is given). Unlike LCE, it guards a float graph against the rounding
    of LCE's bconv output transform (:func:`lce_rounding_guarded`).
    """
    from larq_compute_engine.mlir._tf_tfl_flatbuffer import convert_graphdef_to_tflite_flatbuffer
    from larq_compute_engine.mlir.python import converter as lce
    from larq_compute_engine.mlir.python.util import modify_integer_quantized_model_io_type
    from tensorflow.core.framework.types_pb2 import DataType
    from tensorflow.lite.python.util import get_tensor_name
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    inference_input_type = inference_input_type or tf.float32
    inference_output_type = inference_output_type or tf.float32
    lce._validate_options(
        inference_input_type=inference_input_type,
        inference_output_type=inference_output_type,
        target=target,
        experimental_default_int8_range=experimental_default_int8_range,
    )
    function = lce.concrete_function_from_keras_model(model)
    quantize = (
        lce._contains_training_quant_op(function.graph.as_graph_def()) or experimental_default_int8_range is not None
    )
    if not quantize:  # an int8 graph (QAT wrappers, range markers) is converted as it is
        guarded = lce_rounding_guarded(model)
        if guarded is not model:
            function = lce.concrete_function_from_keras_model(guarded)
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False)
    inputs = [tensor for tensor in frozen.inputs if tensor.dtype != tf.resource]
    graph_def = frozen.graph.as_graph_def()
    flatbuffer = convert_graphdef_to_tflite_flatbuffer(
        graph_def.SerializeToString(),
        [get_tensor_name(tensor) for tensor in inputs],
        [DataType.Name(tensor.dtype.as_datatype_enum) for tensor in inputs],
        [[1 if d is None else d for d in tensor.shape.as_list()] for tensor in inputs],  # batch 1
        [get_tensor_name(tensor) for tensor in frozen.outputs],
        quantize,
        target,
        experimental_default_int8_range,
    )
    if quantize and (inference_input_type, inference_output_type) != (tf.float32, tf.float32):
        flatbuffer = modify_integer_quantized_model_io_type(
            flatbuffer,
            inference_input_type=inference_input_type,
            inference_output_type=inference_output_type,
        )
    return flatbuffer


def lce_rounding_guarded(model: keras.Model) -> keras.Model:
    """The model with both guards against LCE's output-transform rounding applied
    (:func:`residual_batch_norms_unfused`, :func:`binarizing_thresholds_centred`): the
    same function, which LCE computes as Keras does. Other models are returned as they are."""
    return _rebuilt(model, {**_residual_batch_norm_replacements(model), **_threshold_replacements(model)})


def residual_batch_norms_unfused(model: keras.Model) -> keras.Model:
    """The model with each BN that takes a binary conv's output and feeds only residual
    adds computed as a 1×1 depthwise conv (``s·x + b``), which LCE does not fuse into the conv.

    LCE fuses a BN that follows a binary conv into the ``LceBconv2d`` output transform,
    which computes ``s·acc + b`` as ``(K − acc)·(−s) + (b + K·s)`` (``K = kh·kw·C_in``):
    two terms of size ``K·|s|`` that cancel, so its rounding error grows with ``K``, not
    with the result. A BN output that is binarized next takes values ``s·integer + b``,
    rarely that close to 0 (:func:`binarizing_thresholds_centred` keeps them away); one
    added to the residual stream carries the error on, and the stream's sums pass through
    0, where signs then flip against Keras (docs/methods/cbcn.md#export-and-lce-parity).
    Unfused, the bconv outputs its exact integer sums and the float op rounds as Keras' BN
    does. Other models are returned as they are.
    """
    return _rebuilt(model, _residual_batch_norm_replacements(model))


def binarizing_thresholds_centred(model: keras.Model) -> keras.Model:
    """The model with the bias of each BN whose output is only binarized moved so that its
    sign changes half-way between two integer sums of the binary conv before it.

    Such a BN after a binary conv (±1 inputs and kernel) gives ``sign(s·acc + b)`` for
    integer sums ``acc``: a step at ``t = −b/s``, and any ``t`` between the same two
    integers is the same function. Trained weights can leave ``t`` so close to an integer
    (``bonn_resnet20``: 4.7e-5) that ``s·acc + b`` at that sum is smaller than the rounding
    of LCE's output transform (at the scale ``K·|s|``), and LCE flips the sign Keras gives
    (docs/methods/cbcn.md#export-and-lce-parity). With ``t`` moved to the half-integer on
    the same side of every integer, every sum is at least ``|s|/2`` from the step and both
    runtimes compute the function the weights define. A channel with ``s = 0`` is left as
    it is. Other models are returned as they are.
    """
    return _rebuilt(model, _threshold_replacements(model))


def _residual_batch_norm_replacements(model: keras.Model) -> dict[str, tuple[keras.layers.Layer, list]]:
    replacements = {}
    for bn in model.layers:
        if _is_bn_after_binary_conv(bn) and _feeds_only_adds(model, bn):
            s, b = _batch_norm_affine(bn)
            depthwise = keras.layers.DepthwiseConv2D(1, use_bias=True, name=bn.name)
            replacements[bn.name] = (depthwise, [s.reshape(1, 1, -1, 1).astype(np.float32), b.astype(np.float32)])
    return replacements


def _threshold_replacements(model: keras.Model) -> dict[str, tuple[keras.layers.Layer, list]]:
    replacements = {}
    for bn in model.layers:
        if not (_is_bn_after_binary_conv(bn) and _sums_integers(bn.inbound_nodes[0].inbound_layers)
                and _only_binarized(model, bn)):
            continue
        s, b = (value.astype(np.float64) for value in _batch_norm_affine(bn))
        with np.errstate(divide="ignore", invalid="ignore"):
            step = -b / s
            # the sign of s·acc + b is +1 from acc ≥ t (s > 0) or up to acc ≤ t (s < 0), 0 included
            centred = np.where(s > 0, np.ceil(step) - 0.5, np.floor(step) + 0.5)
        bias = np.where((s != 0) & np.isfinite(centred), -s * centred, b)
        replacement = keras.layers.BatchNormalization.from_config({**bn.get_config(), "center": True, "scale": True})
        replacements[bn.name] = (replacement, _affine_bn_weights(bn, s, bias))
    return replacements


def _rebuilt(model: keras.Model, replacements: dict[str, tuple[keras.layers.Layer, list]]) -> keras.Model:
    """The model with each named layer replaced by a new layer (of the same name) holding the
    given weights; every other layer keeps its weights. No replacements: the model itself."""
    if not replacements:
        return model
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        if entry["name"] in replacements:
            entry.update(keras.layers.serialize(replacements[entry["name"]][0]), name=entry["name"])
    with quiet_logger("larq"):
        rebuilt = keras.Model.from_config(config)
    for layer in rebuilt.layers:
        if layer.name in replacements:
            layer.set_weights(replacements[layer.name][1])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


def _sums_integers(conv: lq.layers.QuantConv2D) -> bool:
    """Whether the conv's quantizers give ±1 (not, say, a magnitude-scaled sign)."""
    probe = tf.constant([-2.0, -0.5, 0.0, 0.5, 2.0])
    return all(
        np.all(np.abs(quantizer(probe).numpy()) == 1.0) for quantizer in (conv.input_quantizer, conv.kernel_quantizer)
    )


def _only_binarized(model: keras.Model, layer: keras.layers.Layer) -> bool:
    """Whether ``layer``'s output reaches only binary convs' input quantizers, through
    layers that keep every value's sign (so only its sign matters)."""
    consumers = _consumers(model, layer)
    return bool(consumers) and all(
        (isinstance(consumer, lq.layers.QuantConv2D) and is_one_bit(consumer.input_quantizer))
        or (_keeps_signs(consumer) and _only_binarized(model, consumer))
        for consumer in consumers
    )


def _keeps_signs(layer: keras.layers.Layer) -> bool:
    """``sign(f(x)) = sign(x)`` for every x, 0 included."""
    if isinstance(layer, HardTanh):
        return True
    if isinstance(layer, keras.layers.PReLU):
        return bool(np.all(layer.get_weights()[0] > 0))
    return False


def _is_bn_after_binary_conv(layer: keras.layers.Layer) -> bool:
    """A per-channel BN that takes a binary conv's output directly."""
    if not isinstance(layer, keras.layers.BatchNormalization):
        return False
    inbound = layer.inbound_nodes[0].inbound_layers if len(layer.inbound_nodes) == 1 else None
    return (
        _per_channel(layer)
        and isinstance(inbound, lq.layers.QuantConv2D)
        and is_one_bit(inbound.input_quantizer)
        and is_one_bit(inbound.kernel_quantizer)
    )


def _feeds_only_adds(model: keras.Model, layer: keras.layers.Layer) -> bool:
    consumers = _consumers(model, layer)
    return bool(consumers) and all(isinstance(consumer, keras.layers.Add) for consumer in consumers)


class Operator(NamedTuple):
    """One operator of a .tflite flatbuffer."""

    kind: str  #: builtin name (``CONV_2D``) or custom op name (``LceBconv2d``)
    custom: bool
    outputs: tuple[str, ...]  #: output tensor names: TF node names, ``<model>/<layer>/...``


def operators(flatbuffer: bytes) -> list[Operator]:
    """Every operator of a .tflite flatbuffer, in execution order."""
    from tensorflow.lite.python import schema_py_generated as schema

    tflite_model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if key.isupper()}
    codes = []
    for code in tflite_model.operatorCodes:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode
            codes.append((custom.decode() if isinstance(custom, bytes) else custom, True))
        else:
            codes.append((names[builtin], False))
    result = []
    for subgraph in tflite_model.subgraphs:
        tensors = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in subgraph.tensors]
        for operator in subgraph.operators:
            kind, custom = codes[operator.opcodeIndex]
            outputs = operator.outputs if operator.outputs is not None else []
            result.append(Operator(kind, custom, tuple(tensors[i] for i in outputs)))
    return result


def op_histogram(flatbuffer: bytes) -> dict[str, int]:
    """How many operators of each kind a .tflite flatbuffer holds (custom ops by name)."""
    histogram: dict[str, int] = {}
    for operator in operators(flatbuffer):
        histogram[operator.kind] = histogram.get(operator.kind, 0) + 1
    return dict(sorted(histogram.items()))
