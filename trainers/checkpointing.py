"""A training run's checkpoints from the writer's side: what one holds, saving it (collectively,
kept by the chief), and restoring the newest good one with the step the run is then at. The
verified restore itself is the library's (`jem_tf.workdir.checkpoints.restore_newest`)."""

import shutil
import tempfile
import time

import tensorflow as tf

from jem_tf import cli
from jem_tf.models.wide_resnet import NETWORK_LAYOUT, NETWORK_LAYOUT_KEY
from jem_tf.workdir import checkpoints
from trainers.distribution import gather_from_replicas, is_chief


class WorkdirWriteError(cli.RunStopped):
    """A checkpoint or another run file could not be written (e.g. no space left on the device)."""

    exit_code = cli.EXIT_WRITE_FAILED


def make_checkpoint(model, optimizer=None) -> tf.train.Checkpoint:
    """What a training checkpoint holds: the model, the network layout marker (a restore refuses
    checkpoints of an older network: check_checkpoint_layout), the optimizer when given, and what
    the objective adds (`model.checkpoint_items()`, e.g. the replay buffer)."""
    parts = dict(model=model, **{NETWORK_LAYOUT_KEY: tf.Variable(NETWORK_LAYOUT, dtype=tf.int64, trainable=False)})
    if optimizer is not None:
        parts["optimizer"] = optimizer
    parts.update(model.checkpoint_items())
    return tf.train.Checkpoint(**parts)


def optimizer_step(optimizer) -> int:
    """The optimizer's step count, the run's global step."""
    # Through a tensor: under MultiWorkerMirroredStrategy the variable's value is a
    # MirroredVariable, which int() does not take.
    return int(tf.convert_to_tensor(optimizer.iterations.value))


class RunCheckpoints:
    """The checkpoints of one training session in WORKDIR/checkpoints/.

    Saving is collective: every worker saves; non-chief workers to a temporary directory that is
    removed after each save (TensorFlow's multi-worker checkpoint pattern).
    """

    def __init__(self, workdir: str, model, optimizer, strategy, keep: int):
        self.directory = checkpoints.checkpoint_dir(workdir)
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.keep = keep
        self.optimizer = optimizer
        self.checkpoint = make_checkpoint(model, optimizer)
        self.manager = None
        self.saved_step = None
        self.last_save_time = time.monotonic()

    @property
    def latest(self):
        """The newest checkpoint saved or restored (a path), or None."""
        return self.manager.latest_checkpoint

    def path(self, step: int) -> str:
        return checkpoints.checkpoint_path(self.directory, step)

    def restore_newest(self):
        """Restores the newest checkpoint that verifies (the chief moves broken ones aside).

        Returns (the restored path or None, the step the run is at). Raises ValueError when the
        workers of a multi-worker run restored different steps.
        """
        with self.strategy.scope():
            restored = checkpoints.restore_newest(self.checkpoint, self.directory, writer=self.chief)
        # Reads the state file restore_newest rebuilt: it lists exactly the checkpoints present.
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.keep)
        step = optimizer_step(self.optimizer)
        self._check_workers_agree_on_step(step)
        if restored:
            self.saved_step = step
        return restored, step

    def save(self, step: int) -> str:
        """Saves checkpoint `step`; WorkdirWriteError when it cannot be written."""
        try:
            if self.chief:
                path = self.manager.save(checkpoint_number=step)
            else:  # the collective save's copy on a non-chief worker is not kept
                directory = tempfile.mkdtemp(prefix="jem_tf-worker-checkpoint-")
                try:
                    path = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=1).save(
                        checkpoint_number=step)
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
        except (tf.errors.OpError, OSError) as error:
            raise WorkdirWriteError(
                f"Could not save the checkpoint of step {step} in {self.directory!r}: "
                f"{str(error).strip().splitlines()[0]}. Free space (or fix permissions) and re-run the same command: "
                f"it resumes from {self.manager.latest_checkpoint or 'step 0'}."
            ) from None
        self.last_save_time = time.monotonic()
        self.saved_step = step
        return path

    def seconds_since_save(self) -> float:
        return time.monotonic() - self.last_save_time

    def reset_save_timer(self) -> None:
        """Counts the time to the next time-based checkpoint from now (a session's start)."""
        self.last_save_time = time.monotonic()

    def _check_workers_agree_on_step(self, step: int):
        """Multi-worker: every worker must have restored the same step (the workdir must be on a
        filesystem all workers see); otherwise their steps would silently mix two states."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return
        steps = gather_from_replicas(self.strategy, tf.constant([step], tf.int64)).numpy()
        lowest, highest = int(steps.min()), int(steps.max())
        if highest != lowest:
            raise ValueError(
                f"The workers restored different steps ({lowest} .. {highest}; this one: {step}) from "
                f"{self.directory!r}. --workdir must be one directory on a filesystem every worker sees "
                "(NFS, GCS, ...); the chief writes its checkpoints there.")
