"""Data layer: offline dataset sources (`load`) and the batching pipeline (`make_batches`).

    data = load("cifar10", data_dir="/data/tensorflow_datasets")
    for images, labels in make_batches(data.train, 64, training=True,
                                       augmentation=data.augmentation, data_noise=0.03,
                                       seed=1, epoch=0):
        ...  # images: float32 [64, 32, 32, 3] in [-1, 1]; labels: int32 [64]
"""

from jem_tf.data.download import DatasetDownloadError, is_downloadable, prepare
from jem_tf.data.image_data import DatasetUnavailableError, ImageData, InvalidDatasetError
from jem_tf.data.pipeline import AUGMENTATIONS, crop_padding, make_batches, to_model_range
from jem_tf.data.sources import DATASETS, load
from jem_tf.data.training import labelled_training_examples, make_training_batches, training_data_record

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DatasetDownloadError",
    "DatasetUnavailableError",
    "ImageData",
    "InvalidDatasetError",
    "crop_padding",
    "is_downloadable",
    "labelled_training_examples",
    "load",
    "make_batches",
    "make_training_batches",
    "prepare",
    "to_model_range",
    "training_data_record",
]
