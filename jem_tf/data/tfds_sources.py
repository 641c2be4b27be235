"""The tfds sources: SVHN (cropped digits), CIFAR-10, CIFAR-100 — read only if already prepared.

Nothing here downloads: a dataset not prepared in `data_dir` is a `DatasetUnavailableError` saying
how to get it (`--download`, i.e. `jem_tf.data.download.prepare`, or preparing it elsewhere).
"""

import tensorflow as tf
import tensorflow_datasets as tfds

from jem_tf.data.image_data import DatasetUnavailableError, ImageData
from jem_tf.data.splits import cardinality, num_held_out, random_validation_indices, split_by_indices

# Our short names -> (tfds builder name, default training augmentation). SVHN gets no flips:
# digits are not mirror-symmetric, so a flipped "2" is not a "2".
TFDS_SOURCES = {
    "svhn": ("svhn_cropped", "crop"),
    "cifar10": ("cifar10", "crop_flip"),
    "cifar100": ("cifar100", "crop_flip"),
}


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


def load_tfds(name: str, data_dir: str | None, validation_fraction: float,
               validation_size: int | None) -> ImageData:
    tfds_name, augmentation = TFDS_SOURCES[name]
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

    num_full_train = cardinality(full_train)
    if validation_size is not None:
        train, validation = split_by_indices(
            full_train, num_full_train, random_validation_indices(num_full_train, validation_size))
    else:
        num_validation = num_held_out(num_full_train, validation_fraction)
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
        num_train=cardinality(train),
        num_validation=cardinality(validation),
        num_test=cardinality(test),
        augmentation=augmentation,
    )
