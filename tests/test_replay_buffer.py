"""Replay buffer: initialisation, slot draws, re-initialisation, writes, checkpoints."""

import numpy as np
import tensorflow as tf

from jem_tf.sampling import ReplayBuffer

SEED = tf.constant([1, 2], tf.int64)


def test_initialised_uniform_in_minus_one_one_and_not_trainable():
    buffer = ReplayBuffer(500, (4, 4, 1), seed=0)
    images = buffer.images.numpy()
    assert images.shape == (500, 4, 4, 1)
    assert images.min() >= -1 and images.max() <= 1
    assert abs(images.mean()) < 0.05 and abs(images.std() - 1 / np.sqrt(3)) < 0.02
    assert not buffer.images.trainable


def test_draws_distinct_slots_and_returns_their_contents_without_reinit():
    buffer = ReplayBuffer(50, (2, 2, 1), seed=0)
    images, slots = buffer.sample(20, SEED, reinit_freq=0.0)
    assert len(set(slots.numpy().tolist())) == 20
    np.testing.assert_array_equal(images, tf.gather(buffer.images, slots))


def test_reinit_frequency_replaces_that_fraction_of_chains_with_fresh_noise():
    buffer = ReplayBuffer(4000, (2, 2, 1), seed=0)
    buffer.images.assign(tf.fill(buffer.images.shape, 5.0))  # out of range: reinitialised chains stand out
    images, _ = buffer.sample(4000, SEED, reinit_freq=0.05)
    fresh = np.all(images.numpy() != 5.0, axis=(1, 2, 3))
    assert 0.035 < fresh.mean() < 0.065
    assert np.abs(images.numpy()[fresh]).max() <= 1.0
    all_fresh, _ = buffer.sample(10, SEED, reinit_freq=1.0)
    assert np.abs(all_fresh.numpy()).max() <= 1.0


def test_write_updates_exactly_the_drawn_slots():
    buffer = ReplayBuffer(30, (2, 2, 1), seed=0)
    before = buffer.images.numpy().copy()
    _, slots = buffer.sample(5, SEED, 0.0)
    buffer.write(slots, tf.fill((5, 2, 2, 1), 0.5))
    after = buffer.images.numpy()
    changed = np.where(np.any(after != before, axis=(1, 2, 3)))[0]
    assert sorted(changed.tolist()) == sorted(slots.numpy().tolist())
    assert np.all(after[slots.numpy()] == 0.5)


def test_class_conditional_slots_belong_to_the_label():
    buffer = ReplayBuffer(100, (2, 2, 1), seed=0)
    labels = tf.constant([0, 3, 9, 3])
    _, slots = buffer.sample(4, SEED, 0.0, labels=labels, num_classes=10)
    np.testing.assert_array_equal(slots.numpy() % 10, labels.numpy())


def test_saved_and_restored_with_a_checkpoint(tmp_path):
    buffer = ReplayBuffer(10, (2, 2, 1), seed=0)
    path = tf.train.Checkpoint(replay_buffer=buffer).save(str(tmp_path / "ckpt"))
    saved = buffer.images.numpy().copy()
    buffer.images.assign(tf.zeros_like(buffer.images))
    tf.train.Checkpoint(replay_buffer=buffer).restore(path).assert_consumed()
    np.testing.assert_array_equal(buffer.images.numpy(), saved)


def test_same_seed_same_draws_different_seed_different_draws():
    buffer = ReplayBuffer(100, (2, 2, 1), seed=0)
    a = buffer.sample(10, SEED, 0.5)
    b = buffer.sample(10, SEED, 0.5)
    c = buffer.sample(10, tf.constant([1, 3], tf.int64), 0.5)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
