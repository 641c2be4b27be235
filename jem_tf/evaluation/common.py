"""Helpers shared by the evaluations: batched inference-mode calls, progress bars, and the
"unavailable: why" convention for evaluations that cannot run on this machine."""

import time
import zlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

UNAVAILABLE_PREFIX = "unavailable: "


class Unavailable(Exception):
    """An evaluation (or one part of it) cannot run here: missing data, weights or replay buffer.

    `str(error)` is a one-line, user-facing reason; the suite records it as "unavailable: <reason>"
    instead of a number.
    """


def unavailable(reason) -> str:
    """The value recorded in results.json for something that could not be computed."""
    return f"{UNAVAILABLE_PREFIX}{reason}"


def is_unavailable(value) -> bool:
    return isinstance(value, str) and value.startswith(UNAVAILABLE_PREFIX)


def logits_function(model):
    """images -> logits with the model in inference mode (no dropout, frozen statistics)."""
    return lambda images: model(images, training=False)


def key_name(name: str) -> str:
    """A metric-key-safe version of a dataset name ('folder:/a/b_c' -> 'folder_b_c')."""
    if name.startswith("folder:"):
        name = "folder_" + name[len("folder:") :].rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def format_float_key(value: float) -> str:
    """Compact, stable text for a number inside a metric key (0.0313725 -> '0.03137')."""
    return f"{value:.4g}"


class Progress:
    """A keras Progbar over `total` items plus absl log lines at the start and the end."""

    def __init__(self, description: str, total: int, enabled: bool = True, unit: str = "example"):
        self.description = description
        self.total = int(total)
        self.done = 0
        self.start = time.time()
        logging.info("%s: %d %ss.", description, self.total, unit)
        self._bar = keras.utils.Progbar(max(self.total, 1), unit_name=unit, verbose=1 if enabled else 0)

    def update(self, count: int):
        self.done += int(count)
        self._bar.update(min(self.done, max(self.total, 1)))

    def finish(self):
        logging.info("%s: done in %.1f s.", self.description, time.time() - self.start)


def batch_slices(total: int, batch_size: int):
    """Yields (start, stop) covering range(total) in batches of at most batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; received {batch_size!r}.")
    for start in range(0, total, batch_size):
        yield start, min(start + batch_size, total)


def map_batches(fn, images, batch_size: int, description: str, progress: bool = True):
    """Applies `fn(batch_images, batch_index)` -> dict of [b, ...] tensors over `images` in
    batches and returns the dict of concatenated numpy arrays."""
    images = np.asarray(images, dtype=np.float32)
    bar = Progress(description, len(images), enabled=progress)
    outputs = {}
    for index, (start, stop) in enumerate(batch_slices(len(images), batch_size)):
        result = fn(tf.constant(images[start:stop]), index)
        for name, value in result.items():
            outputs.setdefault(name, []).append(np.asarray(value))
        bar.update(stop - start)
    bar.finish()
    return {name: np.concatenate(parts, axis=0) for name, parts in outputs.items()}


def batch_seed(seed: int, index) -> tf.Tensor:
    """Stateless seed [2] for batch `index` of an evaluation seeded by `seed`."""
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(index, tf.int64)])


def image_spec(image_shape) -> tf.TensorSpec:
    """A batch-polymorphic spec, so the last, smaller batch does not retrace a tf.function."""
    return tf.TensorSpec((None,) + tuple(int(d) for d in image_shape), tf.float32)


def add_input_noise(images, std: float, seed: int, set_name: str) -> np.ndarray:
    """`images` + N(0, std^2) per pixel, as the reference code's evaluation adds to every input.

    Seeded by (`seed`, `set_name`), so each set gets its own stream, the same on every run, and
    independent of the order in which sets are loaded. No clipping, as in the reference. `std` 0
    returns the images unchanged.
    """
    images = np.asarray(images, np.float32)
    if not std:
        return images
    rng = np.random.default_rng([int(seed), zlib.crc32(set_name.encode("utf-8"))])
    return (images + std * rng.standard_normal(images.shape)).astype(np.float32)
