"""--xent_batch=independent: the cross-entropy's batch is drawn apart from the log p(x) term's, as the
reference's train_wrn_ebm.py draws it (`dload_train_labeled`, a second loader over every training
image); the default keeps one batch for both."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from jem_tf.configs import get_preset
from jem_tf.data.image_data import ImageData
from jem_tf.data.training import make_training_batches

NUM_TRAIN, BATCH = 12, 4


def tiny_data():
    # Image i is filled with the value i, its label i % 3: an image names itself and its label.
    images = np.repeat(np.arange(NUM_TRAIN, dtype=np.uint8), 8 * 8 * 3).reshape(NUM_TRAIN, 8, 8, 3)
    labels = np.arange(NUM_TRAIN) % 3
    train = tf.data.Dataset.from_tensor_slices((images, labels))
    return ImageData(name="tiny", train=train, validation=train.take(0), test=train, num_classes=3,
                     image_shape=(8, 8, 3), class_names=("a", "b", "c"), num_train=NUM_TRAIN, num_validation=0,
                     num_test=NUM_TRAIN, augmentation="none")


def config(**fields):
    return dataclasses.replace(get_preset("quick"), objective="jem", batch_size=BATCH, augmentation="none",
                               data_noise=0.0, seed=5, **fields)


def image_ids(images):
    return np.rint((images.numpy()[:, 0, 0, 0] + 1.0) * 127.5).astype(int)


def test_independent_xent_batch_is_a_second_shuffle_of_every_image():
    data = tiny_data()
    batches = list(make_training_batches(data, config(xent_batch="independent"), epoch=0))
    assert len(batches) == NUM_TRAIN // BATCH and all(len(batch) == 3 for batch in batches)
    xent_ids = np.concatenate([image_ids(images) for images, _, _ in batches])
    generative_ids = np.concatenate([image_ids(generative) for _, _, generative in batches])
    # Each stream is one pass over every training image, in its own order.
    assert sorted(xent_ids) == sorted(generative_ids) == list(range(NUM_TRAIN))
    assert not np.array_equal(xent_ids, generative_ids)
    # The labels belong to the cross-entropy's images.
    np.testing.assert_array_equal(np.concatenate([labels.numpy() for _, labels, _ in batches]), xent_ids % 3)
    # The log p(x) stream is the default run's stream, unchanged.
    same = list(make_training_batches(data, config(), epoch=0))
    assert all(len(batch) == 2 for batch in same)
    np.testing.assert_array_equal(np.concatenate([image_ids(images) for images, _ in same]), generative_ids)
    # Resuming mid-epoch continues the same two streams.
    resumed = list(make_training_batches(data, config(xent_batch="independent"), epoch=0, skip_batches=1))
    np.testing.assert_array_equal(np.concatenate([image_ids(images) for images, _, _ in resumed]), xent_ids[BATCH:])


def test_independent_xent_batch_refuses_other_second_streams():
    with pytest.raises(ValueError, match="xent_batch"):
        config(xent_batch="independent", generative_augmentation="none").validate()
    with pytest.raises(ValueError, match="xent_batch"):
        config(xent_batch="sometimes").validate()
