"""Optimizers with PyTorch semantics that several methods' recipes depend on."""

from __future__ import annotations

import tf_keras as keras


class _CoupledDecay:
    """PyTorch's weight decay: ``g ← g + wd·v`` for every trainable variable (BN γ/β,
    scales, angles, biases included) before the update rule (docs/methods/conventions.md#batchnorm-initialisers-and-weight-decay), except
    the variables named with Keras' ``optimizer.exclude_from_weight_decay(var_list=...)``.

    Keras' ``weight_decay`` is decoupled and regularizers reach kernels only; RBNN
    needs the decay on θ, which is what unlocks its latent weights (§1.3).
    """

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        decayed = [
            (g + self.coupled_decay * v if g is not None and self.coupled_decay and self._use_weight_decay(v) else g, v)
            for g, v in grads_and_vars
        ]
        return super().apply_gradients(decayed, *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "coupled_decay": self.coupled_decay}


@keras.utils.register_keras_serializable(package="zoo")
class SGDCoupledDecay(_CoupledDecay, keras.optimizers.SGD):
    """SGD with momentum and PyTorch-style (coupled) weight decay."""

    def __init__(self, learning_rate=0.1, momentum=0.9, coupled_decay=1e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.coupled_decay = float(coupled_decay)


@keras.utils.register_keras_serializable(package="zoo")
class AdamCoupledDecay(_CoupledDecay, keras.optimizers.Adam):
    """Adam with PyTorch-style (coupled, L2) weight decay, as ``torch.optim.Adam(weight_decay=…)``."""

    def __init__(self, learning_rate=2e-3, coupled_decay=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.coupled_decay = float(coupled_decay)


#: ``Recipe.optimizer_name`` → the class ``Recipe.optimizer`` builds
OPTIMIZERS = {"sgd": SGDCoupledDecay, "adam": AdamCoupledDecay}
