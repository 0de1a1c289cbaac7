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
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from training.recipes.base import Recipe


@dataclasses.dataclass(frozen=True)
class RBNNRecipe(Recipe):
    """SGD 0.9, lr 0.1, coupled weight decay 1e-4; CIFAR: 1000 epochs at batch 256 with a
    5-epoch warm-up then cosine; ImageNet: 150 epochs at batch 512, cosine (§1.8)."""

    CIFAR_DEFAULTS: ClassVar[tuple[int, int, int]] = (1000, 256, 5)
    IMAGENET_DEFAULTS: ClassVar[tuple[int, int, int]] = (150, 512, 0)
