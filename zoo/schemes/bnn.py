"""BNN: sign weights and activations with the straight-through estimator, no scale.

Hubara, Courbariaux, Soudry, El-Yaniv, Bengio, "Binarized Neural Networks", NeurIPS 2016.
The plain 1-bit baseline every method in the zoo is measured against.
"""

from zoo.schemes.base import LarqBinaryScheme


class BNN(LarqBinaryScheme):
    name = "bnn"
    method = "BNN (sign + STE)"
    paper = "Hubara et al., Binarized Neural Networks, NeurIPS 2016"
    input_quantizer = "ste_sign"
    kernel_quantizer = "ste_sign"
