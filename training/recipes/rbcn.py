"""The RBCN training recipe (docs/methods/rbcn.md#recipe), on any TFDS dataset of the data layer.

The paper's schedule was not recovered; the spec's choice is the zoo's Bi-Real baseline
setting (the default recipe): SGD momentum 0.9, learning rate 0.1 with cosine annealing
to 0 stepped per epoch, PyTorch-style (coupled) weight decay 1e-4 on every variable,
cross-entropy; CIFAR-style models 200 epochs at batch 128, ImageNet-style 100 at 256.
On top: the adversarial trainer (:class:`zoo.schemes.rbcn.AdversarialTrainer`) against a
frozen full-precision teacher — discriminators on the stage outputs trained with
Adam(1e-4, β = (0.5, 0.999)), generator term weight 1, the rectifiers' learning rate
η₂ = η₁ — and the BN-retraining pass after every epoch (10 % of the epoch's batches).
``adversarial_weight`` (``--adversarial-weight``) sets another generator term weight for
the run; 0 leaves the adversarial term out, an ablation (the discriminators still train).

Models without rectified convs (a baseline trained with this recipe in a same-budget
comparison) get the optimizer and schedule only: no teacher, no discriminators.

Scale a run down with ``epochs``: the cosine schedule is a function of the epoch fraction.

    zoo train rbcn_resnet20 --dataset fashion_mnist --epochs 3
    zoo train rbcn_resnet20 --dataset fashion_mnist --teacher fp_bireal_resnet20
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import tf_keras as keras
from zoo.schemes.rbcn import (ADVERSARIAL_WEIGHT, DISCRIMINATOR_LEARNING_RATE, AdversarialTrainer, BatchNormRetraining,
                              rectified_layers)

from training.recipes.base import Recipe
from training.settings import lacking_layers


@dataclasses.dataclass(frozen=True)
class RBCNRecipe(Recipe):
    """The Bi-Real baseline's SGD/cosine/coupled-decay setting plus RBCN's adversarial
    trainer against a teacher and the per-epoch BN pass (§3.4, §3.6)."""

    discriminator_learning_rate: float = DISCRIMINATOR_LEARNING_RATE
    #: the generator term's weight; None: the trainer's own (ADVERSARIAL_WEIGHT, 1)
    adversarial_weight: float | None = None
    rectifier_learning_rate_scale: float = 1.0
    bn_retraining_fraction: float = 0.1

    NEEDS_TEACHER: ClassVar[bool] = True

    def wrap(self, model: keras.Model, teacher: keras.Model | None = None) -> keras.Model:
        if not rectified_layers(model):
            if self.adversarial_weight is not None:
                raise ValueError(f"adversarial_weight: {lacking_layers('adversarial_weight', model.name)}")
            return model
        if teacher is None:
            raise ValueError(
                f"RBCN trains {model.name!r} against a frozen full-precision teacher: pass one "
                "(training.loop.prepare_teacher gives the fp_ twin, loaded or trained first)."
            )
        weight = ADVERSARIAL_WEIGHT if self.adversarial_weight is None else self.adversarial_weight
        return AdversarialTrainer(model, teacher, adversarial_weight=weight,
                                  rectifier_learning_rate_scale=self.rectifier_learning_rate_scale)

    def compile(self, model: keras.Model) -> None:
        if not isinstance(model, AdversarialTrainer):
            return super().compile(model)
        discriminator_optimizer = keras.optimizers.Adam(self.discriminator_learning_rate, beta_1=0.5, beta_2=0.999)
        model.compile(self.optimizer(), self.loss(), metrics=["accuracy"],
                      discriminator_optimizer=discriminator_optimizer)

    def callbacks(self, model_name: str) -> list[keras.callbacks.Callback]:
        """The default ones, plus the BN-retraining pass for RBCN models (it runs on the trainer)."""
        callbacks = super().callbacks(model_name)
        if zoo.registry.get_model_spec(model_name).scheme.name == "rbcn":
            callbacks.insert(0, BatchNormRetraining(self.bn_retraining_fraction))
        return callbacks

