"""What every dataset source returns (`ImageData`) and the two ways a source can fail."""

import dataclasses

import tensorflow as tf


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
