"""tf.distribute for ``zoo train``: the strategy, which worker writes, how data is split.

``default`` is TensorFlow's default strategy (one device), ``mirrored`` a
``MirroredStrategy`` over the local devices, ``multi_worker`` a
``MultiWorkerMirroredStrategy`` whose cluster comes from ``$TF_CONFIG``; every worker runs
the same command. Variables are created in the strategy's scope, so the recipes' custom
train steps run per replica and the scheme callbacks (RBNN's rotation update, its sign
schedule) assign mirrored variables from the cross-replica context between steps.

With several workers only the chief writes the run's files; the others write what must
be written by every worker (checkpoints, the final weights: reading a BatchNorm moving
statistic is a collective op) into ``<output>/worker-<index>/``.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name``; create it before any other TensorFlow work
    (``MultiWorkerMirroredStrategy`` must configure the collectives at start-up)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """0 for the chief (and single-worker runs), else the worker's position in the cluster."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return 0
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if "chief" in spec else 0)


def distribute_by_data(dataset: tf.data.Dataset, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """Workers split a dataset by examples: the TFDS splits have fewer files than a
    cluster may have workers, and sharding by file would then fail."""
    if strategy.cluster_resolver is None:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has reached it (a no-op on one worker)."""
    if strategy.cluster_resolver is not None:
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
