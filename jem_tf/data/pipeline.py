"""Input pipeline: uint8 images -> batches of float32 images in [-1, 1] for the model.

Determinism design: a training epoch is a pure function of (dataset, seed, epoch). The shuffle
order is seeded from (seed, epoch), and every random augmentation / noise draw uses stateless ops
keyed by the example's position within the epoch, so parallel mapping, prefetching and resuming
mid-epoch with `skip_batches` cannot change what the model sees.
"""

import numpy as np
import tensorflow as tf

AUGMENTATIONS = ("none", "crop", "crop_flip")

# Shuffle buffer cap: datasets up to this size are shuffled as a whole (a true permutation);
# larger ones (CIFAR's 45k, SVHN's 66k) with a window this big, which keeps memory bounded.
MAX_SHUFFLE_BUFFER = 10_000


def to_model_range(images_uint8: tf.Tensor) -> tf.Tensor:
    """Maps uint8 pixel values [0, 255] to float32 [-1, 1] (x / 127.5 - 1)."""
    return tf.cast(images_uint8, tf.float32) / 127.5 - 1.0


def crop_padding(height: int, width: int) -> int:
    """Pixels of reflect padding before the random crop: 4 for 32x32 (as in the paper), 1 for
    8x8; in general 1/8 of the shorter side, at least 1."""
    return max(1, min(int(height), int(width)) // 8)


def _epoch_seeds(seed: int, epoch: int) -> tuple[int, np.ndarray]:
    """(shuffle seed, stateless key [2]) for one epoch, well mixed so nearby (seed, epoch) pairs
    give unrelated streams."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(3, dtype=np.uint32)
    return int(state[0]), state[1:].astype(np.int64)


def _augment(image: tf.Tensor, key: tf.Tensor, image_shape: tuple, augmentation: str, data_noise: float) -> tf.Tensor:
    """Random crop / flip / Gaussian noise on one float image, all drawn from `key`."""
    return _augmented_views(image, key, image_shape, augmentation, data_noise)[0]


def _augmented_views(
    image: tf.Tensor,
    key: tf.Tensor,
    image_shape: tuple,
    augmentation: str,
    data_noise: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(augmented, un-augmented) views of one float image: random crop / flip plus Gaussian
    noise, and the same image with the same noise but no crop or flip; all drawn from `key`."""
    crop_key, flip_key, noise_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    unaugmented = image
    if augmentation in ("crop", "crop_flip"):
        pad = crop_padding(image_shape[0], image_shape[1])
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(padded, size=image_shape, seed=crop_key)
    if augmentation == "crop_flip":
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
    if data_noise > 0.0:
        # No clipping, as in the reference JEM code: the noise is meant to smooth the data
        # distribution, including at the borders of the pixel range. It is part of the data, not
        # an augmentation, so the un-augmented view gets it too.
        noise = data_noise * tf.random.stateless_normal(image_shape, seed=noise_key)
        image = image + noise
        unaugmented = unaugmented + noise
    return image, unaugmented


def make_batches(
    ds: tf.data.Dataset,
    batch_size: int,
    *,
    training: bool,
    augmentation: str = "none",
    data_noise: float = 0.0,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    drop_remainder: bool | None = None,
    unaugmented_view: bool = False,
) -> tf.data.Dataset:
    """Batches an unbatched `(image uint8 [H, W, C], label int)` dataset for the model.

    Args:
      ds: e.g. `ImageData.train`; the image shape must be static.
      batch_size: examples per batch.
      training: True: shuffle, augment, add noise, drop the last partial batch by default.
        False (evaluation): source order, no augmentation and no noise, keep the last batch.
      augmentation: 'none', 'crop' (reflect-pad by `crop_padding` and random crop back) or
        'crop_flip' (crop plus random horizontal flip). Only used when training.
      data_noise: std of Gaussian noise added to training images in [-1, 1] (JEM: 0.03).
      seed: non-negative run seed.
      epoch: non-negative epoch number; with `seed` it fixes the order and all random draws.
        (The shuffle, like any seeded TF op, also depends on the global seed if one is set with
        `tf.random.set_seed`; keep that fixed across resumes.)
      skip_batches: batches to skip at the start (resuming mid-epoch): the result equals the
        unskipped stream from batch `skip_batches` on, without computing the skipped batches.
      drop_remainder: None: `training`.
      unaugmented_view: also yield each batch's images without crop or flip (but with the same
        noise), for the log p(x) term of SADA-JEM (`--generative_augmentation=none`).

    Returns:
      Dataset of `(float32 images [B, H, W, C], int32 labels [B])`, prefetched; with
      `unaugmented_view`, `(images, labels, unaugmented images [B, H, W, C])`.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"Unknown augmentation {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}."
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; received {batch_size!r}.")
    for arg_name, value in (("seed", seed), ("epoch", epoch), ("skip_batches", skip_batches)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg_name} must be a non-negative integer; received {value!r}.")
    data_noise = float(data_noise)
    if data_noise < 0.0:
        raise ValueError(f"data_noise must be >= 0; received {data_noise!r}.")
    image_spec = ds.element_spec[0]
    if image_spec.shape.rank != 3 or not image_spec.shape.is_fully_defined():
        raise ValueError(
            f"make_batches needs images of static shape [H, W, C]; got {image_spec.shape}."
        )
    image_shape = tuple(int(d) for d in image_spec.shape)
    if drop_remainder is None:
        drop_remainder = training
    shuffle_seed, epoch_key = _epoch_seeds(int(seed), int(epoch))

    if training:
        size = int(ds.cardinality())
        buffer_size = min(size, MAX_SHUFFLE_BUFFER) if size > 0 else MAX_SHUFFLE_BUFFER
        # A fresh pipeline is built per epoch with that epoch's seed, so reshuffling on
        # re-iteration would only make the same (seed, epoch) non-reproducible.
        ds = ds.shuffle(buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False)
    # Positions are numbered after the shuffle: they are the keys of the random draws, and they
    # do not depend on map parallelism or on skipping.
    ds = ds.enumerate()
    if skip_batches:
        # Batches are consecutive runs of batch_size elements, so skipping whole batches equals
        # skipping their elements before the (costly) map.
        ds = ds.skip(int(skip_batches) * int(batch_size))

    use_randomness = training and (augmentation != "none" or data_noise > 0.0)
    key = tf.constant(epoch_key, dtype=tf.int64)

    @tf.autograph.experimental.do_not_convert  # traced as written, as every tf.function of ours
    def prepare(position: tf.Tensor, example):
        image, label = example
        image = unaugmented = to_model_range(image)
        if use_randomness:
            example_key = tf.random.experimental.stateless_fold_in(key, position)
            image, unaugmented = _augmented_views(image, example_key, image_shape, augmentation, data_noise)
        if unaugmented_view:
            return image, tf.cast(label, tf.int32), unaugmented
        return image, tf.cast(label, tf.int32)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=bool(drop_remainder))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)

