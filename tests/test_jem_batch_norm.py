"""JEM with batch norm (issue #8, variant 5): the data batch alone sets the batch statistics and
the moving averages; SGLD and the samples' loss term run in inference mode."""

import keras
import numpy as np
import tensorflow as tf

from jem_tf import energy
from trainers.jem import JEM

SHAPE = (8, 8, 1)
RNG = np.random.default_rng(3)
# Data far from the U(-1, 1) chains of a fresh buffer, so data statistics and data+sample
# statistics are clearly different.
IMAGES = (0.5 + 0.1 * RNG.standard_normal((8,) + SHAPE)).astype(np.float32)
LABELS = (np.arange(8) % 4).astype(np.int32)


def _jem(**kwargs):
    settings = dict(norm="batch", buffer_size=32, sgld_steps=3, seed=7)
    settings.update(kwargs)
    model = JEM(10, 1, 4, **settings)
    model.build((None,) + SHAPE)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def moving_statistics(model):
    # Keyed by the path below the model, whose own name differs between instances.
    stats = {v.path.split("/", 1)[1]: v.numpy().copy() for v in model.non_trainable_variables
             if "moving_" in v.path}
    assert stats, "the network has no batch-norm moving statistics"
    return stats


def _copy_with_weights(weights):
    model = _jem()
    model.set_weights(weights)
    return model


def test_moving_statistics_after_a_step_are_the_data_batch_alone():
    model = _jem()
    weights = model.get_weights()
    buffer_before = model.replay_buffer.images.numpy().copy()
    logs = tf.function(model.train_step)((IMAGES, LABELS))
    after_step = moving_statistics(model)
    # The step wrote its samples back to their (distinct) slots: those rows are the samples.
    changed = np.any(model.replay_buffer.images.numpy() != buffer_before, axis=(1, 2, 3))
    assert changed.sum() == len(IMAGES)
    samples = model.replay_buffer.images.numpy()[changed]

    data_only = _copy_with_weights(weights)
    data_only(IMAGES, training=True)
    for name, value in moving_statistics(data_only).items():
        np.testing.assert_allclose(after_step[name], value, rtol=1e-5, atol=1e-6, err_msg=name)

    fused = _copy_with_weights(weights)
    fused(np.concatenate([IMAGES, samples]), training=True)
    largest_difference = max(np.max(np.abs(after_step[name] - value))
                             for name, value in moving_statistics(fused).items())
    assert largest_difference > 1e-2

    # The samples' term is their inference-mode log p(x), read after the data pass has updated the
    # moving averages (batch statistics of the samples would give another value).
    np.testing.assert_allclose(
        logs["log_px_samples"], np.mean(energy.log_marginal(data_only(samples, training=False))), rtol=1e-4)
    own_statistics = np.mean(energy.log_marginal(data_only(samples, training=True)))
    assert abs(own_statistics - float(logs["log_px_samples"])) > 1e-3


def test_sampling_leaves_the_moving_statistics_unchanged():
    model = _jem(p_xy_weight=1.0)
    tf.function(model.train_step)((IMAGES, LABELS))  # moving averages away from their initial values
    before = moving_statistics(model)
    model.sample_chains(8, tf.constant([1, 2], tf.int64))
    model.sample_chains(8, tf.constant([3, 4], tf.int64), labels=tf.constant(LABELS))
    for name, value in moving_statistics(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
