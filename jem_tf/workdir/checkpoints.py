"""A run's checkpoints: their names, verification, moving broken ones aside, the `checkpoint`
state file's repair, and the one trusted restore that training, export and evaluation share.

Restoring walks back from the newest checkpoint to the newest one that verifies (every tensor
readable with a matching checksum, every model weight finite) and restores with every object
matched. The checkpoint list comes from the `ckpt-N.index` files present, so a missing or garbled
`checkpoint` state file never reads as "no checkpoint" (which would restart at step 0 and
overwrite good checkpoints); the writer rebuilds that file. Readers only skip broken checkpoints
and cope with a trainer saving or deleting checkpoints under them.
"""

import os
import re
import time

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import cli
from jem_tf.configs.base import write_json_atomically
from jem_tf.workdir.run_files import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, RUN_STATUS_FILE, read_json

CHECKPOINT_STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's own name for it
BROKEN_CHECKPOINT_DIR = "broken"
CHECKPOINT_PREFIX = "ckpt"

_INDEX_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)\.index$")


class NoUsableCheckpointError(cli.RunStopped):
    """The workdir's run has made progress, but none of its checkpoints restores."""

    exit_code = cli.EXIT_NO_USABLE_CHECKPOINT


class CheckpointMismatchError(ValueError):
    """An intact checkpoint that does not fit the model built from the run's config."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINT_DIR)


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"{CHECKPOINT_PREFIX}-{int(step)}")


def checkpoint_step(path: str) -> int:
    return int(str(path).rsplit("-", 1)[-1])


def checkpoint_steps(directory: str) -> list:
    """Steps of the checkpoints whose index file is present, ascending."""
    if not os.path.isdir(directory):
        return []
    steps = (_INDEX_PATTERN.match(name) for name in os.listdir(directory))
    return sorted(int(match.group(1)) for match in steps if match)


def _state_file_steps(directory: str):
    """The steps the `checkpoint` state file lists, or None when it is missing or garbled.

    Parsed here, not with tf.train.get_checkpoint_state, which answers None ("no checkpoint") for a
    garbled file."""
    path = os.path.join(directory, CHECKPOINT_STATE_FILE)
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    entries = re.findall(r'^(model_checkpoint_path|all_model_checkpoint_paths): "([^"]*)"$', text, re.MULTILINE)
    if any(os.path.isabs(p) and os.path.dirname(p) != os.path.abspath(directory) for _, p in entries):
        return None  # written before the workdir was moved: its absolute paths point elsewhere
    try:
        latest = [checkpoint_step(p) for key, p in entries if key == "model_checkpoint_path"]
        listed = [checkpoint_step(p) for key, p in entries if key == "all_model_checkpoint_paths"]
    except ValueError:
        return None
    if len(latest) != 1 or not listed or latest[0] != listed[-1]:
        return None
    # Without a timestamp per checkpoint, tf.train.CheckpointManager treats the listed ones as
    # preserved (keep_checkpoint_every_n_hours) and never rotates them away.
    if len(re.findall(r"^all_model_checkpoint_timestamps: \S+$", text, re.MULTILINE)) != len(listed):
        return None
    return listed


def repair_checkpoint_state(directory: str) -> list:
    """Makes the `checkpoint` state file list exactly the checkpoints present (by their index
    files), oldest first; rewrites it when missing, garbled or stale. Writer only. Returns steps."""
    steps = checkpoint_steps(directory)
    if _state_file_steps(directory) == steps or (not steps and not os.path.exists(
            os.path.join(directory, CHECKPOINT_STATE_FILE))):
        return steps
    path = os.path.join(directory, CHECKPOINT_STATE_FILE)
    if not steps:
        broken = os.path.join(directory, BROKEN_CHECKPOINT_DIR)
        os.makedirs(broken, exist_ok=True)
        target = os.path.join(broken, f"{CHECKPOINT_STATE_FILE}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        os.replace(path, target)
        logging.warning("Moved checkpoint state file %s to %s: no checkpoint is left beside it.", path, target)
        return steps
    names = [f"{CHECKPOINT_PREFIX}-{step}" for step in steps]
    # One timestamp per checkpoint (its index file's mtime, increasing with the step, never in the
    # future) and a last-preserved time before them all: CheckpointManager then rotates these
    # checkpoints like its own (--keep_checkpoints); without them it would keep them forever.
    now, stamps = time.time(), []
    for name in names:
        try:
            stamp = min(os.path.getmtime(os.path.join(directory, name + ".index")), now)
        except OSError:
            stamp = now
        stamps.append(max(stamp, stamps[-1] + 1e-3) if stamps else stamp)
    payload = (f'model_checkpoint_path: "{names[-1]}"\n'
               + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in names)
               + "".join(f"all_model_checkpoint_timestamps: {stamp!r}\n" for stamp in stamps)
               + f"last_preserved_timestamp: {stamps[0] - 1.0!r}\n")
    write_json_atomically(path, payload)
    logging.warning("Rebuilt checkpoint state file %s from the checkpoints present: %s.", path, ", ".join(names))
    return steps


def verify_checkpoint(path: str) -> None:
    """Raises ValueError saying what is wrong unless every tensor of checkpoint `path` reads back
    (TensorFlow checks each one's CRC32C) and every model weight is finite."""
    if not os.path.exists(path + ".index"):
        raise ValueError(f"{os.path.basename(path)}.index is missing")
    try:
        reader = tf.train.load_checkpoint(path)
        for key in sorted(reader.get_variable_to_shape_map()):
            value = reader.get_tensor(key)
            # The model's weights only: chains in the replay buffer may wander, the recovery
            # policy re-initialises those.
            if (key.startswith("model/") and "replay_buffer" not in key and isinstance(value, np.ndarray)
                    and value.dtype.kind == "f" and not np.all(np.isfinite(value))):
                raise ValueError(f"variable {key} holds non-finite values")
    except Exception as error:  # noqa: BLE001 (the reader maps file damage to OpError, IndexError, ...)
        raise ValueError(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__) from None


def move_aside(directory: str, step: int, reason: str) -> str:
    """Moves checkpoint `step`'s files into checkpoints/broken/ (never deletes them)."""
    broken = os.path.join(directory, BROKEN_CHECKPOINT_DIR)
    os.makedirs(broken, exist_ok=True)
    prefix = f"{CHECKPOINT_PREFIX}-{int(step)}"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = os.path.join(broken, f"{prefix}.{stamp}")
    for name in sorted(os.listdir(directory)):
        if name == prefix + ".index" or name.startswith(prefix + ".data-"):
            suffix = name[len(prefix) + 1:]
            os.replace(os.path.join(directory, name), os.path.join(broken, f"{prefix}.{stamp}.{suffix}"))
    write_json_atomically(target + ".reason.txt", reason + "\n")
    return target


def progress_evidence(workdir: str) -> list:
    """What shows that the run in `workdir` got past step 0 (or saved a checkpoint): a step > 0 in
    run_status.json, metrics.json, checkpoint files (also in checkpoints/broken/). Empty for a
    workdir whose run stopped before its first checkpoint. For `require_checkpoint_or_restart`."""
    evidence = []
    try:
        status = read_json(os.path.join(workdir, RUN_STATUS_FILE), {})
        if isinstance(status, dict) and int(status.get("step") or 0) > 0:
            evidence.append(f"{RUN_STATUS_FILE} records step {int(status['step'])}")
    except (ValueError, TypeError, OSError):
        pass
    if os.path.exists(os.path.join(workdir, METRICS_FILE)):
        evidence.append(f"{METRICS_FILE} exists")
    directory = checkpoint_dir(workdir)
    for where in (directory, os.path.join(directory, BROKEN_CHECKPOINT_DIR)):
        names = os.listdir(where) if os.path.isdir(where) else []
        files = sorted(n for n in names if n.startswith(CHECKPOINT_PREFIX + "-") and "_temp" not in n)
        if files:
            evidence.append(f"{os.path.relpath(where, workdir)}/ holds {len(files)} checkpoint file(s)"
                            f" ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})")
    return evidence


def require_checkpoint_or_restart(workdir: str, restart_from_scratch: bool) -> None:
    """Called when no checkpoint of `workdir` restores: raises NoUsableCheckpointError when the run
    had progressed (`progress_evidence`), unless `restart_from_scratch`; a restart never deletes."""
    evidence = progress_evidence(workdir)
    if not evidence:
        return
    broken = os.path.join(checkpoint_dir(workdir), BROKEN_CHECKPOINT_DIR)
    if restart_from_scratch:
        logging.warning("No checkpoint of %s restores (%s); starting again from step 0 as "
                        "--restart_from_scratch asks. The damaged checkpoints stay in %s.", workdir,
                        "; ".join(evidence), broken)
        return
    raise NoUsableCheckpointError(
        f"Workdir {workdir!r} holds a run that made progress ({'; '.join(evidence)}), but none of its checkpoints "
        f"restores: each one that failed verification was moved to {broken}/ with a .reason.txt (nothing was "
        "deleted). Put an intact copy of a checkpoint back into checkpoints/ (e.g. from a backup) and re-run the "
        "same command to resume, or re-run it with --restart_from_scratch to train again from step 0 in this "
        "workdir."
    )


def check_checkpoint_layout(path: str) -> None:
    """Refuses a checkpoint of an older network layout (jem_tf.models.wide_resnet.NETWORK_LAYOUT)."""
    from jem_tf.models import wide_resnet  # noqa: PLC0415 (Keras; keep importing this module light)

    wide_resnet.check_checkpoint_layout(path)


def restore_newest(checkpoint: tf.train.Checkpoint, directory: str, *, writer: bool, partial: bool = False):
    """Restores the newest checkpoint in `directory` that verifies into `checkpoint`.

    Args:
      checkpoint: the objects to restore (their variables already created).
      directory: the checkpoints folder.
      writer: True for the training process holding the workdir lock: broken checkpoints are moved
        into checkpoints/broken/ and the state file is rebuilt. False for readers (export,
        evaluation), which only skip them: a newest checkpoint may still be being written.
      partial: the checkpoint holds more than `checkpoint` (e.g. the optimizer for a reader); every
        object of `checkpoint` must still be matched.

    Returns:
      The restored checkpoint's path, or None when no checkpoint restores.

    Raises:
      CheckpointMismatchError: an intact checkpoint does not fit the objects (another run's).
    """
    skipped = []
    if writer:
        repair_checkpoint_state(directory)
    for _attempt in range(10):  # a reader lists again when files vanish under it
        candidates = [s for s in reversed(checkpoint_steps(directory)) if s not in skipped]
        for step in candidates:
            path = checkpoint_path(directory, step)
            try:
                verify_checkpoint(path)
            except ValueError as error:
                if not writer and not os.path.exists(path + ".index"):
                    break  # deleted by the trainer's rotation since listed (not a fault): list again
                skipped.append(step)
                reason = f"{os.path.basename(path)} failed verification: {error}"
                if writer:
                    moved = move_aside(directory, step, reason)
                    logging.warning("Skipping %s; moved it aside to %s.*", reason, moved)
                else:
                    logging.warning("Skipping %s.", reason)
                continue
            check_checkpoint_layout(path)
            try:
                status = checkpoint.restore(path)
                if partial:
                    status.expect_partial()
                status.assert_existing_objects_matched()
            except AssertionError as error:
                raise CheckpointMismatchError(
                    f"Checkpoint {path!r} is intact but does not match the model built from the run's "
                    f"{CONFIG_FILE}: {str(error).splitlines()[0]}"
                ) from None
            except Exception as error:  # noqa: BLE001
                if writer:
                    raise
                # Verified a moment ago: the trainer's rotation deleted it while it was read.
                logging.warning("Checkpoint %s changed while being read (%s); listing again.", path,
                                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
                break
            if writer and skipped:
                repair_checkpoint_state(directory)
            if skipped:
                logging.warning("Restored %s, the newest checkpoint that verifies.", path)
            return path
        else:
            break
    if writer and skipped:
        repair_checkpoint_state(directory)
    return None


def restore_step(checkpoint: tf.train.Checkpoint, directory: str, step_or_path, *, partial: bool = False) -> str:
    """Restores one named checkpoint (a step number or a path prefix); errors say what exists."""
    path = resolve_checkpoint(directory, step_or_path)
    if not os.path.exists(path + ".index"):
        available = [checkpoint_path(directory, s) for s in checkpoint_steps(directory)]
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist; available: {available}.")
    try:
        verify_checkpoint(path)
    except ValueError as error:
        raise FileNotFoundError(
            f"Checkpoint {path!r} is damaged ({error}); choose another with --checkpoint.") from None
    check_checkpoint_layout(path)
    status = checkpoint.restore(path)
    if partial:
        status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise CheckpointMismatchError(f"Checkpoint {path!r} does not match the run's model: "
                                      f"{str(error).splitlines()[0]}") from None
    return path



def resolve_checkpoint(directory: str, step_or_path) -> str:
    """A step number or a path prefix -> the checkpoint's path prefix (not checked to exist)."""
    if isinstance(step_or_path, int) or str(step_or_path).isdigit():
        return checkpoint_path(directory, int(step_or_path))
    return str(step_or_path)
