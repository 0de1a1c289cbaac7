"""The BONN training recipe (docs/methods/bonn.md#recipe), on any TFDS dataset of the data layer.

The book gives the loss weights, not the optimizer of the binary runs; the spec's
choices are used: SGD momentum 0.9, learning rate 0.1, cosine annealing to 0 stepped per
epoch, PyTorch-style (coupled) weight decay 1e-4 on the **non-binary** parameters only
(not on the latent binary kernels, nor on BONN's modulation and prior parameters,
which the Bayesian losses govern), batch 256; CIFAR-style models 200 epochs (the span
of the book's CIFAR weight-distribution figure), ImageNet-style 70 epochs (the span of
its ImageNet training curves). λ = 1e-4 and ν = 1 live in the BONN layers (the recipe's
``kernel_loss_weight``, ``--kernel-loss-weight``, sets another λ on them for the run: a
deviation, docs/methods/bonn.md); θ = 1e-3 and the centre rate 0.5 in the recipe's trainer
(:class:`zoo.schemes.bonn.BONNTrainer`).

Models without BONN layers (a baseline trained with this recipe in a same-budget
comparison) get the optimizer and schedule only: no trainer, no feature loss. Given a
teacher, any model gets the zoo's knowledge-distillation wrapper, as with every recipe.

    zoo train bonn_resnet20 --dataset fashion_mnist --epochs 3
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import tf_keras as keras
from zoo.export import binary_exports
from zoo.schemes.bonn import CENTRE_RATE, FEATURE_LOSS_WEIGHT, BONNTrainer, bonn_layers

from training.recipes.base import Recipe
from training.settings import lacking_layers


def decay_free_variables(model: keras.Model) -> list:
    """What §2.6 does not decay: every variable of the binary layers (latent kernels;
    BONN's w, μ, ρ) and the trainer's feature-prior log-variances."""
    student = getattr(model, "student", model)
    variables = [v for name in binary_exports(student) for v in student.get_layer(name).trainable_weights]
    if isinstance(model, BONNTrainer):
        variables.append(model.log_variances)
    return variables


@dataclasses.dataclass(frozen=True)
class BONNRecipe(Recipe):
    """SGD 0.9, lr 0.1, cosine, coupled weight decay 1e-4 on non-binary parameters,
    batch 256; CIFAR: 200 epochs, ImageNet: 70 epochs; θ = 1e-3, centre rate 0.5 (§2.6)."""

    feature_loss_weight: float = FEATURE_LOSS_WEIGHT
    centre_rate: float = CENTRE_RATE
    #: λ for the model's BONN layers; None: the layers' own (the book's 1e-4)
    kernel_loss_weight: float | None = None

    CIFAR_DEFAULTS: ClassVar[tuple[int, int, int]] = (200, 256, 0)
    IMAGENET_DEFAULTS: ClassVar[tuple[int, int, int]] = (70, 256, 0)

    def wrap(self, model: keras.Model, teacher: keras.Model | None = None) -> keras.Model:
        """:class:`BONNTrainer` for a model with BONN layers; otherwise, or given a teacher,
        what every recipe gives (the model itself / the KD distiller, in which the BONN
        layers' kernel loss still applies but the feature loss does not). Sets the recipe's λ,
        if it has one, on the BONN layers."""
        layers = bonn_layers(model)
        if self.kernel_loss_weight is not None:
            if not layers:
                raise ValueError(f"kernel_loss_weight: {lacking_layers('kernel_loss_weight', model.name)}")
            for layer in layers:
                layer.kernel_loss_weight = float(self.kernel_loss_weight)
        if teacher is not None or not layers:
            return super().wrap(model, teacher)
        return BONNTrainer(model, feature_loss_weight=self.feature_loss_weight, centre_rate=self.centre_rate)

    def compile(self, model: keras.Model) -> None:
        optimizer = self.optimizer()
        optimizer.exclude_from_weight_decay(var_list=decay_free_variables(model))
        model.compile(optimizer, self.loss(), metrics=["accuracy"])
