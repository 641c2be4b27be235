"""JEM++'s proximal sampler update: its bounds, and equality with a numpy computation of it."""

import numpy as np
import pytest
import tensorflow as tf

from jem_tf.sampling import compiled_sgld, sgld_sample
from jem_tf.sampling.proximal import ProximalBounds, proximal_update

SEED = tf.constant([7, 8], tf.int64)


def quadratic_log_density(x):
    # score = -4 x: big enough that the gradient bound bites on most pixels.
    return -2.0 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3])


def numpy_proximal(x, score_fn, outer_steps, step_size, max_grad, inner_steps):
    """The update computed independently: gradient at each outer step, clipped; inner clipped moves."""
    x = np.array(x, np.float64)
    for _ in range(outer_steps):
        g = np.clip(score_fn(x), -max_grad, max_grad)
        for _ in range(inner_steps):
            x = np.clip(x + step_size * g, -1.0, 1.0)
    return x


def test_one_inner_update_moves_a_pixel_at_most_step_times_bound_and_stays_in_range():
    images = tf.random.stateless_uniform((8, 4, 4, 3), seed=[1, 1], minval=-1.0, maxval=1.0)
    score = 10.0 * tf.random.stateless_normal((8, 4, 4, 3), seed=[1, 2])
    bounds = ProximalBounds(max_grad=0.5, inner_steps=1)
    out = proximal_update(images, score, 0.2, bounds).numpy()
    assert np.abs(out - images.numpy()).max() <= 0.2 * 0.5 + 1e-6
    assert out.min() >= -1.0 and out.max() <= 1.0
    # The bound is reached (the scores are far beyond it), so the check above is not vacuous.
    assert np.abs(out - images.numpy()).max() > 0.2 * 0.5 - 1e-6


def test_sampler_step_is_bounded_by_inner_steps_times_the_update_bound_and_images_stay_in_range():
    x0 = tf.random.stateless_uniform((4, 3, 3, 1), seed=[2, 2], minval=-1.0, maxval=1.0)
    bounds = ProximalBounds(max_grad=1.0, inner_steps=5)
    out = sgld_sample(quadratic_log_density, x0, 1, 0.05, 0.0, SEED, proximal=bounds).numpy()
    assert np.abs(out - x0.numpy()).max() <= 5 * 0.05 * 1.0 + 1e-6
    many = sgld_sample(quadratic_log_density, 3.0 * x0, 10, 0.2, 0.0, SEED, proximal=bounds).numpy()
    assert many.min() >= -1.0 and many.max() <= 1.0


def outward_log_density(x):
    # score = +4 x: pushes pixels out, so the [-1, 1] clip bites too.
    return 2.0 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("sign", [-1.0, 1.0], ids=["inward", "outward"])
def test_equals_an_independent_numpy_computation_for_a_known_gradient(compiled, sign):
    x0 = tf.random.stateless_uniform((3, 4, 4, 2), seed=[3, 3], minval=-1.0, maxval=1.0)
    bounds = ProximalBounds(max_grad=0.6, inner_steps=3)
    sampler = compiled_sgld(False) if compiled else sgld_sample
    density = quadratic_log_density if sign < 0 else outward_log_density
    out = sampler(density, x0, 4, 0.1, 0.0, SEED, proximal=bounds)
    expected = numpy_proximal(x0.numpy(), lambda x: sign * 4.0 * x, 4, 0.1, 0.6, 3)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    if sign > 0:  # the clip was exercised: some pixels end on the boundary
        assert np.mean(np.abs(expected) == 1.0) > 0.1


def test_gradient_held_fixed_over_the_inner_steps_not_recomputed():
    """JEM++'s inner steps reuse the outer step's gradient (its first layer is linear): one outer
    step of 5 inner steps is not 5 outer steps of one."""
    x0 = tf.constant(np.full((1, 2, 2, 1), 0.5, np.float32))
    one_outer = sgld_sample(quadratic_log_density, x0, 1, 0.1, 0.0, SEED,
                            proximal=ProximalBounds(max_grad=10.0, inner_steps=5))
    # g = -2 (unclipped), five moves of -0.2: 0.5 - 1.0 = -0.5 (no clip reached).
    np.testing.assert_allclose(one_outer, -0.5, atol=1e-6)
    five_outer = sgld_sample(quadratic_log_density, x0, 5, 0.1, 0.0, SEED,
                             proximal=ProximalBounds(max_grad=10.0, inner_steps=1))
    assert not np.allclose(five_outer, -0.5, atol=1e-3)


def test_noise_is_added_after_the_clipped_update():
    def flat(x):
        return tf.zeros(tf.shape(x)[:1])

    x0 = tf.zeros((64, 4, 4, 1))
    bounds = ProximalBounds(max_grad=1.0, inner_steps=5)
    proximal = sgld_sample(flat, x0, 1, 0.2, 0.5, SEED, proximal=bounds)
    plain = sgld_sample(flat, x0, 1, 0.2, 0.5, SEED)
    # Zero gradient: the proximal step is the identity, then the same noise as plain SGLD.
    np.testing.assert_array_equal(proximal, plain)
    assert abs(float(tf.math.reduce_std(proximal)) - 0.5) < 0.03


def test_image_updates_are_float32_for_a_bfloat16_network():
    def bfloat16_density(x):
        return tf.cast(-2.0 * tf.reduce_sum(tf.square(tf.cast(x, tf.bfloat16)), axis=[1, 2, 3]), tf.float32)

    x0 = tf.random.stateless_uniform((2, 3, 3, 1), seed=[4, 4], minval=-1.0, maxval=1.0)
    out = sgld_sample(bfloat16_density, x0, 2, 0.01, 0.0, SEED, proximal=ProximalBounds(1.0, 2))
    assert out.dtype == tf.float32
    # float32 accumulation: steps of 0.01-sized moves are not rounded away at bfloat16's 8 bits.
    expected = numpy_proximal(x0.numpy(), lambda x: -4.0 * x, 2, 0.01, 1.0, 2)
    np.testing.assert_allclose(out, expected, atol=0.02 * 2 * 2 * 0.01 + 1e-6)


@pytest.mark.parametrize("bad", [dict(max_grad=0.0), dict(max_grad=-1.0), dict(inner_steps=0),
                                 dict(inner_steps=1.5)])
def test_bad_bounds_are_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match="received"):
        ProximalBounds(**bad)
