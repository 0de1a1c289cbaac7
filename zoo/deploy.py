"""Deploy: a registry model as a ``.tflite`` file an Android app can ship, and its latency.

:func:`convert` runs the shared export (:func:`zoo.to_inference`: ±1 ``QuantConv2D``,
scales folded into BN), converts binary models with Larq Compute Engine so that every
binary conv runs as ``LceBconv2d``, and full-precision or QAT-int8 models with
TensorFlow's standard ``tf.lite.TFLiteConverter``. It then checks the operators, runs the
file in LCE's interpreter against the exported Keras model on real images, and writes it
atomically. :func:`benchmark` times files in LCE's interpreter, with its fast binary
kernels by default, several models interleaved so that their ratios are fair.

A binary model's file holds LCE's custom operators (``LceBconv2d``, ``LceQuantize``, ...):
stock TFLite cannot run it; an Android app needs LCE's runtime (its AAR).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo._env import root_logging_untouched_by
from zoo.export import Operator, binary_exports, lce_flatbuffer, operators, quiet_logger, to_inference
from zoo.files import atomic_output
from zoo.loading import load
from zoo.profile import costs
from zoo.schemes.base import is_one_bit

#: LCE's custom operators: its runtime runs them, stock TFLite does not
LCE_OPS = frozenset({"LceBconv2d", "LceQuantize", "LceDequantize", "LceBMaxPool2d"})
TARGETS = ("arm", "xcore")
#: bytes 4-8 of every TFLite flatbuffer
TFLITE_IDENTIFIER = b"TFL3"
#: where verification images and int8 calibration images come from by default: it is
#: available offline (Debian's files), and any input shape is served by resizing
DEFAULT_DATASET = "fashion_mnist"
#: the name of the zoo's entry in a .tflite file's metadata table (JSON: ``class_names``)
METADATA_NAME = "zoo"
#: layers TF-MOT's quantization-aware training wraps a model's layers in
_QAT_LAYERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")


class ConversionError(ValueError):
    """A model, option or data that cannot give a working ``.tflite`` file."""


@dataclasses.dataclass(frozen=True)
class Parity:
    """The converted file (LCE's interpreter) against the exported Keras model."""

    samples: int
    data: str
    top1_agreement: float
    #: max |Δ| over all outputs: of probabilities for a softmax head, else of logits
    max_abs_diff: float
    outputs: str


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` made."""

    model: str
    path: str | None
    converter: str
    target: str
    int8: bool
    input_type: str
    output_type: str
    file_bytes: int
    ops: dict
    #: binary layers of the exported model (each should be one ``LceBconv2d``)
    binary_layers: int
    #: costs of the exported model (Larq's profiler); None for a QAT model, whose wrapped
    #: layers the profiler does not count
    parameters: int | None
    binary_macs: int | None
    float_macs: int | None
    parity: Parity | None = None

    @property
    def bconv2d(self) -> int:
        return self.ops.get("LceBconv2d", 0)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@root_logging_untouched_by  # TF's converter logs through absl, which would configure root logging
def convert(
    model_or_name: str | keras.Model,
    output_path: str | os.PathLike,
    *,
    weights="default",
    input_shape=None,
    target: str = "arm",
    inference_input_type=tf.float32,
    inference_output_type=tf.float32,
    int8: bool = False,
    representative_data=None,
    representative_samples: int = 256,
    verify: bool = True,
    verify_data=None,
    verify_samples: int = 64,
    dataset: str = DEFAULT_DATASET,
    data_dir=None,
    allow_float_binary: bool = False,
    class_names=None,
    progress: Callable[[str], None] | None = None,
    **load_kwargs,
) -> ConversionReport:
    """Converts a model to a ``.tflite`` file and reports what it holds and how it agrees.

    Args:
      model_or_name: a registered name (built with ``zoo.load(name, weights,
        input_shape, **load_kwargs)``) or a functional tf_keras model (converted as it is).
      output_path: the file to write. It is written atomically: a failure leaves no file
        (an unwritable place fails before any work).
      weights: as in ``zoo.load``; for a name only.
      input_shape: ``(H, W, C)``; for a name only (default: the weights' or the
        architecture's).
      target: LCE's target, ``"arm"`` (phones, Raspberry Pi) or ``"xcore"``. The
        TFLite converter's output is portable and ignores it.
      inference_input_type, inference_output_type: ``tf.float32`` or ``tf.int8`` (int8
        needs an int8 model: ``int8=True`` or a QAT model).
      int8: quantize the float parts (stem, shortcuts, head; the whole of a
        full-precision model) to int8, with ranges calibrated on ``representative_data``.
        Binary convs stay binary.
      representative_data: calibration images, ``(N, H, W, C)`` raw pixels (an array or
        a ``tf.data.Dataset`` of images or ``(images, labels)``); default:
        ``representative_samples`` images of ``dataset``'s train split.
      verify: run the file in LCE's interpreter on ``verify_data`` (default:
        ``verify_samples`` images of ``dataset``'s test split, resized to the input) and
        report its agreement with the exported Keras model.
      dataset, data_dir: the TFDS dataset (``zoo.load_dataset``) of the default images.
      allow_float_binary: accept binary layers that the converter did not make
        ``LceBconv2d`` (they then run as float convs); an error otherwise.
      class_names: the names of the outputs, in order, written into the file's metadata
        (:func:`read_metadata`); for a name with pretrained weights, default: the entry's.
      progress: called with a line of text at each step (the CLI prints them).

    Returns:
      A :class:`ConversionReport`.

    Raises:
      ConversionError: a layer the converter cannot take (named), an unwritable output
        path, data of the wrong shape, a binary layer not converted to ``LceBconv2d``.
    """
    path = Path(output_path)
    say = progress or (lambda _: None)
    with _atomic_output(path) as output:
        flatbuffer, report = _convert(
            model_or_name, weights=weights, input_shape=input_shape, target=target,
            input_type=inference_input_type, output_type=inference_output_type, int8=int8,
            representative_data=representative_data, representative_samples=representative_samples,
            verify=verify, verify_data=verify_data, verify_samples=verify_samples, dataset=dataset,
            data_dir=data_dir, allow_float_binary=allow_float_binary, say=say, load_kwargs=load_kwargs,
        )
        if class_names is None and isinstance(model_or_name, str):
            class_names = _pretrained_class_names(model_or_name, weights)
        if class_names:
            flatbuffer = with_metadata(flatbuffer, {"class_names": [str(name) for name in class_names]})
        output.write(flatbuffer)
    say(f"wrote {path} ({len(flatbuffer) / 2**20:.2f} MiB)")
    return dataclasses.replace(report, path=str(path), file_bytes=len(flatbuffer))


def _pretrained_class_names(name: str, weights) -> tuple[str, ...]:
    """The class names of the pretrained entry ``weights`` names (a tag or "default"), if any."""
    from zoo import registry

    entries = registry.pretrained_entries(name)
    entry = next((e for e in entries if weights in (e.tag, "default")), None)
    return entry.class_names if entry is not None else ()


def with_metadata(flatbuffer: bytes, metadata: dict) -> bytes:
    """``flatbuffer`` with ``metadata`` as JSON in its metadata table, under the name
    :data:`METADATA_NAME`. Interpreters ignore it; an app reads it (e.g. the outputs' class
    names) with any flatbuffer reader, or :func:`read_metadata`."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(m for m in model.metadata or [] if m.name != METADATA_NAME.encode()), entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path: str | os.PathLike) -> dict:
    """The zoo's metadata of a ``.tflite`` file written by :func:`convert` ({} if none)."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


@contextlib.contextmanager
def _atomic_output(path: Path):
    """A file handle whose content becomes ``path`` only when the block succeeds."""
    if path.is_dir():
        raise ConversionError(f"Output path {path} is a directory; name a file, e.g. {path / 'model.tflite'}.")
    with contextlib.ExitStack() as stack:
        try:
            output = stack.enter_context(atomic_output(path))
        except OSError as err:
            raise ConversionError(f"Cannot write {path}: {err.strerror} ({err.filename}).") from None
        yield output


def _convert(
    model_or_name, *, weights, input_shape, target, input_type, output_type, int8, representative_data,
    representative_samples, verify, verify_data, verify_samples, dataset, data_dir, allow_float_binary,
    say, load_kwargs,
) -> tuple[bytes, ConversionReport]:
    """The flatbuffer and its report (``path`` unset): :func:`convert` without the file."""
    if target not in TARGETS:
        raise ConversionError(f"target must be one of {TARGETS}, got {target!r}.")
    input_type = _io_type(input_type, "inference_input_type")
    output_type = _io_type(output_type, "inference_output_type")
    model = _resolve_model(model_or_name, weights, input_shape, load_kwargs, say)
    shape = tuple(model.input_shape[1:])
    qat = any(type(layer).__name__ in _QAT_LAYERS for layer in model.layers)
    if not (int8 or qat) and (input_type, output_type) != (tf.float32, tf.float32):
        raise ConversionError(
            "int8 inputs or outputs need an int8 model: pass int8=True (--int8), or a "
            "quantization-aware-trained model. A float model's interface stays float32."
        )

    exported = bool(binary_exports(model))
    binary = exported or bool(_binary_layers(model))
    inference = model
    if exported:
        say("exporting: ±1 QuantConv2D, scales folded into BatchNormalization")
        inference = _guarded(model, "export", lambda: to_inference(model))
    calibration = None
    if int8 and not qat:
        calibration, described = _images(
            representative_data, shape, representative_samples, dataset, "train", data_dir, "representative data"
        )
        say(f"calibrating int8 ranges on {described}")

    if binary:
        say(f"converting with Larq Compute Engine (target {target})")
        graph = inference if calibration is None else _guarded(
            inference, "int8 calibration", lambda: _int8_graph(inference, calibration)
        )
        flatbuffer = _guarded(graph, "conversion", lambda: lce_flatbuffer(
            graph, inference_input_type=input_type, inference_output_type=output_type, target=target,
        ))
    else:
        say("converting with tf.lite.TFLiteConverter" + (" (int8)" if calibration is not None or qat else ""))
        flatbuffer = _guarded(
            inference, "conversion", lambda: _tflite_flatbuffer(inference, qat, calibration, input_type, output_type)
        )

    ops = operators(flatbuffer)
    _check_runnable(inference, ops)
    _check_binary_layers(inference, ops, allow_float_binary)
    parity = None
    if verify:
        images, described = _images(verify_data, shape, verify_samples, dataset, "test", data_dir, "verification data")
        say(f"verifying in LCE's interpreter on {described}")
        parity = _parity(inference, flatbuffer, images, described)

    model_costs = dict.fromkeys(("parameters", "binary_macs", "float_macs")) if qat else costs(inference)
    report = ConversionReport(
        model=model_or_name if isinstance(model_or_name, str) else model.name,
        path=None,
        converter="larq_compute_engine" if binary else "tflite",
        target=target,
        int8=bool(int8 or qat),
        input_type=input_type.name,
        output_type=output_type.name,
        file_bytes=len(flatbuffer),
        ops=_histogram(ops),
        binary_layers=len(_binary_layers(inference)),
        parameters=model_costs["parameters"],
        binary_macs=model_costs["binary_macs"],
        float_macs=model_costs["float_macs"],
        parity=parity,
    )
    return flatbuffer, report


def _io_type(value, argument: str) -> tf.DType:
    dtype = tf.as_dtype(value)
    if dtype not in (tf.float32, tf.int8):
        raise ConversionError(f"{argument} must be float32 or int8, got {dtype.name}.")
    return dtype


def _resolve_model(model_or_name, weights, input_shape, load_kwargs, say) -> keras.Model:
    if isinstance(model_or_name, str):
        say(f"loading {model_or_name} (weights: {weights})")
        return load(model_or_name, weights=weights, input_shape=input_shape, **load_kwargs)
    if isinstance(model_or_name, keras.Model):
        if weights != "default" or input_shape is not None or load_kwargs:
            raise ConversionError(
                "weights=, input_shape= and builder keywords apply to a model name; a Keras "
                "model is converted as it is."
            )
        return model_or_name
    raise TypeError(f"Expected a registered model name or a tf_keras Model, got {type(model_or_name).__name__}.")


def _binary_layers(model: keras.Model) -> list[str]:
    """Layers whose input and weights are both 1-bit (LCE runs them as ``LceBconv2d``)."""
    return [
        layer.name
        for layer in model.layers
        if is_one_bit(getattr(layer, "input_quantizer", None))
        and any(is_one_bit(getattr(layer, weights, None)) for weights in ("kernel_quantizer", "depthwise_quantizer"))
    ]


def _histogram(ops: list[Operator]) -> dict[str, int]:
    histogram: dict[str, int] = {}
    for op in ops:
        histogram[op.kind] = histogram.get(op.kind, 0) + 1
    return dict(sorted(histogram.items()))


def _layers_named(model: keras.Model, texts) -> list[keras.layers.Layer]:
    """The model's layers that TF node names (``<model>/<layer>/<op>``) in ``texts`` name."""
    text = "\n".join(texts)
    return [layer for layer in model.layers if re.search(rf"(^|[/\"' ;]){re.escape(layer.name)}/", text, re.M)]


def _describe(layers: list[keras.layers.Layer]) -> str:
    return ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in layers) or "(no layer could be named)"


def _guarded(model: keras.Model, stage: str, step: Callable[[], object]):
    """Runs an export or conversion step; its failure becomes an error naming the layers
    involved: those the message names (TF node names ``<model>/<layer>/...``), else those
    that do not survive a config round trip."""
    try:
        return step()
    except ConversionError:
        raise
    except Exception as err:  # Keras' TypeError / ValueError, the converters' errors
        message = str(err)
        layers = _layers_named(model, [message]) or [layer for layer in model.layers if not _rebuilds(layer)]
        first_line = next((line for line in message.splitlines() if line.strip()), type(err).__name__)
        raise ConversionError(f"{model.name}: {stage} failed at layer {_describe(layers)}: {first_line}") from err


def _rebuilds(layer: keras.layers.Layer) -> bool:
    """Whether a layer survives the config round trip that export rebuilds models with."""
    try:
        return isinstance(keras.layers.deserialize(keras.layers.serialize(layer)), keras.layers.Layer)
    except Exception:  # whatever Keras raises for a class it cannot find or construct
        return False


def _check_runnable(model: keras.Model, ops: list[Operator]) -> None:
    """LCE's converter keeps a TF op it has no kernel for as a custom op no runtime has."""
    foreign = [op for op in ops if op.custom and op.kind not in LCE_OPS]
    if foreign:
        kinds = sorted({op.kind for op in foreign})
        layers = _layers_named(model, [name for op in foreign for name in op.outputs])
        raise ConversionError(
            f"{model.name}: layer {_describe(layers)} uses TensorFlow ops neither TFLite nor "
            f"LCE can run: {', '.join(kinds)}. Write the layer with TFLite ops, or give it an "
            "export rule (zoo.schemes.export_rule) that replaces it at export."
        )


def _check_binary_layers(model: keras.Model, ops: list[Operator], allow_float_binary: bool) -> None:
    expected = _binary_layers(model)
    bconvs = [op for op in ops if op.kind == "LceBconv2d"]
    if len(bconvs) >= len(expected) or allow_float_binary:
        return
    converted = {layer.name for layer in _layers_named(model, [name for op in bconvs for name in op.outputs])}
    missing = [name for name in expected if name not in converted]
    raise ConversionError(
        f"{model.name}: {len(expected) - len(bconvs)} of {len(expected)} binary layers did not "
        f"become LceBconv2d and would run as float convs: {', '.join(map(repr, missing))}. "
        "LCE needs a ±1 kernel, ste_sign input and, for grouped convs, a multiple of 32 input "
        "channels per group. Pass allow_float_binary=True (--allow-float-binary) to accept that."
    )


def _images(data, shape, samples: int, dataset: str, split: str, data_dir, what: str) -> tuple[np.ndarray, str]:
    """Raw-pixel images ``(N, *shape)``: given, or the first ``samples`` of a TFDS split."""
    if data is None:
        from zoo.data import DatasetNotFoundError, load_dataset

        try:
            pipeline = load_dataset(
                dataset, split, batch_size=samples, take=samples, training=False,
                image_size=shape[:2], channels=shape[2], data_dir=data_dir,
            )
        except DatasetNotFoundError as err:
            raise ConversionError(f"{what}: {err}") from None
        images = next(iter(pipeline))[0].numpy()
        return images, f"{len(images)} {dataset} {split} images"
    if isinstance(data, tf.data.Dataset):
        batches, count = [], 0
        for element in data:
            images = np.asarray(element[0] if isinstance(element, (tuple, list)) else element)
            batches.append(images[None] if images.ndim == len(shape) else images)
            count += len(batches[-1])
            if count >= samples:
                break
        if not batches:
            raise ConversionError(f"{what}: the dataset is empty.")
        images = np.concatenate(batches)[:samples]
    else:
        images = np.asarray(data)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise ConversionError(
            f"{what} has shape {tuple(images.shape)}, but the model takes a batch of images "
            f"shaped (N, {', '.join(map(str, shape))}): raw pixels in [0, 255]."
        )
    return images.astype(np.float32), f"{len(images)} given images"


@keras.utils.register_keras_serializable(package="zoo")
class Int8Range(keras.layers.Layer):
    """Marks a tensor's calibrated int8 range with a fake-quant op, as QAT would.

    The converters turn it into the tensor's int8 scale and zero point; LCE then quantizes
    every float op whose tensors all have a range, weights included, and keeps binary
    convs binary (their ``LceQuantize`` reads int8). Inserted only for conversion.
    """

    def __init__(self, minimum: float, maximum: float, **kwargs):
        super().__init__(**kwargs)
        self.minimum, self.maximum = float(minimum), float(maximum)

    def call(self, inputs):
        return tf.quantization.fake_quant_with_min_max_args(inputs, min=self.minimum, max=self.maximum, num_bits=8)

    def get_config(self):
        return {**super().get_config(), "minimum": self.minimum, "maximum": self.maximum}


def _int8_graph(model: keras.Model, images: np.ndarray) -> keras.Model:
    """The model with an :class:`Int8Range` on every tensor that should be int8, each
    range calibrated on ``images`` (min/max, 0 included, as TFLite's own calibration).

    A softmax head is split into its dense layer and a softmax, so that the logits get a
    range too (and the dense layer int8 weights). A conv whose output only feeds
    BatchNormalization gets no range there: it would keep the converter from folding the
    BN into the conv. The input normalisation stays float inside (one SUB and MUL on the
    input pixels): its layer has a range only for its output.
    """
    heads = {
        layer.name: keras.layers.Activation("softmax", name=f"{layer.name}_softmax")
        for layer in model.layers
        if getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"
        and not isinstance(layer, keras.layers.Activation)
    }
    split = _insert_after(model, heads, unfused=set(heads))
    consumers = _consumers(split.get_config())
    names = [
        layer.name for layer in split.layers
        if not (isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
                and set(consumers[layer.name]) == {"BatchNormalization"})
    ]
    ranges = _ranges(split, names, images)
    # TFLite's int8 softmax has a fixed output range: [0, 255/256] (scale 1/256)
    ranges.update({head.name: (0.0, 255 / 256) for head in heads.values()})
    markers = {name: Int8Range(*ranges[name], name=f"{name}_int8_range") for name in names}
    return _insert_after(split, markers)


def _consumers(config: dict) -> dict[str, list[str]]:
    """Layer name -> class names of the layers that take its output."""
    classes = {entry["name"]: entry["class_name"] for entry in config["layers"]}
    consumers: dict[str, list[str]] = {name: [] for name in classes}
    for entry in config["layers"]:
        for node in entry["inbound_nodes"]:
            for inbound in node:
                consumers[inbound[0]].append(classes[entry["name"]])
    return consumers


def _ranges(model: keras.Model, names: list[str], images: np.ndarray, batch_size: int = 16) -> dict:
    """Min/max (0 included) of the named layers' outputs over the images."""
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])

    @tf.function
    def extremes(batch):
        return [(tf.reduce_min(t), tf.reduce_max(t)) for t in probe(batch, training=False)]

    low, high = np.zeros(len(names)), np.zeros(len(names))
    for start in range(0, len(images), batch_size):
        for i, (lo, hi) in enumerate(extremes(tf.constant(images[start:start + batch_size]))):
            low[i], high[i] = min(low[i], float(lo)), max(high[i], float(hi))
    return {name: (lo, max(hi, lo + 1e-3)) for name, lo, hi in zip(names, low, high)}


def _insert_after(model: keras.Model, new_layers: dict, unfused: set = frozenset()) -> keras.Model:
    """The model with ``new_layers[name]`` taking layer ``name``'s output in its place;
    ``unfused`` layers lose their own activation (the new layer applies it). Same weights."""
    config = copy.deepcopy(model.get_config())
    replaced = {name: layer.name for name, layer in new_layers.items()}
    layers = []
    for entry in config["layers"]:
        entry["inbound_nodes"] = [
            [[replaced.get(inbound[0], inbound[0]), *inbound[1:]] for inbound in node]
            for node in entry["inbound_nodes"]
        ]
        if entry["name"] in unfused:
            entry["config"]["activation"] = "linear"
        layers.append(entry)
        if entry["name"] in new_layers:
            new = new_layers[entry["name"]]
            inbound = [[[entry["name"], 0, 0, {}]]]
            layers.append({**keras.layers.serialize(new), "name": new.name, "inbound_nodes": inbound})
    config["layers"] = layers
    config["output_layers"] = [[replaced.get(name, name), *rest] for name, *rest in config["output_layers"]]
    with quiet_logger("larq"):  # its starved-weights warning is about training; these ±1 kernels are for inference
        rebuilt = keras.Model.from_config(config)
    for layer in model.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return rebuilt


def _tflite_flatbuffer(model, qat: bool, calibration, input_type, output_type) -> bytes:
    """TensorFlow's standard converter: float, post-training int8, or a QAT model's int8.

    It converts the model's function at batch 1 directly: ``from_keras_model`` (and the
    default lowering through a SavedModel) gives the same operators 15x slower here.
    """
    spec = tf.TensorSpec((1, *model.input_shape[1:]), model.inputs[0].dtype)
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.experimental_lower_to_saved_model = False
    converter.allow_custom_ops = True  # an op TFLite lacks stays in the file, named: _check_runnable reports it
    if qat or calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = input_type
        converter.inference_output_type = output_type
    if calibration is not None:
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def lce_interpreter(flatbuffer: bytes, threads: int = 1, use_indirect_bgemm: bool = True, use_xnnpack: bool = False):
    """LCE's interpreter for a .tflite flatbuffer (it runs TFLite's builtins too)."""
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter(flatbuffer, num_threads=threads, use_indirect_bgemm=use_indirect_bgemm, use_xnnpack=use_xnnpack)


def run_tflite(interpreter, images: np.ndarray) -> np.ndarray:
    """Runs LCE's interpreter on float images, quantizing int8 inputs and dequantizing
    int8 outputs with the file's scales and zero points."""
    dtype = np.dtype(interpreter.input_types[0])
    if dtype != np.float32:
        scale, zero = interpreter.input_scales[0], interpreter.input_zero_points[0]
        bounds = np.iinfo(dtype)
        images = np.clip(np.round(images / scale + zero), bounds.min, bounds.max).astype(dtype)
    outputs = interpreter.predict(images)
    if np.dtype(interpreter.output_types[0]) != np.float32:
        outputs = (outputs.astype(np.float32) - interpreter.output_zero_points[0]) * interpreter.output_scales[0]
    return outputs


def _parity(model: keras.Model, flatbuffer: bytes, images: np.ndarray, described: str) -> Parity:
    expected = model.predict(images, batch_size=32, verbose=0)
    # one thread: the interpreter's threads spin-wait, which turns slow on a loaded machine
    actual = run_tflite(lce_interpreter(flatbuffer, threads=1), images)
    activation = getattr(model.layers[-1], "activation", None)
    return Parity(
        samples=len(images),
        data=described,
        top1_agreement=float(np.mean(expected.argmax(-1) == actual.argmax(-1))),
        max_abs_diff=float(np.max(np.abs(expected - actual))),
        outputs="probabilities" if getattr(activation, "__name__", "") == "softmax" else "logits",
    )


# --------------------------------------------------------------------------- benchmark


@dataclasses.dataclass(frozen=True)
class Latency:
    """One model's latency in one :func:`benchmark` run (costs: known for models, not files)."""

    model: str
    median_ms: float
    p90_ms: float
    file_bytes: int
    ops: dict
    parameters: int | None = None
    binary_macs: int | None = None
    float_macs: int | None = None


@dataclasses.dataclass(frozen=True)
class BenchmarkReport:
    """Latencies of models timed in one run, their repeats interleaved."""

    results: tuple[Latency, ...]
    input_shape: tuple[int, ...]
    threads: int
    interpreter: dict
    warmup: int
    repeats: int
    #: ``os.getloadavg()`` before and after: other processes' load skews absolute times
    load_average: tuple[tuple[float, ...], tuple[float, ...]]

    @property
    def ratios(self) -> list[float]:
        """Each model's median latency over the first model's."""
        return [result.median_ms / self.results[0].median_ms for result in self.results]

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratios": self.ratios}


@root_logging_untouched_by
def benchmark(
    name_or_tflite,
    *,
    vs=None,
    threads: int = 1,
    input_shape=None,
    weights=None,
    warmup: int = 10,
    repeats: int = 50,
    use_indirect_bgemm: bool = True,
    use_xnnpack: bool = False,
    progress: Callable[[str], None] | None = None,
    **load_kwargs,
) -> BenchmarkReport:
    """Latency of a model (or several) in LCE's interpreter, batch 1.

    Args:
      name_or_tflite: a registered name (converted in memory, without verification), a
        ``.tflite`` path, or a tf_keras model.
      vs: one more of the same kinds, or a list of them: timed in the same run, each
        repeat of every model in turn (alternating the order), so that their ratios are
        fair even when other processes load the machine.
      threads: the interpreter's threads.
      input_shape: ``(H, W, C)`` for names (default: the architecture's); a file's own.
      weights: for names, as in ``zoo.load`` (latency does not depend on them).
      warmup, repeats: untimed runs first, then timed runs; median and 90th percentile.
      use_indirect_bgemm: LCE's fast binary kernels (the default: the issue's "best
        settings"; LCE's plain default kernels are several times slower on x86).
      use_xnnpack: TFLite's XNNPACK delegate for the float ops.
    """
    say = progress or (lambda _: None)
    for setting, value, least in (("threads", threads, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{setting} (--{setting}) must be an integer of at least {least}, got {value!r}.")
    targets = [name_or_tflite, *(vs if isinstance(vs, (list, tuple)) else [] if vs is None else [vs])]
    subjects = [_benchmark_subject(t, input_shape, weights, load_kwargs, say) for t in targets]
    options = dict(threads=threads, use_indirect_bgemm=use_indirect_bgemm, use_xnnpack=use_xnnpack)
    interpreters = [_interpreter_for(label, flatbuffer, options) for label, flatbuffer, _ in subjects]
    shapes = {tuple(interpreter.input_shapes[0]) for interpreter in interpreters}
    if len(shapes) != 1:
        raise ValueError(f"The models take different inputs {sorted(shapes)}: compare models of one input shape.")
    rng = np.random.default_rng(0)
    shape = shapes.pop()
    images = rng.uniform(0, 255, shape).astype(np.float32)
    before = os.getloadavg()
    say(f"timing {len(subjects)} model(s): {warmup} warm-up + {repeats} timed runs each, {threads} thread(s)")
    times = _interleaved_times(interpreters, images, warmup, repeats)
    results = tuple(
        Latency(
            model=label,
            median_ms=float(np.median(samples) * 1e3),
            p90_ms=float(np.percentile(samples, 90) * 1e3),
            file_bytes=len(flatbuffer),
            ops=_histogram(operators(flatbuffer)),
            **model_costs,
        )
        for (label, flatbuffer, model_costs), samples in zip(subjects, times)
    )
    return BenchmarkReport(
        results=results,
        input_shape=shape[1:],
        threads=threads,
        interpreter={"use_indirect_bgemm": use_indirect_bgemm, "use_xnnpack": use_xnnpack},
        warmup=warmup,
        repeats=repeats,
        load_average=(before, os.getloadavg()),
    )


def _benchmark_subject(target, input_shape, weights, load_kwargs, say) -> tuple[str, bytes, dict]:
    """(label, flatbuffer, costs) of a name, a .tflite path or a Keras model."""
    if isinstance(target, (str, os.PathLike)) and (str(target).endswith(".tflite") or Path(target).is_file()):
        if not Path(target).is_file():
            raise ValueError(f"No such .tflite file: {target}")
        say(f"reading {target}")
        return Path(target).name, Path(target).read_bytes(), {}
    kwargs = dict(weights=weights, input_shape=input_shape, load_kwargs=load_kwargs)
    if isinstance(target, keras.Model):
        kwargs = dict(weights="default", input_shape=None, load_kwargs={})
    flatbuffer, report = _convert(
        target, target="arm", input_type=tf.float32, output_type=tf.float32, int8=False,
        representative_data=None, representative_samples=0, verify=False, verify_data=None, verify_samples=0,
        dataset=DEFAULT_DATASET, data_dir=None, allow_float_binary=False, say=say, **kwargs,
    )
    model_costs = {k: getattr(report, k) for k in ("parameters", "binary_macs", "float_macs")}
    return report.model, flatbuffer, model_costs


def _interpreter_for(label: str, flatbuffer: bytes, options: dict):
    """LCE's interpreter for a file to time; a file that is not a TFLite flatbuffer, or one
    the interpreter cannot load, is refused in one line (ValueError)."""
    if flatbuffer[4:8] != TFLITE_IDENTIFIER:
        raise ValueError(f"{label} is not a .tflite file (no {TFLITE_IDENTIFIER.decode()} flatbuffer identifier).")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"\s*Warning: tf\.lite\.Interpreter is deprecated", UserWarning)
        try:  # TensorFlow's interpreter verifies the flatbuffer; LCE's would crash on a truncated one
            tf.lite.Interpreter(model_content=flatbuffer)
        except ValueError as err:
            raise ValueError(f"{label} is not a valid .tflite file: {err}.") from None
    try:
        return lce_interpreter(flatbuffer, **options)
    except RuntimeError as err:  # the interpreter's own check of the flatbuffer
        raise ValueError(f"{label}: LCE's interpreter cannot load it: {str(err).strip().splitlines()[0]}") from None


def _interleaved_times(interpreters, images: np.ndarray, warmup: int, repeats: int) -> list[list[float]]:
    """Seconds per run of each interpreter; each repeat runs all of them, in alternating order."""
    for interpreter in interpreters:
        for _ in range(warmup):
            run_tflite(interpreter, images)
    times: list[list[float]] = [[] for _ in interpreters]
    order = list(range(len(interpreters)))
    for _ in range(repeats):
        for i in order:
            start = time.perf_counter()
            run_tflite(interpreters[i], images)
            times[i].append(time.perf_counter() - start)
        order.reverse()
    return times
