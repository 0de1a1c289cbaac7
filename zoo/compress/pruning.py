"""Magnitude pruning of the float layers with ``tfmot.sparsity.keras``.

In a binary network the binary convs hold ±1 kernels at inference: there is nothing to
prune in them element-wise (channel pruning, :mod:`zoo.compress.channels`, shrinks them).
The float layers — stem conv, dense head, float shortcuts — are pruned here, each one
wrapped in ``prune_low_magnitude`` on its own (TF-MOT rejects a whole model holding Larq
layers), with a polynomial or constant sparsity schedule or a 2:4 structure.
"""

from __future__ import annotations


import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from zoo.compress.channels import ChannelFade, channel_prune, narrowed
from zoo.compress.common import Pruning, check_plain_model, check_sparsity, rebuilt
from zoo.export import binary_exports

SCHEDULES = ("polynomial", "constant")
STRUCTURES = (None, "2:4", "channel")

#: the layer classes with weights TF-MOT prunes, matched by exact class (as TF-MOT does), so
#: Larq's subclasses of ``Conv2D`` never match
_PRUNABLE = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D, keras.layers.Dense,
)

_KERNELS = ("kernel", "depthwise_kernel")


def prunable_layers(model: keras.Model, structure: str | None = None) -> list[str]:
    """The float layers TF-MOT can prune (binary convs and unsupported layers excluded).

    For ``structure="2:4"`` only layers whose kernel's input dimension is a multiple of 4
    (TF-MOT groups 4 consecutive input channels; a 1-channel stem cannot be 2:4-sparse).
    """
    names = []
    for layer in model.layers:
        if type(layer) not in _PRUNABLE:
            continue
        if structure == "2:4" and layer.get_weights()[0].shape[-2] % 4:
            continue
        names.append(layer.name)
    return names


def prune(
    model: keras.Model,
    target_sparsity: float = 0.5,
    *,
    schedule: str = "polynomial",
    structure: str | None = None,
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    layers=None,
    data=None,
    hrank_batches: int = 4,
) -> Pruning:
    """Prunes a model: returns it wrapped for fine-tuning, with the callbacks it needs.

    Args:
      model: a functional zoo model (training or inference form).
      target_sparsity: the fraction of weights removed in each pruned layer, in [0, 1);
        for ``structure="channel"``, the fraction of filters removed per pruned conv, or
        a dict of them by conv name (HRank's per-layer rates).
      schedule: ``"polynomial"`` (``tfmot.sparsity.keras.PolynomialDecay`` from
        ``initial_sparsity`` at ``begin_step`` to ``target_sparsity`` at ``end_step``,
        cubic) or ``"constant"`` (``ConstantSparsity``: the target from ``begin_step``).
      structure: None (element-wise); ``"2:4"``: two zeros in every four consecutive
        input-channel weights (TF-MOT's ``sparsity_m_by_n``), sparsity 0.5 by
        construction, from ``begin_step`` on (such a mask does not ramp up);
        ``"channel"``: HRank filter pruning of the convs, binary ones included
        (:func:`zoo.compress.channels.channel_prune`; needs ``data``).
      begin_step, end_step: optimizer steps (batches) of the schedule; ``end_step`` is
        required for the polynomial schedule, e.g. ``epochs * steps_per_epoch``. For
        ``"channel"``, ``end_step`` (optional) fades the removed filters out over the
        first ``end_step`` steps instead of removing them at once (``fade_steps``).
      frequency: the mask is updated every ``frequency`` steps; the last update is at
        the last multiple of it before ``end_step``, where the target is then reached.
      layers: names of the layers to prune (default: every prunable float layer).
      data: images, or a ``tf.data.Dataset`` of ``(images, labels)``, for HRank.
      hrank_batches: batches of ``data`` HRank averages feature-map ranks over.

    Returns:
      A :class:`Pruning`; fine-tune ``.model`` with ``.callbacks``, then :func:`strip`.

    Raises:
      ValueError: a sparsity outside [0, 1), an unknown schedule or structure, a model
        with nothing to prune, a layer that cannot be pruned.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}.")
    if structure == "channel":
        if data is None:
            raise ValueError("Channel pruning ranks feature maps: pass data= (images or a dataset of batches).")
        if begin_step:
            raise ValueError(f"Channel pruning fades filters out from the first step: begin_step must be 0, "
                             f"got {begin_step!r}.")
        return channel_prune(model, target_sparsity, data, batches=hrank_batches, layers=layers,
                             fade_steps=end_step or 0)
    target_sparsity = check_sparsity(target_sparsity)
    check_plain_model(model, "prune")
    if structure == "2:4" and target_sparsity != 0.5:
        raise ValueError(
            f"2:4 sparsity removes exactly half the weights: target_sparsity must be 0.5, got {target_sparsity}."
        )

    candidates = prunable_layers(model, structure)
    if not candidates:
        raise ValueError(
            f"{model.name} has no layer TF-MOT can prune{' 2:4' if structure else ''}: its float layers "
            f"are {_float_layers_description(model)}. Binary convs are pruned by channels: "
            "structure='channel'."
        )
    chosen = _chosen_layers(model, candidates, layers)
    extra = {}
    if structure == "2:4":
        schedule, extra = "constant", {"sparsity_m_by_n": (2, 4)}
    pruning_schedule = _schedule(schedule, initial_sparsity, target_sparsity, begin_step, end_step, frequency)

    def wrap(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if layer.name not in chosen:
            return clone
        return tfmot.sparsity.keras.prune_low_magnitude(clone, pruning_schedule=pruning_schedule, **extra)

    wrapped = keras.models.clone_model(model, clone_function=wrap)
    for layer in wrapped.layers:
        source = model.get_layer(_unwrapped(layer).name)
        if source.weights:
            _unwrapped(layer).set_weights(source.get_weights())
    return Pruning(wrapped, [tfmot.sparsity.keras.UpdatePruningStep()], tuple(chosen), structure)


def strip(model: keras.Model) -> keras.Model:
    """The model without TF-MOT's pruning wrappers: plain layers holding the pruned weights.

    TF-MOT's ``strip_pruning`` reuses the unwrapped layer objects, which then belong to
    two models (and ``zoo.to_inference`` would see every such layer read twice); the
    result is rebuilt with layers of its own. A model whose pruned filters faded out
    (channel pruning with ``fade_steps``) becomes the narrow model
    (:func:`zoo.compress.channels.narrowed`).
    """
    if any(isinstance(layer, ChannelFade) for layer in model.layers):
        return narrowed(model)
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    return rebuilt(stripped, stripped.get_config())


def sparsity_report(model: keras.Model) -> list[dict]:
    """Per layer with a kernel: kind (float / binary), weights, zeros and sparsity.

    Works on wrapped (during fine-tuning) and stripped models. Binary kernels are ±1 at
    inference whatever their latent values, so their sparsity is reported as None.
    """
    binary_layers = set(binary_exports(model))
    rows = []
    for wrapper in model.layers:
        layer = _unwrapped(wrapper)
        kernel = next((w for w in layer.weights if w.name.split("/")[-1].startswith(_KERNELS)), None)
        if kernel is None:
            continue
        values = kernel.numpy()
        binary = layer.name in binary_layers
        zeros = int(np.sum(values == 0))
        rows.append({
            "layer": layer.name,
            "kind": "binary" if binary else "float",
            "weights": int(values.size),
            "zeros": None if binary else zeros,
            "sparsity": None if binary else zeros / values.size,
        })
    return rows


def _unwrapped(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, PruneLowMagnitude) else layer


def _chosen_layers(model: keras.Model, candidates: list[str], layers) -> list[str]:
    if layers is None:
        return candidates
    names = [layers] if isinstance(layers, str) else list(layers)
    for name in names:
        if name not in candidates:
            try:
                layer = model.get_layer(name)
            except ValueError:
                raise ValueError(f"{model.name} has no layer {name!r}.") from None
            raise ValueError(
                f"Layer {name!r} ({type(layer).__name__}) cannot be pruned element-wise; prunable: "
                f"{', '.join(candidates)}."
            )
    return names


def _schedule(schedule, initial_sparsity, target_sparsity, begin_step, end_step, frequency):
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"frequency must be a positive integer, got {frequency!r}.")
    if schedule == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(target_sparsity, begin_step, frequency=frequency)
    initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
    if end_step is None or end_step <= begin_step:
        raise ValueError(
            f"The polynomial schedule needs end_step > begin_step ({begin_step}), the step where the "
            f"target is reached (e.g. epochs * steps per epoch); got end_step={end_step!r}."
        )
    # TF-MOT updates the mask only on multiples of `frequency` after begin_step, up to
    # end_step: end the schedule on such a step, or the target is never reached.
    frequency = min(frequency, end_step - begin_step)
    end_step = begin_step + (end_step - begin_step) // frequency * frequency
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity, target_sparsity, begin_step, end_step,
                                                frequency=frequency)


def _float_layers_description(model: keras.Model) -> str:
    binary_layers = set(binary_exports(model))
    weighted = [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
                if layer.weights and layer.name not in binary_layers]
    return ", ".join(weighted) or "none"
