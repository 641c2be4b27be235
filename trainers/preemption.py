"""Stop requests: SIGTERM / SIGINT become a request the training loop honours between steps (finish
the step, save a checkpoint, stop), agreed across workers in multi-worker training."""

import signal
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import cli
from trainers.distribution import gather_from_replicas

# Exit codes (jem_tf/train.py documents them): preemption ends like a process killed by the signal
# would, 128 + signal number, which schedulers (SLURM, Kubernetes) read as "terminated, requeue".
PREEMPTED_EXIT_BASE = 128


class TrainingPreemptedError(cli.RunStopped):
    """SIGTERM/SIGINT: a checkpoint was saved at `step`; re-running the command resumes."""

    def __init__(self, message, step, signal_number):
        super().__init__(message)
        self.step = step
        self.signal_number = signal_number
        self.exit_code = PREEMPTED_EXIT_BASE + signal_number


class StopRequests:
    """Turns SIGTERM and SIGINT into a request the loop honours between steps: finish the step,
    save a checkpoint, write run_status.json, exit 128 + signal.

    Why not tf.distribute.experimental.PreemptionCheckpointHandler: it supports only
    MultiWorkerMirroredStrategy and TPUStrategy (not the default or MirroredStrategy this loop
    runs), restores the latest checkpoint itself when created (bypassing the verified restore of
    jem_tf.workdir.checkpoints), numbers checkpoints by its own run counter instead of the
    optimizer step the data order is keyed on, watches SIGTERM only, and exits the process itself.
    Multi-worker training would call it where this is checked.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_number = None
        self._previous = {}

    def install(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Training outside the main thread: SIGTERM/SIGINT cannot be caught to save a checkpoint.")
            return self
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}

    def _handle(self, number, frame):
        del frame
        name = signal.Signals(number).name
        if self.signal_number is None:
            self.signal_number = number
            logging.warning("Received %s: finishing this step, then saving a checkpoint and stopping.", name)
        else:
            logging.warning("Received %s again: the checkpoint is being saved (SIGKILL stops without one).", name)

    @property
    def requested(self) -> bool:
        return self.signal_number is not None


class AgreedStopRequests:
    """Multi-worker: stop and time-based checkpoints happen at the same step on every worker.

    A checkpoint save is collective, so a worker that saved (or stopped) alone would leave the others
    waiting in their next step. After each step the workers all-reduce (max) their local flags [stop
    requested, checkpoint due]: SIGTERM/SIGINT to any one worker stops all of them after the same
    step with one consistent checkpoint.

    Why not tf.distribute.experimental.PreemptionCheckpointHandler: see `StopRequests`; this
    keeps the verified restore and the step-numbered checkpoints of single-process runs.
    """

    def __init__(self, local: "StopRequests", strategy):
        self.local = local
        self.signal_number = None

        # Compiled once: an eager collective is slow and retraces on every call.
        self._gather = tf.function(lambda flags: gather_from_replicas(strategy, flags), autograph=False)

    def agree(self, checkpoint_due: bool) -> bool:
        """Call on every worker after each step; returns whether any worker's checkpoint is due."""
        flags = tf.constant([[int(self.local.requested), int(checkpoint_due)]], tf.int32)
        stop, due = np.max(self._gather(flags).numpy(), axis=0)
        if stop and self.signal_number is None:
            # A worker that was not signalled itself stops with its peer's reason: terminated.
            self.signal_number = self.local.signal_number or signal.SIGTERM
            if not self.local.requested:
                logging.warning("Another worker was told to stop: saving a checkpoint and stopping.")
        return bool(due)

    @property
    def requested(self) -> bool:
        return self.signal_number is not None
