"""Distribution: the strategy, which process writes, how batches reach the replicas, and the compiled
train and evaluation steps over them."""

import tensorflow as tf
from absl import logging

from jem_tf import cluster as cluster_lib


def make_strategy(name: str) -> tf.distribute.Strategy:
    """'auto': MirroredStrategy when more than one GPU is visible, else the default strategy.

    'multi_worker': MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (ValueError when it is
    missing or invalid). It must be created before TensorFlow runs any op in this process.
    """
    if name == "multi_worker":
        task = cluster_lib.parse_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("Multi-worker training: task %s:%d of %d workers (%s), %d replicas in sync.", task.task_type,
                     task.task_index, task.num_workers, "chief" if task.is_chief else "not chief",
                     strategy.num_replicas_in_sync)
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files (always, except a non-chief multi-worker task)."""
    return strategy.extended.should_checkpoint


def distribute_dataset(strategy, dataset):
    """`dataset` of global batches -> per-replica batches. Sharding is explicit: with several
    workers, each one builds the same global batches (same seed) and keeps its replicas' rows of
    each (AutoShardPolicy.DATA), so every example is seen once per epoch across workers and a
    global batch is split over replicas exactly as on one machine with that many replicas."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def gather_from_replicas(strategy, value):
    """`value` [1, ...] from every replica, concatenated on every worker (collective: every worker
    must call it at the same point)."""
    return strategy.gather(strategy.run(tf.identity, args=(value,)), axis=0)


def distributed_train_step(model, strategy):
    """One compiled training step on a distributed batch; returns the replica-averaged logs."""

    @tf.function(autograph=False)
    def train_step(batch):
        per_replica = strategy.run(model.train_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    return train_step


def classifier_evaluator(model, strategy):
    """Returns `evaluate(dataset) -> {accuracy, xent}` over a finite dataset of (images, labels)
    batches; its compiled step is traced once and reused for every validation and test pass."""

    def step(batch):
        strategy.run(model.test_step, args=(batch,))

    # Traced for the batches' spec, whose batch size is unknown: the last, smaller batch of a pass
    # reuses the step instead of tracing it again.
    compiled_steps = {}

    def evaluate(dataset) -> dict:
        for metric in model.metrics:
            metric.reset_state()
        batches = distribute_dataset(strategy, dataset)
        spec = batches.element_spec
        if spec not in compiled_steps:
            compiled_steps[spec] = tf.function(step, autograph=False, input_signature=[spec])
        for batch in batches:
            compiled_steps[spec](batch)
        results = {"accuracy": float(model.accuracy_tracker.result()), "xent": float(model.xent_tracker.result())}
        for metric in model.metrics:
            metric.reset_state()
        return results

    return evaluate
