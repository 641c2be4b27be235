"""The 'folder:PATH' source: a PATH/{train,test}/<class>/<image> tree, listed, every file checked
(decodes, big enough, inside the tree; classes with training images), then loaded."""

import collections
import dataclasses
import os
import random
import re
import time

import tensorflow as tf
from absl import logging

from jem_tf.data.image_data import DatasetUnavailableError, ImageData, InvalidDatasetError
from jem_tf.data.splits import num_held_out, random_validation_indices

FOLDER_PREFIX = "folder:"
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
class FolderListing:
    """What `list_folder` found: per split, [(path, class name)] in tfds.ImageFolder's order."""

    examples: dict
    class_folders: dict  # split -> class names with a folder in that split
    ignored: list  # paths of entries that are not images of the layout (reported, not used)


def list_folder(root: str) -> FolderListing:
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
    return FolderListing(examples, class_folders, ignored)


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

    @tf.autograph.experimental.do_not_convert  # traced as written, as every tf.function of ours
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


def _check_folder_files(path: str, listing: FolderListing, channels: int, skip_bad_files: bool) -> dict:
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


def _check_classes(path: str, listing: FolderListing, checked: dict, drop_empty_classes: bool) -> tuple:
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


def load_folder(name: str, validation_fraction: float, validation_size: int | None = None,
                 skip_bad_files: bool = False, drop_empty_classes: bool = False) -> ImageData:
    path = os.path.expanduser(name[len(FOLDER_PREFIX) :])
    if not path:
        raise ValueError(f"Dataset {name!r} names no folder; use '{FOLDER_PREFIX}PATH'.")
    if not tf.io.gfile.isdir(path):
        raise DatasetUnavailableError(
            f"Image folder {path!r} (dataset {name!r}) does not exist or is not a directory; "
            f"{_FOLDER_LAYOUT}."
        )
    listing = list_folder(path)
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

    @tf.autograph.experimental.do_not_convert  # traced as written, as every tf.function of ours
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
        head = num_held_out(len(train_examples), validation_fraction)
        validation_examples, train_examples = train_examples[:head], train_examples[head:]
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
