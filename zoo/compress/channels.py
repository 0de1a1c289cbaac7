"""Channel (filter) pruning with HRank's criterion: a physically narrower model.

HRank (Lin et al., CVPR 2020; docs/compression.md#channel-pruning-hrank) runs a few batches through the trained
network, computes the matrix rank of every filter's H×W feature map, averages it over the
images and removes the filters of lowest average rank; the kept filters keep their weights
and the network is fine-tuned. Removing a filter of a binary conv removes binary MACs
twice: its own output channel and one input channel of every conv that reads it.

Where the spec leaves it open, this module chooses:

* **What can lose filters.** A conv (binary or float) whose output reaches only other
  convs, or the dense head after global pooling, through per-channel layers (BN,
  activations, pooling, RBNN's activation centring). Removing a filter then removes one
  input channel of each of those consumers and nothing else. A conv whose output reaches
  a residual ``Add`` cannot lose channels on its own (the add ties the width of every
  branch of the stage), so in the ResNets exactly the first conv of every block is pruned,
  as HRank prunes ResNets; layouts with an add after every conv (Bi-Real) have none.
* **Which feature map.** The tensor the consumers read. For a binary consumer its sign,
  the only thing the consumer sees of it: a map that the sign makes constant has rank 1
  whatever its float values.
* **Allocation.** One ratio for every pruned conv by default, or HRank's per-layer
  ratios set by hand (a dict by conv name): ``round(filters · (1 − ratio))`` filters
  kept, at least one. Ties in rank keep the lower filter index.
* **What it works on.** The inference form (``zoo.to_inference``): every method's scales
  are folded into BN and its kernels are ±1, so slicing channels is exact for every
  scheme. The narrow model fine-tunes as a plain Larq BNN: ``ste_sign`` with the
  straight-through estimator, latent weights ``±latent`` (signs of the ±1 kernels, small
  enough to flip in a short fine-tune) under ``weight_clip``.
* **Removal at once or faded.** By default the filters go at once. With ``fade_steps``
  they fade out instead: the model stays full width, each reader sees a removed channel
  scaled by a level that :class:`ChannelFadeSchedule` lowers from 1 to 0 over the first
  ``fade_steps`` fine-tuning steps, and :func:`narrowed` (or ``compress.strip``) then
  builds the narrow model, which computes what the faded one does. Removed at once, half
  the inner channels of a binary ResNet-20 leave it at chance (12 %), and the fine-tune
  spends itself recovering: on ``rbnn_resnet20`` (4 × 15 000 Fashion-MNIST images, 2
  data orders) pruning cost 2.40 points against the unpruned control removed at once and
  1.05 faded over the first quarter of the fine-tune (``zoo compress``'s default).
* **BN recalibration** (removal at once). A removed input channel of a binary conv is
  never "almost zero": its sign is ±1 everywhere, so the conv's output distribution
  moves. The BN after each conv that lost inputs is corrected to give its output the
  reference mean and std (:func:`match_statistics`), in the spirit of EagleEye's adaptive
  BN (Li et al., ECCV 2020), before fine-tuning. A fade needs none: the BNs follow the
  fade as they train.

The narrow model computes exactly what :func:`masked` computes: the full-width model whose
consumers ignore the removed channels (their kernel slices are zero, and RBNN's activation
centring in front of a binary conv — part of that conv — averages over the kept channels).
"""

from __future__ import annotations

import copy
import dataclasses

import larq as lq
import numpy as np
import tensorflow as tf
import tf_keras as keras

from zoo.compress.common import (
    Pruning, batch_norm_after, bn_affine, check_plain_model, check_sparsity, fine_tunable_inference, image_batches,
    is_binary_conv, moments, rebuilt, set_bn_affine,
)
from zoo.layers import CenterActivations, HardTanh
from zoo.schemes.base import pad_same

#: layers that act on each channel alone (or, for the centring, keep the channel layout):
#: a filter's channel passes through them to the consumers
_PER_CHANNEL = (
    keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU,
    keras.layers.Activation, HardTanh, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Dropout,
    CenterActivations,
)


@dataclasses.dataclass(frozen=True)
class Chain:
    """A prunable conv, the per-channel layers its output passes and the layers reading it."""

    producer: str
    per_channel: tuple[str, ...]
    consumers: tuple[str, ...]
    #: the layer whose output is the filter's feature map as the consumers read it (4-D)
    feature_layer: str
    #: whether the consumers binarize that map (HRank then ranks its sign)
    binary_reader: bool


def prunable_convs(model: keras.Model) -> dict[str, Chain]:
    """Every conv of the model that can lose filters on its own, with its chain."""
    config = model.get_config()
    readers: dict[str, list[str]] = {entry["name"]: [] for entry in config["layers"]}
    inputs: dict[str, int] = {}
    for entry in config["layers"]:
        inputs[entry["name"]] = sum(len(node) for node in entry["inbound_nodes"])
        for node in entry["inbound_nodes"]:
            for inbound in node:
                readers[inbound[0]].append(entry["name"])
    outputs = {name for name, *_ in config["output_layers"]}
    chains = {}
    for layer in model.layers:
        if _is_plain_conv(layer) and inputs[layer.name] == 1:
            chain = _chain(model, layer.name, readers, inputs, outputs)
            if chain is not None:
                chains[layer.name] = chain
    return chains


def _is_plain_conv(layer) -> bool:
    excluded = (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    return isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, excluded) and layer.groups == 1


def _chain(model, producer: str, readers, inputs, outputs) -> Chain | None:
    """Walks from ``producer`` through per-channel layers; None if it reaches anything else."""
    per_channel, consumers = [], []
    last_map = {producer: producer}  # layer -> the last 4-D layer on its path from the producer
    frontier = [producer]
    while frontier:
        name = frontier.pop()
        if name in outputs or not readers[name]:
            return None
        for reader in readers[name]:
            layer = model.get_layer(reader)
            if inputs[reader] != 1:
                return None
            four_d = len(layer.output_shape) == 4
            if _is_plain_conv(layer) or (isinstance(layer, keras.layers.Dense) and len(layer.input_shape) == 2):
                if reader not in consumers:
                    consumers.append(reader)
                    last_map[reader] = last_map[name]
            elif isinstance(layer, _PER_CHANNEL) and _keeps_channels(layer):
                per_channel.append(reader)
                last_map[reader] = reader if four_d else last_map[name]
                frontier.append(reader)
            else:
                return None
    first = model.get_layer(consumers[0])
    feature_layer = last_map[consumers[0]]
    reads_map = feature_layer == _input_layer_name(first)
    return Chain(producer, tuple(per_channel), tuple(consumers), feature_layer, reads_map and is_binary_conv(first))


def _keeps_channels(layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return layer.get_config()["activation"] != "softmax"  # the one activation across channels
    return True


def _input_layer_name(layer) -> str:
    return layer._inbound_nodes[0].inbound_layers.name


def hrank_scores(model: keras.Model, data, batches: int = 4, layers=None) -> dict[str, np.ndarray]:
    """Average rank of each filter's feature map over the images (HRank), per prunable conv.

    ``data``: images ``(N, H, W, C)`` or a ``tf.data.Dataset`` of ``(images, labels)``
    batches (the first ``batches`` are used).
    """
    chains = _selected(model, layers)
    probe = keras.Model(model.inputs, [model.get_layer(chain.feature_layer).output for chain in chains])
    totals = [np.zeros(model.get_layer(chain.producer).filters) for chain in chains]
    images_seen = 0
    for images in image_batches(data, batches):
        maps = probe(images, training=False)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        for total, chain, feature_map in zip(totals, chains, maps):
            values = feature_map.numpy()
            if chain.binary_reader:
                values = np.where(values >= 0, 1.0, -1.0).astype(np.float32)
            total += np.linalg.matrix_rank(np.transpose(values, (0, 3, 1, 2))).sum(axis=0)
        images_seen += len(images)
    if not images_seen:
        raise ValueError("HRank needs images: data is empty.")
    return {chain.producer: total / images_seen for chain, total in zip(chains, totals)}


def _selected(model: keras.Model, layers) -> list[Chain]:
    chains = prunable_convs(model)
    if not chains:
        raise ValueError(
            f"{model.name} has no conv that can lose filters on its own: every conv's output reaches "
            "a residual add, a reshape or the model output."
        )
    if layers is None:
        return list(chains.values())
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [name for name in names if name not in chains]
    if unknown:
        raise ValueError(
            f"Cannot prune the filters of {', '.join(map(repr, unknown))}: prunable convs are "
            f"{', '.join(chains)}."
        )
    return [chains[name] for name in names]


def plan(scores: dict[str, np.ndarray], ratio) -> dict[str, np.ndarray]:
    """The filters each conv keeps: the highest-ranked ``round(n · (1 − ratio))``, in order;
    ``ratio`` is one number for every conv or a dict of them by conv name."""
    ratios = checked_ratios(ratio, scores)
    kept = {}
    for name, score in scores.items():
        keep = max(1, int(round(len(score) * (1.0 - ratios[name]))))
        kept[name] = np.sort(np.argsort(-score, kind="stable")[:keep])
    return kept


def checked_ratios(ratio, convs) -> dict[str, float]:
    """``{conv: ratio}`` for ``convs`` from one ratio or a dict of them, each in [0, 1)."""
    if not isinstance(ratio, dict):
        ratio = check_sparsity(ratio, "ratio")
        return dict.fromkeys(convs, ratio)
    missing = [name for name in convs if name not in ratio]
    if missing:
        raise ValueError(f"No ratio for {', '.join(map(repr, missing))}.")
    return {name: check_sparsity(ratio[name], f"ratio of {name!r}") for name in convs}


def narrow(model: keras.Model, kept: dict[str, np.ndarray]) -> keras.Model:
    """``model`` (an inference form) rebuilt with only the ``kept`` filters of each conv.

    Each pruned conv gets ``filters = len(kept)``; the BN and other per-channel layers
    after it and the input channels of the convs (or dense head) reading it are sliced to
    match; every other weight is carried over unchanged.
    """
    chains = _chains_for(model, kept)
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        if entry["name"] in kept:
            entry["config"]["filters"] = len(kept[entry["name"]])
    inputs_kept = {consumer: kept[c.producer] for c in chains for consumer in c.consumers}
    channels_kept = {layer: kept[c.producer] for c in chains for layer in c.per_channel}
    sliced = kept.keys() | inputs_kept.keys() | channels_kept.keys()
    weights = {}
    for layer in model.layers:
        values = layer.get_weights()
        if not values or layer.name not in sliced:
            continue
        if layer.name in channels_kept:
            values = [np.take(v, channels_kept[layer.name], axis=-1) for v in values]
        if layer.name in inputs_kept:
            values[0] = np.take(values[0], inputs_kept[layer.name], axis=-2)
        if layer.name in kept:
            values = [np.take(v, kept[layer.name], axis=-1) for v in values]  # kernel (and bias)
        weights[layer.name] = values
    return rebuilt(model, config, weights)


def masked(model: keras.Model, kept: dict[str, np.ndarray]) -> keras.Model:
    """The full-width ``model`` whose consumers ignore the removed channels: what
    :func:`narrow` computes, at the original width (the reference of the tests).

    The consumers' kernel slices of removed channels are zeroed; binary consumers lose
    their kernel quantizer so that the zeros stay zeros (their kernels must be ±1
    already, as in the inference form); RBNN's centring before them averages over the
    kept channels.
    """
    chains = _chains_for(model, kept)
    removed = {}
    for chain in chains:
        dropped = np.setdiff1d(np.arange(model.get_layer(chain.producer).filters), kept[chain.producer])
        removed.update({consumer: dropped for consumer in chain.consumers})
    config = _centring_over_kept(model, chains, kept)
    weights = {}
    for entry in config["layers"]:
        name = entry["name"]
        if name not in removed:
            continue
        layer = model.get_layer(name)
        values = layer.get_weights()
        if is_binary_conv(layer):
            if not np.all(np.abs(values[0]) == 1):
                raise ValueError(f"masked: binary layer {name!r} must hold a ±1 kernel (use the inference form).")
            entry["config"]["kernel_quantizer"] = None
        kernel = values[0].copy()
        index = [slice(None)] * kernel.ndim
        index[-2] = removed[name]
        kernel[tuple(index)] = 0.0
        weights[name] = [kernel, *values[1:]]
    return rebuilt(model, config, weights)


@keras.utils.register_keras_serializable(package="zoo.compress")
class KeptChannelsCentring(keras.layers.Layer):
    """RBNN's activation centring over the kept channels only: ``x − mean_{H,W,kept}(x)``
    (the centring of :func:`masked`, whose binary conv ignores the other channels)."""

    def __init__(self, kept: list[int], **kwargs):
        super().__init__(**kwargs)
        self.kept = [int(k) for k in kept]

    def call(self, inputs):
        return inputs - tf.reduce_mean(tf.gather(inputs, self.kept, axis=-1), axis=[1, 2, 3], keepdims=True)

    def get_config(self):
        return {**super().get_config(), "kept": self.kept}


def _centring_over_kept(model: keras.Model, chains: list[Chain], kept: dict) -> dict:
    """``model``'s config with RBNN's centring in front of each pruned conv's readers
    made a :class:`KeptChannelsCentring` over the kept channels."""
    config = copy.deepcopy(model.get_config())
    centrings = {layer: kept[c.producer] for c in chains for layer in c.per_channel
                 if isinstance(model.get_layer(layer), CenterActivations)}
    for entry in config["layers"]:
        name = entry["name"]
        if name in centrings:
            entry.update(keras.layers.serialize(KeptChannelsCentring(centrings[name].tolist(), name=name)), name=name)
    return config


@keras.utils.register_keras_serializable(package="zoo.compress")
class ChannelFade(keras.layers.Layer):
    """What a reader of a pruned conv sees while the removed filters fade out: its input
    (through the reader's input quantizer and its "same" padding with a non-zero value,
    both moved here) with the channels not ``kept`` scaled by ``level`` (a non-trainable
    weight, 1 → 0, set by :class:`ChannelFadeSchedule`).

    ``pad``: None, or ``{"kernel_size", "strides", "value"}`` of the reader's padding (a
    binary conv padding with ±1 would otherwise feed the removed channels' borders on).
    """

    def __init__(self, kept: list[int], quantizer=None, pad: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.kept = [int(k) for k in kept]
        self.quantizer = lq.quantizers.get(quantizer)
        self.pad = pad

    def build(self, input_shape):
        self.level = self.add_weight(name="level", shape=(), initializer="ones", trainable=False)
        mask = np.zeros(input_shape[-1], np.float32)
        mask[self.kept] = 1.0
        self.keep = tf.constant(mask)
        super().build(input_shape)

    def call(self, inputs):
        values = self.quantizer(inputs) if self.quantizer is not None else inputs
        if self.pad is not None:
            values = pad_same(values, self.pad["kernel_size"], self.pad["strides"], self.pad["value"])
        return values * (self.keep + (1.0 - self.keep) * self.level)

    def get_config(self):
        return {**super().get_config(), "kept": self.kept, "quantizer": lq.quantizers.serialize(self.quantizer),
                "pad": self.pad}


class ChannelFadeSchedule(keras.callbacks.Callback):
    """Lowers every :class:`ChannelFade` level linearly from 1 to 0 over the first
    ``steps`` training steps (the optimizer's iterations); a level never rises again, so a
    second ``fit`` with a fresh optimizer does not bring removed channels back."""

    def __init__(self, steps: int):
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"fade steps must be a positive integer, got {steps!r}.")
        self.steps = steps

    def on_train_batch_begin(self, batch, logs=None):
        level = max(0.0, 1.0 - (int(self.model.optimizer.iterations) + 1) / self.steps)
        for layer in self.model.layers:
            if isinstance(layer, ChannelFade) and level < float(layer.level.numpy()):
                layer.level.assign(level)


def fading(model: keras.Model, kept: dict[str, np.ndarray]) -> keras.Model:
    """The full-width ``model`` (an inference form) with a :class:`ChannelFade` in front
    of every reader of a pruned conv, at level 1: it computes what ``model`` does (RBNN's
    centring aside, which averages over the kept channels from the start)."""
    chains = _chains_for(model, kept)
    fades = {consumer: kept[c.producer] for c in chains for consumer in c.consumers}
    config = _centring_over_kept(model, chains, kept)
    layers = []
    for entry in config["layers"]:
        name = entry["name"]
        if name in fades:
            reader = entry["config"]
            quantizer, pad = reader.get("input_quantizer"), None
            if quantizer is not None:
                reader["input_quantizer"] = None
            if reader.get("padding") == "same" and reader.get("pad_values", 0.0) != 0.0:
                kernel = [(k - 1) * d + 1 for k, d in zip(reader["kernel_size"], reader["dilation_rate"])]
                pad = {"kernel_size": kernel, "strides": list(reader["strides"]), "value": float(reader["pad_values"])}
                reader.update(padding="valid", pad_values=0.0)
            fade = ChannelFade(fades[name].tolist(), quantizer, pad, name=f"{name}_fade")
            layers.append({**keras.layers.serialize(fade), "name": fade.name, "inbound_nodes": entry["inbound_nodes"]})
            entry["inbound_nodes"] = [[[fade.name, 0, 0, {}]]]
        layers.append(entry)
    config["layers"] = layers
    return rebuilt(model, config, {f"{name}_fade": [np.float32(1.0)] for name in fades})


def narrowed(model: keras.Model) -> keras.Model:
    """The narrow model a faded one (:func:`fading`, fine-tuned until every level is 0)
    stands for: the fades removed, the readers' input quantizers given back, the removed
    filters cut (:func:`narrow`). It computes what the faded model computes.

    Raises:
      ValueError: a fade not yet at 0 (cutting its channels would change the function).
    """
    fades = {layer.name: layer for layer in model.layers if isinstance(layer, ChannelFade)}
    for name, layer in fades.items():
        level = float(layer.level.numpy())
        if level > 0:
            raise ValueError(
                f"The removed channels have not faded out yet ({name} is at level {level:.3f}, not 0): fine-tune "
                "with the ChannelFadeSchedule callback for at least its steps before narrowing."
            )
    config = copy.deepcopy(model.get_config())
    inbound, layers, kept_by_reader = {}, [], {}
    for entry in config["layers"]:  # a fade comes right before its reader (fading)
        name = entry["name"]
        if name in fades:
            inbound[name] = entry["inbound_nodes"]
            continue
        if isinstance(model.get_layer(name), KeptChannelsCentring):
            entry.update(keras.layers.serialize(CenterActivations(name=name)), name=name)
        fade = fades.get(f"{name}_fade")
        if fade is not None:
            entry["inbound_nodes"] = inbound[fade.name]
            if fade.quantizer is not None:
                entry["config"]["input_quantizer"] = lq.quantizers.serialize(fade.quantizer)
            if fade.pad is not None:
                entry["config"].update(padding="same", pad_values=fade.pad["value"])
            kept_by_reader[name] = np.asarray(fade.kept)
        layers.append(entry)
    config["layers"] = layers
    full = rebuilt(model, config)
    kept = {chain.producer: kept_by_reader[chain.consumers[0]] for chain in prunable_convs(full).values()
            if chain.consumers[0] in kept_by_reader}
    return narrow(full, kept)


def _chains_for(model: keras.Model, kept: dict) -> list[Chain]:
    chains = prunable_convs(model)
    unknown = [name for name in kept if name not in chains]
    if unknown:
        raise ValueError(f"Cannot prune the filters of {', '.join(map(repr, unknown))}: not a prunable conv.")
    for name, indices in kept.items():
        filters = model.get_layer(name).filters
        if len(indices) == 0 or np.any(np.asarray(indices) >= filters) or len(set(indices)) != len(indices):
            raise ValueError(f"Layer {name!r}: kept filters must be distinct indices below {filters}, at least one.")
    return [chains[name] for name in kept]


def match_statistics(model: keras.Model, reference: keras.Model, kept: dict, data, batches: int = 4) -> None:
    """Gives each BN after a conv that lost input channels its output statistics back.

    Removing input channels of a conv shifts and shrinks its output; in a binary conv a
    removed channel is never "almost zero" (its sign is ±1 everywhere), so that shift is
    large and the BN after it normalises the wrong distribution. For each such BN (in
    model order, each after the ones before it are corrected) the per-channel mean and
    std of the conv output are measured on ``data`` in both models, and the BN is made
    the affine map that gives the narrow model's output the mean and std the reference
    model's BN output has, with the measured statistics as its moving ones
    (:func:`~zoo.compress.common.set_bn_affine`). Done in place.
    """
    pairs = []
    for chain in _chains_for(reference, kept):
        for consumer in chain.consumers:
            bn = batch_norm_after(model.get_layer(consumer))
            if bn is not None:
                pairs.append((consumer, bn))
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    pairs.sort(key=lambda pair: order[pair[0]])
    targets = moments(reference, [consumer for consumer, _ in pairs], data, batches)
    for (consumer, bn), (target_mean, target_std) in zip(pairs, targets):
        (mean, std), = moments(model, [consumer], data, batches)
        scale, shift = bn_affine(bn)
        new_scale = scale * np.where(std > 0, target_std / np.maximum(std, 1e-12), 1.0)
        set_bn_affine(bn, new_scale, scale * target_mean + shift - new_scale * mean, mean, np.square(std))


def channel_prune(model: keras.Model, ratio, data, *, batches: int = 4, layers=None,
                  recalibrate: bool = True, latent: float = 1e-2, fade_steps: int = 0) -> Pruning:
    """HRank channel pruning: the model rebuilt without the lowest-rank filters.

    Args:
      model: a functional zoo model, training or inference form.
      ratio: the fraction of filters removed from each pruned conv, in [0, 1); or a dict
        of them by conv name (HRank's per-layer rates), whose keys are then the convs
        pruned (``layers`` must be None).
      data: images ``(N, H, W, C)`` (raw pixels) or a ``tf.data.Dataset`` of
        ``(images, labels)`` batches, from the training set.
      batches: how many batches HRank averages over (its ranks are stable across
        batches; a few suffice), and :func:`match_statistics` measures on.
      layers: names of the convs to prune (default: every prunable one,
        :func:`prunable_convs`).
      recalibrate: correct the BN after every conv that lost input channels
        (:func:`match_statistics`); without it the model computes exactly :func:`narrow`.
        Removal at once only.
      fade_steps: 0 removes the filters at once (the narrow model is returned). A
        positive number fades them out over that many fine-tuning steps instead: the
        model returned is :func:`fading` and its callback :class:`ChannelFadeSchedule`;
        after the fine-tune, ``compress.strip`` (:func:`narrowed`) gives the narrow model.
      latent: magnitude of the latent weights the binary convs fine-tune from (their
        signs are the ±1 kernels). Adam moves a weight by about its learning rate a step,
        so a flip takes ``latent / lr`` steps: 1e-2 lets a short fine-tune (the pipeline's
        lr, 3e-4) retrain the binary kernels; 1.0 all but freezes them. Chosen on held-out
        images with that lr (``benchmarks/compress_fine_tune_choice.py``).

    Returns:
      A :class:`~zoo.compress.common.Pruning`: the model to fine-tune (narrow, or fading
      with its callback), the kept filters and the full-width inference model they refer to.
    """
    if isinstance(ratio, dict):
        if layers is not None:
            raise ValueError("Give per-layer ratios (a dict) or layers=, not both: the dict names the layers.")
        layers = list(ratio)
        checked_ratios(ratio, layers)  # before the costly ranking
    else:
        ratio = check_sparsity(ratio, "ratio")
    if not latent > 0:
        raise ValueError(f"latent must be a positive magnitude, got {latent!r}.")
    if isinstance(fade_steps, bool) or not isinstance(fade_steps, int) or fade_steps < 0:
        raise ValueError(f"fade_steps must be a whole number of steps >= 0, got {fade_steps!r}.")
    check_plain_model(model, "channel_prune")
    reference = fine_tunable_inference(model, data, batches)
    scores = hrank_scores(reference, data, batches, layers)
    kept = plan(scores, ratio)
    if fade_steps:
        pruned, callbacks = fading(reference, kept), [ChannelFadeSchedule(fade_steps)]
    else:
        pruned, callbacks = narrow(reference, kept), []
        if recalibrate:
            match_statistics(pruned, reference, kept, data, batches)
    for layer in reference.layers:
        if is_binary_conv(layer):
            latent_layer = pruned.get_layer(layer.name)
            kernel = latent_layer.get_weights()[0]
            latent_layer.set_weights([np.where(kernel >= 0, latent, -latent).astype(np.float32)])
    return Pruning(pruned, callbacks, tuple(kept), "channel", kept=kept, reference=reference)
