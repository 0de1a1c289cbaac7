"""CBCN — Circulant Binary Convolutional Networks (docs/methods/cbcn.md), all of it in one place.

Liu, Ding, Xia, Zhang, Gu, Liu, Ji, Doermann, "Circulant Binary Convolutional Networks:
Enhancing the Performance of 1-bit DCNNs with Circulant Back Propagation", CVPR 2019
(arXiv 1910.10853); reference code liuchunlei0430/CBCN_Pytorch (built on the Active
Rotating Filters of Oriented Response Networks).

Each learned filter is stored once with N orientation channels and expanded at run time
into N copies, copy r rotated clockwise by r·360/N degrees with its orientation channels
cyclically shifted by r: over (output rotation, input orientation) the weight blocks
form a circulant matrix, the circulant filter. This module holds:

* :func:`circulant_index` — the spec's index formula
  ``K[i·N + r, j·N + o'] = rot_r(V[i, j, (o' − r) mod N])`` as a small gather table;
* :class:`CirculantBinaryConv2D` — the circulant binary convolution (CBConv):
  ``y = α · conv(sign(x), sign(K))`` with the per-layer scale ``α = mean|V|`` and the
  Bi-Real ApproxSign backward for weights and activations. ``K`` is a ``tf.gather`` of
  the latent ``V``, whose gradient is the circulant back-propagation (CBP): every base
  weight receives the sum of its N rotated/shifted copies' gradients;
* :class:`CBCN` — the scheme: ``width_multiplier = N`` makes every feature map N× wide
  (the paper's ResNet-18 is 256-512-1024-2048 wide, M = N = 4), PReLU activations;
* the export rule: ``K`` materialised once as the ±1 kernel of an ordinary
  ``QuantConv2D`` (N·C_in → N·C_out), α folded into the following BN, so LCE runs it as
  ``LceBconv2d`` (it does not exploit the circulant structure: 16× the binary MACs);
* :class:`CentreLossModel` — the optional centre-loss fine-tune (docs/methods/cbcn.md#recipe [choice]:
  ``½‖f − c_y‖²`` on the classifier's input feature, weight 1e-3, centre rate 0.5; the
  centre update is BONN's, :func:`zoo.schemes.bonn.centre_update`).

Deviations, each a [choice] of docs/methods/cbcn.md#deviations-from-the-paper or of the zoo: binary convs pad with +1 (LCE's
fast path, §0.4) rather than 0; BN initialisation is the zoo's (γ = 1) rather than
U(0, 1); the ResNets are the zoo's shared layouts (ImageNet-style: a real shortcut around
every binary conv, float 1×1 *stride-2* conv + BN where the shape changes and a BN before
the classifier, where the reference pools after a stride-1 1×1 conv and has no head BN).
"""

from __future__ import annotations

import math

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.schemes.base import BinaryConv2D, BinaryExport, Reported, Scheme, export_rule
from zoo.schemes.bonn import centre_update

ORIENTATIONS = 4
#: the centre-loss fine-tune of docs/methods/cbcn.md#recipe [choice]: loss weight and centre rate
CENTRE_LOSS_WEIGHT = 1e-3
CENTRE_RATE = 0.5
_README = "abstract + CBCN-code README, docs/methods/cbcn.md#reported-results"


def circulant_index(orientations: int, kernel_size: int) -> np.ndarray:
    """The gather table of the circulant filter, shape ``(k, k, N, N)`` (docs/methods/cbcn.md#circulant-filter).

    Entry ``[y, x, o', r]`` is the flat index, into one base filter ``V[i, j]`` of shape
    ``(N, k, k)``, of the weight that tap ``(y, x)`` of output rotation ``r`` and input
    orientation ``o'`` takes: orientation ``(o' − r) mod N`` of the base filter, rotated
    clockwise by ``r·360/N`` degrees (``np.rot90(F, k=-r)`` for N = 4).
    """
    if orientations not in (1, 2, 4):
        raise ValueError(
            f"CBCN: orientations must be 1, 2 or 4 (exact 90° rotations of the filter), got {orientations!r}."
        )
    taps = np.arange(kernel_size * kernel_size).reshape(kernel_size, kernel_size)
    index = np.empty((kernel_size, kernel_size, orientations, orientations), np.int32)
    for r in range(orientations):
        source_taps = np.rot90(taps, k=-r * (4 // orientations))
        for o in range(orientations):
            index[:, :, o, r] = (o - r) % orientations * taps.size + source_taps
    return index


def circulant_kernel(latent, index: np.ndarray):
    """The effective HWIO kernel ``(k, k, N·C_in, N·C_out)`` of latent ``V`` in the
    reference layout ``(C_out, C_in, N, k, k)``; channel ``j·N + o'`` in, ``i·N + r`` out."""
    c_out, c_in, n, k, _ = latent.shape
    blocks = tf.gather(tf.reshape(latent, [c_out, c_in, n * k * k]), index, axis=2)  # (C_out, C_in, k, k, N, N)
    return tf.reshape(tf.transpose(blocks, [2, 3, 1, 4, 0, 5]), [k, k, c_in * n, c_out * n])


@keras.utils.register_keras_serializable(package="zoo")
class CirculantBinaryConv2D(BinaryConv2D):
    """The circulant binary convolution (docs/methods/cbcn.md#what-the-layer-computes), NHWC.

    ``filters`` is the number of output channels, ``N·C_out``; the input must have
    ``N·C_in`` channels. The one variable is the latent ``V`` of shape
    ``(C_out, C_in, N, k, k)`` (the reference layout, so ported weights copy over),
    initialised ``N(0, √(2/(k²·N·C_in)))``. The forward is
    ``α · conv(pad(approx_sign(x)), approx_sign(K))`` with ``K = circulant_kernel(V)``
    and ``α = mean|V|`` recomputed every step and differentiated through.
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "same", pad_values: float = 1.0,
                 orientations: int = ORIENTATIONS, **kwargs):
        super().__init__(filters, kernel_size, strides, padding, pad_values, **kwargs)
        self.orientations = int(orientations)
        if self.kernel_size[0] != self.kernel_size[1]:
            raise ValueError(f"{self.name}: circulant filters need a square kernel, got {self.kernel_size}.")
        if self.filters % self.orientations:
            raise ValueError(
                f"{self.name}: filters ({self.filters}) must be a multiple of the {self.orientations} orientations."
            )
        self.gather_index = circulant_index(self.orientations, self.kernel_size[0])
        self.input_quantizer = lq.quantizers.ApproxSign(name="activation_sign")
        self.kernel_quantizer = lq.quantizers.ApproxSign(name="weight_sign")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        n, k = self.orientations, self.kernel_size[0]
        if channels % n:
            raise ValueError(
                f"{self.name}: the input has {channels} channels, not a multiple of the {n} orientations; "
                "CBCN networks are built N times wide (Scheme.width_multiplier)."
            )
        c_in = channels // n
        self.latent = self.add_weight(
            "latent", (self.filters // n, c_in, n, k, k),
            initializer=keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (k * k * n * c_in))),
        )
        super().build(input_shape)

    def circulant_kernel(self):
        """``K``, the latent filters expanded into their N rotated, shifted copies (HWIO)."""
        return circulant_kernel(self.latent, self.gather_index)

    def scale(self):
        """``α = mean|V|`` (= mean|K|): one scalar for the whole layer."""
        return tf.reduce_mean(tf.abs(self.latent))

    def call(self, inputs):
        activations = self.pad(self.input_quantizer(inputs))
        kernel = self.kernel_quantizer(self.circulant_kernel())
        return tf.nn.conv2d(activations, kernel, self.strides, "VALID") * self.scale()

    def get_config(self):
        return {
            **super().get_config(),
            "orientations": self.orientations,
        }


@export_rule(CirculantBinaryConv2D)
def export_circulant_conv(layer: CirculantBinaryConv2D) -> BinaryExport:
    """The materialised ±1 kernel ``sign(K)`` (N·C_in → N·C_out) and α on every channel."""
    kernel = layer.kernel_quantizer(layer.circulant_kernel()).numpy()  # the forward's own sign
    return BinaryExport(
        kernel=kernel.astype(np.float32),
        scale=np.full(layer.filters, layer.scale().numpy(), np.float32),
        conv_kwargs=dict(
            filters=layer.filters,
            kernel_size=layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            pad_values=layer.pad_values,
        ),
    )


# -- centre-loss fine-tune ------------------------------------------------------------------
def centre_loss(features, centres, labels):
    """``½ · mean_i ‖f_i − c_{y_i}‖²`` (Wen et al., ECCV 2016, averaged over the batch); the
    centres get no gradient, they follow BONN's :func:`~zoo.schemes.bonn.centre_update` rule."""
    offsets = features - tf.stop_gradient(tf.gather(centres, labels))
    return 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(offsets), axis=1))


class CentreLossModel(keras.Model):
    """A classifier trained with cross-entropy + ``weight`` × centre loss (docs/methods/cbcn.md#recipe).

    The centre loss acts on the classifier's input feature (the input of the layer
    ``predictions``: in the reference ResNet-18 the 2048-d pooled feature). The class
    centres start at 0 and after every step move towards their classes' features at
    ``centre_rate`` (Wen et al.'s rule, shared with BONN), whatever the weight, so they
    are the classes' running feature means when :class:`CentreLossStage` switches the
    loss on. Compile it with a sparse categorical cross-entropy. Training and evaluation
    report ``loss``, ``task_loss`` and ``centre_loss``; predictions are the wrapped
    model's (``student``) own, and only the student is saved or exported.
    """

    def __init__(self, student: keras.Model, weight: float = CENTRE_LOSS_WEIGHT, centre_rate: float = CENTRE_RATE,
                 **kwargs):
        super().__init__(**kwargs)
        try:
            classifier = student.get_layer("predictions")
        except ValueError:
            raise ValueError(
                f"CentreLossModel: {student.name!r} has no 'predictions' layer; build it with include_top=True."
            ) from None
        self.student = student
        self.centre_rate = float(centre_rate)
        self.weight = self.add_weight("centre_loss_weight", (), initializer=keras.initializers.Constant(weight),
                                      trainable=False)
        self._features_and_outputs = keras.Model(student.inputs, [classifier.input, student.output])
        self.centres = self.add_weight(
            "centres", (int(classifier.units), int(classifier.input.shape[-1])), initializer="zeros", trainable=False
        )
        self._trackers = [keras.metrics.Mean(name=n) for n in ("loss", "task_loss", "centre_loss")]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    @property
    def metrics(self):
        compiled = self.compiled_metrics.metrics if self.compiled_metrics is not None else []
        return [*self._trackers, *compiled]

    def _loss_terms(self, x, y, sample_weight, training):
        features, predictions = self._features_and_outputs(x, training=training)
        labels = tf.reshape(tf.cast(y, tf.int32), [-1])
        task = self.compiled_loss(y, predictions, sample_weight, regularization_losses=self.student.losses)
        centre = centre_loss(features, self.centres, labels)
        return features, labels, predictions, (task + self.weight * centre, task, centre)

    def _report(self, y, predictions, sample_weight, terms):
        for tracker, value in zip(self._trackers, terms):
            tracker.update_state(value)
        self.compiled_metrics.update_state(y, predictions, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            features, labels, predictions, terms = self._loss_terms(x, y, sample_weight, training=True)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(terms[0], variables), variables))
        centre_update(self.centres, tf.stop_gradient(features), labels, self.centre_rate)
        return self._report(y, predictions, sample_weight, terms)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, _, predictions, terms = self._loss_terms(x, y, sample_weight, training=False)
        return self._report(y, predictions, sample_weight, terms)


class CentreLossStage(keras.callbacks.Callback):
    """Switches a :class:`CentreLossModel`'s centre loss on at ``start_epoch`` (0 before):
    the fine-tune stage at the end of a CBCN run."""

    def __init__(self, start_epoch: int, weight: float = CENTRE_LOSS_WEIGHT):
        super().__init__()
        self.start_epoch = int(start_epoch)
        self.centre_loss_weight = float(weight)

    def on_epoch_begin(self, epoch, logs=None):
        if not isinstance(self.model, CentreLossModel):
            raise TypeError(f"CentreLossStage drives a CentreLossModel, not {type(self.model).__name__}.")
        self.model.weight.assign(self.centre_loss_weight if epoch >= self.start_epoch else 0.0)


class CBCN(Scheme):
    name = "cbcn"
    method = "CBCN (circulant binary convolution, N = 4, 4x wide)"
    paper = "Liu et al., Circulant Binary Convolutional Networks, CVPR 2019"
    activation = "prelu"
    reported = (
        Reported("resnet18", "imagenet2012", 61.4, _README, note="M = N = 4, with the centre-loss fine-tune"),
        Reported("resnet18", "imagenet2012", 61.0, _README, note="M = N = 4, without the centre-loss fine-tune"),
    )

    def __init__(self, orientations: int = ORIENTATIONS):
        circulant_index(orientations, 1)  # validates N
        self.orientations = orientations
        self.width_multiplier = orientations

    def conv(self, filters, kernel_size, strides=1, name=None):
        return CirculantBinaryConv2D(filters, kernel_size, strides, pad_values=self.pad_values,
                                     orientations=self.orientations, name=name)
