"""The frozen full-precision teacher a student distils from (RBCN; any recipe's KD).

    teacher = prepare_teacher("rbcn_resnet20", "fashion_mnist")          # fp_resnet20
    trainable = recipe.wrap(student, teacher)

The teacher is the student's ``fp_`` twin from the registry (same architecture, float
convs) unless another full-precision model is named. Its weights come from, in order:
``weights`` if given (a pretrained tag, a path or URL of an HDF5 weights file), else the
model's pretrained entry for the dataset when the manifest has one, else a training run
of its own first (:func:`training.loop.train`, the teacher's own recipe). It is returned
with ``trainable = False``.
"""

from __future__ import annotations

import os

import zoo  # noqa: I001  (first: selects Keras 2)
import tf_keras as keras
from zoo import registry
from zoo.data import dataset_info
from zoo.schemes.fp import full_precision_twin


def teacher_name(student_name: str) -> str:
    """The registered full-precision twin of a student: the same architecture with the
    student's block topology (``fp_bireal_<architecture>`` for Bi-Real-layout students such
    as RBCN's), else ``fp_<architecture>``."""
    spec = registry.get_model_spec(student_name)
    twin = full_precision_twin(spec.scheme, registry.schemes())
    name = f"{twin.name}_{spec.architecture.name}"
    registry.get_model_spec(name)
    return name


def prepare_teacher(student_name: str, dataset: str, teacher=None, *, weights: str | os.PathLike | None = "default",
                    **train_kwargs) -> keras.Model:
    """A frozen full-precision teacher for ``student_name`` on ``dataset``.

    Args:
      student_name: the registered student (its ``fp_`` twin is the default teacher).
      dataset: the dataset the student trains on (input shape, classes, pretrained tag).
      teacher: None (the ``fp_`` twin), a registered full-precision model name, a path or
        URL of a weights file of the ``fp_`` twin, or a ``keras.Model`` (used as it is).
      weights: for a named teacher: ``"default"`` (the pretrained entry trained on the
        dataset if the manifest has one, else train first), a tag or weights path/URL, or
        None (always train first).
      **train_kwargs: for training the teacher first, :func:`training.loop.train`'s
        keywords (``epochs``, ``batch_size``, ``train_images``, ``test_images``,
        ``data_dir``, ``output``, ``seed``, ``verbose`` (default 0)); epochs and batch
        size default to the teacher's own recipe, ``output`` keeps that run's artifacts
        (its weights file included).

    Raises:
      ValueError: a binary teacher, an unknown model name or pretrained tag.
    """
    if isinstance(teacher, keras.Model):
        return _frozen(teacher)
    name, weights = _teacher_and_weights(student_name, teacher, weights)
    info = dataset_info(dataset)
    if weights == "default":
        weights = pretrained_tag(name, info["name"])
    if weights is not None:
        shape = info["image_shape"] if None not in info["image_shape"] else None
        return _frozen(zoo.load(name, weights=weights, input_shape=shape, classes=info["num_classes"]))

    from training.loop import train  # the loop imports this module

    train_kwargs.setdefault("verbose", 0)
    if train_kwargs["verbose"]:
        print(f"Training the teacher {name} on {info['name']} first (no pretrained weights given or listed).")
    model, report = train(name, info["name"], **train_kwargs)
    if train_kwargs["verbose"]:
        print(f"Teacher {name}: best test accuracy {report['best_val_accuracy']:.4f}.")
    return _frozen(model)


def pretrained_tag(name: str, dataset: str) -> str | None:
    """The tag of ``name``'s first pretrained entry trained on ``dataset``, if any."""
    return next((entry.tag for entry in registry.pretrained_entries(name) if entry.dataset == dataset), None)


def _teacher_and_weights(student_name: str, teacher, weights):
    """(teacher model name, weights) from ``prepare_teacher``'s arguments."""
    if teacher is None:
        return teacher_name(student_name), weights
    teacher = os.fspath(teacher)
    if teacher not in registry.list_models() and (os.path.exists(teacher) or "://" in teacher):
        return teacher_name(student_name), teacher
    spec = registry.get_model_spec(teacher)  # an unknown name raises, naming close matches
    if spec.scheme.binary:
        raise ValueError(f"Teacher {teacher!r} is a binary model; the teacher must be full precision (fp_*).")
    return teacher, weights


def _frozen(model: keras.Model) -> keras.Model:
    model.trainable = False
    return model
