"""The op set of the search spaces: what a cell edge, a stage's downsampling and the stem can be.

Every binary op is built from the scheme's own binary conv (``scheme.conv``), followed by
the zoo's BatchNormalization, so a searched network trains with the scheme's machinery and
exports through ``zoo.to_inference`` like the hand-made ones: each binary conv becomes a
±1 ``QuantConv2D`` and, in LCE, an ``LceBconv2d``. The op names follow BNAS's set
(docs/search.md#spaces) with its separable convs replaced by plain and grouped binary convs:

==============  ==================================================================
``bconv3x3``    binary 3×3 conv + BN
``bconv5x5``    binary 5×5 conv + BN
``bdil3x3``     binary 3×3 conv, dilation 2 (a 5×5 field) + BN
``bdil5x5``     binary 5×5 conv, dilation 2 (a 9×9 field) + BN
``bgroup3x3``   binary 3×3 conv in 4 groups (a quarter of the MACs) + BN per group
``skip``        identity
``max_pool3x3`` 3×3 max-pooling, stride 1
``avg_pool3x3`` 3×3 average pooling, stride 1
==============  ==================================================================

A grouped op is built as one binary conv per channel group, not as a grouped conv:
LCE 0.16 converts a grouped binary conv only with 32·k input channels per group and its
x86 interpreter then fails to allocate it, while per-group convs convert everywhere and
count the same MACs. With a scheme that has a real-valued shortcut around every binary
conv (Bi-Real), every binary edge op carries that shortcut too.
"""

from __future__ import annotations

import dataclasses

import tf_keras as keras

from zoo.architectures.common import batch_norm, float_conv
from zoo.layers import SubsampleChannelPad


class UnknownOpError(ValueError):
    """An op, downsampling or stem name the search does not know."""


class UnsupportedOpError(ValueError):
    """A scheme whose binary conv cannot build an op (e.g. no dilation)."""


@dataclasses.dataclass(frozen=True)
class Op:
    """A cell edge op: maps a ``C``-channel feature map to one of the same shape."""

    name: str
    description: str
    kernel_size: int = 0  # 0: not a conv
    dilation: int = 1
    groups: int = 1
    pooling: str | None = None

    @property
    def binary(self) -> bool:
        return self.kernel_size > 0


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("bconv3x3", "binary 3x3 conv", kernel_size=3),
        Op("bconv5x5", "binary 5x5 conv", kernel_size=5),
        Op("bdil3x3", "binary 3x3 conv, dilation 2", kernel_size=3, dilation=2),
        Op("bdil5x5", "binary 5x5 conv, dilation 2", kernel_size=5, dilation=2),
        Op("bgroup3x3", "binary 3x3 conv in 4 groups", kernel_size=3, groups=4),
        Op("skip", "identity"),
        Op("max_pool3x3", "3x3 max-pooling", pooling="max"),
        Op("avg_pool3x3", "3x3 average pooling", pooling="avg"),
    )
}

#: how a stage halves the resolution: a binary 3x3 stride-2 conv + BN, added to a shortcut
DOWNSAMPLES: dict[str, str] = {
    "option_a": "parameter-free shortcut (subsample, zero-pad channels)",
    "float_conv1x1": "float 1x1 stride-2 conv + BN shortcut",
    "binary_conv1x1": "binary 1x1 stride-2 conv + BN shortcut (BARS' binary downsampling)",
}

#: the float stem: conv + BN + activation; its stride halves every later feature map
STEMS: dict[str, int] = {"conv3x3": 1, "conv3x3_s2": 2}


def check_names(names, valid, kind: str) -> tuple[str, ...]:
    """``names`` as a tuple, each checked against ``valid`` (an error lists the valid ones)."""
    names = tuple(names)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UnknownOpError(
            f"Unknown {kind} {', '.join(repr(n) for n in unknown)}; valid {kind}s: {', '.join(valid)}."
        )
    return names


def binary_conv(scheme, filters: int, kernel_size: int, strides: int = 1, dilation: int = 1, name=None):
    """The scheme's binary conv, with a dilation if asked (set through the layer's config)."""
    layer = scheme.conv(filters, kernel_size, strides, name=name)
    if dilation == 1:
        return layer
    config = layer.get_config()
    if "dilation_rate" not in config:
        raise UnsupportedOpError(
            f"Scheme {scheme.name!r}: its binary conv {type(layer).__name__} has no dilation, so it "
            "cannot build dilated ops; leave bdil3x3 / bdil5x5 out of the op set for it."
        )
    config["dilation_rate"] = (dilation, dilation)
    return type(layer).from_config(config)


@keras.utils.register_keras_serializable(package="zoo")
class ChannelSlice(keras.layers.Layer):
    """``x[..., start:stop]``: one channel group of a grouped op."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start = int(start)
        self.stop = int(stop)

    def call(self, inputs):
        return inputs[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def apply_op(name: str, x, scheme, name_prefix: str):
    """``op(x)`` for the op called ``name``; layers are named ``<name_prefix>_...``."""
    op = OPS[name]
    if op.pooling == "max":
        return keras.layers.MaxPooling2D(3, 1, padding="same", name=f"{name_prefix}_maxpool")(x)
    if op.pooling == "avg":
        return keras.layers.AveragePooling2D(3, 1, padding="same", name=f"{name_prefix}_avgpool")(x)
    if not op.binary:
        return x
    channels = x.shape[-1]
    if channels % op.groups:
        raise ValueError(f"{name_prefix}: op {name} needs a width divisible by {op.groups}, got {channels}.")
    per_group = channels // op.groups
    parts = []
    for group in range(op.groups):
        suffix = f"_g{group + 1}" if op.groups > 1 else ""
        part = x
        if op.groups > 1:
            part = ChannelSlice(group * per_group, (group + 1) * per_group, name=f"{name_prefix}_slice{suffix}")(x)
        part = binary_conv(scheme, per_group, op.kernel_size, 1, op.dilation, name=f"{name_prefix}_conv{suffix}")(part)
        parts.append(batch_norm(f"{name_prefix}_bn{suffix}")(part))
    y = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name=f"{name_prefix}_concat")(parts)
    if scheme.shortcut_every_conv:
        y = keras.layers.Add(name=f"{name_prefix}_shortcut_add")([y, x])
    return y


def apply_downsample(kind: str, x, scheme, filters: int, name_prefix: str):
    """Halves the resolution: ``act(BN(bconv3x3/2(x)) + shortcut(x))``, the shortcut by ``kind``."""
    main = binary_conv(scheme, filters, 3, 2, name=f"{name_prefix}_conv")(x)
    main = batch_norm(f"{name_prefix}_bn")(main)
    if kind == "option_a":
        shortcut = SubsampleChannelPad(filters, 2, name=f"{name_prefix}_shortcut")(x)
    else:
        conv_name = f"{name_prefix}_shortcut_conv"
        if kind == "binary_conv1x1":
            conv = binary_conv(scheme, filters, 1, 2, name=conv_name)
        else:
            conv = float_conv(filters, 1, 2, name=conv_name)
        shortcut = batch_norm(f"{name_prefix}_shortcut_bn")(conv(x))
    y = keras.layers.Add(name=f"{name_prefix}_add")([main, shortcut])
    return scheme.activation_layer(f"{name_prefix}_act")(y)


def apply_stem(kind: str, x, scheme, filters: int):
    """The float stem: conv (stride by ``kind``) + BN + the scheme's activation."""
    x = float_conv(filters, 3, STEMS[kind], name="stem_conv")(x)
    x = batch_norm("stem_bn")(x)
    return scheme.activation_layer("stem_act")(x)
