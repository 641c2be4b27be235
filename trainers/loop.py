"""The training loop around `train_step`: data, strategy, checkpoints, summaries, divergence guard.

Our own loop rather than `model.fit`: it resumes mid-epoch from a step-numbered checkpoint, checks
every step for divergence, and is the shape multi-worker training needs (`fit` fails under
MultiWorkerMirroredStrategy, keras#20585).
"""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import data as jem_data
from jem_tf.configs.base import TrainConfig, incompatible_fields, write_json_atomically
from jem_tf.models.wide_resnet import NETWORK_LAYOUT, NETWORK_LAYOUT_KEY, check_checkpoint_layout
from trainers.classifier import Classifier
from trainers.jem import JEM

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"


class TrainingDivergedError(RuntimeError):
    """Training stopped because the loss became non-finite or the energy gap ran away."""


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a run made with settings that cannot be resumed by this one."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """'auto': MirroredStrategy when more than one GPU is visible, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(config: TrainConfig, image_shape, num_classes: int) -> Classifier:
    """The model for `config.objective`, built (weights and, for JEM, the buffer created).

    Call inside the strategy scope so variables are mirrored.
    """
    network = dict(
        depth=config.depth, width=config.width, num_classes=num_classes, norm=config.norm,
        activation=config.activation, dropout_rate=config.dropout_rate, seed=config.seed,
    )
    if config.objective == "classifier":
        model = Classifier(**network)
    else:
        model = JEM(
            **network, sgld_steps=config.sgld_steps, sgld_step_size=config.sgld_step_size,
            sgld_noise=config.sgld_noise, buffer_size=config.buffer_size,
            reinit_freq=config.reinit_freq, p_x_weight=config.p_x_weight,
            p_xy_weight=config.p_xy_weight, sgld_jit_compile=config.jit_compile,
        )
    model.build((None,) + tuple(image_shape))
    return model


# The reference's Adam epsilon (PyTorch's default); Keras' default is 1e-7.
ADAM_EPSILON = 1e-8


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """The reference's schedule (train_wrn_ebm.py), step for step.

    Step s (the optimizer's iteration count before the update, 0 first) uses
    `learning_rate * s / warmup_steps` while s <= warmup_steps (so the very first update has rate 0),
    and after that `learning_rate * lr_decay_rate**d`, d = the number of lr_decay_epochs whose first
    step lies in (warmup_steps, s]: a decay takes effect at the first step of its epoch. Like the
    reference, a decay epoch that starts inside the warm-up is overwritten by it and never applies.
    """
    decay_steps = sorted(int(epoch * steps_per_epoch) for epoch in config.lr_decay_epochs)
    decay_steps = [b for b in decay_steps if b > config.warmup_steps]
    return _ReferenceSchedule(config.learning_rate, config.lr_decay_rate, decay_steps, config.warmup_steps)


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """The reference's Adam (epsilon 1e-8) on `learning_rate_schedule`. Checkpoints written for
    training (also by export.from_reference) must use this, so their optimizer variables match."""
    return keras.optimizers.Adam(learning_rate_schedule(config, steps_per_epoch), epsilon=ADAM_EPSILON)


class _ReferenceSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, learning_rate, decay_rate, decay_steps, warmup_steps):
        self.learning_rate = float(learning_rate)
        self.decay_rate = float(decay_rate)
        self.decay_steps = list(decay_steps)
        self.warmup_steps = int(warmup_steps)
        # Rates computed in Python (double) once, as the reference multiplies its rate in Python.
        self._rates = [self.learning_rate * self.decay_rate**i for i in range(len(self.decay_steps) + 1)]

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        decays = tf.reduce_sum(tf.cast(tf.constant(self.decay_steps, tf.int64) <= step, tf.int32)) \
            if self.decay_steps else tf.constant(0, tf.int32)
        rate = tf.gather(tf.constant(self._rates, tf.float64), decays)
        if self.warmup_steps > 0:
            warming = self.learning_rate * tf.cast(step, tf.float64) / float(self.warmup_steps)
            rate = tf.where(step <= self.warmup_steps, warming, rate)
        return tf.cast(rate, tf.float32)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate, "decay_rate": self.decay_rate,
            "decay_steps": self.decay_steps, "warmup_steps": self.warmup_steps,
        }


def _make_checkpoint(model, optimizer=None):
    # The layout marker lets a restore refuse checkpoints of an older network (check_checkpoint_layout).
    parts = dict(model=model, **{NETWORK_LAYOUT_KEY: tf.Variable(NETWORK_LAYOUT, dtype=tf.int64, trainable=False)})
    if optimizer is not None:
        parts["optimizer"] = optimizer
    if isinstance(model, JEM):
        parts["replay_buffer"] = model.replay_buffer
    return tf.train.Checkpoint(**parts)


def restore_model(workdir: str, checkpoint=None):
    """Loads a trained run for evaluation or export.

    Args:
      workdir: a training workdir (config.json, run_info.json, checkpoints/).
      checkpoint: None for the latest, a step number, or a checkpoint path prefix.

    Returns:
      (model, config, run_info): the built JEM or Classifier with weights and replay buffer
      restored, the run's TrainConfig, and run_info (image_shape, num_classes, class_names,
      dataset, global_step).
    """
    config_path = os.path.join(workdir, CONFIG_FILE)
    info_path = os.path.join(workdir, RUN_INFO_FILE)
    if not (os.path.exists(config_path) and os.path.exists(info_path)):
        raise FileNotFoundError(
            f"{workdir!r} is not a jem_tf training workdir: expected {CONFIG_FILE} and {RUN_INFO_FILE} in it "
            "(written by `python -m jem_tf.train --workdir=...`)."
        )
    config = TrainConfig.load(config_path)
    with open(info_path) as f:
        run_info = json.load(f)
    model = build_model(config, run_info["image_shape"], run_info["num_classes"])
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if checkpoint is None:
        path = tf.train.latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"No checkpoint in {directory!r}; has the run saved one yet?")
    elif isinstance(checkpoint, int) or str(checkpoint).isdigit():
        path = os.path.join(directory, f"ckpt-{int(checkpoint)}")
    else:
        path = str(checkpoint)
    if not tf.io.gfile.exists(path + ".index"):
        available = tf.train.get_checkpoint_state(directory)
        raise FileNotFoundError(
            f"Checkpoint {path!r} does not exist; available: "
            f"{list(available.all_model_checkpoint_paths) if available else []}."
        )
    check_checkpoint_layout(path)
    # The optimizer's state is not needed to evaluate or export; every model variable must be found.
    _make_checkpoint(model).restore(path).expect_partial().assert_existing_objects_matched()
    run_info["checkpoint"] = path
    run_info["global_step"] = int(path.rsplit("-", 1)[-1])
    return model, config, run_info


class _DivergenceGuard:
    """Stops training on a non-finite loss or a runaway generative loss (the reference code
    aborts at |L_gen| > 1e8); the last good checkpoint is left untouched."""

    def __init__(self, max_abs_generative_loss, manager):
        self.limit = max_abs_generative_loss
        self.manager = manager

    def check(self, step, logs):
        loss = float(logs["loss"])
        generative = float(logs.get("generative_loss", 0.0))
        reason = None
        if not np.isfinite(loss):
            reason = f"the loss is {loss}"
        elif abs(generative) > self.limit:
            reason = f"|generative loss| = {abs(generative):.3g} exceeds --max_abs_generative_loss={self.limit:g}"
        if reason:
            last = self.manager.latest_checkpoint
            raise TrainingDivergedError(
                f"Training diverged at step {step}: {reason}. The last good checkpoint is "
                f"{last or 'none (no checkpoint was saved yet)'} and was left intact. The paper's remedies "
                "(appendix G.3): resume with a lower --learning_rate, more --sgld_steps, or another --seed."
            )


def image_grid(images, columns=8, gap=1):
    """[n, H, W, C] in [-1, 1] -> one uint8 grid image [rows*(H+gap)-gap, columns*(W+gap)-gap, C]."""
    images = np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    n, height, width, channels = images.shape
    columns = min(columns, n)
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = image
    return grid


def _prepare_workdir(config: TrainConfig, data) -> bool:
    """Writes config and run info; refuses a workdir made with incompatible settings.

    Returns True when the workdir already held this run (a resume).
    """
    os.makedirs(config.workdir, exist_ok=True)
    config_path = os.path.join(config.workdir, CONFIG_FILE)
    resuming = os.path.exists(config_path)
    if resuming:
        saved = TrainConfig.load(config_path)
        differences = incompatible_fields(saved, config)
        if differences:
            raise IncompatibleWorkdirError(
                f"Workdir {config.workdir!r} holds a run with different settings ({'; '.join(differences)}). "
                "Resume it with its original settings, or choose a new --workdir."
            )
    write_json_atomically(config_path, config.to_json())
    run_info = dict(
        dataset=data.name, image_shape=list(data.image_shape), num_classes=data.num_classes,
        class_names=list(data.class_names), num_train=data.num_train,
        num_validation=data.num_validation, num_test=data.num_test,
    )
    write_json_atomically(os.path.join(config.workdir, RUN_INFO_FILE), json.dumps(run_info, indent=2))
    return resuming


def distributed_train_step(model, strategy):
    """One compiled training step on a distributed batch; returns the replica-averaged logs."""

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(model.train_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    return train_step


def classifier_evaluator(model, strategy):
    """Returns `evaluate(dataset) -> {accuracy, xent}` over a finite dataset of (images, labels)
    batches; its compiled step is traced once and reused for every validation and test pass."""

    @tf.function
    def step(batch):
        strategy.run(model.test_step, args=(batch,))

    def evaluate(dataset) -> dict:
        for metric in model.metrics:
            metric.reset_state()
        for batch in strategy.experimental_distribute_dataset(dataset):
            step(batch)
        results = {"accuracy": float(model.accuracy_tracker.result()), "xent": float(model.xent_tracker.result())}
        for metric in model.metrics:
            metric.reset_state()
        return results

    return evaluate


def train(config: TrainConfig, exporter=None) -> dict:
    """Trains (or resumes) the run described by `config`; returns the final metrics.

    Args:
      config: the run's settings.
      exporter: when `config.export` is set, called as `exporter(workdir, version)` after the final
        checkpoint and returning the export path; the global step is the TF Serving version, so a
        re-export after resuming never collides. Injected to keep the export package (which
        restores runs through this module) out of this module's dependencies.
    """
    config.validate()
    data = jem_data.load(config.dataset, data_dir=config.data_dir, validation_fraction=config.validation_fraction,
                         validation_size=config.validation_size)
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} (global) must be divisible by the {replicas} replicas."
        )
    steps_per_epoch = data.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch_size={config.batch_size} is larger than the {data.num_train} training examples of {data.name!r}."
        )
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    resuming = _prepare_workdir(config, data)
    augmentation = config.augmentation or data.augmentation

    # Seeds the weight initialisers (and TF's global seed): two runs with one --seed are one run.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config, data.image_shape, data.num_classes)
        optimizer = make_optimizer(config, steps_per_epoch)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
        checkpoint = _make_checkpoint(model, optimizer)
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(config.workdir, CHECKPOINT_DIR), max_to_keep=config.keep_checkpoints
        )
        if manager.latest_checkpoint:
            check_checkpoint_layout(manager.latest_checkpoint)
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            logging.info("Resumed from %s (step %d).", manager.latest_checkpoint, int(optimizer.iterations))
        elif resuming:
            logging.info("Workdir %s has a config but no checkpoint yet; starting from step 0.", config.workdir)

    train_step = distributed_train_step(model, strategy)
    evaluate = classifier_evaluator(model, strategy)
    writer = tf.summary.create_file_writer(os.path.join(config.workdir, TENSORBOARD_DIR))
    guard = _DivergenceGuard(config.max_abs_generative_loss, manager)
    step = int(optimizer.iterations)
    logging.info(
        "Training %s (%s) on %s: WRN-%d-%d, %d steps (%d per epoch), global batch %d on %d replica(s).",
        config.objective, config.preset, data.name, config.depth, config.width, total_steps,
        steps_per_epoch, config.batch_size, replicas,
    )
    progress = keras.utils.Progbar(total_steps, stateful_metrics=["epoch"], unit_name="step", interval=1.0)
    progress.update(step)
    started = time.time()
    first_step = step
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        batches = jem_data.make_batches(
            data.train, config.batch_size, training=True, augmentation=augmentation,
            data_noise=config.data_noise, seed=config.seed, epoch=epoch, skip_batches=done_in_epoch,
        ).take(min(steps_per_epoch - done_in_epoch, total_steps - step))
        for batch in strategy.experimental_distribute_dataset(batches):
            logs = train_step(batch)
            step += 1
            guard.check(step, logs)
            progress.update(step, [(k, float(v)) for k, v in logs.items()] + [("epoch", epoch + 1)])
            with writer.as_default(step=step):
                if step % config.summary_every_steps == 0 or step == total_steps:
                    for name, value in logs.items():
                        tf.summary.scalar(f"train/{name}", value)
                    tf.summary.scalar("train/learning_rate", optimizer.learning_rate)
                if isinstance(model, JEM) and (step % config.sample_every_steps == 0 or step == total_steps):
                    _write_sample_grid(model, config.workdir, step)
            if step % config.checkpoint_every_steps == 0:
                manager.save(checkpoint_number=step)
        if step % steps_per_epoch == 0 and data.num_validation:
            validation = evaluate(jem_data.make_batches(data.validation, config.batch_size, training=False))
            logging.info("Epoch %d: validation accuracy %.4f, xent %.4f", epoch + 1,
                         validation["accuracy"], validation["xent"])
            with writer.as_default(step=step):
                for name, value in validation.items():
                    tf.summary.scalar(f"validation/{name}", value)
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
        manager.save(checkpoint_number=step)
    elapsed = time.time() - started

    test = evaluate(jem_data.make_batches(data.test, config.batch_size, training=False))
    metrics = dict(
        test_accuracy=test["accuracy"], test_xent=test["xent"], global_step=step,
        objective=config.objective, dataset=data.name, preset=config.preset,
        steps_this_session=step - first_step, seconds_this_session=round(elapsed, 1),
        checkpoint=manager.latest_checkpoint,
    )
    with writer.as_default(step=step):
        tf.summary.scalar("test/accuracy", test["accuracy"])
    writer.flush()
    if config.export and exporter is not None:
        metrics["export"] = exporter(config.workdir, step)
    write_json_atomically(os.path.join(config.workdir, METRICS_FILE), json.dumps(metrics, indent=2))
    logging.info("Finished at step %d: test accuracy %.4f. Metrics in %s.", step, test["accuracy"],
                 os.path.join(config.workdir, METRICS_FILE))
    return metrics


def _write_sample_grid(model, workdir, step, count=64):
    """Current persistent chains to TensorBoard and to WORKDIR/samples/step_N.png."""
    count = min(count, model.replay_buffer.size)
    grid = image_grid(model.replay_buffer.images[:count].numpy())
    tf.summary.image("train/sgld_samples", grid[None])
    os.makedirs(os.path.join(workdir, SAMPLES_DIR), exist_ok=True)
    tf.io.write_file(os.path.join(workdir, SAMPLES_DIR, f"step_{step:07d}.png"), tf.io.encode_png(grid))


__all__ = [
    "IncompatibleWorkdirError", "TrainingDivergedError", "build_model", "distributed_train_step", "make_strategy",
    "make_optimizer", "restore_model", "train", "classifier_evaluator",
]
