"""The CIFAR-style ResNet-18s of RBCN's width table (BNN book Table 3.3, docs/methods/rbcn.md#reported-results).

``resnet18_cifar`` with stage widths 32-32-64-128, 32-64-128-256 and 64-64-128-256
(stem as wide as the first stage), CIFAR-100 heads by default: the models the RBCN
ablation reports. Registered for the ``rbcn`` scheme only (the Bi-Real baselines of that
table are ``bireal_resnet18_cifar`` with ``widths=``).
"""

from __future__ import annotations

import functools

from zoo.architectures.common import Architecture
from zoo.architectures.resnet import build_resnet

WIDTH_TABLE = ((32, 32, 64, 128), (32, 64, 128, 256), (64, 64, 128, 256))


def _widened_resnet18_cifar(scheme, *, arch_name: str, widths, **kwargs):
    return build_resnet(
        scheme, WIDENED_RESNET18_CIFAR[arch_name], stem="cifar", blocks_per_stage=(2, 2, 2, 2),
        widths=widths, shortcut_kind="binary", **kwargs,
    )


def _architecture(widths) -> Architecture:
    name = "resnet18_cifar_" + "_".join(str(w) for w in widths)
    return Architecture(
        name, functools.partial(_widened_resnet18_cifar, arch_name=name, widths=widths), "ResNet (CIFAR-style)",
        f"ResNet-18 for 32x32 inputs, widths {'-'.join(str(w) for w in widths)} (RBCN's width table)",
        (32, 32, 3), 100, 8, schemes=("rbcn",),
    )


WIDENED_RESNET18_CIFAR: dict[str, Architecture] = {arch.name: arch for arch in map(_architecture, WIDTH_TABLE)}
