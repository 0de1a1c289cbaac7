"""FP: the full-precision twins of every architecture (same topology, float convs).

``fp`` (ReLU, the architecture's own blocks) is the reference the binary schemes are
compared with. ``fp_bireal`` has the Bi-Real students' topology — hardtanh and a real
shortcut around every conv — so that a student whose features a discriminator compares
with a teacher's (RBCN) learns from a teacher of its own topology.
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


class FullPrecisionBiReal(FullPrecision):
    name = "fp_bireal"
    method = "Full precision, Bi-Real topology (hardtanh, a real shortcut around every conv)"
    paper = "Liu et al., Bi-Real Net, ECCV 2018 (the topology; float convs)"
    activation = "hardtanh"
    shortcut_every_conv = True


def full_precision_twin(student: Scheme, schemes) -> Scheme:
    """The full-precision scheme among ``schemes`` with ``student``'s block topology
    (activation, shortcut layout, widths); plain ``fp`` when none has it."""
    topology = (student.activation, student.shortcut_every_conv, student.width_multiplier)
    twins = [s for s in schemes if not s.binary and (s.activation, s.shortcut_every_conv, s.width_multiplier) == topology]
    return twins[0] if twins else next(s for s in schemes if s.name == FullPrecision.name)
