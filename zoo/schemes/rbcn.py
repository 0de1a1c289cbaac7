"""RBCN — Rectified Binary Convolutional Networks (docs/methods/rbcn.md), all of it in one place.

Liu, Ding, Xia, Hu, Zhang, Liu, Zhuang, Guo, "RBCN: Rectified Binary Convolutional
Networks for Enhancing the Performance of 1-bit DCNNs", IJCAI 2019 (arXiv 1908.07748);
equations from the BNN book §3.6.

A binary student (the generator) is trained against a frozen full-precision teacher of
the same architecture: discriminators learn to tell the teacher's feature maps (real, R)
from the student's (fake, T), the student learns to fool them. Each binary kernel is
"rectified", ``W ≈ C ⊙ sign(W)`` with a learned matrix C, kept close by a kernel loss;
after each epoch the non-conv parameters are retrained with the convs frozen. This
module holds:

* :class:`RectifiedBinaryConv2D` — ``conv(approx_sign(x), approx_sign(W) ⊙ C)`` with the
  kernel loss ``(λ₁/2)‖sg(W) − C ⊙ Ŵ‖²`` (§3.2, §3.3, §3.6); autodiff of that loss gives
  the book's update rules (3.67, 3.71, 3.75);
* the discriminators (global average pool + MLP ``C → C/2 → C/4 → 1``, LeakyReLU 0.2),
  their loss (BCE on real/fake) and the student's generator term ``(1 − D(T))²``;
* :class:`AdversarialTrainer` — the min-max ``train_step`` as a ``keras.Model`` built on
  the general :class:`zoo.distillation.Distiller`, with its own optimizers for the
  discriminators and for the rectifiers (η₂, following η₁ by a fixed ratio);
* :class:`BatchNormRetraining` — the per-epoch "update strategy" pass;
* the export rule: the ±1 kernel ``sign(W)`` with C folded into the following BN.

**Two variants** (``variant=``):

* ``"deployable"`` (default, every registered ``rbcn_*`` model) — C is one scale per
  output channel, ``W_i ≈ c_i·sign(W_i)`` (XNOR-Net++-style). **This differs from the
  paper**, whose C is one filter-shaped matrix shared by the layer: a C that varies over
  (C_in, kh, kw) is not a per-channel scale, so LCE's ``LceBconv2d`` cannot run it. It
  exports exactly (parity to float rounding) to the Bi-Real inference graph.
* ``"faithful"`` (research) — C of shape (kh, kw, C_in), shared across output channels, as
  the paper's kernel-loss gradient implies. It cannot be exported exactly;
  :func:`approximate_rectifiers` replaces C by its mean (the least-squares per-filter
  scale, since Ŵ² = 1) and :func:`recalibrate_batch_norm` re-estimates BN statistics,
  after which ``zoo.to_inference`` works. Build it with the architecture builder:
  ``registry.get_model_spec("rbcn_resnet20").architecture.builder(RBCN("faithful"), ...)``.

Other [choice]s of docs/methods/rbcn.md#deviations-from-the-paper (not recovered from the paper): λ₁ = 1e-4; C
initialised to the kernel loss's minimiser at the initial W (``mean |W|`` over the axes C
is shared on); η₂ = η₁; taps = the output of each stage; discriminators fed the
globally pooled feature vector, trained with Adam(1e-4, β = (0.5, 0.999)); a
least-squares generator term with weight 1 and a BCE discriminator; the BN pass over 10 %
of an epoch's batches; activations Bi-Real's ApproxSign, a real shortcut around every
binary conv (RBCN's baseline is Bi-Real Net). Beyond the spec: both gradients (W and C)
come from one backward pass per step (the book updates W, then computes C's gradient —
that would need a second forward pass); binary convs pad with +1 (LCE's fast path, §0.4)
and the teacher is the zoo's ``fp_bireal_`` twin: the student's topology (hardtanh, a real
shortcut around every conv) with float convs.
"""

from __future__ import annotations

import math

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.distillation import Distiller, Outputs, check_teacher, stage_outputs
from zoo.recalibration import recalibrate_bn
from zoo.schemes.base import BinaryExport, Reported, Scheme, conv_geometry, conv_initializer, export_rule
from zoo.schemes.base import split_scaled_sign

KERNEL_LOSS_WEIGHT = 1e-4
VARIANTS = ("deployable", "faithful")
DISCRIMINATOR_LEARNING_RATE = 1e-4
ADVERSARIAL_WEIGHT = 1.0
LEAKY_SLOPE = 0.2
BN_RETRAINING_FRACTION = 0.1

_TABLE_3_3 = "BNN-book Table 3.3 (docs/methods/rbcn.md#reported-results)"


# -- the rectified binary conv ------------------------------------------------------------
@keras.utils.register_keras_serializable(package="zoo")
class RectifiedBinaryConv2D(lq.layers.QuantConv2D):
    """RBConv (§3.2): ``conv(approx_sign(x), approx_sign(W) ⊙ C)`` plus the kernel loss.

    ``rectifier`` (C) has the HWIO-broadcastable shape ``(1, 1, 1, C_out)`` (deployable)
    or ``(kh, kw, C_in, 1)`` (faithful). The kernel loss ``(λ₁/2)·Σ_i‖sg(W_i) − C⊙Ŵ_i‖²``
    (Ŵ = approx_sign(W), not stopped) is a layer loss, so ``model.losses`` carries it
    and ``compile``/``fit`` add it to the objective. Geometry, padding (with
    ``pad_values``) and serialisation are Larq's ``QuantConv2D``'s.
    """

    def __init__(self, filters, kernel_size, strides=1, variant: str = "deployable",
                 kernel_loss_weight: float = KERNEL_LOSS_WEIGHT, **kwargs):
        if variant not in VARIANTS:
            raise ValueError(f"RectifiedBinaryConv2D: variant must be one of {VARIANTS}, got {variant!r}.")
        kwargs.setdefault("padding", "same")
        kwargs.setdefault("pad_values", 1.0)
        kwargs.setdefault("input_quantizer", "approx_sign")
        kwargs.setdefault("kernel_quantizer", "approx_sign")
        kwargs.setdefault("kernel_constraint", "weight_clip")
        kwargs.setdefault("kernel_initializer", conv_initializer())
        kwargs.setdefault("use_bias", False)
        super().__init__(filters, kernel_size, strides=strides, **kwargs)
        self.variant = variant
        self.kernel_loss_weight = float(kernel_loss_weight)

    def build(self, input_shape):
        super().build(input_shape)
        kh, kw, channels, filters = self.kernel.shape
        shape = (kh, kw, channels, 1) if self.variant == "faithful" else (1, 1, 1, filters)
        self.rectifier = self.add_weight("rectifier", shape, initializer="ones")
        self.rectifier.assign(self.least_squares_rectifier())
        self.add_loss(self.kernel_loss)

    def latent_kernel(self) -> tf.Tensor:
        """The real-valued W (reading ``self.kernel`` in a layer call gives Ŵ)."""
        return tf.convert_to_tensor(self.kernel.latent_variable)

    def least_squares_rectifier(self) -> tf.Tensor:
        """The C minimising the kernel loss for the current W: ``mean |W|`` over the
        axes C is shared on (Ŵ² = 1, so ``argmin_C Σ_i (W_i − C⊙Ŵ_i)² = mean_i W_i⊙Ŵ_i``)."""
        shared_axes = [3] if self.variant == "faithful" else [0, 1, 2]
        return tf.reduce_mean(tf.abs(self.latent_kernel()), axis=shared_axes, keepdims=True)

    def kernel_loss(self) -> tf.Tensor:
        """``(λ₁/2)·‖sg(W) − C ⊙ Ŵ‖²`` (§3.3); its gradients are the book's (3.67–3.75)."""
        w = self.latent_kernel()
        residual = tf.stop_gradient(w) - self.rectifier * self.kernel_quantizer(w)
        return 0.5 * self.kernel_loss_weight * tf.reduce_sum(tf.square(residual))

    def convolution_op(self, inputs, kernel):
        # ``kernel`` is Ŵ here: Larq reads its quantized variable inside the layer call.
        return super().convolution_op(inputs, tf.convert_to_tensor(kernel) * self.rectifier)

    def get_config(self):
        return {**super().get_config(), "variant": self.variant, "kernel_loss_weight": self.kernel_loss_weight}


def rectified_layers(model: keras.Model) -> list[RectifiedBinaryConv2D]:
    return [layer for layer in model.layers if isinstance(layer, RectifiedBinaryConv2D)]


# -- export ---------------------------------------------------------------------------------
@export_rule(RectifiedBinaryConv2D)
def export_rectified_conv(layer: RectifiedBinaryConv2D) -> BinaryExport:
    """±1 kernel ``sign(W)`` and the per-channel scale C (folded into the next BN)."""
    rectified = (layer.kernel_quantizer(layer.latent_kernel()) * layer.rectifier).numpy()
    try:
        signs, scale = split_scaled_sign(rectified, layer.name)
    except ValueError:
        raise ValueError(
            f"Layer {layer.name!r}: its faithful rectifier C varies over (kh, kw, C_in), which a "
            "binary convolution cannot run. Call zoo.schemes.rbcn.approximate_rectifiers(model) "
            "(C -> mean C) and recalibrate_batch_norm(model, data) first, and measure the accuracy drop."
        ) from None
    return BinaryExport(kernel=signs, scale=scale, conv_kwargs=conv_geometry(layer))


def approximate_rectifiers(model: keras.Model) -> int:
    """Replaces every faithful rectifier C by its mean, in place; returns how many.

    ``mean(C)`` is the least-squares per-filter scale α of ``C ⊙ Ŵ_i ≈ α·Ŵ_i`` (Ŵ² = 1),
    the same for every filter; the layer then exports exactly. Follow it with
    :func:`recalibrate_batch_norm` on training data.
    """
    faithful = [layer for layer in rectified_layers(model) if layer.variant == "faithful"]
    for layer in faithful:
        layer.rectifier.assign(tf.fill(layer.rectifier.shape, tf.reduce_mean(layer.rectifier)))
    return len(faithful)


def recalibrate_batch_norm(model: keras.Model, data: tf.data.Dataset, steps: int = 50) -> None:
    """Re-estimates every BN's moving statistics with ``steps`` batches in training mode
    (no weight changes; with momentum 0.9 the old statistics keep 0.9^steps of weight)."""
    forward = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
    for batch in data.take(steps):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        forward(x)


# -- the adversarial part --------------------------------------------------------------------
def discriminator(channels: int, name: str) -> keras.Model:
    """D for one tapped feature map: global average pool, then ``C → C/2 → C/4 → 1``
    with LeakyReLU(0.2); returns the logit (D = sigmoid(logit))."""
    inputs = keras.Input((None, None, channels), name=f"{name}_features")
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(inputs)
    for i, width in enumerate((max(channels // 2, 1), max(channels // 4, 1)), start=1):
        x = keras.layers.Dense(width, name=f"{name}_dense{i}")(x)
        x = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_leaky{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name=f"{name}_logit")(x), name=name)


def discriminator_loss(real_logits, fake_logits):
    """``−[log D(R) + log(1 − D(T))]``, batch mean: the discriminators ascend L_Adv (§3.4)."""
    return tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(tf.nn.softplus(fake_logits))


def generator_loss(fake_logits):
    """``(1 − D(T))²``, batch mean: the least-squares generator term whose gradient is the
    book's ``−2(1 − D(T)) ∂D/∂Ŵ`` (§3.4)."""
    return tf.reduce_mean(tf.square(1.0 - tf.sigmoid(fake_logits)))


class GeneratorLoss:
    """The student's adversarial term, ``weight · Σ_taps (1 − D_k(T_k))²`` (a distillation term)."""

    name = "generator_loss"

    def __init__(self, discriminators, weight: float = 1.0):
        self.discriminators = discriminators
        self.weight = float(weight)

    def __call__(self, student: Outputs, teacher: Outputs):
        return self.weight * tf.add_n([
            generator_loss(d(fake)) for d, fake in zip(self.discriminators, student.features)
        ])


class ScaledLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Another optimizer's current learning rate times ``scale`` (η₂ = scale·η₁), so a
    schedule that sets η₁ (``LearningRateScheduler``) moves η₂ with it."""

    def __init__(self, optimizer: keras.optimizers.Optimizer, scale: float):
        self.optimizer = optimizer
        self.scale = float(scale)

    def __call__(self, step):
        return tf.cast(self.optimizer.learning_rate, tf.float32) * self.scale


class _FitData:
    """The dataset ``fit`` was given. A plain holder: Keras must not track a Dataset as
    model state (checkpoints would try to save it)."""

    dataset = None


def _as_dataset(x, y, batch_size):
    if isinstance(x, tf.data.Dataset):
        return x
    if y is None:
        return None
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y)).batch(batch_size or 32)


class AdversarialTrainer(Distiller):
    """RBCN's training (§3.3, §3.4, §3.6): ``fit`` trains ``.student`` against ``.teacher``.

    Each step: the teacher's stage outputs R (inference mode); the student's forward in
    training mode (its prediction and stage outputs T); one Adam step of the
    discriminators on BCE(R → real, sg(T) → fake); then the student step on
    ``cross-entropy + Σ kernel losses + adversarial_weight · Σ_taps (1 − D(T))²`` (+ any
    extra distillation ``terms``) with the updated discriminators. W and the other
    student variables take the compiled optimizer (η₁), the rectifiers C their own
    (``rectifier_optimizer``, by default a copy of the compiled one whose learning rate
    is ``rectifier_learning_rate_scale`` times η₁ at every step).

    ``compile(optimizer, loss, metrics, discriminator_optimizer=None,
    rectifier_optimizer=None)``; the discriminator optimizer defaults to Adam(1e-4,
    β = (0.5, 0.999)). Logs ``discriminator_loss`` and ``generator_loss`` besides the
    :class:`~zoo.distillation.Distiller` ones. Student, teacher, discriminators and all
    three optimizers are attributes, so ``tf.train.Checkpoint(model=trainer)`` has them.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, taps=None, terms=(),
                 adversarial_weight: float = ADVERSARIAL_WEIGHT, rectifier_learning_rate_scale: float = 1.0,
                 name: str | None = None, **kwargs):
        taps = stage_outputs(student) if taps is None else list(taps)
        if not taps:
            raise ValueError(f"AdversarialTrainer: no feature maps to tap in {student.name!r}; pass taps=.")
        check_teacher(student, teacher, taps)
        discriminators = [
            discriminator(student.get_layer(tap).output_shape[-1], name=f"discriminator_{i}")
            for i, tap in enumerate(taps, start=1)
        ]
        super().__init__(student, teacher, terms=[*terms, GeneratorLoss(discriminators, adversarial_weight)],
                         taps=taps, name=name or f"{student.name}_adversarial", **kwargs)
        self.discriminators = discriminators
        self.rectifier_learning_rate_scale = float(rectifier_learning_rate_scale)
        self._rectifier_ids = {id(layer.rectifier) for layer in rectified_layers(student)}
        self._fit_data = _FitData()

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, *, discriminator_optimizer=None,
                rectifier_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self.discriminator_optimizer = discriminator_optimizer or keras.optimizers.Adam(
            DISCRIMINATOR_LEARNING_RATE, beta_1=0.5, beta_2=0.999, name="discriminator_adam"
        )
        if rectifier_optimizer is None:
            config = self.optimizer.get_config()
            rectifier_optimizer = type(self.optimizer).from_config({
                **config, "name": f"rectifier_{config['name']}",
                "learning_rate": ScaledLearningRate(self.optimizer, self.rectifier_learning_rate_scale),
            })
        self.rectifier_optimizer = rectifier_optimizer

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """``keras.Model.fit``; it also remembers the training data for the BN pass."""
        self._fit_data.dataset = _as_dataset(x, y, batch_size)
        return super().fit(x, y, batch_size, *args, **kwargs)

    @property
    def training_data(self) -> tf.data.Dataset | None:
        return self._fit_data.dataset

    # -- the step ----------------------------------------------------------------------
    def auxiliary_logs(self):
        return ("discriminator_loss",)

    def update_auxiliaries(self, student: Outputs, teacher: Outputs) -> dict:
        """One discriminator step on (R, sg(T)) before the student's step."""
        variables = [v for d in self.discriminators for v in d.trainable_variables]
        with tf.GradientTape() as tape:
            loss = tf.add_n([
                discriminator_loss(d(real), d(tf.stop_gradient(fake)))
                for d, real, fake in zip(self.discriminators, teacher.features, student.features)
            ])
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
        self.discriminator_optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return {"discriminator_loss": loss}

    def apply_student_gradients(self, gradients, variables) -> None:
        rectifiers = [(g, v) for g, v in zip(gradients, variables) if id(v) in self._rectifier_ids]
        others = [(g, v) for g, v in zip(gradients, variables) if id(v) not in self._rectifier_ids]
        self.optimizer.apply_gradients(others)
        if rectifiers:
            self.rectifier_optimizer.apply_gradients(rectifiers)

    # -- the BN-retraining pass ----------------------------------------------------------
    def non_conv_variables(self) -> list:
        """The student's trainable variables outside every conv (BN γ/β, dense, PReLU)."""
        conv_ids = {id(v) for layer in self.student.layers if isinstance(layer, keras.layers.Conv2D)
                    for v in layer.trainable_weights}
        return [v for v in self.student.trainable_variables if id(v) not in conv_ids]

    def retrain_batch_norm(self, data: tf.data.Dataset, steps: int) -> float:
        """§3.4's "update strategy": ``steps`` batches training the non-conv variables on
        the student's objective, with W, C and the discriminators fixed; returns the mean
        objective. The compiled optimizer serves both passes."""
        main = [v for v in self.student.trainable_variables if id(v) not in self._rectifier_ids]
        self.optimizer.build(main)  # no-op once the first step has built it for all of them
        strategy = self.distribute_strategy
        losses = [float(self._non_conv_step(batch)) for batch in
                  strategy.experimental_distribute_dataset(data.take(steps))]
        return float(np.mean(losses))

    @tf.function(reduce_retracing=True)
    def _non_conv_step(self, batch):
        strategy = self.distribute_strategy
        per_replica = strategy.run(self._non_conv_replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    def _non_conv_replica_step(self, batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        teacher = self.teacher_outputs(x)
        variables = self.non_conv_variables()
        with tf.GradientTape() as tape:
            student = self.student_outputs(x, training=True)
            objective, total = self.objective(self.student_losses(x, y, sample_weight, student, teacher))
        self.optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
        return total


class BatchNormRetraining(keras.callbacks.Callback):
    """After each epoch, RBCN's BN pass (§3.4): ``fraction`` of the epoch's batches train
    the student's non-conv parameters with every conv (W, C) and the discriminators fixed;
    then as many batches re-estimate the student's BatchNorm statistics
    (:func:`zoo.recalibration.recalibrate_bn`): the moving averages of a pass this short
    lag the γ, β it moved.

    It runs after the epoch's last batch when the number of steps is known, so that the
    epoch's validation already sees it (otherwise at the epoch's end); it logs
    ``bn_retraining_loss``. It needs ``fit`` to run on an :class:`AdversarialTrainer`, so
    it is the RBCN recipe's callback (``training.recipes.rbcn``), not a scheme callback
    (``zoo.callbacks`` are bound to the bare student).
    """

    def __init__(self, fraction: float = BN_RETRAINING_FRACTION):
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"BatchNormRetraining: fraction must be in (0, 1], got {fraction}.")
        self.fraction = float(fraction)
        self.loss: float | None = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, AdversarialTrainer):
            raise TypeError(
                "RBCN's BN-retraining pass runs on its adversarial trainer: fit "
                "zoo.schemes.rbcn.AdversarialTrainer(model, teacher) (training.recipes.rbcn's recipe.wrap does), "
                f"not {type(self.model).__name__} {self.model.name!r}."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._batches, self.loss = 0, None

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1
        if self._batches == self.params.get("steps"):
            self._retrain()

    def on_epoch_end(self, epoch, logs=None):
        if self.loss is None:
            self._retrain()
        if logs is not None:
            logs["bn_retraining_loss"] = self.loss

    def _retrain(self):
        data = self.model.training_data
        if data is None:
            raise ValueError("BatchNormRetraining needs fit(dataset) or fit(x, y) arrays to draw its batches from.")
        steps = max(1, math.ceil(self.fraction * self._batches))
        self.loss = self.model.retrain_batch_norm(data, steps)
        recalibrate_bn(self.model.student, data, steps)  # the pass moved γ, β: statistics to match


# -- the scheme ---------------------------------------------------------------------------
class RBCN(Scheme):
    name = "rbcn"
    method = "RBCN (rectified binary conv, adversarial training against a full-precision teacher)"
    paper = "Liu et al., RBCN: Rectified Binary Convolutional Networks, IJCAI 2019"
    activation = "hardtanh"
    shortcut_every_conv = True  # RBCN's baseline is Bi-Real Net with its conv replaced
    reported = (
        Reported("resnet18_cifar_32_32_64_128", "cifar100", 61.64, _TABLE_3_3,
                 note="ablation: Bi-Real 54.92, +RBConv 56.54, +GAN 59.13, +BN update 61.64"),
        Reported("resnet18_cifar_32_64_128_256", "cifar100", 65.38, _TABLE_3_3,
                 note="ablation: Bi-Real 63.11, +RBConv 63.49, +GAN 64.93, +BN update 65.38"),
        Reported("resnet18_cifar_64_64_128_256", "cifar100", 66.27, _TABLE_3_3,
                 note="ablation: Bi-Real 63.81, +RBConv 64.13, +GAN 65.02, +BN update 66.27"),
        Reported("resnet18", "imagenet2012", 59.5, "secondary literature (docs/methods/rbcn.md#reported-results)", top5=81.6,
                 note="[unverified]: not an acceptance anchor"),
    )

    def __init__(self, variant: str = "deployable", kernel_loss_weight: float = KERNEL_LOSS_WEIGHT):
        if variant not in VARIANTS:
            raise ValueError(f"RBCN: variant must be one of {VARIANTS}, got {variant!r}.")
        self.variant = variant
        self.kernel_loss_weight = kernel_loss_weight

    def conv(self, filters, kernel_size, strides=1, name=None):
        return RectifiedBinaryConv2D(filters, kernel_size, strides, variant=self.variant,
                                     kernel_loss_weight=self.kernel_loss_weight, pad_values=self.pad_values,
                                     name=name)
