"""RBNN — Rotated Binary Neural Network (docs/methods/rbnn.md), all of it in one place.

Lin, Ji, Xu, Zhang, Wang, Wu, Huang, Lin, "Rotated Binary Neural Network", NeurIPS 2020
(arXiv 2009.13055); reference code lmbxmu/RBNN.

Binarizing ``w`` leaves an angular error no scale removes. RBNN rotates each output
channel's standardized weight vector with a bi-rotation ``R = R1 ⊗ R2`` (two small
orthogonal matrices shared by the layer, fitted once per epoch in closed form, not by
SGD) towards a vertex of the hypercube, mixes rotated and unrotated weights with a
learned per-channel ``|sin θ|``, and back-propagates through ``sign`` with an
epoch-dependent smooth approximation. This module holds:

* :class:`RBNNSign` — the training-aware sign (forward ``sign``, backward
  ``k·max(0, √2·t − t²|x|)``) as a Larq quantizer whose ``t``, ``k`` are layer state;
* :class:`RBNNConv2D` — the conv of §1.3 (weight standardization, bi-rotation,
  adjustable rotated weight, per-channel scale α, per-sample activation centring);
* :class:`RotationUpdate` and :class:`SignSchedule` — the per-epoch callbacks (§1.4,
  §1.5); :meth:`RBNN.callbacks` gives both;
* the export rule: ``sign(w̃)`` as the ±1 kernel, α folded into the following BN, and
  the activation centring kept as a :class:`~zoo.layers.CenterActivations` pre-op (§1.10).

Deviations, each a [choice] of docs/methods/rbnn.md#deviations-from-the-paper: ε = 1e-8 / 1e-12
in the weight / activation std (the activation ε far below any std: the reference has none);
rotations updated persistently every epoch (the reference's 4-GPU ImageNet runs lost them,
§1.4); binary convs pad with +1 (LCE's fast path, §0.4) rather than 0. BatchNorm γ starts as
the reference's (:meth:`RBNN.initialize`). The ``*_official`` architectures pad as the
reference does, for checkpoints ported with :mod:`zoo.port`.
"""

from __future__ import annotations

import math

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.layers import CenterActivations, center_per_sample
from zoo.schemes.base import BinaryConv2D, BinaryExport, Reported, Scheme, conv_initializer, export_rule
from zoo.schemes.base import storage_rule

T_MIN, T_MAX = 1e-2, 1e1
WEIGHT_STD_EPS = 1e-8
#: far below any activation std: the reference divides by the std alone, which makes every layer's
#: gradient independent of its input's scale — with BatchNorm γ starting at 1e-8 (§1.7) an ε of
#: 1e-5 took that away and the gradients vanished (docs/methods/rbnn.md#measured)
ACTIVATION_STD_EPS = 1e-12
ROTATION_SWEEPS = 3
_SQRT2 = math.sqrt(2.0)

_README = "RBNN-README (paper data), docs/methods/rbnn.md#reported-results"


def sign_schedule(epoch: int, epochs: int) -> dict[str, float]:
    """``t``, ``k`` for weights and activations at the start of ``epoch`` (§1.5)."""
    log_t = math.log10(T_MIN) + (math.log10(T_MAX) - math.log10(T_MIN)) * epoch / epochs
    t = 10.0**log_t
    return {"t_weights": t, "k_weights": max(1.0 / t, 1.0), "t_activations": max(t, 1.0), "k_activations": 1.0}


@tf.custom_gradient
def rbnn_sign(x, t, k):
    """``sign`` (with sign(0) = +1, as Larq and LCE) whose backward is ``F'`` of §1.5."""

    def grad(dy):
        surrogate = k * tf.maximum(0.0, _SQRT2 * t - t * t * tf.abs(x))
        return dy * surrogate, tf.zeros_like(t), tf.zeros_like(k)

    return tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x)), grad


@keras.utils.register_keras_serializable(package="zoo")
class RBNNSign(lq.quantizers.Quantizer):
    """The training-aware sign as a Larq quantizer; ``t`` and ``k`` are its state.

    They start at epoch 0's values and are set each epoch by :class:`SignSchedule`;
    being weights, they are saved and restored with the model (a resumed run keeps its
    schedule position).
    """

    precision = 1

    def __init__(self, for_weights: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.for_weights = for_weights

    def build(self, input_shape):
        start = sign_schedule(0, 1)
        kind = "weights" if self.for_weights else "activations"
        # Names unique within the conv layer that owns both quantizers (HDF5 saving needs it).
        self.t = self.add_weight(f"t_{kind}", (), initializer=keras.initializers.Constant(start[f"t_{kind}"]),
                                 trainable=False)
        self.k = self.add_weight(f"k_{kind}", (), initializer=keras.initializers.Constant(start[f"k_{kind}"]),
                                 trainable=False)
        super().build(input_shape)

    def call(self, inputs):
        return rbnn_sign(inputs, tf.convert_to_tensor(self.t), tf.convert_to_tensor(self.k))

    def get_config(self):
        return {**super().get_config(), "for_weights": self.for_weights}


def rotation_shape(n: int) -> tuple[int, int]:
    """``(a, b)``: ``a`` the largest divisor of ``n`` with ``a ≤ ⌊√n⌋``, ``b = n / a``."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def unbiased_std(centered, axis):
    """The std of already centred values over ``axis``, divided by n − 1 as PyTorch's."""
    n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(centered), axis)), centered.dtype)
    return tf.sqrt(tf.reduce_sum(tf.square(centered), axis=axis, keepdims=True) / (n - 1.0))


def standardize_rows(w):
    """Per-row ``(w − mean) / (unbiased std + ε)`` (§1.3 step 1)."""
    centered = w - tf.reduce_mean(w, axis=1, keepdims=True)
    return centered / (unbiased_std(centered, [1]) + WEIGHT_STD_EPS)


@keras.utils.register_keras_serializable(package="zoo")
class RBNNConv2D(BinaryConv2D):
    """The RBNN binary conv (docs/methods/rbnn.md#what-the-layer-computes), NHWC / HWIO.

    Variables: ``kernel`` (HWIO, trainable), ``alpha`` and ``theta`` (per output
    channel, trainable; θ starts at π/2 in float32, so the latent weights get no task
    gradient until weight decay on θ and the rotations unlock them — keep it so),
    ``r1`` (a×a) and ``r2`` (b×b), orthogonal, non-trainable, set by
    :class:`RotationUpdate`. The kernel is flattened per output channel in the
    reference order ``(C_in, kh, kw)`` so ported weights give the same binary kernels.
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding: str = "same",
        pad_values: float = 1.0,
        center_activations: bool = True,
        kernel_initializer=None,
        mirrored: bool = False,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, strides, padding, pad_values, **kwargs)
        self.center_activations = bool(center_activations)
        self.mirrored = bool(mirrored)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or conv_initializer())
        self.input_quantizer = RBNNSign(for_weights=False, name="activation_sign")
        self.kernel_quantizer = RBNNSign(for_weights=True, name="weight_sign")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        kh, kw = self.kernel_size
        self.rotation_shape = rotation_shape(channels * kh * kw)
        a, b = self.rotation_shape
        self.kernel = self.add_weight("kernel", (kh, kw, channels, self.filters),
                                      initializer=self.kernel_initializer)
        self.alpha = self.add_weight("alpha", (self.filters,), initializer="ones")
        self.alpha.assign(tf.reduce_mean(tf.abs(self.kernel), axis=[0, 1, 2]))
        self.theta = self.add_weight(
            "theta", (self.filters,), initializer=keras.initializers.Constant(np.float32(np.pi / 2))
        )
        self.r1 = self.add_weight("r1", (a, a), initializer=keras.initializers.Orthogonal(), trainable=False)
        self.r2 = self.add_weight("r2", (b, b), initializer=keras.initializers.Orthogonal(), trainable=False)
        self.input_quantizer.build(input_shape)
        self.kernel_quantizer.build(input_shape)
        super().build(input_shape)

    # -- the weights ------------------------------------------------------------------
    def standardized_weights(self):
        """``X_i`` of §1.3 step 2: standardized weights, shape ``(C_out, a, b)``."""
        rows = tf.reshape(tf.transpose(self.kernel, [3, 2, 0, 1]), [self.filters, -1])
        return tf.reshape(standardize_rows(rows), [self.filters, *self.rotation_shape])

    def mixed_weights(self):
        """``w̃ = (1 − |sin θ|)·X + |sin θ|·sg(R1ᵀ X R2)`` of §1.3 steps 3–4."""
        x = self.standardized_weights()
        rotated = tf.matmul(self.r1, x, transpose_a=True) @ self.r2
        s = tf.abs(tf.sin(self.theta))[:, None, None]
        return x + s * (tf.stop_gradient(rotated) - x)

    def _to_hwio(self, weights):
        kh, kw = self.kernel_size
        oihw = tf.reshape(weights, [self.filters, -1, kh, kw])
        return tf.transpose(oihw, [2, 3, 1, 0])

    def binary_kernel(self):
        """The ±1 HWIO kernel the conv runs with: ``sign(w̃)``, upside down and mirrored
        left to right when ``mirrored`` (between two :class:`~zoo.layers.MirrorSpatial`
        layers such a conv is the plain one with TF's "same" padding moved from after the
        input to before it — PyTorch's stride-2 padding)."""
        kernel = self._to_hwio(self.kernel_quantizer(self.mixed_weights()))
        return kernel[::-1, ::-1] if self.mirrored else kernel

    # -- the forward --------------------------------------------------------------------
    def _standardize_input(self, x):
        if not self.center_activations:
            return x
        centered = center_per_sample(x)
        return centered / (unbiased_std(centered, [1, 2, 3]) + ACTIVATION_STD_EPS)

    def call(self, inputs):
        activations = self.input_quantizer(self._standardize_input(inputs))
        y = tf.nn.conv2d(self.pad(activations), self.binary_kernel(), self.strides, "VALID")
        return y * self.alpha

    def get_config(self):
        return {
            **super().get_config(),
            "center_activations": self.center_activations,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "mirrored": self.mirrored,
        }


# -- per-epoch machinery ---------------------------------------------------------------
def rbnn_layers(model: keras.Model) -> list[RBNNConv2D]:
    return [layer for layer in model.layers if isinstance(layer, RBNNConv2D)]


def rotate(x: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``R1ᵀ X_i R2`` for every output channel i (batched matmuls)."""
    return r1.T @ x @ r2


def rotation_objective(x: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> float:
    """``Σ_i tr(B_iᵀ R1ᵀ X_i R2)`` with ``B_i = sign(R1ᵀ X_i R2)`` (§1.4, to maximise)."""
    return float(np.sum(np.abs(rotate(x, r1, r2))))


def fit_rotations(x: np.ndarray, r1: np.ndarray, r2: np.ndarray, sweeps: int = ROTATION_SWEEPS):
    """The alternating sign / orthogonal-Procrustes sweeps of §1.4 (float64)."""
    for _ in range(sweeps):
        b = np.where(rotate(x, r1, r2) >= 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(np.sum(x @ r2 @ b.transpose(0, 2, 1), axis=0))  # Σ X R2 Bᵀ
        r1 = u @ vt
        u, _, vt = np.linalg.svd(np.sum(x.transpose(0, 2, 1) @ r1 @ b, axis=0))  # Σ Xᵀ R1 B
        r2 = u @ vt
    return r1, r2


class RotationUpdate(keras.callbacks.Callback):
    """Fits every RBNN layer's R1, R2 at the start of each epoch (§1.4).

    After each update it logs ``rbnn_sign_flips``: the fraction of binary weights
    whose sign the rotation flips relative to the unrotated standardized weights.
    """

    def __init__(self, sweeps: int = ROTATION_SWEEPS):
        super().__init__()
        self.sweeps = sweeps
        self.sign_flips: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.sign_flips = update_rotations(self.model, self.sweeps)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.sign_flips is not None:
            logs["rbnn_sign_flips"] = self.sign_flips


def update_rotations(model: keras.Model, sweeps: int = ROTATION_SWEEPS) -> float | None:
    """Runs the rotation update on every RBNN layer; returns the flipped-sign fraction."""
    flipped = total = 0
    for layer in rbnn_layers(model):
        x = layer.standardized_weights().numpy().astype(np.float64)
        r1, r2 = fit_rotations(x, layer.r1.numpy().astype(np.float64), layer.r2.numpy().astype(np.float64), sweeps)
        layer.r1.assign(r1.astype(np.float32))
        layer.r2.assign(r2.astype(np.float32))
        flipped += int(np.sum((rotate(x, r1, r2) >= 0) != (x >= 0)))
        total += x.size
    return flipped / total if total else None


class SignSchedule(keras.callbacks.Callback):
    """Sets every RBNN layer's sign-approximation ``t``, ``k`` each epoch (§1.5)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        values = sign_schedule(epoch, self.epochs)
        for layer in rbnn_layers(self.model):
            layer.kernel_quantizer.t.assign(values["t_weights"])
            layer.kernel_quantizer.k.assign(values["k_weights"])
            layer.input_quantizer.t.assign(values["t_activations"])
            layer.input_quantizer.k.assign(values["k_activations"])


# -- export -----------------------------------------------------------------------------
@export_rule(RBNNConv2D)
def export_rbnn_conv(layer: RBNNConv2D) -> BinaryExport:
    """±1 kernel ``sign(w̃)``, scale α, and the centring pre-op (§1.10)."""
    kernel = layer.binary_kernel().numpy()  # the forward's own sign
    pre = (CenterActivations(name=f"{layer.name}_center"),) if layer.center_activations else ()
    return BinaryExport(
        kernel=kernel.astype(np.float32),
        scale=layer.alpha.numpy(),
        conv_kwargs=dict(
            filters=layer.filters,
            kernel_size=layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            pad_values=layer.pad_values,
        ),
        pre_layers=pre,
    )


#: how far from zero (in units of the standardized weights) the stored form keeps every weight
STORAGE_MARGIN = 0.5


@storage_rule(RBNNConv2D)
def fold_rotations(layer: RBNNConv2D) -> bool:
    """Rewrites the layer into the equivalent form with identity rotations (for storage).

    The forward depends on the kernel only through ``sign(w̃)``. With R1 = R2 = I,
    ``w̃ = X`` for any θ, so a kernel whose standardized rows have the signs of the
    trained ``w̃`` gives the same layer. Its entries are ``sign(w̃)·(|w̃| + margin)``, the
    negative ones rescaled so that every row has mean zero, and each row then scaled to the
    trained kernel row's standard deviation: standardizing keeps each sign and ignores the
    scale, every entry is at least ``margin`` standard deviations from zero, so float16
    rounding cannot flip one, and a fine-tune's steps are the size they were in training (a row of positive signs only becomes equal entries, which standardize to
    0, whose sign is +1). α, θ and the sign schedule stay as trained; fine-tuning continues from
    this form, its rotation updates starting at the identity. A row whose signs are all
    negative has no such form (standardized rows always hold a non-negative entry): the
    layer is then left as it is and False returned.
    """
    mixed = layer.mixed_weights().numpy().reshape(layer.filters, -1).astype(np.float64)
    positive = mixed >= 0  # ste_sign(0) = +1
    if not positive.any(axis=1).all():
        return False
    magnitude = np.abs(mixed) + STORAGE_MARGIN
    positive_sum = np.sum(np.where(positive, magnitude, 0.0), axis=1, keepdims=True)
    negative_sum = np.sum(np.where(positive, 0.0, magnitude), axis=1, keepdims=True)
    scale = np.divide(positive_sum, negative_sum, out=np.ones_like(negative_sum), where=negative_sum > 0)
    rows = np.where(positive, magnitude, -magnitude * scale)
    rows[positive.all(axis=1)] = 1.0  # an all-positive row: equal entries standardize to 0, whose sign is +1
    # Standardizing ignores a row's scale, the optimizer does not: each row keeps the trained
    # kernel's, so a fine-tune moves the stored weights as far per step as it moved the trained
    # ones (rows in standardized units were ~50x larger, and Adam at 2e-3 flipped no sign).
    trained = tf.reshape(tf.transpose(layer.kernel, [3, 2, 0, 1]), [layer.filters, -1]).numpy().astype(np.float64)
    trained_scale = np.std(trained, axis=1, keepdims=True)
    row_scale = np.std(rows, axis=1, keepdims=True)
    # an all-positive row (std 0) becomes the power of two nearest the scale: equal entries
    # whose float32 mean is exact, so they still standardize to 0
    nearest_power = 2.0 ** np.round(np.log2(np.where(trained_scale > 0, trained_scale, 1.0)))
    factor = np.divide(trained_scale, row_scale, out=nearest_power, where=row_scale > 0)
    rows = rows * np.where(factor > 0, factor, 1.0)
    layer.kernel.assign(layer._to_hwio(tf.constant(rows, tf.float32)))
    layer.r1.assign(tf.eye(layer.r1.shape[0]))
    layer.r2.assign(tf.eye(layer.r2.shape[0]))
    return True


class RBNN(Scheme):
    name = "rbnn"
    method = "RBNN (bi-rotation, training-aware sign)"
    paper = "Lin et al., Rotated Binary Neural Network, NeurIPS 2020"
    activation = "hardtanh"
    reported = (
        Reported("resnet18_cifar", "cifar10", 92.2, _README),
        Reported("resnet20", "cifar10", 86.5, _README),
        Reported("resnet20_bireal", "cifar10", 87.8, _README),
        Reported("vgg_small", "cifar10", 91.3, _README),
        Reported("resnet18", "imagenet2012", 59.9, _README, top5=81.9),
        Reported("resnet34", "imagenet2012", 63.1, _README, top5=84.4),
        # the *_official variants compute the reference's own networks (zoo.port)
        Reported("resnet20_official", "cifar10", 86.5, _README),
        Reported("resnet18_official", "imagenet2012", 59.9, _README, top5=81.9),
        Reported("resnet34_official", "imagenet2012", 63.1, _README, top5=84.4),
    )

    def __init__(self, center_activations: bool = True):
        self.center_activations = center_activations

    def conv(self, filters, kernel_size, strides=1, name=None, mirrored=False):
        return RBNNConv2D(filters, kernel_size, strides, pad_values=self.pad_values,
                          center_activations=self.center_activations, mirrored=mirrored, name=name)

    def callbacks(self, epochs: int) -> list:
        return [RotationUpdate(), SignSchedule(epochs)]

    def initialize(self, model: keras.Model, architecture: str) -> None:
        """The reference's BatchNorm γ (§1.7): ``resnet20*``, ``resnet18``, ``resnet34``: γ = 1e-8
        in every BatchNorm2d, U(0, 1) in the head's BatchNorm1d; ``resnet18_cifar``: U(0, 1)
        everywhere (PyTorch 1.1's default); ``vgg_small``: 1 (the builders' default)."""
        rule = _GAMMA_INIT.get(architecture.removesuffix("_official").removesuffix("_bireal"))
        if rule is None:
            return
        uniform = keras.initializers.RandomUniform(0.0, 1.0)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                tiny = rule == "tiny" and layer.name != HEAD_BATCH_NORM
                layer.gamma.assign(tf.fill(layer.gamma.shape, TINY_GAMMA) if tiny else uniform(layer.gamma.shape))


#: BatchNorm γ of the reference's BatchNorm2d layers in the CIFAR ResNet-20 and ImageNet ResNets (§1.7a, e)
TINY_GAMMA = 1e-8
HEAD_BATCH_NORM = "head_bn"
_GAMMA_INIT = {"resnet20": "tiny", "resnet18": "tiny", "resnet34": "tiny", "resnet18_cifar": "uniform"}
