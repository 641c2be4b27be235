"""Checks a training run passes before it writes anything: workdir, steps, replay-buffer memory,
and a warning when the precision asked for is slow on this hardware.

Each check raises ValueError with one message that names the bad value and the fix, so a refused
command leaves the workdir exactly as it was and the corrected command just runs. None of them
builds the model: they read only the config, the data's sizes and the workdir's listing.
"""

import os

from absl import logging

from jem_tf import precision as precision_lib
from jem_tf.configs.base import TrainConfig
from jem_tf.workdir import checkpoints

# Bytes per replay-buffer pixel: the chains are float32.
BUFFER_BYTES_PER_VALUE = 4
# Building the buffer holds its random initial value and the variable at once, and saving a
# checkpoint copies it again: twice the buffer is the peak the estimate must fit.
BUFFER_PEAK_COPIES = 2


def check_workdir_path(workdir: str) -> None:
    """--workdir must be a directory, or creatable under the nearest existing folder above it."""
    if not str(workdir).strip():
        raise ValueError(f"--workdir={workdir!r} is empty; pass the run's directory, e.g. --workdir=runs/quick.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(
            f"--workdir={workdir!r} is an existing file, not a directory. Choose another --workdir "
            "(a new or existing run directory)."
        )
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--workdir={workdir!r} cannot be created: {parent!r} is a file, not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"--workdir={workdir!r} is not writable (no write permission on {parent!r}). Choose a --workdir "
            "you can write to."
        )


def latest_checkpoint_step(workdir: str):
    """The highest N of WORKDIR/checkpoints/ckpt-N.index, or None: read from the files themselves,
    so a missing or garbled `checkpoint` state file does not hide the run's progress."""
    return max(checkpoints.checkpoint_steps(checkpoints.checkpoint_dir(workdir)), default=None)


def check_not_past_end(config: TrainConfig, total_steps: int, steps_per_epoch: int) -> None:
    """Refuses a run whose end (--max_steps or --epochs) lies before the workdir's latest
    checkpoint: training cannot go back, and silently re-exporting the later step under the
    requested command would hide that."""
    step = latest_checkpoint_step(config.workdir)
    if step is None or total_steps >= step:
        return
    if config.max_steps is not None and config.max_steps <= config.epochs * steps_per_epoch:
        cause, fix = f"--max_steps={config.max_steps}", f"--max_steps={step} or more"
    else:
        cause = f"--epochs={config.epochs} ({steps_per_epoch} steps per epoch)"
        fix = f"--epochs={-(-step // steps_per_epoch)} or more"
    raise ValueError(
        f"Workdir {config.workdir!r} is already at step {step}, past the end this command asks for "
        f"(step {total_steps}, from {cause}); training cannot go back. To continue it use {fix}; to "
        f"export or evaluate step {step} use `python -m export.savedmodel` or `python -m jem_tf.evaluate` "
        "on this workdir; for a shorter run choose a new --workdir."
    )


def available_memory_bytes():
    """(bytes, source) of memory this process may still use, or (None, reason): the smaller of
    the kernel's MemAvailable and the free room under a cgroup memory limit (containers)."""
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    except OSError:
        pass
    if not candidates:
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            candidates.append((pages, "os.sysconf available physical pages"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # cgroup v1 writes a huge number for "no limit"
            candidates.append((max(0, int(limit) - usage), f"the cgroup memory limit ({limit_file})"))
    if not candidates:
        return None, "neither /proc/meminfo nor os.sysconf reports available memory"
    return min(candidates)


def replay_buffer_bytes(buffer_size: int, image_shape) -> int:
    """Bytes of the replay buffer: buffer_size float32 images (no labels are stored)."""
    values = 1
    for dim in image_shape:
        values *= int(dim)
    return int(buffer_size) * values * BUFFER_BYTES_PER_VALUE


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def check_replay_buffer_memory(config: TrainConfig, image_shape, available=None) -> None:
    """Refuses a run whose replay buffer cannot fit in the memory available now. Call it for
    objectives that keep one (`uses_replay_buffer`).

    Args:
      config: the run's settings (only `buffer_size` and `batch_size` matter).
      image_shape: (H, W, C) of the data.
      available: (bytes, source) to check against; default `available_memory_bytes()`.
    """
    needed = BUFFER_PEAK_COPIES * replay_buffer_bytes(config.buffer_size, image_shape)
    available_bytes, source = available if available is not None else available_memory_bytes()
    if available_bytes is None:
        logging.warning("Cannot check that the replay buffer fits in memory: %s.", source)
        return
    if needed > available_bytes:
        shape = "x".join(str(int(d)) for d in image_shape)
        fits = available_bytes // (BUFFER_PEAK_COPIES * replay_buffer_bytes(1, image_shape))
        raise ValueError(
            f"--buffer_size={config.buffer_size} does not fit in memory: {config.buffer_size} chains of {shape} "
            f"float32 images need about {_gib(needed)} ({BUFFER_PEAK_COPIES} copies while building and "
            f"checkpointing), but only {_gib(available_bytes)} is available ({source}). Use --buffer_size={fits} "
            f"or less{' with a --batch_size no larger' if fits < config.batch_size else ''} (the paper uses 10000), "
            "or free memory."
        )


def warn_if_bfloat16_is_emulated(config: TrainConfig, on_gpu: bool, flags=None) -> bool:
    """Warns (and returns True) when a mixed_bfloat16 run will compute on a CPU without bfloat16
    instructions: oneDNN then emulates bfloat16 and a step is several times slower than in float32
    (docs/performance.md measures it). Not a refusal: the run is correct, only slow.

    Args:
      config: the run's settings (only `precision` matters).
      on_gpu: the run computes on GPUs (their bfloat16 support is not the CPU's).
      flags: the CPU's flags; default `precision.cpu_flags()` (None: unknown, no warning).
    """
    if config.precision != precision_lib.MIXED_BFLOAT16 or on_gpu:
        return False
    flags = precision_lib.cpu_flags() if flags is None else flags
    if flags is None or flags & set(precision_lib.BFLOAT16_CPU_FLAGS):
        return False
    logging.warning(
        "--precision=mixed_bfloat16 on a CPU without bfloat16 instructions (none of %s in /proc/cpuinfo): "
        "TensorFlow emulates bfloat16 there and a training step is several times slower than in float32 "
        "(docs/performance.md#bfloat16-needs-bfloat16-instructions). Add --precision=float32 unless this run "
        "must match a bfloat16 run's numerics.", ", ".join(precision_lib.BFLOAT16_CPU_FLAGS))
    return True


__all__ = [
    "available_memory_bytes", "check_not_past_end", "check_replay_buffer_memory", "check_workdir_path",
    "latest_checkpoint_step", "replay_buffer_bytes", "warn_if_bfloat16_is_emulated",
]

