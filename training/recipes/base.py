"""What every method's recipe provides, and the default recipe.

A recipe is a method's training settings: optimizer, learning-rate schedule, per-epoch
callbacks, and optionally a wrapper around the model for a custom ``train_step``
(distillation, adversarial training). Methods with their own settings subclass
:class:`Recipe` (``training/recipes/<method>.py``) and are registered by method name in
:mod:`training.recipes`; other models get :class:`Recipe`.

The default recipe is the common setting of this line of work on CIFAR-style data:
SGD momentum 0.9, learning rate 0.1, PyTorch-style (coupled) weight decay 1e-4 on every
variable, cosine annealing to 0 stepped per epoch, cross-entropy.

Epochs scale a run down: schedules are functions of the epoch fraction, so a 10-epoch
run covers the whole schedule, and a warm-up keeps its share of the paper's run (rounded
to whole epochs: RBNN's 5 of 1000 epochs is 1 epoch of 200 and none of 15).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import zoo  # noqa: I001  (first: selects Keras 2)
import tf_keras as keras
from zoo import registry
from zoo.distillation import Distiller, KnowledgeDistillation
from zoo.optimizers import OPTIMIZERS, SGDCoupledDecay

from training.settings import SETTINGS, value_problem


def is_imagenet_style(model_name: str) -> bool:
    return registry.get_model_spec(model_name).architecture.family.endswith("(ImageNet-style)")


@dataclasses.dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    optimizer_name: str = "sgd"
    schedule: str = "cosine"

    # (epochs, batch size, warm-up epochs) of the paper setting, per model family.
    CIFAR_DEFAULTS: ClassVar[tuple[int, int, int]] = (200, 128, 0)
    IMAGENET_DEFAULTS: ClassVar[tuple[int, int, int]] = (100, 256, 0)
    #: whether ``wrap`` requires a full-precision teacher (RBCN)
    NEEDS_TEACHER: ClassVar[bool] = False
    #: the learning-rate schedules ``learning_rate_at`` knows
    SCHEDULES: ClassVar[tuple[str, ...]] = ("cosine",)

    @classmethod
    def for_model(cls, model_name: str, epochs: int | None = None, batch_size: int | None = None, **overrides):
        """Paper settings for the model's family, optionally scaled to ``epochs``."""
        default_epochs, default_batch, warmup = (
            cls.IMAGENET_DEFAULTS if is_imagenet_style(model_name) else cls.CIFAR_DEFAULTS
        )
        epochs = epochs or default_epochs
        return cls(epochs=epochs, batch_size=batch_size or default_batch,
                   warmup_epochs=round(warmup * epochs / default_epochs), **overrides)

    def learning_rate_at(self, epoch: int) -> float:
        """Linear warm-up ``lr·(e+1)/W`` for ``e < W``, then cosine to 0 over ``E − W + 1``."""
        if epoch < self.warmup_epochs:
            return self.learning_rate * (epoch + 1) / self.warmup_epochs
        start = max(self.warmup_epochs - 1, 0)
        progress = (epoch - start) / (self.epochs - start)
        return 0.5 * self.learning_rate * (1.0 + math.cos(math.pi * progress))

    def __post_init__(self):
        """Refuses a field that ``zoo train`` sets (training.settings) with a value of the wrong
        kind, as the command line would, then an unknown optimizer or schedule."""
        for setting in SETTINGS:
            if setting.recipe_field is not None and hasattr(self, setting.recipe_field):
                problem = value_problem(setting.kind, getattr(self, setting.recipe_field))
                if problem is not None:
                    raise ValueError(f"{setting.recipe_field} {problem}.")
        if self.optimizer_name not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer_name!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if self.schedule not in self.SCHEDULES:
            raise ValueError(f"{type(self).__name__} has no {self.schedule!r} schedule; it has: "
                             f"{', '.join(self.SCHEDULES)}.")

    def optimizer(self) -> keras.optimizers.Optimizer:
        """``optimizer_name``'s optimizer with the recipe's rate and PyTorch-style (coupled) decay."""
        if self.optimizer_name == "sgd":
            return SGDCoupledDecay(self.learning_rate, self.momentum, self.weight_decay)
        return OPTIMIZERS[self.optimizer_name](self.learning_rate, self.weight_decay)

    def loss(self) -> keras.losses.Loss:
        return keras.losses.SparseCategoricalCrossentropy()

    def callbacks(self, model_name: str) -> list[keras.callbacks.Callback]:
        """The scheme's own machinery (``zoo.callbacks``) and the learning-rate schedule."""
        return [*zoo.callbacks(model_name, self.epochs), keras.callbacks.LearningRateScheduler(self.learning_rate_at)]

    def wrap(self, model: keras.Model, teacher: keras.Model | None = None) -> keras.Model:
        """The model ``fit`` drives: the model itself, unless the recipe needs a custom
        ``train_step`` (a teacher, discriminators). The wrapper must expose the student
        as ``.student`` and be what ``compile`` receives. Given a teacher, any recipe
        distils from it (knowledge distillation on the outputs, :mod:`zoo.distillation`)."""
        if teacher is not None:
            return Distiller(model, teacher, terms=[KnowledgeDistillation()])
        return model

    def compile(self, model: keras.Model) -> None:
        model.compile(self.optimizer(), self.loss(), metrics=["accuracy"])

    def report(self, history: list[dict]) -> dict:
        """What the recipe adds to a finished run's report (e.g. per-stage accuracies)."""
        return {}
