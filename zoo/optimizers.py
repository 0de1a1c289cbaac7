"""Optimizers with PyTorch semantics that several methods' recipes depend on."""

from __future__ import annotations

import tf_keras as keras


@keras.utils.register_keras_serializable(package="zoo")
class SGDCoupledDecay(keras.optimizers.SGD):
    """SGD whose weight decay is PyTorch's: ``g ← g + wd·v`` for every trainable
    variable (BN γ/β, scales, angles, biases included), before momentum (methods.md §0.3).

    Keras' ``weight_decay`` is decoupled and regularizers reach kernels only; RBNN
    needs the decay on θ, which is what unlocks its latent weights (§1.3).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, coupled_decay=1e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.coupled_decay = float(coupled_decay)

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        decayed = [
            (None if g is None else g + self.coupled_decay * v, v) for g, v in grads_and_vars
        ]
        return super().apply_gradients(decayed, *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "coupled_decay": self.coupled_decay}
