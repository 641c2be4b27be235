"""JEM++'s informative initialisation: the class Gaussians' fit, their samples, the replay buffer
started and re-initialised from them, and the data-changed check."""

import numpy as np
import pytest
import tensorflow as tf

from jem_tf.sampling import ReplayBuffer
from jem_tf.sampling.informative_init import (
    ClassGaussians,
    DataChangedError,
    fit_class_gaussians,
    fit_dataset,
)

SEED = tf.constant([5, 6], tf.int64)
SHAPE = (2, 2, 3)  # 12 pixels


def separated_classes(per_class=400, num_classes=3, seed=0):
    """Images of `num_classes` classes with distinct means and correlated pixels, well inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    dim = int(np.prod(SHAPE))
    images, labels = [], []
    for k in range(num_classes):
        mixing = rng.normal(scale=0.05, size=(dim, dim))
        mean = rng.uniform(-0.5, 0.5, size=dim)
        images.append(mean + rng.normal(size=(per_class, dim)) @ mixing.T)
        labels.append(np.full(per_class, k))
    return np.concatenate(images).reshape((-1,) + SHAPE).astype(np.float32), np.concatenate(labels)


def test_fit_matches_numpy_mean_and_covariance_with_the_jitter():
    images, labels = separated_classes(per_class=30)
    # A class with fewer images than pixels: a rank-deficient covariance the jitter makes factorisable.
    images, labels = images[:65], labels[:65]
    fit = fit_class_gaussians(images, labels, 3, jitter=1e-3)
    flat = images.reshape(len(images), -1).astype(np.float64)
    for k in range(3):
        members = flat[labels == k]
        np.testing.assert_allclose(fit.means[k], members.mean(axis=0), atol=1e-6)
        covariance = np.cov(members, rowvar=False, bias=True)  # 1/n, as JEM++ computes it
        product = fit.scale_trils[k].astype(np.float64) @ fit.scale_trils[k].T.astype(np.float64)
        np.testing.assert_allclose(product, covariance + 1e-3 * np.eye(flat.shape[1]), atol=1e-6)
        np.testing.assert_array_equal(np.triu(fit.scale_trils[k], 1), 0.0)
    assert fit.counts.tolist() == [30, 30, 5]
    assert np.linalg.matrix_rank(np.cov(flat[labels == 2], rowvar=False, bias=True)) < flat.shape[1]


def test_a_class_without_images_is_refused_naming_it():
    images, labels = separated_classes(per_class=10, num_classes=2)
    with pytest.raises(ValueError, match=r"Class\(es\) \[2\].*--chain_init=uniform"):
        fit_class_gaussians(images, labels, 3)
    with pytest.raises(ValueError, match="jitter must be positive"):
        fit_class_gaussians(images, labels, 2, jitter=0.0)


def test_fit_dataset_reads_uint8_images_in_the_model_range():
    rng = np.random.default_rng(1)
    uint8 = rng.integers(0, 256, size=(60,) + SHAPE, dtype=np.uint8)
    labels = np.arange(60) % 3
    fit = fit_dataset(tf.data.Dataset.from_tensor_slices((uint8, labels)), 3)
    expected = fit_class_gaussians(uint8.astype(np.float64) / 127.5 - 1.0, labels, 3)
    np.testing.assert_allclose(fit.means, expected.means, atol=1e-6)
    np.testing.assert_allclose(fit.scale_trils, expected.scale_trils, atol=1e-5)


def fitted_gaussians(images, labels, num_classes=3):
    gaussians = ClassGaussians(num_classes, SHAPE)
    fit = fit_class_gaussians(images, labels, num_classes)
    gaussians.assign(fit)
    return gaussians, fit


def assert_statistics_near_the_fit(samples, classes, fit):
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    for k in range(len(fit.means)):
        members = flat[classes == k]
        assert len(members) > 500
        np.testing.assert_allclose(members.mean(axis=0), fit.means[k], atol=0.02)
        covariance = fit.scale_trils[k].astype(np.float64) @ fit.scale_trils[k].T
        np.testing.assert_allclose(np.cov(members, rowvar=False, bias=True), covariance, atol=0.005)


def test_samples_of_each_class_have_the_fitted_mean_and_covariance():
    gaussians, fit = fitted_gaussians(*separated_classes())
    classes = np.arange(6000) % 3
    samples = gaussians.sample(classes, SEED).numpy()
    assert samples.shape == (6000,) + SHAPE
    assert_statistics_near_the_fit(samples, classes, fit)
    np.testing.assert_array_equal(samples, gaussians.sample(classes, SEED))
    assert not np.allclose(samples, gaussians.sample(classes, tf.constant([5, 7], tf.int64)))


def test_a_replicas_slice_gets_the_rows_of_the_global_batch():
    gaussians, _ = fitted_gaussians(*separated_classes())
    classes = tf.constant([0, 2, 1, 1, 0, 2])
    full = gaussians.sample(classes, SEED)
    second_half = gaussians.sample(classes[3:], SEED, batch_size=6, offset=3)
    # The same normal draws; the matmul's summation order may differ with the row count.
    np.testing.assert_allclose(second_half, full[3:], atol=1e-6)
    assert not np.allclose(second_half, full[:3], atol=1e-2)


def test_buffer_chains_initialised_informatively_have_per_class_statistics_near_the_fit():
    gaussians, fit = fitted_gaussians(*separated_classes())
    buffer = ReplayBuffer(6000, SHAPE, seed=0, initializer=gaussians)
    buffer.initialise_chains(SEED)
    classes = buffer.slot_classes().numpy()
    np.testing.assert_array_equal(classes[:6], [0, 1, 2, 0, 1, 2])
    assert_statistics_near_the_fit(buffer.images.numpy(), classes, fit)


def nearest_class(images, fit):
    flat = images.reshape(len(images), -1)
    return np.argmin(((flat[:, None, :] - fit.means[None]) ** 2).sum(-1), axis=1)


def test_reinitialised_chains_come_from_the_gaussians_of_a_uniform_class_or_the_label():
    gaussians, fit = fitted_gaussians(*separated_classes())
    buffer = ReplayBuffer(3000, SHAPE, seed=0, initializer=gaussians)
    buffer.images.assign(tf.fill(buffer.images.shape, 5.0))
    fresh, _ = buffer.sample(3000, SEED, reinit_freq=1.0)
    fresh = fresh.numpy()
    assert np.abs(fresh).max() <= 1.0
    # Fresh chains lie near a class mean (U(-1, 1) noise would not: its typical distance is ~0.9),
    # each class about a third of them.
    nearest = nearest_class(fresh, fit)
    distance = np.abs(fresh.reshape(3000, -1) - fit.means[nearest]).max(axis=1)
    assert np.median(distance) < 0.4
    assert np.all(np.abs(np.bincount(nearest, minlength=3) / 3000 - 1 / 3) < 0.05)
    labels = np.arange(3000) % 3
    conditional, _ = buffer.sample(3000, SEED, reinit_freq=1.0, labels=tf.constant(labels, tf.int32), num_classes=3)
    assert_statistics_near_the_fit(conditional.numpy(), labels, fit)


def test_uniform_buffer_is_unchanged_by_the_initializer_option():
    plain = ReplayBuffer(100, SHAPE, seed=3)
    images, slots = plain.sample(40, SEED, reinit_freq=0.5)
    again = ReplayBuffer(100, SHAPE, seed=3, initializer=None)
    images_again, slots_again = again.sample(40, SEED, reinit_freq=0.5)
    np.testing.assert_array_equal(images, images_again)
    np.testing.assert_array_equal(slots, slots_again)
    with pytest.raises(ValueError, match="initializer"):
        plain.initialise_chains(SEED)


def test_gaussians_round_trip_through_a_checkpoint_and_changed_data_is_refused(tmp_path):
    images, labels = separated_classes()
    gaussians, fit = fitted_gaussians(images, labels)
    path = tf.train.Checkpoint(gaussians=gaussians).save(str(tmp_path / "ckpt"))
    restored = ClassGaussians(3, SHAPE)
    tf.train.Checkpoint(gaussians=restored).restore(path).assert_consumed()
    restored.check_matches(fit_class_gaussians(images, labels, 3))  # the same data: accepted
    changed = images.copy()
    changed[0] += 0.1  # one image of 1200
    with pytest.raises(DataChangedError, match=r"means differ by up to .*training data changed"):
        restored.check_matches(fit_class_gaussians(changed, labels, 3))
    with pytest.raises(DataChangedError, match="images per class"):
        restored.check_matches(fit_class_gaussians(images[1:], labels[1:], 3))
