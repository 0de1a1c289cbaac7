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


def check_input_shape(input_shape, arch: Architecture, include_top: bool = True) -> tuple[int, int, int]:
    """The input shape, checked; a feature extractor (``include_top=False``) may leave
    height and width ``None`` (any image size), as keras.applications' builders allow."""
    if input_shape is None:
        return arch.default_input_shape
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        _positive_int(d) or (d is None and axis < 2 and not include_top) for axis, d in enumerate(shape)
    ):
        raise ValueError(
            f"{arch.name}: input_shape must be (height, width, channels) with positive "
            f"integers (height and width may be None with include_top=False), got {input_shape!r}."
        )
    if min((d for d in shape[:2] if d is not None), default=arch.min_input_size) < arch.min_input_size:
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


def model_input(
    arch: Architecture, input_shape=None, classes=None, input_mean=None, input_std=None, *,
    input_tensor=None, include_top=True,
):
    """Checks the builder arguments; returns the model's input (raw pixels, 0-255), its
    own normalisation layer's output and the number of classes.

    ``input_tensor`` (a Keras tensor, as keras.applications' argument) becomes the
    model's input instead of a new ``keras.Input``; the model's inputs are then its
    source inputs, so the model can be built on top of another one."""
    if input_tensor is not None:
        if not _is_keras_tensor(input_tensor):
            raise ValueError(
                f"{arch.name}: input_tensor must be a Keras tensor (keras.Input(...) or a layer's "
                f"output), got {type(input_tensor).__name__}."
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != tensor_shape:
            raise ValueError(
                f"{arch.name}: input_shape {tuple(input_shape)} differs from input_tensor's "
                f"shape {tensor_shape}; pass one of them."
            )
        input_shape = tensor_shape
    input_shape = check_input_shape(input_shape, arch, include_top)
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
    if input_tensor is None:
        inputs = pixels = keras.Input(shape=input_shape, name="pixels")
    else:
        sources = keras.utils.get_source_inputs(input_tensor)
        inputs, pixels = (sources[0] if len(sources) == 1 else sources), input_tensor
    normalized = keras.layers.Normalization(
        mean=mean, variance=[s * s for s in std], name="normalize"
    )(pixels)
    return inputs, normalized, classes


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """What a builder's keras.applications-style keywords give it (:func:`application_input`)."""

    inputs: object
    #: the normalised pixels the network starts from
    features: object
    classes: int
    include_top: bool
    pooling: str | None
    classifier_activation: object

    def pooled_head(self, x):
        """Global pooling (``pooling``, always average with the top), then with the top a
        BN and the float dense classifier: the head of the zoo's ResNets."""
        x = pooled_features(x, self.include_top, self.pooling)
        if self.include_top:
            x = batch_norm("head_bn")(x)
            x = classifier(x, self.classes, self.classifier_activation)
        return x


def application_input(
    arch: Architecture, *, include_top=True, input_tensor=None, input_shape=None, classes=None, pooling=None,
    classifier_activation="softmax", input_mean=None, input_std=None,
) -> ModelInput:
    """The keyword arguments every builder takes, as keras.applications' builders (plus
    ``input_mean`` / ``input_std``, the in-model normalisation), checked: the model's
    input, its normalised features and the head settings (:func:`model_input`)."""
    inputs, features, classes = model_input(arch, input_shape, classes, input_mean, input_std,
                                            input_tensor=input_tensor, include_top=include_top)
    return ModelInput(inputs, features, classes, include_top, pooling, classifier_activation)


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    """PyTorch BN defaults ported to Keras (momentum 0.9, epsilon 1e-5; docs/methods/conventions.md#batchnorm-initialisers-and-weight-decay)."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def float_conv(filters, kernel_size, strides=1, name=None, padding="same") -> keras.layers.Conv2D:
    """A full-precision conv (stems and float shortcuts stay float in every scheme)."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False,
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


def _is_keras_tensor(value) -> bool:
    try:
        return keras.backend.is_keras_tensor(value)
    except ValueError:  # raised for anything that is not a tensor
        return False


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_classes(classes: int, name: str) -> int:
    if not _positive_int(classes):
        raise ValueError(f"{name}: classes must be a positive integer, got {classes!r}.")
    return classes
