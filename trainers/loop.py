"""The training loop around `train_step`: data, strategy, checkpoints, summaries, and surviving
faults: one writer per workdir, trusted restore, preemption, divergence recovery.

Our own loop rather than `model.fit`: it resumes mid-epoch from a step-numbered checkpoint, checks
every step for divergence, and is the shape multi-worker training needs (`fit` fails under
MultiWorkerMirroredStrategy, keras#20585). The loop's parts live beside it, one job each:
trainers/distribution.py (strategy, replicas, compiled steps), trainers/optimization.py (Adam and
the learning-rate schedules), trainers/checkpointing.py (what a checkpoint holds, saving,
restoring), trainers/recovery.py (divergence and its recovery), trainers/preemption.py (stop
requests), trainers/objectives.py (what is trained); this module runs them.

A run starts in three phases: check (trainers/run_plan.py: config, workdir, data and the
objective's checks, before anything is built or written; it returns a RunPlan), build (`_Run`:
model, optimizer, checkpoints; nothing written), train (under the workdir lock: restore or save step
0, write the run files, the step loop).

A run survives:
  * being killed: it holds WORKDIR/.lock (jem_tf.workdir.lock.WorkdirLock) and resumes from the newest
    checkpoint that verifies (jem_tf.workdir.checkpoints.restore_newest); broken ones are moved aside;
  * preemption: SIGTERM or SIGINT finishes the current step, saves a checkpoint, writes
    run_status.json "preempted" and ends with exit code 128 + the signal (143 / 130);
  * divergence: a non-finite loss or a runaway generative loss restores the last good checkpoint
    and continues with the recovery policy (trainers.recovery), at most --max_recoveries times.
"""

import contextlib
import errno
import json
import os
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from jem_tf import data as jem_data
from jem_tf.configs.base import (
    TrainConfig,
    write_file_atomically,
    write_json_atomically,
)
from jem_tf.images import image_grid
from jem_tf.workdir import checkpoints, lock, run_files
from trainers import objectives
from trainers.checkpointing import RunCheckpoints, WorkdirWriteError
from trainers.distribution import (
    classifier_evaluator,
    distribute_dataset,
    distributed_train_step,
    is_chief,
)
from trainers.optimization import ScaledSchedule, learning_rate_schedule, make_optimizer
from trainers.preemption import AgreedStopRequests, StopRequests, TrainingPreemptedError
from trainers.recovery import TrainingDivergedError, divergence_reason, reapply_last_recovery, recover
from trainers.run_plan import RunPlan, check_run


def _prepare_workdir(config: TrainConfig, data, training_data: dict) -> None:
    """Writes config and run info (with `training_data`, e.g. the labelled subset). Call with the
    workdir lock held."""
    run_files.write_config(config.workdir, config)
    run_info = dict(
        dataset=data.name, image_shape=list(data.image_shape), num_classes=data.num_classes,
        class_names=list(data.class_names), num_train=data.num_train,
        num_validation=data.num_validation, num_test=data.num_test, **training_data,
    )
    run_files.write_run_info(config.workdir, run_info)


def train(config: TrainConfig, exporter=None) -> dict:
    """Trains (or resumes) the run described by `config`; returns the final metrics.

    Args:
      config: the run's settings.
      exporter: when `config.export` is set, called as `exporter(workdir, version)` after the final
        checkpoint and returning the export path; the global step is the TF Serving version, so a
        re-export after resuming never collides. Injected to keep the export package out of this
        module's dependencies.

    Raises:
      TrainingDivergedError: divergence after --max_recoveries automatic recoveries.
      TrainingPreemptedError: SIGTERM/SIGINT; a checkpoint was saved (exit code 128 + signal).
      jem_tf.workdir.lock.WorkdirLockedError: another process trains in this workdir.
      WorkdirWriteError: a checkpoint could not be written (e.g. disk full).
      trainers.run_plan.IncompatibleWorkdirError, ValueError: bad settings, before anything is written.
    """
    # Three phases. Check: everything that can refuse the command, before anything is built or
    # written, so a refused command leaves the workdir as it was and the corrected one just runs.
    plan = check_run(config)
    config, strategy = plan.config, plan.strategy
    # Build: before anything is written, so a build that fails (e.g. out of accelerator memory,
    # which the host-memory check cannot see) leaves the workdir as it was.
    run = _Run(plan)
    chief = is_chief(strategy)
    # Train. One writer per workdir, from the first file written to the last: the chief. Other workers of
    # a multi-worker run write nothing there and take no lock (on a shared filesystem theirs would
    # lock the chief out).
    with lock.WorkdirLock(config.workdir) if chief else contextlib.nullcontext():
        if chief:
            run_files.clean_leftovers(config.workdir)
        # Installed before the first checkpoint is read or written: a signal from here on ends with
        # a checkpoint.
        stop_requests = StopRequests().install()

        def status(state, **details):
            if chief:
                run_files.write_run_status(config.workdir, state, run.step, **details)

        try:
            run.start(plan.resuming)
            multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            return run.train(AgreedStopRequests(stop_requests, strategy) if multi_worker else stop_requests,
                             exporter)
        except TrainingDivergedError as error:
            status("diverged", message=str(error))
            raise
        except (TrainingPreemptedError, checkpoints.NoUsableCheckpointError):
            raise  # its status was written before; or the run's status is evidence of progress to keep
        except WorkdirWriteError as error:
            status("failed", message=str(error))
            raise
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                status("failed", message=f"{type(error).__name__}: {error}")
                raise
            status("failed", message=str(error))
            raise WorkdirWriteError(
                f"Could not write to workdir {config.workdir!r}: {error}. Free space and re-run the same command: "
                "it resumes from the last checkpoint."
            ) from error
        except BaseException as error:
            status("failed", message=f"{type(error).__name__}: {error}")
            raise
        finally:
            stop_requests.uninstall()


class _Run:
    """One training session of a run: the model, its checkpointing, and the loop."""

    def __init__(self, plan: RunPlan):
        """Builds the model and optimizer of a checked run (trainers.run_plan); writes nothing (see
        `start`)."""
        config, strategy, steps_per_epoch = plan.config, plan.strategy, plan.steps_per_epoch
        self.config = config
        self.data = plan.data
        self.training_data = plan.training_data
        self.strategy = strategy
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = plan.total_steps
        self.chief = is_chief(strategy)
        self.step = 0
        # Seeds the weight initialisers (and TF's global seed): two runs with one --seed are one run.
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = objectives.build_model(config, plan.data.image_shape, plan.data.num_classes)
            self.schedule = ScaledSchedule(learning_rate_schedule(config, steps_per_epoch), config.learning_rate_scale)
            self.optimizer = make_optimizer(self.schedule, config.precision)
            self.model.compile(optimizer=self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.checkpoints = RunCheckpoints(config.workdir, self.model, self.optimizer, strategy,
                                              keep=config.keep_checkpoints)

    def start(self, resuming: bool):
        """Restores the newest checkpoint that verifies, or saves step 0. Call with the workdir lock held."""
        restored, self.step = self.checkpoints.restore_newest()
        if not restored:
            # Every checkpoint damaged: never a silent restart from step 0 (unless asked for).
            checkpoints.require_checkpoint_or_restart(self.config.workdir, self.config.restart_from_scratch)
        with self.strategy.scope():
            # Only the examples whose labels the run may use (--labels_per_class: the labelled subset).
            self.model.prepare_for_data(jem_data.labelled_training_examples(self.data, self.config),
                                        restored=bool(restored))
        # After the objective checked its state against the data: a resume it refuses leaves
        # config.json and run_info.json as they were.
        if self.chief:
            _prepare_workdir(self.config, self.data, self.training_data)
        if restored:
            logging.info("Resumed from %s (step %d).", restored, self.step)
            reapply_last_recovery(self.config.workdir, self.model, self.step)
        else:
            if resuming:
                logging.info("Workdir %s has a config but no checkpoint yet; starting from step 0.",
                             self.config.workdir)
            # Step 0 is the last good checkpoint a divergence before the first periodic one returns to.
            self.checkpoints.save(self.step)
        self.checkpoints.reset_save_timer()

    def train(self, stop_requests, exporter) -> dict:
        config, data, model, optimizer = self.config, self.data, self.model, self.optimizer
        steps_per_epoch, total_steps = self.steps_per_epoch, self.total_steps
        train_step = distributed_train_step(model, self.strategy)
        evaluate = classifier_evaluator(model, self.strategy)
        if self.chief:
            writer = tf.summary.create_file_writer(os.path.join(config.workdir, run_files.TENSORBOARD_DIR))
            run_files.write_run_status(config.workdir, "running", self.step)
        else:
            writer = tf.summary.create_noop_writer()
        logging.info(
            "Training %s (%s) on %s: WRN-%d-%d, %d steps (%d per epoch), global batch %d on %d replica(s).",
            config.objective, config.preset, data.name, config.depth, config.width, total_steps,
            steps_per_epoch, config.batch_size, self.strategy.num_replicas_in_sync,
        )
        progress = keras.utils.Progbar(total_steps, stateful_metrics=["epoch"], unit_name="step", interval=1.0)
        progress.update(self.step)
        started = time.time()
        first_step = self.step
        while self.step < total_steps and not stop_requests.requested:
            epoch, done_in_epoch = divmod(self.step, steps_per_epoch)
            batches = jem_data.make_training_batches(data, config, epoch=epoch, skip_batches=done_in_epoch).take(
                min(steps_per_epoch - done_in_epoch, total_steps - self.step))
            recovered = False
            for batch in distribute_dataset(self.strategy, batches):
                logs = train_step(batch)
                self.step += 1
                reason = divergence_reason(logs, config.max_abs_generative_loss)
                if reason:
                    self.step = recover(config, self.checkpoints, model, self.schedule, self.step, reason, writer)
                    # The train step is traced again: SGLD steps are a Python constant in it.
                    train_step = distributed_train_step(model, self.strategy)
                    recovered = True
                    break
                progress.update(self.step, [(k, float(v)) for k, v in logs.items()] + [("epoch", epoch + 1)])
                with writer.as_default(step=self.step):
                    if self.step % config.summary_every_steps == 0 or self.step == total_steps:
                        for name, value in logs.items():
                            tf.summary.scalar(f"train/{name}", value)
                        tf.summary.scalar("train/learning_rate", optimizer.learning_rate)
                    if self.chief and (self.step % config.sample_every_steps == 0 or self.step == total_steps):
                        _write_sample_grid(model, config.workdir, self.step)
                checkpoint_due = self.checkpoints.seconds_since_save() >= config.checkpoint_every_secs
                if isinstance(stop_requests, AgreedStopRequests):
                    checkpoint_due = stop_requests.agree(checkpoint_due)
                if self.step % config.checkpoint_every_steps == 0 or stop_requests.requested or checkpoint_due:
                    self.checkpoints.save(self.step)
                if stop_requests.requested:
                    break
            if recovered or stop_requests.requested:
                continue
            if self.step % steps_per_epoch == 0 and data.num_validation:
                validation = evaluate(jem_data.make_batches(data.validation, config.batch_size, training=False))
                logging.info("Epoch %d: validation accuracy %.4f, xent %.4f", epoch + 1,
                             validation["accuracy"], validation["xent"])
                with writer.as_default(step=self.step):
                    for name, value in validation.items():
                        tf.summary.scalar(f"validation/{name}", value)
        if self.checkpoints.saved_step != self.step:
            self.checkpoints.save(self.step)
        writer.flush()
        if stop_requests.requested:
            self._stop_preempted(stop_requests.signal_number)
        elapsed = time.time() - started

        test = evaluate(jem_data.make_batches(data.test, config.batch_size, training=False))
        if stop_requests.requested:  # during the test pass: stop before the export; a re-run does both
            self._stop_preempted(stop_requests.signal_number)
        metrics = dict(
            test_accuracy=test["accuracy"], test_xent=test["xent"], global_step=self.step,
            objective=config.objective, dataset=data.name, preset=config.preset,
            steps_this_session=self.step - first_step, seconds_this_session=round(elapsed, 1),
            checkpoint=self.checkpoints.latest, recoveries=config.recoveries,
            # 1 unless something retraced the compiled step (each retrace costs a full trace and compile).
            train_step_traces=train_step.experimental_get_tracing_count(),
        )
        with writer.as_default(step=self.step):
            tf.summary.scalar("test/accuracy", test["accuracy"])
        writer.flush()
        if not self.chief:
            logging.info("Finished at step %d (not the chief: the chief writes metrics and the export).", self.step)
            return metrics
        if config.export and exporter is not None:
            metrics["export"] = exporter(config.workdir, self.step)
        write_json_atomically(os.path.join(config.workdir, run_files.METRICS_FILE), json.dumps(metrics, indent=2))
        run_files.write_run_status(config.workdir, "finished", self.step)
        logging.info("Finished at step %d: test accuracy %.4f. Metrics in %s.", self.step, test["accuracy"],
                     os.path.join(config.workdir, run_files.METRICS_FILE))
        return metrics

    def _stop_preempted(self, signal_number):
        name = signal.Signals(signal_number).name
        if self.chief:
            run_files.write_run_status(self.config.workdir, "preempted", self.step, signal=name,
                                         checkpoint=self.checkpoints.latest)
        saved = self.checkpoints.path(self.checkpoints.saved_step)
        raise TrainingPreemptedError(
            f"Stopped by {name} at step {self.step}; saved {saved}. Re-run the same command "
            "to resume.", self.step, signal_number)


def _write_sample_grid(model, workdir, step, count=64):
    """The model's current samples (JEM: its persistent chains) to TensorBoard and to
    WORKDIR/samples/step_N.png; nothing for an objective without samples."""
    images = model.sample_images(count)
    if images is None:
        return
    grid = image_grid(images)
    tf.summary.image("train/sgld_samples", grid[None])
    os.makedirs(os.path.join(workdir, run_files.SAMPLES_DIR), exist_ok=True)
    # Atomically, and never through a link planted under the name (tf.io.write_file would follow it).
    write_file_atomically(os.path.join(workdir, run_files.SAMPLES_DIR, f"step_{step:07d}.png"),
                          tf.io.encode_png(grid).numpy())
