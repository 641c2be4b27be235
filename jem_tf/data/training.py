"""A run's training streams, from its TrainConfig: what the training loop iterates.

One epoch is one pass over every training image (`make_batches`). With `--labels_per_class`, each
batch also carries the labelled batch of the same global step (`jem_tf.data.semisupervised`):
the batch becomes `(labelled images, labels, every-image batch)`, the objective's cross-entropy
takes the first two and its log p(x) term the third.
"""

import numpy as np
import tensorflow as tf

from jem_tf.data import semisupervised
from jem_tf.data.pipeline import make_batches


def training_data_record(data, config) -> dict:
    """Checks the run's training streams against the data and returns what `run_info.json`
    records about them: `{"labelled_subset": {...}}` (see `LabelledSubset.describe`) for a
    semi-supervised run, else `{}`. Call before anything is written: it raises ValueError naming
    the flag to change (a class with fewer than --labels_per_class training images, or fewer
    labelled images than one --batch_size batch)."""
    if config.labels_per_class is None:
        return {}
    subset = semisupervised.labelled_subset(data, config.labels_per_class, config.seed)
    semisupervised.check_labelled_batch(len(subset.indices), config.labels_per_class, config.batch_size)
    return {"labelled_subset": subset.describe()}


def labelled_training_examples(data, config) -> tf.data.Dataset:
    """The unbatched `(uint8 image, label)` training examples whose labels the run may use: every
    training image, or with `config.labels_per_class` only the labelled subset. What an objective
    fits to labelled data before training (JEM++'s class Gaussians) is fitted on these, so a
    semi-supervised run never reads the labels it is meant not to have."""
    if config.labels_per_class is None:
        return data.train
    subset = semisupervised.labelled_subset(data, config.labels_per_class, config.seed)
    return tf.data.Dataset.from_tensor_slices((subset.images, subset.labels))


# Mixed into the run seed for the cross-entropy's own stream (--xent_batch=independent).
_XENT_STREAM_SEED_TAG = 0x7E57BA7C


def xent_stream_seed(seed: int) -> int:
    """The seed of the cross-entropy's independent stream: unrelated to the run seed's own stream."""
    return int(np.random.SeedSequence([int(seed), _XENT_STREAM_SEED_TAG]).generate_state(1)[0])


def _with_independent_xent_batch(batches, data, config, augmentation, epoch, skip_batches):
    """(xent images, xent labels, log p(x) images): the reference's `dload_train_labeled`, a second
    loader over every training image with its own shuffle, crops, flips and data noise, cycled in
    step with the first (both have the same whole batches per epoch). A pure function of (seed,
    epoch, skip_batches) like the first stream, so resuming is unchanged."""
    labelled = make_batches(
        data.train, config.batch_size, training=True, augmentation=augmentation, data_noise=config.data_noise,
        seed=xent_stream_seed(config.seed), epoch=epoch, skip_batches=skip_batches)
    return tf.data.Dataset.zip(labelled, batches).map(
        lambda xent, generative: (xent[0], xent[1], generative[0]), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)


def make_training_batches(data, config, *, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
    """The training stream of a run: epoch `epoch` of `data.train` from batch `skip_batches` on.

    Batches are `(images, labels)`, or `(images, labels, generative_images)` when the run's
    settings give the log p(x) term a stream of its own (see `Classifier.objective_terms`): with
    `config.labels_per_class`, the first two are the labelled stream's batch of this global step
    and the third the epoch's batch of every training image; with `--generative_augmentation=none`
    the third is the same batch without crop or flip (same noise); with `--xent_batch=independent` the
    first two are a second, independently drawn batch of every training image (the reference's
    cross-entropy batch) and the third the epoch's batch. Every stream is a function of
    (config.seed, global step) alone, so a resumed run continues the uninterrupted one. `config`
    is the run's TrainConfig; `data` its `ImageData`.
    """
    augmentation = config.augmentation or data.augmentation
    batches = make_batches(
        data.train, config.batch_size, training=True, augmentation=augmentation,
        data_noise=config.data_noise, seed=config.seed, epoch=epoch, skip_batches=skip_batches,
        # SADA-JEM (--generative_augmentation=none): log p(x) on the images without crop/flip, the third element.
        unaugmented_view=config.generative_augmentation == "none",
    )
    if config.xent_batch == "independent":
        return _with_independent_xent_batch(batches, data, config, augmentation, epoch, skip_batches)
    if config.labels_per_class is None:
        return batches
    subset = semisupervised.labelled_subset(data, config.labels_per_class, config.seed)
    # The loop's epochs are whole batches of the training split, the last partial one dropped.
    start_step = epoch * (data.num_train // config.batch_size) + skip_batches
    return semisupervised.with_labelled_stream(
        batches, subset, config.batch_size, augmentation=augmentation, data_noise=config.data_noise,
        seed=config.seed, start_step=start_step)
