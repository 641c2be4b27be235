"""Semi-supervised training data (`--labels_per_class=N`): a labelled subset and its batch stream.

As in the JEM paper's semi-supervised experiments (the reference code's `--labels_per_class`),
cross-entropy sees only a fixed, class-balanced subset of N training images per class, while the
log p(x) term sees every training image. That needs two input streams:

- the unlabelled stream: every training image once per epoch, exactly today's `make_batches`
  stream (an epoch is one pass over it);
- the labelled stream (`labelled_batches`): batches of the subset, cycling over it for as long as
  training runs, reshuffled on each of its own passes. Like the reference's `drop_last` loader,
  a pass is `len(subset) // batch_size` whole batches; the few images left over differ each pass.

The labelled batch of global step s is a pure function of (seed, s): its pass, its order and
every augmentation / noise draw are stateless in them. So resuming at step s needs nothing but s,
and a resumed run sees the same labelled batches as an uninterrupted one.

The subset is a pure function of (training labels, N, seed): a seeded permutation of the training
split, then the first N images of each class in that order (the reference takes the first N per
class of its numpy-1234 permutation; ours follows the run's seed, so runs with different seeds
train on different labelled images).
"""

import dataclasses
import hashlib
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf.data.pipeline import AUGMENTATIONS, _augment, to_model_range

# Mixed into the run seed so the subset, the labelled stream and the unlabelled stream (which
# seeds itself from (seed, epoch)) draw unrelated numbers.
_SUBSET_SEED_TAG = 0x5E1EC7
_STREAM_SEED_TAG = 0x1ABE1ED

# Labels are read in chunks of this many examples (one pass over the training split).
_LABEL_READ_BATCH = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledSubset:
    """The labelled images of a semi-supervised run.

    Attributes:
      indices: int64 [M], ascending positions in the training split (`ImageData.train`'s order,
        i.e. after the validation hold-out) of the labelled images.
      images: uint8 [M, H, W, C], the images at `indices`, in that order.
      labels: int64 [M], their labels.
      labels_per_class: N; M = N * number of classes.
      seed: the run seed that chose them.
    """

    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    labels_per_class: int
    seed: int

    @property
    def indices_sha256(self) -> str:
        """SHA-256 of the indices as little-endian int64: one string that identifies the subset."""
        return hashlib.sha256(np.asarray(self.indices, dtype="<i8").tobytes()).hexdigest()

    def describe(self) -> dict:
        """What a run directory records about its labelled subset (JSON-ready)."""
        return dict(
            labels_per_class=int(self.labels_per_class), num_labelled=len(self.indices), seed=int(self.seed),
            indices_sha256=self.indices_sha256, indices=[int(i) for i in self.indices],
        )


def select_labelled_indices(labels, labels_per_class: int, seed: int, class_names=None) -> np.ndarray:
    """The class-balanced labelled subset: ascending positions of N images per class.

    Args:
      labels: int [num_train], the training split's labels in its order; classes are
        0 .. len(class_names) - 1 (or up to the largest label).
      labels_per_class: N >= 1.
      seed: the run seed; the same seed gives the same subset.
      class_names: names for the error message (and the number of classes).

    Raises:
      ValueError: N is not a positive integer, or a class has fewer than N training images
        (naming the class, its count and the largest N every class allows).
    """
    if isinstance(labels_per_class, bool) or not isinstance(labels_per_class, (int, np.integer)) \
            or labels_per_class < 1:
        raise ValueError(f"--labels_per_class={labels_per_class!r} is invalid: expected a positive integer.")
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    counts = np.bincount(labels, minlength=num_classes)
    short = [c for c in range(num_classes) if counts[c] < labels_per_class]
    if short:
        name = class_names[short[0]] if class_names is not None else str(short[0])
        raise ValueError(
            f"--labels_per_class={labels_per_class} is more than the {counts[short[0]]} training images of class "
            f"{name!r} (label {short[0]}; {len(short)} class(es) have fewer than {labels_per_class}, counted after "
            f"the validation hold-out). Use --labels_per_class={int(counts.min())} or less.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SUBSET_SEED_TAG]))
    order = rng.permutation(len(labels))
    chosen = [order[labels[order] == c][:labels_per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _read_labels(ds: tf.data.Dataset) -> np.ndarray:
    chunks = [labels.numpy() for labels in ds.map(lambda image, label: label).batch(_LABEL_READ_BATCH)]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros([0], np.int64)


def _read_images_at(ds: tf.data.Dataset, indices: np.ndarray, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The examples of `ds` (of `num_examples`) at ascending `indices`, in one pass."""
    keep = np.zeros([num_examples], bool)
    keep[indices] = True
    keep = tf.constant(keep)
    kept = ds.enumerate().filter(lambda position, example: tf.gather(keep, position)).map(
        lambda position, example: example)
    images, labels = [], []
    for image_batch, label_batch in kept.batch(_LABEL_READ_BATCH):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


# data.train -> {(labels_per_class, seed): LabelledSubset}; the loop builds the training stream
# once per epoch, and choosing the subset reads the whole training split.
_SUBSETS = weakref.WeakKeyDictionary()


def labelled_subset(data, labels_per_class: int, seed: int) -> LabelledSubset:
    """Chooses the labelled subset of `data.train` (an `ImageData`) and loads its images.

    Reads the training split's labels once, then decodes only the chosen images; the result is
    cached per training split, N and seed.

    Raises:
      ValueError: see `select_labelled_indices`.
    """
    cache = _SUBSETS.setdefault(data.train, {})
    key = (int(labels_per_class), int(seed))
    if key not in cache:
        logging.info("Choosing %d labelled images per class from the %d training images of %s.",
                     labels_per_class, data.num_train, data.name)
        labels = _read_labels(data.train)
        indices = select_labelled_indices(labels, labels_per_class, seed, data.class_names)
        images, subset_labels = _read_images_at(data.train, indices, len(labels))
        if not np.array_equal(subset_labels, labels[indices]):
            raise RuntimeError(f"The training split of {data.name} changed between two reads; its order must be "
                               "fixed for the labelled subset to be.")
        cache[key] = LabelledSubset(indices=indices, images=images, labels=subset_labels,
                                    labels_per_class=int(labels_per_class), seed=int(seed))
    return cache[key]


def check_labelled_batch(num_labelled: int, labels_per_class: int, batch_size: int) -> None:
    """Raises ValueError unless the subset holds at least one whole batch (a pass has none otherwise)."""
    if num_labelled < batch_size:
        num_classes = max(1, num_labelled // max(1, labels_per_class))
        raise ValueError(
            f"--labels_per_class={labels_per_class} gives {num_labelled} labelled images, fewer than one "
            f"--batch_size={batch_size} batch. Use --labels_per_class={-(-batch_size // num_classes)} or more, "
            f"or --batch_size={num_labelled} or less.")


def _stream_key(seed: int) -> np.ndarray:
    return np.random.SeedSequence([int(seed), _STREAM_SEED_TAG]).generate_state(2, dtype=np.uint32).astype(np.int64)


def labelled_batches(
    subset: LabelledSubset,
    batch_size: int,
    *,
    augmentation: str = "none",
    data_noise: float = 0.0,
    seed: int = 0,
    start_step: int = 0,
) -> tf.data.Dataset:
    """The endless labelled stream from global step `start_step` on.

    Batch s (s = start_step, start_step + 1, ...) is pass `s // P`, batch `s % P` of the subset,
    P = len(subset) // batch_size; each pass is a fresh permutation of the subset, and each
    image's crop / flip / noise is drawn from (seed, pass, its position in the pass).

    Args:
      subset: from `labelled_subset`.
      batch_size: images per batch; at most `len(subset.indices)`.
      augmentation, data_noise: as in `make_batches` (training).
      seed: the run seed.
      start_step: the global step of the first batch (resuming: the step restored).

    Returns:
      Endless dataset of `(float32 images [B, H, W, C] in [-1, 1], int32 labels [B])`.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}.")
    for arg_name, value in (("seed", seed), ("start_step", start_step)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg_name} must be a non-negative integer; received {value!r}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; received {batch_size!r}.")
    count = len(subset.indices)
    check_labelled_batch(count, subset.labels_per_class, batch_size)
    batches_per_pass = count // batch_size
    image_shape = tuple(int(d) for d in subset.images.shape[1:])
    data_noise = float(data_noise)
    use_randomness = augmentation != "none" or data_noise > 0.0
    images = tf.constant(subset.images)
    labels = tf.constant(subset.labels, tf.int32)
    stream_key = tf.constant(_stream_key(seed), tf.int64)

    @tf.autograph.experimental.do_not_convert  # traced as written, as every tf.function of ours
    def examples_of_step(step):
        pass_number = step // batches_per_pass
        first = (step % batches_per_pass) * batch_size
        order_key, augment_key = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(stream_key, pass_number), 2))
        # argsort of i.i.d. uniforms: a uniformly random permutation, stateless in (seed, pass).
        order = tf.argsort(tf.random.stateless_uniform([count], seed=order_key))
        positions = first + tf.range(batch_size, dtype=tf.int64)
        chosen = tf.gather(order, positions)
        return tf.data.Dataset.from_tensor_slices(
            (chosen, positions, tf.repeat(augment_key[tf.newaxis], batch_size, axis=0)))

    @tf.autograph.experimental.do_not_convert  # traced as written, as every tf.function of ours
    def prepare(subset_index, position, augment_key):
        image = to_model_range(tf.gather(images, subset_index))
        if use_randomness:
            example_key = tf.random.experimental.stateless_fold_in(augment_key, position)
            image = _augment(image, example_key, image_shape, augmentation, data_noise)
        return image, tf.gather(labels, subset_index)

    ds = tf.data.Dataset.counter(int(start_step)).flat_map(examples_of_step)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def with_labelled_stream(
    unlabelled_batches: tf.data.Dataset,
    subset: LabelledSubset,
    batch_size: int,
    *,
    augmentation: str,
    data_noise: float,
    seed: int,
    start_step: int,
) -> tf.data.Dataset:
    """Pairs each batch of the unlabelled stream with the labelled batch of the same global step.

    Args:
      unlabelled_batches: `(images, labels)` batches of every training image (`make_batches`) whose
        first batch is global step `start_step`; their labels are dropped.
      subset, batch_size, augmentation, data_noise, seed, start_step: as in `labelled_batches`.

    Returns:
      Dataset of `(labelled images [B, ...], labels [B], unlabelled images [B, ...])`, as long as
      `unlabelled_batches`: the training batch of an objective whose log p(x) term uses the third
      element (the classifier ignores it).
    """
    labelled = labelled_batches(subset, batch_size, augmentation=augmentation, data_noise=data_noise, seed=seed,
                                start_step=start_step)
    paired = tf.data.Dataset.zip(labelled, unlabelled_batches)
    return paired.map(lambda labelled_batch, unlabelled_batch: (*labelled_batch, unlabelled_batch[0]))
