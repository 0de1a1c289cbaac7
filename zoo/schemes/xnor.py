"""XNOR: sign weights scaled per output channel by ``mean |w|``, sign activations.

Rastegari, Ordonez, Redmon, Farhadi, "XNOR-Net: ImageNet Classification Using Binary
Convolutional Neural Networks", ECCV 2016. As in most re-implementations (larq-zoo's
XNOR-Net included) the activation scaling matrix K of the paper is left out: BN follows
every binary conv and absorbs a per-channel scale, while LCE cannot run the spatial K.
At export the per-channel weight scale is folded into the following BatchNormalization.
"""

from zoo.schemes.base import LarqBinaryScheme


class XNOR(LarqBinaryScheme):
    name = "xnor"
    method = "XNOR-Net (per-channel mean-abs scale)"
    paper = "Rastegari et al., XNOR-Net, ECCV 2016"
    input_quantizer = "ste_sign"
    kernel_quantizer = "magnitude_aware_sign"
