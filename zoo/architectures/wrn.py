"""Wide ResNets WRN-22 and WRN-40, CIFAR-style (Zagoruyko & Komodakis, BMVC 2016).

The BONN ablation (docs/methods/bonn.md#reported-results, BNN-book Table 3.4) trains WRN-22 and WRN-40 on
CIFAR; the widths it used were not recovered. These builders are the standard
WRN-d-k: a 3x3 float stem of 16 channels, three stages of (d − 4) / 6 basic blocks of
16k, 32k, 64k channels (stride 2 at stages 2 and 3), a float 1x1 conv + BN shortcut
where the shape changes, global pool, BN, float dense.

Width: ``width=4`` by default (WRN-d-4: 16-64-128-256). [choice] A binary WRN-22 at
k = 1 (0.27 M parameters, the size of ResNet-20) reaching the reported 86–87 % on
CIFAR-10 and 60–61 % on CIFAR-100 in 2019 is implausible next to the same book's
Bi-Real ResNet-18 32-32-64-128 (54.9 % on CIFAR-100, Table 3.3), while k = 4 (4.3 M /
8.9 M parameters) matches those numbers' range; ``width=`` gives the other widths.

Differences from the original WRN, as every zoo ResNet: blocks are post-activation
(``act(BN(conv(act(BN(conv(x))))) + shortcut(x))``: a BN must follow each binary conv
to take its folded scale at export) with the scheme's activation, and no dropout. Stem,
shortcut convs and dense stay full precision, as the ICCV paper describes for BONN.
"""

from __future__ import annotations

import tf_keras as keras

from zoo.architectures.common import (
    Architecture,
    application_input,
    batch_norm,
    float_conv,
    scaled_widths,
)
from zoo.architectures.resnet import basic_block

STEM_WIDTH = 16


def build_wrn(
    scheme,
    arch: Architecture,
    *,
    depth: int,
    width: int = 4,
    width_multiplier=None,
    **options,
):
    """WRN-``depth``-``width``; ``depth`` = 6·n + 4 (n blocks a stage). ``width_multiplier``
    multiplies every width, the stem's too, as in the ResNets (default: the scheme's); the
    other keywords are those of :func:`~zoo.architectures.common.application_input`."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"{arch.name}: WRN depth must be 6n + 4 with n >= 1, got {depth}.")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"{arch.name}: width must be a positive integer, got {width!r}.")
    net = application_input(arch, **options)
    stem_width, *stage_widths = scaled_widths(
        (STEM_WIDTH, 16 * width, 32 * width, 64 * width), scheme, width_multiplier
    )
    x = float_conv(stem_width, 3, 1, name="stem_conv")(net.features)
    x = batch_norm("stem_bn")(x)
    x = scheme.activation_layer("stem_act")(x)
    for stage, filters in enumerate(stage_widths, start=1):
        for block in range(1, (depth - 4) // 6 + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = basic_block(x, scheme, filters, strides, "float", scheme.shortcut_every_conv,
                             name=f"stage{stage}_block{block}")
    return keras.Model(net.inputs, net.pooled_head(x), name=f"{scheme.name}_{arch.name}")


def wrn22(scheme, *, width=4, **kwargs):
    """WRN-22-``width`` (3 blocks a stage)."""
    return build_wrn(scheme, WRN22, depth=22, width=width, **kwargs)


def wrn40(scheme, *, width=4, **kwargs):
    """WRN-40-``width`` (6 blocks a stage)."""
    return build_wrn(scheme, WRN40, depth=40, width=width, **kwargs)


WRN22 = Architecture(
    "wrn22", wrn22, "Wide ResNet (CIFAR-style)",
    "WRN-22-4 (16-64-128-256; width= for others), float 1x1 shortcuts (BONN's ablation net)",
    (32, 32, 3), 10, 8, schemes=("bonn",),
)
WRN40 = Architecture(
    "wrn40", wrn40, "Wide ResNet (CIFAR-style)",
    "WRN-40-4 (16-64-128-256; width= for others), float 1x1 shortcuts (BONN's ablation net)",
    (32, 32, 3), 10, 8, schemes=("bonn",),
)
