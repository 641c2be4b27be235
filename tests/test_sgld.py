"""The SGLD sampler: the update rule, determinism, a real loop, and no side effects on the model."""

import numpy as np
import pytest
import tensorflow as tf

from jem_tf import energy
from jem_tf.sampling import compiled_sgld, sgld_sample
from jem_tf.sampling.sgld import refine
from trainers.jem import JEM

SEED = tf.constant([3, 4], tf.int64)


def gaussian_log_density(x):
    return -0.5 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3])


def test_noise_free_steps_follow_the_gradient_exactly():
    x0 = tf.constant(np.full((2, 2, 2, 1), 2.0, np.float32))
    # x <- x + a * (-x): after t steps x0 * (1 - a)^t.
    out = sgld_sample(gaussian_log_density, x0, steps=3, step_size=0.25, noise_std=0.0, seed=SEED)
    np.testing.assert_allclose(out, 2.0 * 0.75**3, rtol=1e-6)


def test_zero_steps_return_the_input():
    x0 = tf.random.stateless_uniform((3, 4, 4, 1), seed=[1, 2])
    np.testing.assert_array_equal(sgld_sample(gaussian_log_density, x0, 0, 1.0, 0.01, SEED), x0)


def test_noise_has_the_requested_scale_and_is_a_function_of_the_seed():
    x0 = tf.zeros((64, 4, 4, 1))

    def flat(x):
        return tf.zeros(tf.shape(x)[:1])

    out = sgld_sample(flat, x0, 1, 1.0, 0.5, SEED).numpy()
    assert abs(out.std() - 0.5) < 0.03
    np.testing.assert_array_equal(out, sgld_sample(flat, x0, 1, 1.0, 0.5, SEED))
    assert not np.allclose(out, sgld_sample(flat, x0, 1, 1.0, 0.5, tf.constant([3, 5], tf.int64)))


def test_sliced_noise_equals_the_global_batch_noise():
    """A replica's slice of the global batch gets exactly the rows the full batch would get."""
    x0 = tf.random.stateless_uniform((6, 4, 4, 1), seed=[5, 6])
    full = sgld_sample(gaussian_log_density, x0, 2, 0.1, 0.3, SEED)
    second_half = sgld_sample(gaussian_log_density, x0[3:], 2, 0.1, 0.3, SEED,
                              noise_batch_size=6, noise_batch_offset=3)
    np.testing.assert_allclose(second_half, full[3:], rtol=1e-6)


def test_clamp_keeps_every_step_in_minus_one_one():
    """--sgld_clamp: clipped after each step, not only at the end, so later steps start inside."""

    def outward(x):  # score = x: each unit step doubles the image
        return 0.5 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3])

    x0 = tf.constant(np.array([0.3, -0.3, 0.9, -0.2], np.float32).reshape(4, 1, 1, 1))
    free = sgld_sample(outward, x0, 3, 1.0, 0.0, SEED).numpy().ravel()
    np.testing.assert_allclose(free, [2.4, -2.4, 7.2, -1.6], rtol=1e-6)  # 8 * x0: leaves [-1, 1]
    clamped = sgld_sample(outward, x0, 3, 1.0, 0.0, SEED, clamp=True).numpy().ravel()
    # Step by step: 0.3 -> 0.6 -> 1 (clipped from 1.2) -> 1 (from 2); 0.9 -> 1 -> 1 -> 1; -0.2 -> -0.4 -> -0.8 -> -1.
    np.testing.assert_allclose(clamped, [1.0, -1.0, 1.0, -1.0], rtol=1e-6)
    noisy = sgld_sample(outward, x0, 5, 1.0, 0.5, SEED, clamp=True).numpy()
    assert noisy.min() >= -1.0 and noisy.max() <= 1.0
    assert np.abs(sgld_sample(outward, x0, 5, 1.0, 0.5, SEED).numpy()).max() > 1.0


def test_clamp_inside_the_range_changes_nothing():
    x0 = tf.random.stateless_uniform((3, 4, 4, 1), seed=[1, 2], minval=-0.5, maxval=0.5)
    np.testing.assert_array_equal(sgld_sample(gaussian_log_density, x0, 2, 0.1, 0.01, SEED, clamp=True),
                                  sgld_sample(gaussian_log_density, x0, 2, 0.1, 0.01, SEED))


def test_compiled_sampler_is_one_loop_not_unrolled_steps():
    x0 = tf.zeros((2, 4, 4, 1))
    function = tf.function(lambda x, steps: sgld_sample(gaussian_log_density, x, steps, 0.1, 0.01, SEED))
    graph = function.get_concrete_function(tf.TensorSpec([2, 4, 4, 1]), tf.TensorSpec([], tf.int32)).graph
    op_types = [op.type for op in graph.get_operations()]
    assert "While" in op_types or "StatelessWhile" in op_types
    # The same graph serves any number of steps: no retracing.
    np.testing.assert_allclose(function(x0, tf.constant(5)), sgld_sample(gaussian_log_density, x0, 5, 0.1, 0.01, SEED),
                               rtol=1e-6)
    function(x0, tf.constant(50))
    assert function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_sgld_with_and_without_xla_matches_eager(jit_compile):
    x0 = tf.random.stateless_uniform((2, 4, 4, 1), seed=[1, 1])
    sampler = compiled_sgld(jit_compile)
    # The drift is the same computation everywhere.
    np.testing.assert_allclose(sampler(gaussian_log_density, x0, 3, 0.1, 0.0, SEED),
                               sgld_sample(gaussian_log_density, x0, 3, 0.1, 0.0, SEED), rtol=1e-5, atol=1e-6)
    # XLA draws its own noise stream, but deterministically per seed.
    noisy = sampler(gaussian_log_density, x0, 3, 0.1, 0.05, SEED)
    np.testing.assert_array_equal(noisy, sampler(gaussian_log_density, x0, 3, 0.1, 0.05, SEED))
    if not jit_compile:
        np.testing.assert_allclose(noisy, sgld_sample(gaussian_log_density, x0, 3, 0.1, 0.05, SEED), rtol=1e-5)


def test_sampling_changes_no_weights_statistics_or_mode():
    model = JEM(10, 1, 4, norm="batch", dropout_rate=0.3, buffer_size=8)
    model.build((None, 8, 8, 1))
    before = [w.numpy().copy() for w in model.weights]
    x0 = tf.random.stateless_uniform((4, 8, 8, 1), seed=[0, 1], minval=-1, maxval=1)
    refine(lambda x: model(x, training=False), x0, 3, 1.0, 0.01, SEED)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())  # includes batch-norm moving statistics


def test_sampling_increases_the_log_density_of_a_model():
    model = JEM(10, 1, 4, buffer_size=8)
    model.build((None, 8, 8, 1))

    def logits_fn(x):
        return model(x, training=False)

    x0 = tf.random.stateless_uniform((8, 8, 8, 1), seed=[0, 2], minval=-1, maxval=1)
    log_px = energy.marginal_log_density(logits_fn)
    after = sgld_sample(log_px, x0, 10, 0.05, 0.0, SEED)
    assert float(tf.reduce_mean(log_px(after))) > float(tf.reduce_mean(log_px(x0)))
