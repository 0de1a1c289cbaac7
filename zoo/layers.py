"""Small layers shared by the architectures and the schemes, and every float layer a
method keeps in its exported (inference) model, so that what works on exported models
(``zoo.compress``, ``zoo.deploy``) finds them here rather than in a method's module.

Each is serialisable (registered under the ``zoo`` package name) and converts to plain
TFLite ops, so a model that uses them still exports and runs under LCE.
"""

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="zoo")
class HardTanh(keras.layers.Layer):
    """``clip(x, -1, 1)``: the activation of the RBNN / Bi-Real reference networks."""

    def call(self, inputs):
        return tf.clip_by_value(inputs, -1.0, 1.0)


@keras.utils.register_keras_serializable(package="zoo")
class SubsampleChannelPad(keras.layers.Layer):
    """Parameter-free ResNet shortcut ("option A" of He et al., 2016).

    Takes every ``strides``-th row and column (``x[:, ::s, ::s, :]``) and zero-pads the
    channel axis symmetrically up to ``filters`` channels, as the CIFAR ResNet-20
    reference does.
    """

    def __init__(self, filters, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, inputs):
        x = inputs[:, :: self.strides, :: self.strides, :]
        extra = self.filters - inputs.shape[-1]
        if extra < 0:
            raise ValueError(
                f"{self.name}: cannot pad {inputs.shape[-1]} channels down to {self.filters}"
            )
        before = extra // 2
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [before, extra - before]])

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        spatial = [None if d is None else -(-d // self.strides) for d in shape[1:3]]
        return tf.TensorShape([shape[0], *spatial, self.filters])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def center_per_sample(x):
    """``x − mean_{HWC}(x)`` per sample (NHWC)."""
    return x - tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)


@keras.utils.register_keras_serializable(package="zoo")
class CenterActivations(keras.layers.Layer):
    """``x − mean_{HWC}(x)`` per sample: RBNN's activation centring, kept at inference."""

    def call(self, inputs):
        return center_per_sample(inputs)


@keras.utils.register_keras_serializable(package="zoo")
class MirrorSpatial(keras.layers.Layer):
    """Turns a feature map upside down and mirrors it left to right (``x[:, ::-1, ::-1, :]``).

    A stride-2 op padded with TF's "same" pads its extra row and column after the input,
    PyTorch before it; between two of these layers (and with its kernel mirrored) the
    TF op computes what the PyTorch one does, in training and in an LCE file alike.
    """

    def call(self, inputs):
        return tf.reverse(inputs, axis=[1, 2])
