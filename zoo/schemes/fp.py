"""FP: the full-precision twin of every architecture (same topology, float convs, ReLU).

It is the reference the binary schemes are compared with and the teacher RBCN trains
against.
"""

import tf_keras as keras

from zoo.schemes.base import Scheme, conv_initializer


class FullPrecision(Scheme):
    name = "fp"
    method = "Full precision"
    paper = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
    binary = False
    activation = "relu"

    def conv(self, filters, kernel_size, strides=1, name=None):
        return keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False,
            kernel_initializer=conv_initializer(), name=name,
        )
