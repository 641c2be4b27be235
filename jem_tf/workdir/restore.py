"""A trained run for its readers (export, evaluation): the network built from config.json and
run_info.json and, when the checkpoint holds one, the replay buffer (its size from the stored
chains, whatever the objective), restored read-only from the newest good checkpoint. Readers
depend neither on the trainers nor on the writer's lock and never write into the workdir."""

import os

import tensorflow as tf
from absl import logging

from jem_tf.configs.base import TrainConfig
from jem_tf.workdir.checkpoints import (
    checkpoint_dir,
    checkpoint_path,
    checkpoint_step,
    checkpoint_steps,
    resolve_checkpoint,
    restore_newest,
    restore_step,
)
from jem_tf.workdir.run_files import load_config, load_run_info

# The replay buffer's chains in a checkpoint (trainers save the buffer as `replay_buffer`).
REPLAY_BUFFER_KEY = "replay_buffer/images/.ATTRIBUTES/VARIABLE_VALUE"


def replay_buffer_size(path: str) -> int:
    """The number of persistent chains in checkpoint `path`'s replay buffer (the first dimension of
    its stored images); 0 when the checkpoint holds no replay buffer."""
    shape = dict(tf.train.list_variables(path)).get(REPLAY_BUFFER_KEY)
    return int(shape[0]) if shape else 0


def _stored_replay_buffer_size(directory: str, step_or_path=None) -> int:
    """The replay buffer size of the run's checkpoints: of the named one, or of the newest that lists.

    Every checkpoint of a run has the same objects, so the newest readable one tells what
    `restore_newest` will restore, even when that falls back to an older one."""
    if step_or_path is not None:
        candidates = [resolve_checkpoint(directory, step_or_path)]
    else:
        candidates = [checkpoint_path(directory, step) for step in reversed(checkpoint_steps(directory))]
    for path in candidates:
        if not os.path.exists(path + ".index"):
            continue  # named but absent (restore_step says so), or deleted by the trainer's rotation
        try:
            return replay_buffer_size(path)
        except Exception as error:  # noqa: BLE001 (damaged or vanished: the restore reports it, or skips it)
            logging.warning("Could not list the variables of %s (%s).", path,
                            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return 0


def build_network(config: TrainConfig, run_info: dict, *, replay_buffer_size: int = 0, precision=None):
    """The run's WideResNet, built in `precision` (default: the run's own), and, when
    `replay_buffer_size` > 0 (what the run's checkpoint holds: `replay_buffer_size(path)`), a replay
    buffer of that many chains to restore into (else None). Their checkpoint object graph is the
    trainer's minus the training state (optimizer, metrics), so `restore_run` restores every object
    of it."""
    from jem_tf.models import WideResNet, network_arguments  # noqa: PLC0415 (Keras; keep importing this module light)
    from jem_tf.sampling import ReplayBuffer  # noqa: PLC0415

    image_shape = tuple(int(d) for d in run_info["image_shape"])
    network = WideResNet(**network_arguments(config, run_info["num_classes"], precision))
    network.build((None,) + image_shape)
    buffer = None
    if replay_buffer_size > 0:
        buffer = ReplayBuffer(int(replay_buffer_size), image_shape, seed=config.seed)
    return network, buffer


def restore_run(workdir: str, checkpoint=None, *, with_replay_buffer: bool = True, precision=None):
    """Loads a trained run for evaluation or export, read-only.

    Args:
      workdir: a training workdir (config.json, run_info.json, checkpoints/).
      checkpoint: None for the newest that verifies, a step number, or a checkpoint path prefix.
      with_replay_buffer: also restore the run's replay buffer (as `network.replay_buffer`) when its
        checkpoint holds one (whatever the objective: the checkpoint says what the run has).
      precision: the precision the network computes in (`jem_tf.precision`); None: the run's own.

    Returns:
      (network, config, run_info): the WideResNet with its weights restored, the run's TrainConfig,
      and run_info (image_shape, num_classes, class_names, dataset, plus checkpoint and global_step).
    """
    config = load_config(workdir)
    run_info = load_run_info(workdir)
    directory = checkpoint_dir(workdir)
    buffer_size = _stored_replay_buffer_size(directory, checkpoint) if with_replay_buffer else 0
    network, buffer = build_network(config, run_info, replay_buffer_size=buffer_size, precision=precision)
    parts = dict(model=network)
    if buffer is not None:
        parts["replay_buffer"] = buffer
    objects = tf.train.Checkpoint(**parts)
    if checkpoint is None:
        path = restore_newest(objects, directory, writer=False, partial=True)
        if path is None:
            found = checkpoint_steps(directory)
            raise FileNotFoundError(
                f"No checkpoint in {directory!r} restores; has the run saved one yet?" if not found else
                f"None of the checkpoints in {directory!r} ({found}) verifies; see the warnings above."
            )
    else:
        path = restore_step(objects, directory, checkpoint, partial=True)
    if buffer is not None:
        network.replay_buffer = buffer
    run_info["checkpoint"] = path
    run_info["global_step"] = checkpoint_step(path)
    return network, config, run_info
