"""Which full-precision teacher a student distils from (RBCN; any recipe's KD), and where
its weights come from.

The teacher is the student's ``fp_`` twin from the registry (same architecture, float
convs) unless another full-precision model is named. Its weights come from, in order:
``weights`` if given (a pretrained tag, a path or URL of an HDF5 weights file), else the
model's pretrained entry for the dataset when the manifest has one, else a training run
of its own first. :func:`training.loop.prepare_teacher` puts these together (training
the teacher is a training run, so it lives with the loop):

    teacher = prepare_teacher("rbcn_resnet20", "fashion_mnist")          # fp_bireal_resnet20
    trainable = recipe.wrap(student, teacher)
"""

from __future__ import annotations

import os

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import tf_keras as keras
from zoo import registry
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


def pretrained_tag(name: str, dataset: str) -> str | None:
    """The tag of ``name``'s first pretrained entry trained on ``dataset``, if any."""
    return next((entry.tag for entry in registry.pretrained_entries(name) if entry.dataset == dataset), None)


def teacher_and_weights(student_name: str, teacher, weights):
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


def frozen(model: keras.Model) -> keras.Model:
    model.trainable = False
    return model
