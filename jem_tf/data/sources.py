"""Dataset sources: offline-only loading of the image classification datasets JEM trains on.

Every source returns an `ImageData` whose splits are UNBATCHED `tf.data.Dataset`s of
`(image uint8 [H, W, C], label int64 [])`. Batching, scaling to [-1, 1], augmentation and noise
live in `jem_tf.data.pipeline`.

Nothing here ever downloads: `tfds` datasets must already be prepared in `data_dir`, otherwise
`DatasetUnavailableError` says how to get them (`--download`, i.e. `jem_tf.data.download.prepare`,
or preparing them on a machine with internet access).
"""

import collections
import dataclasses
import functools
import math
import os
import random
import re
import time

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


class InvalidDatasetError(ValueError):
    """The data is there but unusable as it is (files that do not decode, a class without
    training images, links out of the tree); `str(error)` names the files and the fix."""


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


def load(
    name: str,
    data_dir: str | None = None,
    validation_fraction: float = 0.1,
    validation_size: int | None = None,
    *,
    skip_bad_files: bool = False,
    drop_empty_classes: bool = False,
) -> ImageData:
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
      skip_bad_files: 'folder:PATH' only. Every image is decoded once up front; False: a file that
        does not decode (or is smaller than 8x8) is an `InvalidDatasetError` naming it; True: such
        files are left out with a warning giving their count.
      drop_empty_classes: 'folder:PATH' only. False: a class folder without training images is an
        `InvalidDatasetError`; True: the class is left out (its test images too) with a warning.

    Raises:
      ValueError: unknown `name`, a bad `validation_fraction` or `validation_size`, or both set.
      InvalidDatasetError (a ValueError): a folder dataset's files are unusable (see above;
        also fewer than 2 classes, or symlinks leading out of PATH).
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
        return _load_folder(name, validation_fraction, validation_size, skip_bad_files, drop_empty_classes)
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
        f"{data_dir_root!r}. Add --download to fetch and prepare it there (needs internet access; "
        "see docs/training.md, Datasets). Or, on a machine with internet access, prepare it with\n"
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
# folder:PATH — a split/class/image tree, every file checked before anything trains on it.

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MIN_IMAGE_SIDE = 8
_SPLITS = ("train", "test")
_EXAMPLES_SHOWN = 5  # offending paths quoted in one message; the rest are counted
_PROGRESS_EVERY_SECS = 10.0

_FOLDER_LAYOUT = (
    "expected layout: PATH/train/<class_name>/*.jpg|*.jpeg|*.png and "
    "PATH/test/<class_name>/*.jpg|*.jpeg|*.png (the same class folder names in both)"
)


def _some(items, shown=_EXAMPLES_SHOWN) -> str:
    """'a, b, c' for the first `shown` items, then '... (N more)'."""
    items = [str(item) for item in items]
    text = ", ".join(items[:shown])
    return text + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")


@dataclasses.dataclass
class _FolderListing:
    """What `_list_folder` found: per split, [(path, class name)] in tfds.ImageFolder's order."""

    examples: dict
    class_folders: dict  # split -> class names with a folder in that split
    ignored: list  # paths of entries that are not images of the layout (reported, not used)


def _list_folder(root: str) -> _FolderListing:
    """Lists PATH/{train,test}/<class>/<image> without reading any image.

    Refuses entries that resolve outside `root` (symlinks out of the tree). Example order equals
    tfds.ImageFolder's (classes and file names sorted, then shuffled by `random.Random(split)`),
    which earlier versions used, so existing runs keep their data order and hold-out.
    """
    local = "://" not in root
    real_root = os.path.realpath(root) if local else root
    escaped = []

    def entries(folder):
        names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder))
        result = []
        for name in names:
            path = os.path.join(folder, name)
            if local:
                target = os.path.realpath(path)
                if os.path.commonpath([real_root, target]) != real_root:
                    escaped.append(f"{path} -> {target}")
                    continue
            result.append((name, path, tf.io.gfile.isdir(path)))
        return result

    examples, class_folders, ignored = {}, {}, []
    for split_name, split_path, is_dir in entries(root):
        if split_name not in _SPLITS or not is_dir:
            ignored.append(split_path + ("/" if is_dir else ""))
            continue
        class_folders[split_name] = []
        split_examples = []
        for class_name, class_path, is_class_dir in entries(split_path):
            if not is_class_dir or class_name.startswith("."):
                ignored.append(class_path + ("/" if is_class_dir else ""))
                continue
            class_folders[split_name].append(class_name)
            for file_name, file_path, is_file_dir in entries(class_path):
                if not is_file_dir and file_name.lower().endswith(IMAGE_EXTENSIONS):
                    split_examples.append((file_path, class_name))
                else:
                    ignored.append(file_path + ("/" if is_file_dir else ""))
        random.Random(split_name).shuffle(split_examples)
        examples[split_name] = split_examples
    if escaped:
        raise InvalidDatasetError(
            f"Image folder {root!r} has {len(escaped)} symlink(s) leading outside it: {_some(escaped)}. "
            "Links out of the dataset tree are refused (they can expose unrelated files); copy the "
            "images into the tree or remove the links."
        )
    return _FolderListing(examples, class_folders, ignored)


def _describe_decode_error(path: str, channels: int) -> str:
    """Why one file does not decode, in the decoder's own words (first line)."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    except (tf.errors.OpError, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        # TF wraps the decoder's words in '{{function_node ...}} ... [Op:DecodeImage] name:'.
        message = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", "", message).strip()
        return message.splitlines()[0] if message else type(error).__name__
    height, width = (int(d) for d in image.shape[:2])
    return f"{height}x{width} pixels, smaller than the minimum {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"


def _decoded_sizes(paths: list, channels: int, description: str) -> list:
    """(height, width) of every file as training decodes it, or None where it does not decode or
    is smaller than MIN_IMAGE_SIDE. One parallel tf.data pass (the cost of one epoch's decoding)."""
    sizes = [None] * len(paths)
    if not paths:
        return sizes

    def probe(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        return index, tf.shape(image)[:2]

    # A file that fails to read or decode raises inside the map; ignore_errors drops exactly that
    # element, so the indices that never come out are the bad files.
    probes = (
        tf.data.Dataset.from_tensor_slices(paths)
        .enumerate()
        .map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .ignore_errors()
        .batch(512)
        .prefetch(1)
    )
    done, last_report = 0, time.time()
    for indices, shapes in probes.as_numpy_iterator():
        for index, (height, width) in zip(indices, shapes):
            if min(height, width) >= MIN_IMAGE_SIDE:
                sizes[int(index)] = (int(height), int(width))
        done += len(indices)
        if time.time() - last_report > _PROGRESS_EVERY_SECS:
            logging.info("Checking %s: %d/%d files decoded.", description, done, len(paths))
            last_report = time.time()
    return sizes


def _check_folder_files(path: str, listing: _FolderListing, channels: int, skip_bad_files: bool) -> dict:
    """Decodes every listed image once; returns {split: [(path, class, (h, w))]} of the good ones.

    Undecodable or too-small files are an error naming them, or with `skip_bad_files` are left
    out with a warning. Files that are not images of the layout are reported once.
    """
    if listing.ignored:
        kinds = collections.Counter(
            "folder" if p.endswith("/") else (os.path.splitext(p)[1].lower() or "no extension")
            for p in listing.ignored
        )
        logging.warning(
            "Image folder %s: ignoring %d entr(ies) that are not %s files in PATH/{train,test}/<class>/ (%s), e.g. %s.",
            path, len(listing.ignored), "|".join(IMAGE_EXTENSIONS),
            ", ".join(f"{kind}: {count}" for kind, count in kinds.most_common()), _some(listing.ignored),
        )
    started = time.time()
    checked, bad = {}, []
    for split, examples in listing.examples.items():
        sizes = _decoded_sizes([p for p, _ in examples], channels, f"{path} ({split})")
        checked[split] = [(p, c, size) for (p, c), size in zip(examples, sizes) if size is not None]
        bad.extend(p for (p, _), size in zip(examples, sizes) if size is None)
    logging.info("Image folder %s: decoded %d files in %.1f s; %d bad.", path,
                 sum(len(e) for e in listing.examples.values()), time.time() - started, len(bad))
    if bad:
        described = [f"{p} ({_describe_decode_error(p, channels)})" for p in bad[:_EXAMPLES_SHOWN]]
        described += bad[_EXAMPLES_SHOWN:]
        if not skip_bad_files:
            raise InvalidDatasetError(
                f"Image folder {path!r}: {len(bad)} file(s) do not decode as images of at least "
                f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels: {_some(described)}. Fix or remove them, or "
                "pass --skip_bad_files to train without them."
            )
        logging.warning("Image folder %s: skipping %d bad file(s) (--skip_bad_files): %s.", path, len(bad),
                        _some(described))
    return checked


def _check_classes(path: str, listing: _FolderListing, checked: dict, drop_empty_classes: bool) -> tuple:
    """The class names kept (sorted); refuses classes without training images unless dropped."""
    all_classes = sorted(set().union(*listing.class_folders.values()))
    with_train_images = {c for _, c, _ in checked["train"]}
    empty = [c for c in all_classes if c not in with_train_images]
    if empty and not drop_empty_classes:
        raise InvalidDatasetError(
            f"Image folder {path!r}: class(es) {_some(empty)} have no usable training images in "
            f"{os.path.join(path, 'train')!r}; a class the model never sees cannot be learned. Add images, "
            "remove the class folders (in train and test), or pass --drop_empty_classes to leave them out."
        )
    if empty:
        dropped_test = sum(1 for _, c, _ in checked["test"] if c in empty)
        logging.warning("Image folder %s: dropping %d class(es) without training images (--drop_empty_classes): "
                        "%s; %d test image(s) of them left out.", path, len(empty), _some(empty), dropped_test)
    kept = tuple(c for c in all_classes if c in with_train_images)
    if len(kept) < 2:
        raise InvalidDatasetError(
            f"Image folder {path!r} has {len(kept)} class(es) with training images ({_some(kept) or 'none'}); "
            f"a classifier needs at least 2. {_FOLDER_LAYOUT}."
        )
    return kept


def _load_folder(name: str, validation_fraction: float, validation_size: int | None = None,
                 skip_bad_files: bool = False, drop_empty_classes: bool = False) -> ImageData:
    path = os.path.expanduser(name[len(FOLDER_PREFIX) :])
    if not path:
        raise ValueError(f"Dataset {name!r} names no folder; use '{FOLDER_PREFIX}PATH'.")
    if not tf.io.gfile.isdir(path):
        raise DatasetUnavailableError(
            f"Image folder {path!r} (dataset {name!r}) does not exist or is not a directory; "
            f"{_FOLDER_LAYOUT}."
        )
    listing = _list_folder(path)
    missing = [split for split in _SPLITS if not listing.examples.get(split)]
    if missing:
        raise DatasetUnavailableError(
            f"Image folder {path!r} has no images in split(s) {', '.join(missing)} "
            f"(found splits: {sorted(listing.examples) or 'none'}); {_FOLDER_LAYOUT}."
        )
    # Every image is decoded to 3 channels (grayscale is repeated), as tfds.ImageFolder did.
    channels = 3
    checked = _check_folder_files(path, listing, channels, skip_bad_files)
    class_names = _check_classes(path, listing, checked, drop_empty_classes)
    label_of = {c: i for i, c in enumerate(class_names)}
    train_examples = [e for e in checked["train"] if e[1] in label_of]
    test_examples = [e for e in checked["test"] if e[1] in label_of]
    if not test_examples:
        raise InvalidDatasetError(f"Image folder {path!r} has no usable test images of the trained classes.")

    # The image size is not in any metadata: it is the first training image's.
    height, width = train_examples[0][2]
    image_shape = (height, width, channels)
    resized = [p for p, _, size in train_examples + test_examples if size != (height, width)]
    if resized:
        logging.warning("Image folder %s: %d image(s) are not %dx%d (the first training image's size) and are "
                        "resized to it, aspect ratio not kept: %s.", path, len(resized), height, width,
                        _some(resized))

    def decode_to_shape(file_path: tf.Tensor, label: tf.Tensor):
        image = tf.io.decode_image(tf.io.read_file(file_path), channels=channels, expand_animations=False)
        # Same-size folders (the normal case) pass through untouched.
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

    def dataset(examples) -> tf.data.Dataset:
        paths = tf.constant([p for p, _, _ in examples], tf.string)
        labels = tf.constant([label_of[c] for _, c, _ in examples], tf.int64)
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            decode_to_shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    if validation_size is not None:
        held_out = set(random_validation_indices(len(train_examples), validation_size).tolist())
        validation_examples = [e for i, e in enumerate(train_examples) if i in held_out]
        train_examples = [e for i, e in enumerate(train_examples) if i not in held_out]
    else:
        # The listing is in a fixed, class-mixed order, so its head is a deterministic, class-mixed
        # hold-out (the head, as in earlier versions, so existing runs keep their split).
        num_held_out = _num_held_out(len(train_examples), validation_fraction)
        validation_examples, train_examples = train_examples[:num_held_out], train_examples[num_held_out:]
    num_validation, num_train = len(validation_examples), len(train_examples)
    logging.info(
        "Image folder %s: %d classes, images %s, %d train / %d validation / %d test.",
        path, len(class_names), image_shape, num_train, num_validation, len(test_examples),
    )
    return ImageData(
        name=name,
        train=dataset(train_examples),
        validation=dataset(validation_examples),
        test=dataset(test_examples),
        num_classes=len(class_names),
        image_shape=image_shape,
        class_names=class_names,
        num_train=num_train,
        num_validation=num_validation,
        num_test=len(test_examples),
        augmentation="crop_flip",
    )
