"""Bi-Real: ApproxSign activations, magnitude-aware weights, a real shortcut per conv.

Liu, Wu, Luo, Yang, Liu, Cheng, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs
with Improved Representational Capability and Advanced Training Algorithm", ECCV 2018.
Activations use the piecewise-polynomial ApproxSign backward, weights Larq's
``magnitude_aware_sign`` (per-channel ``mean |w|``, folded into BN at export) and every
binary conv of a block has its own real-valued shortcut.
"""

from zoo.schemes.base import LarqBinaryScheme, Reported

_TABLE_3_3 = "BNN-book Table 3.3 (Bi-Real baseline of the RBCN ablation; docs/methods/rbcn.md#reported-results)"


class BiReal(LarqBinaryScheme):
    name = "bireal"
    method = "Bi-Real Net (ApproxSign, real shortcut per conv)"
    paper = "Liu et al., Bi-Real Net, ECCV 2018"
    shortcut_every_conv = True
    input_quantizer = "approx_sign"
    kernel_quantizer = "magnitude_aware_sign"
    reported = (
        Reported("resnet18_cifar", "cifar100", 54.92, _TABLE_3_3, note="widths=(32, 32, 64, 128)"),
        Reported("resnet18_cifar", "cifar100", 63.11, _TABLE_3_3, note="widths=(32, 64, 128, 256)"),
        Reported("resnet18_cifar", "cifar100", 63.81, _TABLE_3_3, note="widths=(64, 64, 128, 256)"),
    )
