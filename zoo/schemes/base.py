"""The one extension point of the zoo: a binarization scheme.

A scheme is what the architecture builders ask for their binary parts. A builder never
asks which method it is building; it calls ``scheme.conv(...)`` for every binary conv and
reads the scheme's block options (its activation, whether a real-valued shortcut goes
around every binary conv). A method is one module that subclasses :class:`Scheme`, plus,
when it trains with its own layer class, an :func:`export_rule` for that class telling
:func:`zoo.to_inference` which ±1 kernel and per-channel scale the layer stands for.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.layers import HardTanh


@dataclasses.dataclass(frozen=True)
class Reported:
    """A result reported by the method's paper or reference code (see docs/methods/<method>.md#reported-results)."""

    arch: str
    dataset: str
    top1: float
    source: str
    top5: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class BinaryExport:
    """What one binary training layer is at inference (docs/methods/conventions.md#inference-contract).

    ``kernel`` is the ±1 HWIO kernel, ``scale`` the per-output-channel factor (any sign)
    that multiplies the conv output and is folded into the following BatchNormalization,
    ``conv_kwargs`` the geometry of the exported ``QuantConv2D`` and ``pre_layers`` float
    layers applied to the conv input first (e.g. RBNN's activation centring).
    """

    kernel: np.ndarray
    scale: np.ndarray
    conv_kwargs: dict
    pre_layers: tuple = ()


_EXPORT_RULES: dict[type, Callable[[keras.layers.Layer], BinaryExport | None]] = {}


def export_rule(layer_class: type):
    """Register ``fn(layer) -> BinaryExport | None`` as the export rule of a layer class.

    The most specific rule along the class's MRO wins; returning None means "this
    instance is not a binary conv, keep it as it is".
    """

    def register(fn):
        _EXPORT_RULES[layer_class] = fn
        return fn

    return register


def find_export_rule(layer: keras.layers.Layer):
    return _find_rule(_EXPORT_RULES, layer)


_STORAGE_RULES: dict[type, Callable[[keras.layers.Layer], bool]] = {}


def storage_rule(layer_class: type):
    """Register ``fn(layer) -> bool`` as the storage rule of a layer class.

    A storage rule rewrites a trained layer's variables, in place, into an equivalent
    form (the same forward, so the same ±1 kernel and outputs) whose binary weights keep
    their signs when the latent kernel is stored as float16; it returns False, changing
    nothing, when the layer has no such form. Layers whose ±1 kernel is the latent
    kernel's elementwise sign need none (float16 rounding keeps signs); RBNN, whose
    signs are those of a rotated mix of the kernel, has one.
    """

    def register(fn):
        _STORAGE_RULES[layer_class] = fn
        return fn

    return register


def apply_storage_rules(model: keras.Model) -> list[str]:
    """Applies every layer's storage rule; returns the names of the layers rewritten."""
    rewritten = []
    for layer in model.layers:
        rule = _find_rule(_STORAGE_RULES, layer)
        if rule is not None and rule(layer):
            rewritten.append(layer.name)
    return rewritten


def _find_rule(rules: dict, layer: keras.layers.Layer):
    """The rule of the most specific class along the layer's MRO."""
    for cls in type(layer).__mro__:
        if cls in rules:
            return rules[cls]
    return None


def is_one_bit(quantizer) -> bool:
    return getattr(quantizer, "precision", None) == 1


def conv_geometry(layer: keras.layers.Conv2D) -> dict:
    return dict(
        filters=layer.filters,
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        groups=layer.groups,
        pad_values=getattr(layer, "pad_values", 0.0),
    )


def conv_output_size(size: int, stride: int, kernel: int, padding: str) -> int:
    """The output length of a conv along one axis, TF's "same" or "valid" padding."""
    return -(-size // stride) if padding == "same" else (size - kernel) // stride + 1


def conv_output_shape(input_shape, kernel_size, strides, padding: str, filters: int) -> tf.TensorShape:
    """The NHWC output shape of a conv (``compute_output_shape`` of the zoo's own conv layers)."""
    shape = tf.TensorShape(input_shape).as_list()
    spatial = [None if size is None else conv_output_size(size, stride, k, padding)
               for size, stride, k in zip(shape[1:3], strides, kernel_size)]
    return tf.TensorShape([shape[0], *spatial, filters])


def pad_same(x, kernel_size, strides, value: float):
    """TF "same" padding of an NHWC tensor with a constant (as LCE pads a binarized input)."""
    pads = [[0, 0]]
    for axis, stride, k in zip((1, 2), strides, kernel_size):
        size = x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]  # None: any image size
        total = (conv_output_size(size, stride, k, "same") - 1) * stride + k - size
        total = max(total, 0) if isinstance(total, int) else tf.maximum(total, 0)
        pads.append([total // 2, total - total // 2])
    return tf.pad(x, pads + [[0, 0]], constant_values=value)


class BinaryConv2D(keras.layers.Layer):
    """What the zoo's own binary convs (NHWC) share: their geometry — ``filters``,
    ``kernel_size``, ``strides``, ``padding`` ("same" or "valid") — TF "same" padding with
    ``pad_values`` after binarization (as LCE pads: :meth:`pad`), the output shape and the
    config. A subclass adds its variables, ``call`` and its own config entries; it is
    registered for serialisation under its own name, so saved configs and weights (by
    layer and variable name) do not depend on this class."""

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "same", pad_values: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(np.broadcast_to(kernel_size, 2).tolist())
        self.strides = tuple(np.broadcast_to(strides, 2).tolist())
        if padding not in ("same", "valid"):
            raise ValueError(f"{self.name}: padding must be 'same' or 'valid', got {padding!r}.")
        self.padding = padding
        self.pad_values = float(pad_values)

    def pad(self, x):
        """``x`` (binarized) padded for a "VALID" conv: TF "same" padding with ``pad_values``."""
        return x if self.padding == "valid" else pad_same(x, self.kernel_size, self.strides, self.pad_values)

    def compute_output_shape(self, input_shape):
        return conv_output_shape(input_shape, self.kernel_size, self.strides, self.padding, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "pad_values": self.pad_values,
        }


def split_scaled_sign(quantized_kernel: np.ndarray, layer_name: str):
    """Write a quantized HWIO kernel as ``sign * scale`` with one scale per output channel.

    Raises if the kernel is not of that form (then LCE could not run it as a binary conv).
    """
    signs = np.where(quantized_kernel >= 0, 1.0, -1.0).astype(np.float32)
    scale = np.max(np.abs(quantized_kernel), axis=(0, 1, 2)).astype(np.float32)
    if not np.allclose(quantized_kernel, signs * scale, rtol=1e-5, atol=1e-7):
        raise ValueError(
            f"Layer {layer_name!r}: its quantized kernel is not a per-output-channel "
            "scaled sign, so it cannot be exported as a ±1 binary convolution."
        )
    return signs, scale


@export_rule(lq.layers.QuantConv2D)
def export_quant_conv2d(layer: lq.layers.QuantConv2D) -> BinaryExport | None:
    """Any Larq ``QuantConv2D`` with 1-bit input and kernel quantizers (bnn, xnor, bireal)."""
    if not (is_one_bit(layer.input_quantizer) and is_one_bit(layer.kernel_quantizer)):
        return None
    if layer.use_bias:
        raise ValueError(f"Layer {layer.name!r}: binary convs with a bias cannot be exported.")
    quantized = layer.kernel_quantizer(tf.convert_to_tensor(layer.kernel)).numpy()
    signs, scale = split_scaled_sign(quantized, layer.name)
    return BinaryExport(kernel=signs, scale=scale, conv_kwargs=conv_geometry(layer))


class Scheme:
    """Base class of binarization schemes. Subclasses set the attributes and ``conv``."""

    name: str = ""
    method: str = ""
    paper: str = ""
    binary: bool = True
    #: the block non-linearity: "hardtanh", "relu" or "prelu"
    activation: str = "hardtanh"
    #: Bi-Real layout: a real-valued shortcut around every binary conv of a CIFAR block
    shortcut_every_conv: bool = False
    #: padding value of binary convs: 1.0 is LCE's fast path (docs/methods/conventions.md#padding [choice])
    pad_values: float = 1.0
    #: every feature-map width of the architecture (stem, stages, shortcuts) times this;
    #: CBCN's N orientation channels per base channel make its networks N× wide
    width_multiplier: int = 1
    reported: tuple[Reported, ...] = ()

    def conv(self, filters: int, kernel_size: int, strides: int = 1, name: str | None = None):
        """The training-time conv layer of the scheme (binary unless ``binary`` is False)."""
        raise NotImplementedError

    def activation_layer(self, name: str) -> keras.layers.Layer:
        if self.activation == "hardtanh":
            return HardTanh(name=name)
        if self.activation == "relu":
            return keras.layers.ReLU(name=name)
        if self.activation == "prelu":
            return keras.layers.PReLU(
                alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
            )
        raise ValueError(f"Scheme {self.name!r}: unknown activation {self.activation!r}")

    def callbacks(self, epochs: int) -> list:
        """Per-epoch machinery the scheme needs during ``fit`` (none for the baselines)."""
        return []

    def initialize(self, model: keras.Model, architecture: str) -> None:
        """Re-initialises a freshly built ``architecture`` where the method's reference
        initialises differently from the builders (e.g. RBNN's BatchNorm γ); none by default."""

    def __repr__(self) -> str:
        return f"<Scheme {self.name}: {self.method}>"


def conv_initializer() -> keras.initializers.Initializer:
    """PyTorch ``kaiming_normal_`` (fan_in, ReLU gain, untruncated; docs/methods/conventions.md#batchnorm-initialisers-and-weight-decay)."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


class LarqBinaryScheme(Scheme):
    """A scheme whose binary conv is a plain Larq ``QuantConv2D``; subclasses pick its
    quantizers (the baselines differ by nothing else)."""

    input_quantizer: str = "ste_sign"
    kernel_quantizer: str = "ste_sign"

    def conv(self, filters, kernel_size, strides=1, name=None):
        return lq.layers.QuantConv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            pad_values=self.pad_values,
            input_quantizer=self.input_quantizer,
            kernel_quantizer=self.kernel_quantizer,
            kernel_constraint="weight_clip",
            kernel_initializer=conv_initializer(),
            use_bias=False,
            name=name,
        )
