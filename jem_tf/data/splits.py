"""Holding out a validation split from a source's training split, the same way in every source."""

import math

import numpy as np
import tensorflow as tf

# `validation_size`: the reference code (train_wrn_ebm.py) seeds numpy with 1234 and shuffles the
# training indices; its validation set is the first N of that permutation. Fixed, not the run's
# seed, so runs with different seeds validate on the same images.
VALIDATION_SPLIT_SEED = 1234


def num_held_out(num_examples: int, validation_fraction: float) -> int:
    """Validation size: the fraction of `num_examples`, rounded half up."""
    return int(math.floor(validation_fraction * num_examples + 0.5))


def random_validation_indices(num_examples: int, validation_size: int) -> np.ndarray:
    """Sorted indices of a `validation_size` random hold-out of `num_examples` training examples.

    The same draw as the reference code's (numpy seeded with 1234, a shuffle of range(n), the first
    `validation_size`), so a source listing its training split in the reference's order holds out
    the reference's images.
    """
    if validation_size >= num_examples:
        raise ValueError(
            f"validation_size={validation_size} leaves no training images: the training split has "
            f"{num_examples}. Pass a smaller --validation_size.")
    order = list(range(num_examples))
    np.random.RandomState(VALIDATION_SPLIT_SEED).shuffle(order)
    return np.sort(np.asarray(order[:validation_size], np.int64))


def split_by_indices(full_train: tf.data.Dataset, num_examples: int, validation_indices: np.ndarray):
    """(train, validation) of an unbatched dataset: the elements at `validation_indices` and the
    rest, each in source order and of known cardinality (both read the whole split)."""
    is_validation = np.zeros(num_examples, bool)
    is_validation[validation_indices] = True
    mask = tf.constant(is_validation)

    def select(keep_validation: bool) -> tf.data.Dataset:
        subset = full_train.enumerate().filter(
            lambda index, example: tf.equal(mask[index], keep_validation)).map(lambda index, example: example)
        count = int(is_validation.sum()) if keep_validation else num_examples - int(is_validation.sum())
        return subset.apply(tf.data.experimental.assert_cardinality(count))

    return select(False), select(True)


def cardinality(ds: tf.data.Dataset) -> int:
    count = int(ds.cardinality())
    if count < 0:
        raise ValueError(f"Expected a dataset of known, finite size; cardinality is {count}.")
    return count
