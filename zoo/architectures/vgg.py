"""VGG-small, CIFAR-style (Zhang et al., LQ-Nets, ECCV 2018; RBNN's ``vgg_small_1w1a``).

3x3 float stem (128) + BN + activation, then five binary 3x3 convs (128, 256, 256, 512,
512) with a 2x2 max-pool after the 1st, 3rd and 5th, each followed by BN and the
activation (conv -> [pool] -> BN -> act, docs/methods/rbnn.md#architectures), flatten, float dense.
"""

from __future__ import annotations

import tf_keras as keras

from zoo.architectures.common import (
    Architecture,
    application_input,
    batch_norm,
    classifier,
    float_conv,
    pooled_features,
    scaled_widths,
)

_BODY = ((128, True), (256, False), (256, True), (512, False), (512, True))


def vgg_small(scheme, *, width_multiplier=None, **options):
    """VGG-small for 32x32 (or 28x28) inputs; ``width_multiplier`` as in the ResNets, the
    other keywords those of :func:`~zoo.architectures.common.application_input`."""
    net = application_input(VGG_SMALL, **options)
    x = net.features
    stem_width, *body_widths = scaled_widths((128, *(f for f, _ in _BODY)), scheme, width_multiplier)
    x = float_conv(stem_width, 3, 1, name="stem_conv")(x)
    x = batch_norm("stem_bn")(x)
    x = scheme.activation_layer("stem_act")(x)
    for i, (filters, (_, pool)) in enumerate(zip(body_widths, _BODY), start=1):
        x = scheme.conv(filters, 3, 1, name=f"conv{i}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = batch_norm(f"bn{i}")(x)
        x = scheme.activation_layer(f"act{i}")(x)
    if net.include_top:
        x = keras.layers.Flatten(name="flatten")(x)
        x = classifier(x, net.classes, net.classifier_activation)
    else:
        x = pooled_features(x, net.include_top, net.pooling)
    return keras.Model(net.inputs, x, name=f"{scheme.name}_vgg_small")


VGG_SMALL = Architecture(
    "vgg_small", vgg_small, "VGG (CIFAR-style)",
    "VGG-small (128-128-256-256-512-512), max-pool before BN", (32, 32, 3), 10, 8,
)
