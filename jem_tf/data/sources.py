"""Dataset sources: offline-only loading of the image classification datasets JEM trains on.

Every source returns an `ImageData` whose splits are UNBATCHED `tf.data.Dataset`s of
`(image uint8 [H, W, C], label int64 [])`. Batching, scaling to [-1, 1], augmentation and noise
live in `jem_tf.data.pipeline`.

Nothing here ever downloads: `tfds` datasets must already be prepared in `data_dir`, otherwise
`DatasetUnavailableError` says how to prepare them on a machine with internet access.
"""

import dataclasses
import functools
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from sklearn import datasets as sklearn_datasets
from sklearn import model_selection

DATASETS = ("digits", "svhn", "cifar10", "cifar100")
FOLDER_PREFIX = "folder:"

# Our short names -> (tfds builder name, default training augmentation). SVHN gets no flips:
# digits are not mirror-symmetric, so a flipped "2" is not a "2".
_TFDS_SOURCES = {
    "svhn": ("svhn_cropped", "crop"),
    "cifar10": ("cifar10", "crop_flip"),
    "cifar100": ("cifar100", "crop_flip"),
}

# The digits test split must never move between runs or library versions of our code, so the
# seeds are constants rather than derived from any user-facing seed.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SPLIT_SEED = 20200101
_DIGITS_VALIDATION_SEED = 20200102
# `validation_size`: the reference code (train_wrn_ebm.py) seeds numpy with 1234 and shuffles the
# training indices; its validation set is the first N of that permutation. Fixed, not the run's
# seed, so runs with different seeds validate on the same images.
VALIDATION_SPLIT_SEED = 1234


class DatasetUnavailableError(Exception):
    """A dataset is not available offline; `str(error)` is one user-facing message saying how
    to make it available (prepare it with internet access, then pass --data_dir=PATH)."""


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A labelled image dataset split into train / validation / test.

    All datasets are unbatched and yield `(image uint8 [H, W, C], label int64 [])` with a fully
    static image shape. `validation` is held out from the source's training split, and `train`
    is the rest of it; `num_*` are the exact element counts of the three datasets.

    Attributes:
      name: the name given to `load` ('digits', 'svhn', 'cifar10', 'cifar100', 'folder:PATH').
      image_shape: (H, W, C) of every image.
      class_names: one string per label id.
      augmentation: this dataset's default training augmentation for `make_batches`
        ('crop' for digits and SVHN, which must not be mirrored; 'crop_flip' otherwise).
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    image_shape: tuple
    class_names: tuple
    num_train: int
    num_validation: int
    num_test: int
    augmentation: str


def load(name: str, data_dir: str | None = None, validation_fraction: float = 0.1,
         validation_size: int | None = None) -> ImageData:
    """Loads a dataset by name without ever downloading.

    Args:
      name: one of `DATASETS` ('digits', 'svhn', 'cifar10', 'cifar100') or 'folder:PATH' for a
        `PATH/{train,test}/<class>/<image>.{jpg,jpeg,png}` tree.
      data_dir: the prepared tfds data directory (None: tfds' default, `$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`). Unused by 'digits' and 'folder:PATH'.
      validation_fraction: fraction of the training split held out as `validation`, in [0, 1).
        The hold-out is deterministic; 0 gives an empty validation dataset.
      validation_size: instead of `validation_fraction` (which must then be 0): a random set of
        exactly this many training images, drawn as the reference code draws its 5000
        (`random_validation_indices`). Training iterates the rest in source order.

    Raises:
      ValueError: unknown `name`, a bad `validation_fraction` or `validation_size`, or both set.
      DatasetUnavailableError: the data is not on this machine (or the folder layout is wrong).
    """
    if not isinstance(name, str):
        raise ValueError(f"Dataset name must be a string; received {name!r}.")
    validation_fraction = float(validation_fraction)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in [0, 1); received {validation_fraction!r}."
        )
    if validation_size is not None:
        if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)) \
                or validation_size < 1:
            raise ValueError(f"validation_size must be a positive integer or None; received {validation_size!r}.")
        if validation_fraction:
            raise ValueError(
                f"validation_size={validation_size} and validation_fraction={validation_fraction} both choose the "
                "validation split; pass one of them (validation_fraction=0 with validation_size).")
        validation_size = int(validation_size)
    if name == "digits":
        return _load_digits(validation_fraction, validation_size)
    if name in _TFDS_SOURCES:
        return _load_tfds(name, data_dir, validation_fraction, validation_size)
    if name.startswith(FOLDER_PREFIX):
        return _load_folder(name, validation_fraction, validation_size)
    raise ValueError(
        f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}, "
        f"or '{FOLDER_PREFIX}PATH' for a PATH/{{train,test}}/<class>/<image> folder tree."
    )


def _num_held_out(num_examples: int, validation_fraction: float) -> int:
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


def _split_by_indices(full_train: tf.data.Dataset, num_examples: int, validation_indices: np.ndarray):
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


def _cardinality(ds: tf.data.Dataset) -> int:
    count = int(ds.cardinality())
    if count < 0:
        raise ValueError(f"Expected a dataset of known, finite size; cardinality is {count}.")
    return count


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 digits (no download).


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
    num_validation = _num_held_out(len(rest), validation_fraction)
    train = rest[: len(rest) - num_validation]
    validation = rest[len(rest) - num_validation :]
    return np.sort(train), np.sort(validation), np.sort(test)


def _load_digits(validation_fraction: float, validation_size: int | None) -> ImageData:
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


# ---------------------------------------------------------------------------------------------
# tfds: SVHN (cropped digits), CIFAR-10, CIFAR-100 — read only if already prepared.


def _unavailable_message(name: str, tfds_name: str, data_dir_root: str) -> str:
    return (
        f"Dataset {name!r} (tfds {tfds_name!r}) is not available offline: no prepared copy in "
        f"{data_dir_root!r}, and this program never downloads. On a machine with internet "
        "access, prepare it with\n"
        "  python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{tfds_name}', data_dir='/path/to/tensorflow_datasets')"
        '.download_and_prepare()"\n'
        "then copy that directory here and pass --data_dir=/path/to/tensorflow_datasets."
    )


def _load_tfds(name: str, data_dir: str | None, validation_fraction: float,
               validation_size: int | None) -> ImageData:
    tfds_name, augmentation = _TFDS_SOURCES[name]
    builder = tfds.builder(tfds_name, data_dir=data_dir)

    def read(split: str) -> tf.data.Dataset:
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    try:
        full_train = read("train")
        test = read("test")
    except AssertionError as error:
        # tfds signals "not prepared in data_dir" with an AssertionError from as_dataset; it
        # never downloads from there, so catching it is both the check and the guarantee.
        root = data_dir or getattr(builder, "data_dir_root", None) or builder.data_dir
        raise DatasetUnavailableError(_unavailable_message(name, tfds_name, str(root))) from error

    num_full_train = _cardinality(full_train)
    if validation_size is not None:
        train, validation = _split_by_indices(
            full_train, num_full_train, random_validation_indices(num_full_train, validation_size))
    else:
        num_validation = _num_held_out(num_full_train, validation_fraction)
        num_train = num_full_train - num_validation
        # Absolute split slicing reads only the needed shards; the validation set is the tail.
        train = read(f"train[:{num_train}]") if num_validation else full_train
        validation = read(f"train[{num_train}:]") if num_validation else full_train.take(0)

    label_feature = builder.info.features["label"]
    image_shape = tuple(test.element_spec[0].shape)
    return ImageData(
        name=name,
        train=train,
        validation=validation,
        test=test,
        num_classes=int(label_feature.num_classes),
        image_shape=tuple(int(d) for d in image_shape),
        class_names=tuple(label_feature.names),
        # Counted from the datasets themselves, which tfds sizes exactly (and which stay right
        # under tfds.testing.mock_data, where builder.info's split sizes are absent).
        num_train=_cardinality(train),
        num_validation=_cardinality(validation),
        num_test=_cardinality(test),
        augmentation=augmentation,
    )


# ---------------------------------------------------------------------------------------------
# folder:PATH — a split/class/image tree read with tfds.ImageFolder.

_FOLDER_LAYOUT = (
    "expected layout: PATH/train/<class_name>/*.jpg|*.jpeg|*.png and "
    "PATH/test/<class_name>/*.jpg|*.jpeg|*.png (the same class folder names in both)"
)


def _load_folder(name: str, validation_fraction: float, validation_size: int | None) -> ImageData:
    path = os.path.expanduser(name[len(FOLDER_PREFIX) :])
    if not path:
        raise ValueError(f"Dataset {name!r} names no folder; use '{FOLDER_PREFIX}PATH'.")
    if not tf.io.gfile.isdir(path):
        raise DatasetUnavailableError(
            f"Image folder {path!r} (dataset {name!r}) does not exist or is not a directory; "
            f"{_FOLDER_LAYOUT}."
        )
    builder = tfds.ImageFolder(path)
    splits = builder.info.splits
    missing = [
        split for split in ("train", "test") if split not in splits or not splits[split].num_examples
    ]
    if missing:
        raise DatasetUnavailableError(
            f"Image folder {path!r} has no images in split(s) {', '.join(missing)} "
            f"(found splits: {sorted(splits.keys()) or 'none'}); {_FOLDER_LAYOUT}."
        )

    channels = builder.info.features["image"].shape[-1] or 3

    def read_encoded(split: str) -> tf.data.Dataset:
        # Skip tfds' decoding so that take/skip for the validation hold-out does not decode the
        # images it passes over; we decode (and fix the shape) ourselves below.
        return builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        return tf.io.decode_image(encoded, channels=channels, expand_animations=False)

    # The image size is not in the folder's metadata: take it from the first training image.
    first_encoded, _ = next(iter(read_encoded("train").take(1)))
    height, width = (int(d) for d in decode(first_encoded).shape[:2])
    image_shape = (height, width, channels)

    def decode_to_shape(encoded: tf.Tensor, label: tf.Tensor):
        image = decode(encoded)
        # Images of another size are resized (aspect ratio not kept) to the first image's size,
        # so mixed-size folders work; same-size folders (the normal case) pass through untouched.
        image = tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == [height, width]),
            lambda: image,
            lambda: tf.cast(
                tf.clip_by_value(
                    tf.round(tf.image.resize(image, (height, width), antialias=True)), 0, 255
                ),
                tf.uint8,
            ),
        )
        return tf.ensure_shape(image, image_shape), label

    def finish(ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.map(decode_to_shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    # ImageFolder lists each split in a fixed, class-mixed order (seeded by the split name), so
    # any contiguous run of 'train' is a deterministic, class-mixed hold-out. We hold out the
    # HEAD: `skip` still reads the files it passes over, and validation passes are more frequent
    # and more latency-sensitive than training epochs, which then skip the (smaller) head.
    full_train = read_encoded("train")
    num_full_train = int(splits["train"].num_examples)
    if validation_size is not None:
        num_validation = validation_size
        train_encoded, validation_encoded = _split_by_indices(
            full_train, num_full_train, random_validation_indices(num_full_train, validation_size))
    else:
        num_validation = _num_held_out(num_full_train, validation_fraction)
        train_encoded, validation_encoded = full_train.skip(num_validation), full_train.take(num_validation)
    num_train = num_full_train - num_validation
    label_feature = builder.info.features["label"]
    logging.info(
        "Image folder %s: %d classes, images %s, %d train / %d validation / %d test.",
        path,
        label_feature.num_classes,
        image_shape,
        num_train,
        num_validation,
        splits["test"].num_examples,
    )
    return ImageData(
        name=name,
        train=finish(train_encoded),
        validation=finish(validation_encoded),
        test=finish(read_encoded("test")),
        num_classes=int(label_feature.num_classes),
        image_shape=image_shape,
        class_names=tuple(label_feature.names),
        num_train=num_train,
        num_validation=num_validation,
        num_test=int(splits["test"].num_examples),
        augmentation="crop_flip",
    )
