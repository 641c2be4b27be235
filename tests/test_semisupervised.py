"""Semi-supervised data (`--labels_per_class`): the labelled subset and its endless, resumable stream."""

import dataclasses
import hashlib

import numpy as np
import pytest
import tensorflow as tf

from jem_tf import data
from jem_tf.configs import TrainConfig, get_preset
from jem_tf.configs.base import incompatible_fields
from jem_tf.data import semisupervised
from jem_tf.evaluation import suite

NUM_CLASSES = 4
PER_CLASS = 30  # training images per class of the synthetic dataset


def _image_key(image) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def synthetic_data(per_class=PER_CLASS, num_classes=NUM_CLASSES, short_class_size=None) -> data.ImageData:
    """Distinct random 8x8x1 images, classes interleaved (label = index % classes); the last class
    can be made short. Distinct images let a test tell which training image a batch holds."""
    labels = np.arange(per_class * num_classes, dtype=np.int64) % num_classes
    if short_class_size is not None:
        last = np.flatnonzero(labels == num_classes - 1)
        labels = np.delete(labels, last[short_class_size:])
    images = np.random.default_rng(7).integers(0, 256, size=(len(labels), 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256  # with the rest random: no two alike
    images[:, 0, 1, 0] = np.arange(len(labels)) // 256
    train = tf.data.Dataset.from_tensor_slices((images, labels))
    empty = train.take(0)
    return data.ImageData(
        name="synthetic", train=train, validation=empty, test=empty, num_classes=num_classes,
        image_shape=(8, 8, 1), class_names=tuple(f"class{c}" for c in range(num_classes)),
        num_train=len(labels), num_validation=0, num_test=0, augmentation="crop")


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_data()


def test_subset_is_class_balanced_and_its_images_are_the_training_images_at_its_indices(synthetic):
    subset = semisupervised.labelled_subset(synthetic, 5, seed=3)
    all_images = np.stack([image for image, _ in synthetic.train.as_numpy_iterator()])
    all_labels = np.array([label for _, label in synthetic.train.as_numpy_iterator()])
    assert len(subset.indices) == 5 * NUM_CLASSES
    assert np.all(np.diff(subset.indices) > 0)  # ascending, no repeats
    np.testing.assert_array_equal(np.bincount(subset.labels, minlength=NUM_CLASSES), [5] * NUM_CLASSES)
    np.testing.assert_array_equal(subset.images, all_images[subset.indices])
    np.testing.assert_array_equal(subset.labels, all_labels[subset.indices])


def test_subset_is_fixed_by_the_seed():
    labels = np.arange(400) % 10
    first = semisupervised.select_labelled_indices(labels, 4, seed=1)
    np.testing.assert_array_equal(first, semisupervised.select_labelled_indices(labels, 4, seed=1))
    other = semisupervised.select_labelled_indices(labels, 4, seed=2)
    assert set(other.tolist()) != set(first.tolist())
    # Not simply the first N of each class.
    assert set(first.tolist()) != set(range(40))


def test_subset_records_its_indices_and_their_hash(synthetic):
    subset = semisupervised.labelled_subset(synthetic, 2, seed=0)
    record = subset.describe()
    assert record["indices"] == subset.indices.tolist()
    assert record["num_labelled"] == 2 * NUM_CLASSES and record["labels_per_class"] == 2 and record["seed"] == 0
    assert record["indices_sha256"] == hashlib.sha256(np.asarray(record["indices"], "<i8").tobytes()).hexdigest()
    assert semisupervised.labelled_subset(synthetic, 2, seed=1).indices_sha256 != record["indices_sha256"]


def test_a_class_with_fewer_than_n_images_is_refused_naming_the_flag_and_the_largest_n():
    short = synthetic_data(short_class_size=3)
    with pytest.raises(ValueError, match=r"--labels_per_class=4 .* 3 training images of class 'class3'.*"
                                         r"--labels_per_class=3 or less"):
        semisupervised.labelled_subset(short, 4, seed=0)
    assert len(semisupervised.labelled_subset(short, 3, seed=0).indices) == 3 * NUM_CLASSES


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_non_positive_or_non_integer_n_is_refused(bad):
    with pytest.raises(ValueError, match="--labels_per_class"):
        semisupervised.select_labelled_indices(np.arange(40) % 4, bad, seed=0)


def test_fewer_labelled_images_than_one_batch_is_refused_naming_both_flags(synthetic):
    subset = semisupervised.labelled_subset(synthetic, 2, seed=0)  # 8 images
    with pytest.raises(ValueError, match=r"--labels_per_class=2 gives 8 labelled images.*--batch_size=9"):
        semisupervised.labelled_batches(subset, 9)


@pytest.mark.parametrize("bad", [0, -3])
def test_config_refuses_a_non_positive_labels_per_class(bad):
    config = dataclasses.replace(get_preset("quick"), labels_per_class=bad)
    with pytest.raises(ValueError, match=f"--labels_per_class={bad} is invalid"):
        config.validate()
    dataclasses.replace(config, labels_per_class=None).validate()
    dataclasses.replace(config, labels_per_class=10).validate()


def test_a_workdir_is_not_resumed_with_other_labels():
    """The labelled subset defines the run: resuming with another N would mix two runs."""
    saved = get_preset("quick")
    assert incompatible_fields(saved, dataclasses.replace(saved, labels_per_class=10)) == [
        "labels_per_class: None -> 10"]
    assert TrainConfig.from_dict({}).labels_per_class is None  # config.json written before the flag existed


def _take(dataset, count):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


def test_labelled_batches_hold_only_subset_images_and_each_pass_is_a_fresh_permutation(synthetic):
    subset = semisupervised.labelled_subset(synthetic, 5, seed=3)  # 20 images: 3 batches of 6 a pass
    by_key = {_image_key(image): label for image, label in zip(subset.images, subset.labels)}
    batches = _take(semisupervised.labelled_batches(subset, 6, seed=3), 9)
    passes = []
    for pass_batches in (batches[0:3], batches[3:6], batches[6:9]):
        keys = []
        for images, labels in pass_batches:
            assert images.dtype == np.float32 and images.shape == (6, 8, 8, 1) and labels.dtype == np.int32
            uint8 = np.round((images + 1.0) * 127.5).astype(np.uint8)  # no augmentation: exact
            for image, label in zip(uint8, labels):
                key = _image_key(image)
                assert key in by_key, "a labelled batch holds an image outside the labelled subset"
                assert by_key[key] == label
                keys.append(key)
        assert len(set(keys)) == 18, "a pass repeats an image"
        passes.append(keys)
    assert passes[0] != passes[1] != passes[2], "the labelled stream is not reshuffled per pass"
    assert set().union(*passes) == set(by_key), "three passes of 18 of 20 never met some labelled image"


def test_labelled_stream_is_positioned_by_the_global_step_alone(synthetic):
    subset = semisupervised.labelled_subset(synthetic, 5, seed=3)
    kwargs = dict(augmentation="crop", data_noise=0.03, seed=3)
    from_zero = _take(semisupervised.labelled_batches(subset, 6, **kwargs), 8)
    from_five = _take(semisupervised.labelled_batches(subset, 6, start_step=5, **kwargs), 3)
    for (images, labels), (want_images, want_labels) in zip(from_five, from_zero[5:]):
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)  # augmentation and noise too
    other_seed = _take(semisupervised.labelled_batches(subset, 6, augmentation="crop", data_noise=0.03, seed=4), 1)
    assert not np.array_equal(other_seed[0][0], from_zero[0][0])


def test_labelled_noise_is_not_the_unlabelled_streams():
    """The streams draw from unrelated keys: position k of both does not get the same noise (of
    identical blank images, so the batches differ by their noise alone)."""
    blank = np.zeros([12, 8, 8, 1], np.uint8)
    labels = np.arange(12, dtype=np.int64) % 3
    subset = semisupervised.LabelledSubset(indices=np.arange(12), images=blank, labels=labels,
                                           labels_per_class=4, seed=0)
    labelled, _ = _take(semisupervised.labelled_batches(subset, 6, data_noise=0.1, seed=0), 1)[0]
    source = tf.data.Dataset.from_tensor_slices((blank, labels))
    unlabelled, _ = _take(data.make_batches(source, 6, training=True, data_noise=0.1, seed=0), 1)[0]
    assert np.std(labelled) > 0.05 and np.std(unlabelled) > 0.05
    assert abs(np.corrcoef(labelled.ravel(), unlabelled.ravel())[0, 1]) < 0.2


# ---------------------------------------------------------------------------------------------
# the run's training stream (jem_tf.data.make_training_batches)


def _config(**overrides):
    settings = dict(batch_size=6, seed=3, data_noise=0.0, augmentation="none")
    return dataclasses.replace(get_preset("quick"), **{**settings, **overrides})


def test_without_the_flag_the_training_stream_is_the_plain_one(synthetic):
    config = _config()
    assert data.training_data_record(synthetic, config) == {}
    got = _take(data.make_training_batches(synthetic, config, epoch=1, skip_batches=2), 3)
    want = _take(data.make_batches(synthetic.train, 6, training=True, augmentation="none", seed=3, epoch=1,
                                   skip_batches=2), 3)
    for (images, labels), (want_images, want_labels) in zip(got, want):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_the_third_element_covers_every_training_image_once_per_epoch(synthetic):
    config = _config(labels_per_class=5)
    by_key = {_image_key(image): index for index, (image, _) in enumerate(synthetic.train.as_numpy_iterator())}
    subset_keys = {_image_key(image) for image in semisupervised.labelled_subset(synthetic, 5, seed=3).images}
    steps_per_epoch = synthetic.num_train // 6  # 120 images: 20 whole batches
    for epoch in (0, 1):
        seen = []
        for batch in data.make_training_batches(synthetic, config, epoch=epoch):
            assert len(batch) == 3
            labelled, labels, unlabelled = (np.asarray(part) for part in batch)
            assert labelled.shape == unlabelled.shape == (6, 8, 8, 1) and labels.shape == (6,)
            assert {_image_key(np.round((image + 1) * 127.5).astype(np.uint8)) for image in labelled} <= subset_keys
            seen += [by_key[_image_key(np.round((image + 1) * 127.5).astype(np.uint8))] for image in unlabelled]
        assert len(seen) == steps_per_epoch * 6
        assert sorted(seen) == list(range(synthetic.num_train)), "an epoch must show every training image once"


def test_the_labelled_part_of_the_training_stream_follows_the_global_step(synthetic):
    config = _config(labels_per_class=5, augmentation="crop", data_noise=0.03)
    steps_per_epoch = synthetic.num_train // 6
    subset = semisupervised.labelled_subset(synthetic, 5, seed=3)
    endless = _take(semisupervised.labelled_batches(subset, 6, augmentation="crop", data_noise=0.03, seed=3),
                    steps_per_epoch + 4)
    resumed = list(data.make_training_batches(synthetic, config, epoch=1, skip_batches=2).take(2))
    unlabelled = _take(data.make_batches(synthetic.train, 6, training=True, augmentation="crop", data_noise=0.03,
                                         seed=3, epoch=1, skip_batches=2), 2)
    for offset, (labelled_images, labels, unlabelled_images) in enumerate(resumed):
        want_images, want_labels = endless[steps_per_epoch + 2 + offset]
        np.testing.assert_array_equal(labelled_images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(unlabelled_images, unlabelled[offset][0])


def test_the_record_names_the_subset_and_bad_settings_are_refused_before_training(synthetic):
    record = data.training_data_record(synthetic, _config(labels_per_class=5))
    subset = semisupervised.labelled_subset(synthetic, 5, seed=3)
    assert record == {"labelled_subset": subset.describe()}
    with pytest.raises(ValueError, match="--labels_per_class=31 is more than the 30 training images"):
        data.training_data_record(synthetic, _config(labels_per_class=31))
    with pytest.raises(ValueError, match="--labels_per_class=1 gives 4 labelled images, fewer than one --batch_size=6"):
        data.training_data_record(synthetic, _config(labels_per_class=1))


def test_the_examples_whose_labels_a_run_may_use_are_the_subset_with_the_flag(synthetic):
    assert data.labelled_training_examples(synthetic, _config()) is synthetic.train
    examples = list(data.labelled_training_examples(synthetic, _config(labels_per_class=5)).as_numpy_iterator())
    subset = semisupervised.labelled_subset(synthetic, 5, seed=3)
    np.testing.assert_array_equal(np.stack([image for image, _ in examples]), subset.images)
    np.testing.assert_array_equal([label for _, label in examples], subset.labels)


def test_the_evaluation_describes_the_labels_a_run_learned_from(synthetic):
    assert suite.training_labels_description({}) == "every training image's label"
    record = data.training_data_record(synthetic, _config(labels_per_class=5))
    described = suite.training_labels_description(record)
    assert described.startswith("5 per class, 20 images") and "seed 3" in described
    assert record["labelled_subset"]["indices_sha256"][:16] in described
