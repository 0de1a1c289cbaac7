"""Teacher → student knowledge transfer, as a training wrapper any method can use.

:class:`Distiller` wraps a student model and a frozen teacher in a ``keras.Model`` whose
``train_step`` adds loss terms comparing the two to the student's own loss, so that
``compile`` + ``fit`` drive it as they drive any model::

    trainer = Distiller(student, teacher, terms=[KnowledgeDistillation(), FeatureMatching()],
                        taps=stage_outputs(student))
    trainer.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    trainer.fit(data, epochs=E)          # trains trainer.student; the teacher never changes

A term is a callable ``term(student, teacher) -> scalar`` on two :class:`Outputs`
(the model's prediction and its tapped feature maps); it has a ``name`` (its log key).
The teacher runs in inference mode (``training=False``, BN statistics fixed) and is set
``trainable = False``. Validation (``test_step``) and ``trainer(x)`` are the student's.

Methods with more machinery build on it: RBCN's adversarial trainer
(:class:`zoo.schemes.rbcn.AdversarialTrainer`) adds discriminators through
:meth:`Distiller.update_auxiliaries` and a generator term, and its own optimizers
through :meth:`Distiller.apply_student_gradients`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import tensorflow as tf
import tf_keras as keras

from zoo.layers import HardTanh

_ACTIVATIONS = (HardTanh, keras.layers.ReLU, keras.layers.PReLU, keras.layers.LeakyReLU, keras.layers.Activation)


class Outputs(NamedTuple):
    """What a term sees of one model: its prediction and its tapped feature maps."""

    prediction: tf.Tensor
    features: tuple


def stage_outputs(model: keras.Model) -> list[str]:
    """The layers whose outputs end each stage of the body: per spatial resolution, the
    last activation layer after the stem (the builders name stem layers ``stem_*``).

    ResNets give each stage's last block output (``stage{s}_block{b}_act2``), VGG-small
    the last activation before each resolution change.
    """
    last_at_resolution: dict[tuple, str] = {}
    for layer in model.layers:
        if layer.name.startswith("stem") or not isinstance(layer, _ACTIVATIONS):
            continue
        shape = layer.output_shape
        if len(shape) == 4:
            last_at_resolution[tuple(shape[1:3])] = layer.name
    return list(last_at_resolution.values())


def _tapped_view(model: keras.Model, taps: Sequence[str]) -> keras.Model:
    """A model sharing ``model``'s layers that returns its output and the tapped maps."""
    return keras.Model(model.inputs, [model.output, *[model.get_layer(name).output for name in taps]],
                       name=f"{model.name}_taps")


def check_teacher(student: keras.Model, teacher: keras.Model, taps: Sequence[str]) -> None:
    """Raises ValueError naming what does not fit between a student and its teacher."""
    if teacher is student:
        raise ValueError("The teacher must be a different model from the student.")
    if tuple(student.input_shape[1:]) != tuple(teacher.input_shape[1:]):
        raise ValueError(f"Teacher input shape {teacher.input_shape[1:]} differs from the student's "
                         f"{student.input_shape[1:]}.")
    if student.output_shape != teacher.output_shape:
        raise ValueError(f"Teacher output shape {teacher.output_shape} differs from the student's "
                         f"{student.output_shape}.")
    for name in taps:
        try:
            student_shape = student.get_layer(name).output_shape
        except ValueError:
            raise ValueError(f"Feature tap {name!r} is not a layer of the student {student.name!r}.") from None
        try:
            teacher_shape = teacher.get_layer(name).output_shape
        except ValueError:
            raise ValueError(f"Feature tap {name!r} is not a layer of the teacher {teacher.name!r}.") from None
        if student_shape != teacher_shape:
            raise ValueError(f"Feature tap {name!r}: student shape {student_shape} differs from the "
                             f"teacher's {teacher_shape}.")


class KnowledgeDistillation:
    """Hinton et al.'s KD term: ``weight · T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean.

    ``from_logits=False`` reads softmax outputs (the zoo's default head) and uses their
    logarithms as logits (softmax is shift-invariant, so that is exact up to the clip).
    """

    name = "kd_loss"

    def __init__(self, temperature: float = 4.0, weight: float = 1.0, from_logits: bool = False):
        if temperature <= 0:
            raise ValueError(f"KnowledgeDistillation: temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.from_logits = from_logits

    def _logits(self, prediction):
        if self.from_logits:
            return prediction
        return tf.math.log(tf.clip_by_value(prediction, 1e-7, 1.0))

    def __call__(self, student: Outputs, teacher: Outputs):
        t = self.temperature
        teacher_log_p = tf.nn.log_softmax(self._logits(teacher.prediction) / t)
        student_log_p = tf.nn.log_softmax(self._logits(student.prediction) / t)
        kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
        return self.weight * t * t * tf.reduce_mean(kl)


class FeatureMatching:
    """``weight · Σ_taps mean((R − T)²) / 2``: the feature MSE ``L_Data`` of docs/methods/rbcn.md#losses-and-updates."""

    name = "feature_loss"

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def __call__(self, student: Outputs, teacher: Outputs):
        if not student.features:
            raise ValueError("FeatureMatching needs feature taps: pass taps= to the Distiller.")
        return self.weight * tf.add_n([
            0.5 * tf.reduce_mean(tf.square(r - s)) for s, r in zip(student.features, teacher.features)
        ])


class Distiller(keras.Model):
    """A student trained with a frozen teacher's help; ``fit`` trains ``.student``.

    Args:
      student: the model to train (a functional model; its layers and weights are shared,
        not copied).
      teacher: a model with the same input and output shapes (and the tapped layers);
        it is set ``trainable = False`` and always runs with ``training=False``.
      terms: loss terms ``term(student_outputs, teacher_outputs) -> scalar`` with a
        ``name``, added to the compiled loss.
      taps: names of layers present in both models whose outputs the terms compare
        (:func:`stage_outputs` gives the stage outputs).

    Logged: ``loss`` (the compiled task loss, as ``val_loss``), ``regularization_loss``
    (the student's own ``losses``, e.g. RBCN's kernel loss), one entry per term,
    ``total_loss`` (their sum, what the step minimises) and the compiled metrics.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, terms: Sequence = (),
                 taps: Sequence[str] = (), name: str | None = None, **kwargs):
        super().__init__(name=name or f"{student.name}_distiller", **kwargs)
        taps = list(taps)
        check_teacher(student, teacher, taps)
        teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.taps = taps
        self.terms = list(terms)
        self._student_view = _tapped_view(student, taps)
        self._teacher_view = _tapped_view(teacher, taps)
        self.loss_trackers = {
            key: keras.metrics.Mean(name=key)
            for key in ("regularization_loss", *[t.name for t in self.terms], *self.auxiliary_logs(), "total_loss")
        }

    # -- forward ----------------------------------------------------------------------
    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def student_outputs(self, x, training=True) -> Outputs:
        prediction, *features = tf.nest.flatten(self._student_view(x, training=training))
        return Outputs(prediction, tuple(features))

    def teacher_outputs(self, x) -> Outputs:
        prediction, *features = tf.nest.flatten(self._teacher_view(x, training=False))
        return Outputs(tf.stop_gradient(prediction), tuple(tf.stop_gradient(f) for f in features))

    # -- losses -----------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        """The task loss: the compiled loss alone (``loss`` / ``val_loss`` in the logs)."""
        return self.compiled_loss(y, y_pred, sample_weight)

    def student_losses(self, x, y, sample_weight, student: Outputs, teacher: Outputs) -> dict:
        """Every part of the student's objective, by log name; the step minimises their sum."""
        own = self.student.losses
        losses = {
            "loss": self.compute_loss(x, y, student.prediction, sample_weight),
            "regularization_loss": tf.add_n(own) if own else tf.constant(0.0),
        }
        losses.update({term.name: term(student, teacher) for term in self.terms})
        return losses

    @staticmethod
    def objective(losses: dict):
        """``(what the step differentiates, the total to log)``. The compiled loss comes
        scaled for distribution (÷ replicas); the other parts are scaled the same way here."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        others = tf.add_n([value for key, value in losses.items() if key != "loss"])
        objective = losses["loss"] + others / replicas
        return objective, objective * replicas

    # -- hooks for methods that build on the distiller ----------------------------------
    def auxiliary_logs(self) -> tuple[str, ...]:
        """Log names of what :meth:`update_auxiliaries` returns (none here)."""
        return ()

    def update_auxiliaries(self, student: Outputs, teacher: Outputs) -> dict:
        """Trains whatever else the method trains on this batch (discriminators, ...),
        before the student's loss is computed; returns values to log."""
        return {}

    def apply_student_gradients(self, gradients, variables) -> None:
        self.optimizer.apply_gradients(zip(gradients, variables))

    # -- the steps --------------------------------------------------------------------
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher = self.teacher_outputs(x)
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            student = self.student_outputs(x, training=True)
            # (recorded by the outer tape too — stop_recording would silence the inner
            # tapes of the hook — but it only sees stopped student outputs)
            auxiliary = self.update_auxiliaries(student, teacher)
            losses = self.student_losses(x, y, sample_weight, student, teacher)
            objective, total = self.objective(losses)
        self.apply_student_gradients(tape.gradient(objective, variables), variables)
        self.compiled_metrics.update_state(y, student.prediction, sample_weight)
        values = {**losses, **auxiliary, "total_loss": total}
        for key, tracker in self.loss_trackers.items():
            tracker.update_state(values[key])
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        """The student's task loss and compiled metrics (``val_loss``, ``val_accuracy``)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        prediction = self(x, training=False)
        self.compute_loss(x, y, prediction, sample_weight)
        self.compiled_metrics.update_state(y, prediction, sample_weight)
        return {m.name: m.result() for m in self.compiled_loss.metrics + self.compiled_metrics.metrics}
