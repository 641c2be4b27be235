"""Divergence and automatic recovery.

A step whose loss is non-finite, or whose generative loss ran away, restores the last good
checkpoint and continues with the recovery policy: the learning rate times --recovery_lr_factor,
and what the objective changes (`model.apply_recovery`: e.g. more SGLD steps, re-initialised
chains), at most --max_recoveries times. Each recovery is recorded in WORKDIR/recoveries.json, and
the effective settings in config.json, so a resumed run continues with them.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf.configs.base import write_json_atomically
from jem_tf.workdir import run_files


class TrainingDivergedError(RuntimeError):
    """Training stopped because the loss became non-finite or the energy gap ran away."""


def divergence_reason(logs, max_abs_generative_loss):
    """Why this step's logs show divergence (a non-finite loss, or |generative loss| above the
    limit; the reference code aborts at 1e8), or None."""
    loss = float(logs["loss"])
    generative = float(logs.get("generative_loss", 0.0))
    if not np.isfinite(loss):
        return f"the loss is {loss}"
    if not np.isfinite(generative) or abs(generative) > max_abs_generative_loss:
        return (f"|generative loss| = {abs(generative):.3g} exceeds "
                f"--max_abs_generative_loss={max_abs_generative_loss:g}")
    return None


def recover(config, run_checkpoints, model, schedule, diverged_at: int, reason: str, writer) -> int:
    """Divergence at step `diverged_at`: restores the last good checkpoint (`run_checkpoints`, a
    trainers.checkpointing.RunCheckpoints) and applies the recovery policy to `config`, the
    learning-rate `schedule` and `model`; returns the step training continues from. Raises
    TrainingDivergedError when --max_recoveries are used up or no checkpoint restores."""
    if config.recoveries >= config.max_recoveries:
        last = run_checkpoints.latest
        raise TrainingDivergedError(
            f"Training diverged at step {diverged_at}: {reason}. The last good checkpoint is "
            f"{last or 'none (no checkpoint was saved yet)'} and was left intact. "
            f"Automatic recoveries: {config.recoveries} of --max_recoveries={config.max_recoveries} used. "
            "The paper's remedies (appendix G.3): resume with a lower --learning_rate, more --sgld_steps, "
            "or another --seed."
        )
    restored, step = run_checkpoints.restore_newest()
    if restored is None:
        raise TrainingDivergedError(
            f"Training diverged at step {diverged_at}: {reason}, and no checkpoint restores to recover from.")
    change = dict(
        step=diverged_at, reason=reason, restored_checkpoint=os.path.basename(restored), restored_step=step,
        learning_rate_scale=[config.learning_rate_scale, config.learning_rate_scale * config.recovery_lr_factor],
    )
    config.learning_rate_scale *= config.recovery_lr_factor
    schedule.scale.assign(config.learning_rate_scale)
    change.update(model.apply_recovery(config, seed=(config.seed, diverged_at, config.recoveries)))
    config.recoveries += 1
    change["recovery"] = config.recoveries
    change["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # The effective values go into config.json, so a resumed run continues with them.
    path = os.path.join(config.workdir, run_files.RECOVERIES_FILE)
    if run_checkpoints.chief:
        run_files.write_config(config.workdir, config)
        history = run_files.read_json(path, [])
        write_json_atomically(path, json.dumps(history + [change], indent=2))
    logging.warning(
        "Recovery %d of %d: training diverged at step %d (%s). Restored %s (step %d); learning rate x%g, "
        "SGLD steps %s, %s replay-buffer chains re-initialised. Recorded in %s.",
        config.recoveries, config.max_recoveries, diverged_at, reason, restored, step,
        config.learning_rate_scale, change.get("sgld_steps", "n/a"), change.get("chains_reinitialised", 0), path,
    )
    with writer.as_default(step=diverged_at):
        tf.summary.scalar("recovery/count", config.recoveries)
        tf.summary.scalar("recovery/learning_rate_scale", config.learning_rate_scale)
        tf.summary.text("recovery/event", json.dumps(change))
    return step


def reapply_last_recovery(workdir: str, model, step: int) -> None:
    """A run killed after a recovery but before its next checkpoint resumes from the checkpoint
    that recovery restored; the chain re-initialisation it then made is in no checkpoint, so it
    is made again, identically (a stateless draw), to continue the same run. The learning-rate
    scale and SGLD steps come back from config.json."""
    history = run_files.read_json(os.path.join(workdir, run_files.RECOVERIES_FILE), [])
    last = history[-1] if history else None
    if last and last.get("restored_step") == step:
        model.reapply_recovery(last)
