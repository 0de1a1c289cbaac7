"""BatchNorm re-estimation: fresh moving statistics from forward passes, no weight changes.

A binary network's BatchNorm layers see inputs whose statistics move whenever a latent
weight crosses zero, so the exponential moving averages kept during training can lag the
weights they are used with — after a short run, a high learning rate, a fine-tune or
channel pruning. :func:`recalibrate_bn` replaces every BatchNorm's moving mean and
variance by the average of the batch statistics over ``batches`` batches of data, in
training mode (each BN normalising with its batch's statistics, as during training).
Nothing else changes: kernels, γ, β and every other variable keep their values.

    model.fit(...)                                   # fine-tune
    zoo.recalibrate_bn(model, zoo.load_dataset("fashion_mnist", "train", training=False))
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization of ``model``, nested models included, in build order."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_bn(model: keras.Model, data, batches: int = 50) -> int:
    """Re-estimates the moving mean and variance of every BatchNorm of ``model``.

    Args:
      model: a Keras model (a recipe's wrapper: pass its ``.student``).
      data: a ``tf.data.Dataset`` (or any iterable) of image batches or ``(images,
        labels)`` batches, raw pixels as the model takes them; use un-augmented
        training images (``zoo.load_dataset(..., training=False)``).
      batches: how many batches to average (the statistics are the plain mean of the
        per-batch statistics, as PyTorch's ``update_bn`` computes them).

    Returns:
      The number of batches used (fewer than ``batches`` when ``data`` runs out).

    Raises:
      ValueError: ``batches`` not positive, ``model`` without BatchNorm, or empty ``data``.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches <= 0:
        raise ValueError(f"batches must be a positive integer, got {batches!r}.")
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(f"{model.name} has no BatchNormalization layer to recalibrate.")
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    forward = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen tf-keras BN runs in inference mode and keeps its statistics
        for batch in data:
            if forward == batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward += 1
            for layer in layers:
                # moving = momentum·moving + (1 − momentum)·batch: with 1 − 1/n it is the mean of n batches
                layer.momentum = 1.0 - 1.0 / forward
            model(tf.convert_to_tensor(images), training=True)  # eager: each call reads the momentum
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    if forward == 0:
        raise ValueError("recalibrate_bn: the data gave no batch.")
    return forward
