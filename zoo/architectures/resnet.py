"""ResNets: ImageNet-style ResNet-18/34 and CIFAR-style ResNet-18/20, for any scheme.

The layouts are those of the RBNN reference code (docs/methods/rbnn.md#architectures), which the other
methods of the zoo share:

* ImageNet-style (``resnet18``, ``resnet34``; He et al., CVPR 2016, in the Bi-Real
  layout of Liu et al., ECCV 2018): 7x7/2 float stem, BN, activation, 3x3/2 max-pool;
  basic blocks with a real-valued shortcut around every binary 3x3 conv; float 1x1
  stride-s conv + BN where the shape changes; global pool, BN, float dense.
* CIFAR-style ``resnet20`` (16-32-64, 3 blocks a stage): 3x3 float stem, BN, activation;
  parameter-free "option A" shortcuts; ``resnet18_cifar`` (64-128-256-512, 2 blocks a
  stage): 3x3 float stem + BN, binary 1x1 conv + BN shortcuts where the shape changes.
  A block is ``act(BN(conv(act(BN(conv(x))))) + shortcut(x))``, or, for schemes with
  ``shortcut_every_conv`` (Bi-Real), a shortcut around each conv. Both take 28x28x1
  (Fashion-MNIST) as well as 32x32x3.
* ``*_official`` (RBNN only): ``resnet20``, ``resnet18`` and ``resnet34`` padded as the
  PyTorch reference pads — binary convs zero-padded after binarization, every stride-2
  conv and pool padded before the input as well as after it — so that checkpoints ported
  with :mod:`zoo.port` compute what the authors' code does, in Keras and in LCE.

First conv and last dense are full precision in every scheme.
"""

from __future__ import annotations

import copy

import tf_keras as keras

from zoo.architectures.common import (
    Architecture,
    application_input,
    batch_norm,
    float_conv,
    scaled_widths,
)
from zoo.layers import MirrorSpatial, SubsampleChannelPad


def _shortcut(x, scheme, filters, strides, kind, name):
    if strides == 1 and x.shape[-1] == filters:
        return x
    if kind == "option_a":
        return SubsampleChannelPad(filters, strides, name=f"{name}_shortcut")(x)
    conv = scheme.conv if kind == "binary" else float_conv
    x = conv(filters, 1, strides, name=f"{name}_shortcut_conv")(x)
    return batch_norm(f"{name}_shortcut_bn")(x)


def _mirrored(x, layers, name):
    """``layers`` applied to ``x`` turned upside down and mirrored, then turned back: TF's
    "same" padding of a stride-2 op (its extra row and column after the input) becomes
    PyTorch's (before it). A conv among ``layers`` mirrors its kernel."""
    x = MirrorSpatial(name=f"{name}_mirror_in")(x)
    for layer in layers:
        x = layer(x)
    return MirrorSpatial(name=f"{name}_mirror_out")(x)


def _zero_padded(scheme):
    """The scheme with binary convs padded with 0 after binarization, as PyTorch pads ``sign(x)``."""
    zero_padded = copy.copy(scheme)
    zero_padded.pad_values = 0.0
    return zero_padded


def basic_block(x, scheme, filters, strides, shortcut_kind, shortcut_every_conv, name, torch_padding=False):
    shortcut = _shortcut(x, scheme, filters, strides, shortcut_kind, name)
    if torch_padding and strides != 1:
        conv = scheme.conv(filters, 3, strides, name=f"{name}_conv1", mirrored=True)
        h = _mirrored(x, [conv, batch_norm(f"{name}_bn1")], f"{name}_conv1")
    else:
        h = scheme.conv(filters, 3, strides, name=f"{name}_conv1")(x)
        h = batch_norm(f"{name}_bn1")(h)
    if shortcut_every_conv:
        h = keras.layers.Add(name=f"{name}_add1")([h, shortcut])
        h = scheme.activation_layer(f"{name}_act1")(h)
        y = scheme.conv(filters, 3, 1, name=f"{name}_conv2")(h)
        y = batch_norm(f"{name}_bn2")(y)
        y = keras.layers.Add(name=f"{name}_add2")([y, h])
    else:
        h = scheme.activation_layer(f"{name}_act1")(h)
        y = scheme.conv(filters, 3, 1, name=f"{name}_conv2")(h)
        y = batch_norm(f"{name}_bn2")(y)
        y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return scheme.activation_layer(f"{name}_act2")(y)


def build_resnet(
    scheme,
    arch: Architecture,
    *,
    stem: str,
    blocks_per_stage,
    widths,
    shortcut_kind: str,
    shortcut_every_conv: bool | None = None,
    width_multiplier=None,
    torch_padding: bool = False,
    **options,
):
    """Builds any ResNet of this module; the factories below fix its hyper-parameters.

    ``width_multiplier`` multiplies every width (default: the scheme's, 4 for CBCN).
    ``torch_padding`` pads as the PyTorch reference code: binary convs with 0 after
    binarization, the 7x7/2 stem conv with 3 on every side, stride-2 binary convs and the
    max-pool before the input as well as after it (between :class:`MirrorSpatial` layers).
    The other keywords are those of :func:`~zoo.architectures.common.application_input`.
    """
    net = application_input(arch, **options)
    x = net.features
    widths = scaled_widths(widths, scheme, width_multiplier)
    if torch_padding:
        scheme = _zero_padded(scheme)

    if stem == "imagenet":
        if torch_padding:
            x = keras.layers.ZeroPadding2D(3, name="stem_pad")(x)
        x = float_conv(widths[0], 7, 2, name="stem_conv", padding="valid" if torch_padding else "same")(x)
        x = batch_norm("stem_bn")(x)
        x = scheme.activation_layer("stem_act")(x)
        pool = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")
        x = _mirrored(x, [pool], "stem_pool") if torch_padding else pool(x)
    else:
        x = float_conv(widths[0], 3, 1, name="stem_conv")(x)
        x = batch_norm("stem_bn")(x)
        if stem == "cifar_act":
            x = scheme.activation_layer("stem_act")(x)

    # The ImageNet layout has a shortcut around every conv whatever the scheme.
    every_conv = stem == "imagenet" or scheme.shortcut_every_conv
    if shortcut_every_conv is not None:
        every_conv = shortcut_every_conv
    for stage, (blocks, filters) in enumerate(zip(blocks_per_stage, widths), start=1):
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = basic_block(
                x, scheme, filters, strides, shortcut_kind, every_conv,
                name=f"stage{stage}_block{block}", torch_padding=torch_padding,
            )

    return keras.Model(net.inputs, net.pooled_head(x), name=f"{scheme.name}_{arch.name}")


def resnet18(scheme, **kwargs):
    """ResNet-18, ImageNet-style (Bi-Real layout, docs/methods/rbnn.md#architectures)."""
    return build_resnet(
        scheme, RESNET18, stem="imagenet", blocks_per_stage=(2, 2, 2, 2),
        widths=(64, 128, 256, 512), shortcut_kind="float", **kwargs,
    )


def resnet34(scheme, **kwargs):
    """ResNet-34, ImageNet-style (Bi-Real layout, docs/methods/rbnn.md#architectures)."""
    return build_resnet(
        scheme, RESNET34, stem="imagenet", blocks_per_stage=(3, 4, 6, 3),
        widths=(64, 128, 256, 512), shortcut_kind="float", **kwargs,
    )


def resnet18_cifar(scheme, *, widths=(64, 128, 256, 512), **kwargs):
    """ResNet-18, CIFAR-style (docs/methods/rbnn.md#architectures); ``widths`` gives the widened variants."""
    return build_resnet(
        scheme, RESNET18_CIFAR, stem="cifar", blocks_per_stage=(2, 2, 2, 2),
        widths=tuple(widths), shortcut_kind="binary", **kwargs,
    )


def resnet20(scheme, **kwargs):
    """ResNet-20, CIFAR-style with option-A shortcuts (docs/methods/rbnn.md#architectures)."""
    return build_resnet(
        scheme, RESNET20, stem="cifar_act", blocks_per_stage=(3, 3, 3),
        widths=(16, 32, 64), shortcut_kind="option_a", **kwargs,
    )


def resnet20_bireal(scheme, **kwargs):
    """ResNet-20 with a shortcut around every conv (RBNN's ``resnet20_bireal_1w1a``, §1.7b)."""
    return build_resnet(
        scheme, RESNET20_BIREAL, stem="cifar_act", blocks_per_stage=(3, 3, 3),
        widths=(16, 32, 64), shortcut_kind="option_a", shortcut_every_conv=True, **kwargs,
    )


def resnet20_official(scheme, **kwargs):
    """ResNet-20 as RBNN's reference code computes it (``resnet20_1w1a``, §1.7a): the
    model of official CIFAR checkpoints ported with :mod:`zoo.port`."""
    return build_resnet(
        scheme, RESNET20_OFFICIAL, stem="cifar_act", blocks_per_stage=(3, 3, 3),
        widths=(16, 32, 64), shortcut_kind="option_a", torch_padding=True, **kwargs,
    )


def resnet18_official(scheme, **kwargs):
    """ResNet-18 as RBNN's reference ImageNet code computes it (§1.7e), for :mod:`zoo.port`."""
    return build_resnet(
        scheme, RESNET18_OFFICIAL, stem="imagenet", blocks_per_stage=(2, 2, 2, 2),
        widths=(64, 128, 256, 512), shortcut_kind="float", torch_padding=True, **kwargs,
    )


def resnet34_official(scheme, **kwargs):
    """ResNet-34 as RBNN's reference ImageNet code computes it (§1.7e), for :mod:`zoo.port`."""
    return build_resnet(
        scheme, RESNET34_OFFICIAL, stem="imagenet", blocks_per_stage=(3, 4, 6, 3),
        widths=(64, 128, 256, 512), shortcut_kind="float", torch_padding=True, **kwargs,
    )


RESNET18 = Architecture(
    "resnet18", resnet18, "ResNet (ImageNet-style)",
    "ResNet-18, 7x7 stem, Bi-Real layout, float 1x1 downsampling", (224, 224, 3), 1000, 28,
)
RESNET34 = Architecture(
    "resnet34", resnet34, "ResNet (ImageNet-style)",
    "ResNet-34, 7x7 stem, Bi-Real layout, float 1x1 downsampling", (224, 224, 3), 1000, 28,
)
RESNET18_CIFAR = Architecture(
    "resnet18_cifar", resnet18_cifar, "ResNet (CIFAR-style)",
    "ResNet-18 for 32x32 inputs, 3x3 stem, binary 1x1 downsampling", (32, 32, 3), 10, 8,
)
RESNET20 = Architecture(
    "resnet20", resnet20, "ResNet (CIFAR-style)",
    "ResNet-20 (16-32-64), option-A shortcuts", (32, 32, 3), 10, 8,
)
RESNET20_BIREAL = Architecture(
    "resnet20_bireal", resnet20_bireal, "ResNet (CIFAR-style)",
    "ResNet-20 (16-32-64), a shortcut around every conv (RBNN's Bi-Real variant)",
    (32, 32, 3), 10, 8, schemes=("rbnn",),
)

_OFFICIAL = ("padded as the PyTorch reference (binary convs with zeros, stride 2 on both sides): "
             "for ported official checkpoints (zoo.port)")
RESNET20_OFFICIAL = Architecture(
    "resnet20_official", resnet20_official, "ResNet (CIFAR-style)",
    f"ResNet-20 (16-32-64), option-A shortcuts, {_OFFICIAL}", (32, 32, 3), 10, 8, schemes=("rbnn",),
)
RESNET18_OFFICIAL = Architecture(
    "resnet18_official", resnet18_official, "ResNet (ImageNet-style)",
    f"ResNet-18, 7x7 stem, Bi-Real layout, float 1x1 downsampling, {_OFFICIAL}", (224, 224, 3), 1000, 28,
    schemes=("rbnn",),
)
RESNET34_OFFICIAL = Architecture(
    "resnet34_official", resnet34_official, "ResNet (ImageNet-style)",
    f"ResNet-34, 7x7 stem, Bi-Real layout, float 1x1 downsampling, {_OFFICIAL}", (224, 224, 3), 1000, 28,
    schemes=("rbnn",),
)
