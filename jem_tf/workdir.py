"""A training run's directory: its file names, config and run-info I/O, the one-writer lock, and
the one trusted checkpoint restore that training, export and evaluation share.

    WORKDIR/
      config.json         the run's TrainConfig (with the effective recovery state)
      run_info.json       dataset facts: image shape, classes, split sizes
      run_status.json     running | preempted | finished | diverged | failed, at which step
      recoveries.json     one entry per automatic divergence recovery
      metrics.json        final test metrics
      .lock               held (fcntl.flock) by the one training process; names its PID and host
      checkpoints/        ckpt-N.index + ckpt-N.data-*, the `checkpoint` state file
      checkpoints/broken/ checkpoints that failed verification, moved aside (never deleted)
      tensorboard/ samples/ export/

Restoring walks back from the newest checkpoint to the newest one that verifies (every tensor
readable with a matching checksum, every model weight finite) and restores with every object
matched. The checkpoint list comes from the `ckpt-N.index` files present, so a missing or garbled
`checkpoint` state file never reads as "no checkpoint" (which would restart at step 0 and
overwrite good checkpoints); the writer rebuilds that file.

Readers (export, evaluation) build the network here from config.json and run_info.json, and the
replay buffer when the checkpoint holds one (its size from the stored chains, whatever the
objective), so they depend neither on the trainers nor on the writer's lock; they never write
into the workdir and cope with a trainer saving or deleting checkpoints under them.
"""

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import time

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf.configs.base import TrainConfig, write_json_atomically

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
RUN_STATUS_FILE = "run_status.json"
RECOVERIES_FILE = "recoveries.json"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's own name for it
BROKEN_CHECKPOINT_DIR = "broken"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
CHECKPOINT_PREFIX = "ckpt"
# The replay buffer's chains in a checkpoint (trainers save the buffer as `replay_buffer`).
REPLAY_BUFFER_KEY = "replay_buffer/images/.ATTRIBUTES/VARIABLE_VALUE"

_INDEX_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)\.index$")


class RunStopped(Exception):
    """An expected, explained end of a command; `exit_code` is the documented process exit code."""

    exit_code = 1


class WorkdirLockedError(RunStopped):
    """Another process is training in this workdir."""

    exit_code = 2


class UnsafeWorkdirError(RunStopped):
    """A run file the trainer writes in place is a link or otherwise not its own plain file."""

    exit_code = 2


class NoUsableCheckpointError(RunStopped):
    """The workdir's run has made progress, but none of its checkpoints restores."""

    exit_code = 5


class CheckpointMismatchError(ValueError):
    """An intact checkpoint that does not fit the model built from the run's config."""


# -- run files --------------------------------------------------------------------------------


def is_workdir(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, CONFIG_FILE)) and os.path.isfile(os.path.join(workdir, RUN_INFO_FILE))


def load_config(workdir: str) -> TrainConfig:
    _require_workdir(workdir)
    return TrainConfig.load(os.path.join(workdir, CONFIG_FILE))


def load_run_info(workdir: str) -> dict:
    _require_workdir(workdir)
    with open(os.path.join(workdir, RUN_INFO_FILE)) as f:
        return json.load(f)


def write_config(workdir: str, config: TrainConfig) -> None:
    write_json_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json())


def write_run_info(workdir: str, run_info: dict) -> None:
    write_json_atomically(os.path.join(workdir, RUN_INFO_FILE), json.dumps(run_info, indent=2))


def _require_workdir(workdir: str) -> None:
    if not str(workdir or "").strip():
        raise FileNotFoundError(f"--workdir={workdir!r} is empty; pass a training workdir (the --workdir of "
                                "`python -m jem_tf.train`), e.g. --workdir=runs/quick.")
    if not is_workdir(workdir):
        raise FileNotFoundError(
            f"{workdir!r} is not a jem_tf training workdir: expected {CONFIG_FILE} and {RUN_INFO_FILE} in it "
            "(written by `python -m jem_tf.train --workdir=...`)."
        )


def write_run_status(workdir: str, state: str, step: int, **details) -> None:
    """WORKDIR/run_status.json: {"state", "step", "pid", "host", "time", ...details}. Never raises
    for a full disk: the status is informative, the checkpoint is what a resume needs."""
    status = dict(state=state, step=int(step), pid=os.getpid(), host=socket.gethostname(),
                  time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details)
    try:
        write_json_atomically(os.path.join(workdir, RUN_STATUS_FILE), json.dumps(status, indent=2))
    except OSError as error:
        logging.warning("Could not write %s (%s).", RUN_STATUS_FILE, error)


def read_json(path: str, default):
    """A JSON file's content, or `default` when it is absent."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def clean_leftovers(workdir: str) -> list:
    """Removes what killed processes left half-written: TF's `*_temp*` checkpoint staging folders,
    `*.tmp-PID` files of atomic JSON writes, and export `.staging-*` / `.retired-*` folders of
    processes that no longer run. Call only while holding the workdir lock. Returns the paths."""
    removed = []
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints):
        for name in os.listdir(checkpoints):
            if "_temp" in name:
                removed.append(os.path.join(checkpoints, name))
    for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
        match = re.search(r"\.tmp-(\d+)$", name)
        if match and not _process_alive(int(match.group(1))):
            removed.append(os.path.join(workdir, name))
    export = os.path.join(workdir, EXPORT_DIR)
    if os.path.isdir(export):
        for name in os.listdir(export):
            match = re.match(r"^\.(staging|retired)-.*-(\d+)$", name)
            if match and not _process_alive(int(match.group(2))):
                removed.append(os.path.join(export, name))
    for path in removed:
        logging.warning("Removing %s, left half-written by a killed run.", path)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the writer lock --------------------------------------------------------------------------


class WorkdirLock:
    """Exclusive `fcntl.flock` on WORKDIR/.lock for the lifetime of a training run.

    The kernel releases it when the process dies (even by SIGKILL), so a stale lock never blocks a
    restart. flock (not lockf) locks are per open file: a second run in the same process is refused
    too. The lock file is left in place; it records the holder's PID and host for the message.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(self.workdir, exist_ok=True)
        # O_NOFOLLOW, and a regular file with one name only: the PID record below is written in
        # place, so a planted symbolic or hard link would make it overwrite another file.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise UnsafeWorkdirError(
                f"{self.path!r} is a symbolic link (to {os.readlink(self.path)!r}); training writes its lock file in "
                "place and does not write through links. Remove the link and re-run the same command."
            ) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise UnsafeWorkdirError(
                f"{self.path!r} is not a plain file of its own (mode {stat.filemode(info.st_mode)}, {info.st_nlink} "
                "links); training writes its lock file in place and would overwrite what it shares. Remove it and "
                "re-run the same command.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"Workdir {self.workdir!r} is in use by another training run (PID {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')}). One run writes a workdir at a "
                "time: wait for it to finish, stop it (SIGTERM saves a checkpoint), or choose another --workdir."
            ) from None
        holder = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}


# -- checkpoints ------------------------------------------------------------------------------


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
    path = _resolve_checkpoint(directory, step_or_path)
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


# -- readers: the network and buffer of a run -------------------------------------------------


def replay_buffer_size(path: str) -> int:
    """The number of persistent chains in checkpoint `path`'s replay buffer (the first dimension of
    its stored images); 0 when the checkpoint holds no replay buffer."""
    shape = dict(tf.train.list_variables(path)).get(REPLAY_BUFFER_KEY)
    return int(shape[0]) if shape else 0


def _resolve_checkpoint(directory: str, step_or_path) -> str:
    """A step number or a path prefix -> the checkpoint's path prefix (not checked to exist)."""
    if isinstance(step_or_path, int) or str(step_or_path).isdigit():
        return checkpoint_path(directory, int(step_or_path))
    return str(step_or_path)


def _stored_replay_buffer_size(directory: str, step_or_path=None) -> int:
    """The replay buffer size of the run's checkpoints: of the named one, or of the newest that lists.

    Every checkpoint of a run has the same objects, so the newest readable one tells what
    `restore_newest` will restore, even when that falls back to an older one."""
    if step_or_path is not None:
        candidates = [_resolve_checkpoint(directory, step_or_path)]
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
