"""What every architecture shares: input checks, the in-model normalisation, BN, heads."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import tf_keras as keras

#: ImageNet statistics on the 0-255 pixel scale (the RBNN reference normalises CIFAR with them too)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """An architecture family member: how to build it and what it expects."""

    name: str
    builder: Callable[..., keras.Model]
    family: str
    description: str
    default_input_shape: tuple[int, int, int]
    default_classes: int
    min_input_size: int
    #: the schemes it is registered for (None: every scheme)
    schemes: tuple[str, ...] | None = None


def check_input_shape(input_shape, arch: Architecture) -> tuple[int, int, int]:
    if input_shape is None:
        return arch.default_input_shape
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"{arch.name}: input_shape must be (height, width, channels) with positive "
            f"integers, got {input_shape!r}."
        )
    if min(shape[:2]) < arch.min_input_size:
        raise ValueError(
            f"{arch.name}: input_shape {shape} is too small; this architecture needs at "
            f"least {arch.min_input_size}x{arch.min_input_size} pixels "
            f"(default {arch.default_input_shape})."
        )
    return shape


def default_normalization(channels: int) -> tuple[Sequence[float], Sequence[float]]:
    """ImageNet mean/std per channel; their channel average for greyscale input."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    raise ValueError(
        f"No default normalisation for {channels}-channel input: pass input_mean and "
        "input_std (one value per channel, on the 0-255 pixel scale)."
    )


def model_input(arch: Architecture, input_shape=None, classes=None, input_mean=None, input_std=None):
    """Checks the builder arguments; returns the model's input (raw pixels, 0-255), its
    own normalisation layer's output and the number of classes."""
    input_shape = check_input_shape(input_shape, arch)
    classes = check_classes(arch.default_classes if classes is None else classes, arch.name)
    channels = input_shape[-1]
    default_mean, default_std = default_normalization(channels) if (
        input_mean is None or input_std is None
    ) else (None, None)
    mean = list(input_mean if input_mean is not None else default_mean)
    std = list(input_std if input_std is not None else default_std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"input_mean and input_std need {channels} values (one per channel), "
            f"got {len(mean)} and {len(std)}."
        )
    inputs = keras.Input(shape=input_shape, name="pixels")
    normalized = keras.layers.Normalization(
        mean=mean, variance=[s * s for s in std], name="normalize"
    )(inputs)
    return inputs, normalized, classes


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    """PyTorch BN defaults ported to Keras (momentum 0.9, epsilon 1e-5; methods.md §0.3)."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def float_conv(filters, kernel_size, strides=1, name=None) -> keras.layers.Conv2D:
    """A full-precision conv (stems and float shortcuts stay float in every scheme)."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal"),
        name=name,
    )


def classifier(x, classes: int, classifier_activation):
    return keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def pooled_features(x, include_top: bool, pooling: str | None):
    """Global pooling for a feature extractor, keras.applications-style ``pooling``."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    if include_top or pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def scaled_widths(widths, scheme, width_multiplier=None) -> tuple[int, ...]:
    """An architecture's feature-map widths times the width multiplier: the builder's
    ``width_multiplier`` argument, else the scheme's (4 for CBCN, 1 for the others)."""
    multiplier = scheme.width_multiplier if width_multiplier is None else width_multiplier
    if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
        raise ValueError(f"width_multiplier must be a positive integer, got {multiplier!r}.")
    return tuple(int(w) * multiplier for w in widths)


def check_classes(classes: int, name: str) -> int:
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"{name}: classes must be a positive integer, got {classes!r}.")
    return classes
