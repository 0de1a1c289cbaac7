"""The RBNN training recipe (docs/methods/rbnn.md#recipe), on any TFDS dataset of the data layer.

Paper settings by default: SGD momentum 0.9, learning rate 0.1, weight decay 1e-4 on
**every** parameter (coupled, PyTorch-style), cross-entropy; CIFAR-style models train
1000 epochs at batch 256 with a 5-epoch linear warm-up then cosine annealing to 0
(stepped per epoch), ImageNet-style models 150 epochs at batch 512 with plain cosine.
The rotation update and the sign-approximation schedule run as callbacks.

Scale a run down with ``epochs``: the schedules (warm-up, cosine, t/k) are functions of
the epoch fraction, so a 10-epoch run covers the whole schedule; the warm-up keeps its
share of the 1000 epochs (5 in 1000, rounded: 1 epoch of 200, none of 15).

    zoo train rbnn_resnet20 --dataset fashion_mnist --epochs 3

``theta_init="uniform"`` (``--theta-init uniform``) starts θ at U(0, π/2) per output
channel, as the authors' pre-release code did, instead of the paper's π/2: a deviation for
short budgets, measured in docs/methods/rbnn.md, never the default.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import tensorflow as tf
import tf_keras as keras
from zoo.schemes.rbnn import rbnn_layers

from training.recipes.base import Recipe
from training.settings import lacking_layers

#: θ's starts: the paper's (the layers' own) and the pre-release code's
THETA_INITS = ("half_pi", "uniform")


@dataclasses.dataclass(frozen=True)
class RBNNRecipe(Recipe):
    """SGD 0.9, lr 0.1, coupled weight decay 1e-4; CIFAR: 1000 epochs at batch 256 with a
    5-epoch warm-up then cosine; ImageNet: 150 epochs at batch 512, cosine (§1.8)."""

    #: θ's start: None or "half_pi" (the paper's π/2), "uniform" (U(0, π/2), a deviation)
    theta_init: str | None = None

    CIFAR_DEFAULTS: ClassVar[tuple[int, int, int]] = (1000, 256, 5)
    IMAGENET_DEFAULTS: ClassVar[tuple[int, int, int]] = (150, 512, 0)

    def __post_init__(self):
        super().__post_init__()
        if self.theta_init not in (None, *THETA_INITS):
            raise ValueError(f"Unknown theta_init {self.theta_init!r}; choose one of {', '.join(THETA_INITS)}.")

    def wrap(self, model: keras.Model, teacher: keras.Model | None = None) -> keras.Model:
        """What every recipe gives, after starting θ as ``theta_init`` says (the seeded
        global generator draws the uniform start, so a run's seed fixes it)."""
        if self.theta_init is not None:
            layers = rbnn_layers(model)
            if not layers:
                raise ValueError(f"theta_init: {lacking_layers('theta_init', model.name)}")
            for layer in layers:
                start = tf.random.uniform(layer.theta.shape, 0.0, math.pi / 2) if self.theta_init == "uniform" else (
                    tf.fill(layer.theta.shape, math.pi / 2))
                layer.theta.assign(start)
        return super().wrap(model, teacher)
