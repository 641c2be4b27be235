"""The 'digits' source: scikit-learn's bundled 8x8 digits (no download)."""

import functools

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets
from sklearn import model_selection

from jem_tf.data.image_data import ImageData
from jem_tf.data.splits import num_held_out, random_validation_indices

# The digits test split must never move between runs or library versions of our code, so the
# seeds are constants rather than derived from any user-facing seed.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SPLIT_SEED = 20200101
_DIGITS_VALIDATION_SEED = 20200102


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (uint8 [N, 8, 8, 1] in 0..255, int64 [N]), decoded once per process."""
    bunch = sklearn_datasets.load_digits()
    # The raw values are counts 0..16 of set pixels in 4x4 blocks; spread them over 0..255 so the
    # images use the same uint8 convention as every other source.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=8)
def _digits_split_indices(validation_fraction: float, validation_size: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) indices into `_digits_arrays()`, each sorted ascending."""
    _, labels = _digits_arrays()
    rest, test = model_selection.train_test_split(
        np.arange(len(labels)),
        test_size=_DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=_DIGITS_TEST_SPLIT_SEED,
    )
    # A plain seeded permutation (not stratified) so that any fraction works, including ones
    # that leave fewer validation examples than classes.
    rest = np.sort(rest)
    if validation_size is not None:
        held_out = random_validation_indices(len(rest), validation_size)
        return np.delete(rest, held_out), rest[held_out], np.sort(test)
    rest = np.random.default_rng(_DIGITS_VALIDATION_SEED).permutation(rest)
    num_validation = num_held_out(len(rest), validation_fraction)
    train = rest[: len(rest) - num_validation]
    validation = rest[len(rest) - num_validation :]
    return np.sort(train), np.sort(validation), np.sort(test)


def load_digits(validation_fraction: float, validation_size: int | None) -> ImageData:
    images, labels = _digits_arrays()
    train, validation, test = _digits_split_indices(validation_fraction, validation_size)

    def subset(indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((images[indices], labels[indices]))

    return ImageData(
        name="digits",
        train=subset(train),
        validation=subset(validation),
        test=subset(test),
        num_classes=10,
        image_shape=tuple(images.shape[1:]),
        class_names=tuple(str(digit) for digit in range(10)),
        num_train=len(train),
        num_validation=len(validation),
        num_test=len(test),
        augmentation="crop",
    )
