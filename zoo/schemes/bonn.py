"""BONN — Bayesian Optimized 1-bit CNNs (docs/methods/bonn.md), all of it in one place.

Gu, Zhao, Jiang, Zhang, Liu, Guo, Ji, "Bayesian Optimized 1-Bit CNNs", ICCV 2019
(arXiv 1908.06314); equations as reproduced in Zhang et al., *Binary Neural Networks*
(CRC 2023) §3.7.

BONN treats a layer's latent kernel ``k`` as a random variable with a two-mode Gaussian
mixture prior at ``±μ`` and its binarization error as Gaussian noise. MAP estimation
gives the *Bayesian kernel loss*: it pulls the modulated kernel ``w∘k`` onto ±1 and each
weight towards the mode of its sign with a learned per-channel spread σ. The *Bayesian
feature loss* is a centre loss with learned per-class, per-dimension variances on the
feature entering the classifier. Inference is a plain binary conv with one scale per
layer. This module holds:

* :func:`modulated_sign` — ``sign(w∘k)`` with the asynchronous backward of §2.5
  (clipped straight-through estimate on ``q = w∘k``, chained to ``k`` and ``w``);
* :class:`BONNConv2D` — the conv of §2.4 (``kernel``, modulation ``w`` ∈ ℝ^{kh·kw},
  per-output-channel ``mu`` and ``rho`` with ``σ = softplus(ρ)``), output scaled by
  ``1 / w̄``; it adds its Bayesian kernel loss (:func:`bayesian_kernel_loss`, the
  spec's "exact Keras realisation") with ``add_loss``, so even a plain ``model.fit``
  trains with it;
* :func:`bayesian_feature_loss`, :func:`centre_update` and :class:`BONNTrainer` — the
  ``keras.Model`` wrapper whose ``train_step`` adds the feature loss on the input of
  the ``predictions`` layer, updates the class centres with the centre-loss rule after
  each step and logs ``kernel_loss``, ``feature_loss`` and ``total_loss`` besides the
  task ``loss``;
* the export rule: ``sign(w∘k)`` as the ±1 kernel, ``1/w̄`` folded into the following
  BN — nothing of the priors survives.

Choices where the spec leaves it open (each a [choice] of docs/methods/bonn.md#deviations-from-the-paper): ν = 1; the
activation backward is the clipped STE (Larq ``ste_sign``); ``σ = softplus(ρ)``;
``w`` starts at ``1 / mean|k|``, μ_i at ``mean|k_i|``, σ_i at ``std|k_i|``;
``1/w̄`` is not differentiated; the feature loss is averaged over the batch, uses the
feature that enters the final dense layer and updates centres at rate 0.5; binary convs
pad with +1 (LCE's fast path, §0.4).
"""

from __future__ import annotations

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.distillation import Distiller
from zoo.schemes.base import BinaryExport, Reported, Scheme, conv_geometry, conv_initializer, export_rule

#: λ, the kernel-loss weight (book Table 3.4 ablation, and the ImageNet runs; §2.6)
KERNEL_LOSS_WEIGHT = 1e-4
#: ν, the reconstruction-noise variance (not recovered; §2.6 [choice])
NU = 1.0
#: θ, the feature-loss weight (§2.6 [choice]: the value used on real-valued ResNets)
FEATURE_LOSS_WEIGHT = 1e-3
#: α_c, the centre-loss update rate (§2.8 [choice])
CENTRE_RATE = 0.5
#: lower bound of the initial σ, for filters whose |k| has no spread (a single weight)
_MIN_INITIAL_SIGMA = 1e-3

_BOOK = "BNN-book Table 3.4 (ablation; WRN widths not recovered), docs/methods/bonn.md#reported-results"


def sign(x):
    """``sign`` with sign(0) = +1, as Larq and LCE."""
    return tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x))


@tf.custom_gradient
def modulated_sign(kernel, modulation):
    """``k̂ = sign(w∘k)`` with BONN's asynchronous backward (§2.5, book Eqs. 3.113–3.119).

    ``∂L/∂k = ∂L/∂k̂ ∘ 1[|w∘k| ≤ 1] ∘ w`` and ``∂L/∂w = Σ_{i,n} ∂L/∂k̂ ∘ 1[|w∘k| ≤ 1] ∘ k``:
    ``kernel`` is HWIO, ``modulation`` broadcasts over it with shape ``(kh, kw, 1, 1)``.
    """
    q = kernel * modulation

    def grad(upstream):
        passed = upstream * tf.cast(tf.abs(q) <= 1.0, upstream.dtype)
        return passed * modulation, tf.reduce_sum(passed * kernel, axis=[2, 3], keepdims=True)

    return sign(q), grad


def bayesian_kernel_loss(kernel, modulation, mu, sigma, kernel_loss_weight=KERNEL_LOSS_WEIGHT, nu=NU):
    """One layer's Bayesian kernel loss in the spec's exact Keras form (§2.5).

    ``kernel`` HWIO; ``modulation`` broadcastable to it (``(kh, kw, 1, 1)``); ``mu``,
    ``sigma`` one value per output channel. With ``s_p = sign(k_p)`` and ``sg`` the
    stop-gradient::

        λ/2 · Σ ‖sg(k̂) − w∘k‖²  +  λν/2 · Σ_i Σ_p (k_p − s_p·sg(μ_i))² / sg(σ_i)²
          + λν/2 · Σ_i mean_p [(sg(k_p) − s_p·μ_i)² / σ_i² + log σ_i²]

    The first two terms give the book's ∂/∂k and ∂/∂w, the third the 1/P-normalised
    ∂/∂μ and ∂/∂σ; the prior distance therefore appears twice in the value.
    """
    q = kernel * modulation
    reconstruction = tf.reduce_sum(tf.square(tf.stop_gradient(sign(q)) - q))
    signs = sign(kernel)
    kernel_pull = tf.reduce_sum(
        tf.square(kernel - signs * tf.stop_gradient(mu)) / tf.square(tf.stop_gradient(sigma))
    )
    prior_fit = tf.reduce_sum(tf.reduce_mean(
        tf.square(tf.stop_gradient(kernel) - signs * mu) / tf.square(sigma) + tf.math.log(tf.square(sigma)),
        axis=[0, 1, 2],
    ))
    return kernel_loss_weight / 2 * reconstruction + kernel_loss_weight * nu / 2 * (kernel_pull + prior_fit)


@keras.utils.register_keras_serializable(package="zoo")
class BONNConv2D(lq.layers.QuantConv2D):
    """The BONN binary conv (§2.4): ``(1/w̄)·conv(sign(a), sign(w∘k))``, NHWC / HWIO.

    A Larq ``QuantConv2D`` (sign input quantizer, padding with ``pad_values`` after
    binarization) whose kernel is binarized through :func:`modulated_sign` instead of a
    kernel quantizer. Variables: ``kernel``; ``w``, the modulation vector of length
    kh·kw shared by all (output, input) slices, indexed row-major over (kh, kw) as in
    the reference; ``mu`` and ``rho`` per output channel, the prior's mode and spread
    ``σ = softplus(ρ)``. The layer adds :func:`bayesian_kernel_loss` with ``add_loss``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding: str = "same",
        pad_values: float = 1.0,
        kernel_loss_weight: float = KERNEL_LOSS_WEIGHT,
        nu: float = NU,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            pad_values=pad_values,
            input_quantizer="ste_sign",
            kernel_quantizer=None,
            kernel_initializer=kernel_initializer or conv_initializer(),
            use_bias=False,
            **kwargs,
        )
        if kernel_loss_weight < 0 or nu <= 0:
            raise ValueError(f"{self.name}: need kernel_loss_weight >= 0 and nu > 0, got {kernel_loss_weight}, {nu}.")
        self.kernel_loss_weight = float(kernel_loss_weight)
        self.nu = float(nu)

    def build(self, input_shape):
        super().build(input_shape)
        kh, kw = self.kernel_size
        self.w = self.add_weight("w", (kh * kw,), initializer="ones")
        self.mu = self.add_weight("mu", (self.filters,), initializer="zeros")
        self.rho = self.add_weight("rho", (self.filters,), initializer="zeros")
        self.initialize_priors()
        self.add_loss(self.kernel_loss)

    def initialize_priors(self):
        """``w = 1/mean|k|``, ``μ_i = mean|k_i|``, ``σ_i = std|k_i|`` from the current kernel.

        ``w = 1/mean|k|`` [choice] puts ``w∘k`` on the scale of ±1 that the kernel loss's
        reconstruction term pulls it to. ``w = 1`` was measured as the alternative and trains
        worse: that term then outweighs the task loss (14 vs 2.4 at the start) and drives every
        ``|k|`` away from 0, so no sign flipped in 200 steps (docs/methods/bonn.md#measured)."""
        magnitudes = tf.abs(self.kernel)
        self.w.assign(tf.fill(self.w.shape, 1.0 / tf.reduce_mean(magnitudes)))
        self.mu.assign(tf.reduce_mean(magnitudes, axis=[0, 1, 2]))
        sigma = tf.maximum(tf.math.reduce_std(magnitudes, axis=[0, 1, 2]), _MIN_INITIAL_SIGMA)
        self.rho.assign(sigma + tf.math.log(-tf.math.expm1(-sigma)))  # softplus⁻¹(σ)

    def modulation(self):
        kh, kw = self.kernel_size
        return tf.reshape(self.w, [kh, kw, 1, 1])

    def sigma(self):
        return tf.nn.softplus(self.rho)

    def scale(self):
        """The forward's ``1 / w̄`` (not differentiated; §2.5 [choice])."""
        return tf.stop_gradient(1.0 / tf.reduce_mean(self.w))

    def binary_kernel(self, kernel=None):
        """``sign(w∘k)``; the variables are read here, outside the custom gradient (which
        must see tensors: a mirrored variable read inside it would need its own gradient)."""
        kernel = tf.convert_to_tensor(self.kernel if kernel is None else kernel)
        return modulated_sign(kernel, self.modulation())

    def kernel_loss(self):
        return bayesian_kernel_loss(self.kernel, self.modulation(), self.mu, self.sigma(),
                                    self.kernel_loss_weight, self.nu)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, self.binary_kernel(kernel)) * self.scale()

    def get_config(self):
        config = super().get_config()
        for fixed in ("input_quantizer", "kernel_quantizer", "use_bias"):
            config.pop(fixed)
        return {**config, "kernel_loss_weight": self.kernel_loss_weight, "nu": self.nu}


def bonn_layers(model: keras.Model) -> list[BONNConv2D]:
    return [layer for layer in model.layers if isinstance(layer, BONNConv2D)]


# -- the Bayesian feature loss and the trainer ------------------------------------------
def bayesian_feature_loss(features, labels, centres, log_variances, feature_loss_weight=FEATURE_LOSS_WEIGHT):
    """``θ/2 · mean_m {‖f_m − c_m‖² + Σ_n [σ_{m,n}⁻² (f_{m,n} − c_{m,n})² + log σ²_{m,n}]}``.

    ``m`` runs over the batch with the class of each sample (§2.3, averaged over the
    batch [choice]); ``centres`` and ``log_variances`` (= log σ²) have shape
    ``(classes, feature dims)``. The centres get no gradient: they follow
    :func:`centre_update`.
    """
    centre = tf.stop_gradient(tf.gather(centres, labels))
    log_variance = tf.gather(log_variances, labels)
    squared = tf.square(features - centre)
    per_sample = tf.reduce_sum(squared + squared * tf.exp(-log_variance) + log_variance, axis=1)
    return feature_loss_weight / 2 * tf.reduce_mean(per_sample)


def centre_update(centres: tf.Variable, features, labels, rate: float = CENTRE_RATE) -> None:
    """Centre loss' rule (Wen et al., ECCV 2016): ``c_j ← c_j − α·Σ_{y_i=j}(c_j − f_i) / (1 + n_j)``."""
    members = tf.one_hot(labels, tf.shape(centres)[0], dtype=features.dtype)  # (batch, classes)
    counts = tf.reduce_sum(members, axis=0)[:, None]
    sums = tf.matmul(members, features, transpose_a=True)
    centres.assign_sub(rate * (counts * centres - sums) / (1.0 + counts))


class BONNTrainer(keras.Model):
    """The model ``fit`` drives for BONN: the student plus the Bayesian feature loss.

    The step minimises the compiled task loss + the losses the student's layers add
    (the Bayesian kernel losses of its BONN convs) + :func:`bayesian_feature_loss` on the
    input of the student's ``predictions`` layer; after the optimizer step the class
    centres move by :func:`centre_update`. ``log_variances`` (log σ² per class and feature
    dimension) is trained by the optimizer, the centres are not. Both live here, not in
    the student: they are training machinery, neither exported nor in the weights file.

    Logged as :class:`zoo.distillation.Distiller` does: ``loss`` (the compiled task loss,
    as ``val_loss``), ``kernel_loss``, ``feature_loss``, ``total_loss`` (their sum, what
    the step minimises) and the compiled metrics.
    """

    def __init__(self, student: keras.Model, feature_loss_weight: float = FEATURE_LOSS_WEIGHT,
                 centre_rate: float = CENTRE_RATE, name: str | None = None, **kwargs):
        super().__init__(name=name or f"{student.name}_bonn_trainer", **kwargs)
        try:
            head = student.get_layer("predictions")
        except ValueError:
            raise ValueError(
                f"BONNTrainer needs a classifier with a final Dense layer named 'predictions' "
                f"(build {student.name!r} with include_top=True)."
            ) from None
        self.student = student
        self.feature_loss_weight = float(feature_loss_weight)
        self.centre_rate = float(centre_rate)
        self._features_and_prediction = keras.Model(student.inputs, [head.input, student.output])
        shape = (int(head.units), int(head.input.shape[-1]))
        # MEAN: under a distribution strategy each replica's centre update is averaged
        self.centres = self.add_weight("centres", shape, initializer="zeros", trainable=False,
                                       aggregation=tf.VariableAggregation.MEAN)
        self.log_variances = self.add_weight("log_variances", shape, initializer="zeros")
        self.loss_trackers = {key: keras.metrics.Mean(name=key)
                              for key in ("kernel_loss", "feature_loss", "total_loss")}

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = tf.reshape(tf.cast(y, tf.int32), [-1])
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            features, prediction = self._features_and_prediction(x, training=True)
            own = self.student.losses
            losses = {
                "loss": self.compiled_loss(y, prediction, sample_weight),
                "kernel_loss": tf.add_n(own) if own else tf.constant(0.0),
                "feature_loss": bayesian_feature_loss(features, labels, self.centres, self.log_variances,
                                                      self.feature_loss_weight),
            }
            objective, total = Distiller.objective(losses)
        self.optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
        centre_update(self.centres, tf.stop_gradient(features), labels, self.centre_rate)
        self.compiled_metrics.update_state(y, prediction, sample_weight)
        for key, tracker in self.loss_trackers.items():
            tracker.update_state(total if key == "total_loss" else losses[key])
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        """The student's task loss and compiled metrics (``val_loss``, ``val_accuracy``)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        prediction = self(x, training=False)
        self.compiled_loss(y, prediction, sample_weight)
        self.compiled_metrics.update_state(y, prediction, sample_weight)
        return {m.name: m.result() for m in self.compiled_loss.metrics + self.compiled_metrics.metrics}


# -- export -----------------------------------------------------------------------------
@export_rule(BONNConv2D)
def export_bonn_conv(layer: BONNConv2D) -> BinaryExport:
    """±1 kernel ``sign(w∘k)`` and the layer scale ``1/w̄`` for every channel (§2.8)."""
    return BinaryExport(
        kernel=layer.binary_kernel().numpy().astype(np.float32),
        scale=np.full(layer.filters, layer.scale().numpy(), np.float32),
        conv_kwargs=conv_geometry(layer),
    )


class BONN(Scheme):
    name = "bonn"
    method = "BONN (Bayesian kernel and feature losses)"
    paper = "Gu et al., Bayesian Optimized 1-Bit CNNs, ICCV 2019"
    activation = "hardtanh"
    reported = (
        Reported("resnet18", "imagenet2012", 59.40, "BONN-test-README (released checkpoint), docs/methods/bonn.md#reported-results"),
        Reported("wrn22", "cifar10", 87.34, _BOOK, note="λ=1e-4, θ=1e-2"),
        Reported("wrn22", "cifar100", 60.91, _BOOK, note="λ=1e-4, θ=1e-4"),
        Reported("wrn40", "cifar10", 87.41, _BOOK, note="λ=1e-4, θ=1e-4"),
        Reported("wrn40", "cifar100", 61.25, _BOOK, note="λ=1e-4, θ=1e-3"),
    )

    def __init__(self, kernel_loss_weight: float = KERNEL_LOSS_WEIGHT, nu: float = NU):
        self.kernel_loss_weight = kernel_loss_weight
        self.nu = nu

    def conv(self, filters, kernel_size, strides=1, name=None):
        return BONNConv2D(filters, kernel_size, strides, pad_values=self.pad_values,
                          kernel_loss_weight=self.kernel_loss_weight, nu=self.nu, name=name)
