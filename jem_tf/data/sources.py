"""Dataset sources: offline-only loading of the image classification datasets JEM trains on.

Every source returns an `ImageData` whose splits are UNBATCHED `tf.data.Dataset`s of
`(image uint8 [H, W, C], label int64 [])`. Batching, scaling to [-1, 1], augmentation and noise
live in `jem_tf.data.pipeline`.

`load` checks the split arguments and dispatches by name: 'digits' (`jem_tf.data.digits`), the tfds
datasets (`jem_tf.data.tfds_sources`) and 'folder:PATH' (`jem_tf.data.folder`); the validation
hold-out they share is `jem_tf.data.splits`.

Nothing here ever downloads: `tfds` datasets must already be prepared in `data_dir`, otherwise
`DatasetUnavailableError` says how to get them (`--download`, i.e. `jem_tf.data.download.prepare`,
or preparing them on a machine with internet access).
"""

import numpy as np

from jem_tf.data.digits import load_digits
from jem_tf.data.folder import FOLDER_PREFIX, load_folder
from jem_tf.data.image_data import ImageData
from jem_tf.data.tfds_sources import TFDS_SOURCES, load_tfds

DATASETS = ("digits", "svhn", "cifar10", "cifar100")


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
        return load_digits(validation_fraction, validation_size)
    if name in TFDS_SOURCES:
        return load_tfds(name, data_dir, validation_fraction, validation_size)
    if name.startswith(FOLDER_PREFIX):
        return load_folder(name, validation_fraction, validation_size, skip_bad_files, drop_empty_classes)
    raise ValueError(
        f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}, "
        f"or '{FOLDER_PREFIX}PATH' for a PATH/{{train,test}}/<class>/<image> folder tree."
    )
