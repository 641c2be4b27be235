"""The energy core against a numpy/scipy oracle, plus its invariants."""

import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from jem_tf import energy

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(scale=3.0, size=(7, 5)).astype(np.float32)
LABELS = RNG.integers(0, 5, size=7)


def test_log_marginal_matches_scipy_logsumexp():
    np.testing.assert_allclose(energy.log_marginal(LOGITS), scipy.special.logsumexp(LOGITS, axis=-1), rtol=1e-6)


def test_energy_is_negative_log_marginal():
    np.testing.assert_allclose(energy.energy(LOGITS), -scipy.special.logsumexp(LOGITS, axis=-1), rtol=1e-6)


def test_log_joint_picks_the_label_logit():
    np.testing.assert_array_equal(energy.log_joint(LOGITS, LABELS), LOGITS[np.arange(7), LABELS])


def test_class_probabilities_match_scipy_softmax_and_equal_joint_over_marginal():
    probabilities = energy.class_probabilities(LOGITS).numpy()
    np.testing.assert_allclose(probabilities, scipy.special.softmax(LOGITS, axis=-1), rtol=1e-5)
    # p(y|x) = p~(x, y) / p~(x): the normalising constant cancels (eq. 4-6).
    ratio = np.exp(energy.log_joint(LOGITS, LABELS) - energy.log_marginal(LOGITS))
    np.testing.assert_allclose(ratio, probabilities[np.arange(7), LABELS], rtol=1e-5)


def test_cross_entropy_is_negative_log_softmax_of_the_label():
    expected = -scipy.special.log_softmax(LOGITS, axis=-1)[np.arange(7), LABELS]
    np.testing.assert_allclose(energy.cross_entropy(LOGITS, LABELS), expected, rtol=1e-5)


def test_shifting_logits_changes_log_px_but_not_p_y_given_x():
    shifted = LOGITS + 2.5
    np.testing.assert_allclose(energy.class_probabilities(shifted), energy.class_probabilities(LOGITS), atol=1e-6)
    np.testing.assert_allclose(energy.log_marginal(shifted) - energy.log_marginal(LOGITS), 2.5, rtol=1e-5)


def test_class_energies_are_negative_logits():
    np.testing.assert_array_equal(energy.class_energies(LOGITS), -LOGITS)


def test_score_of_quadratic_log_density_matches_analytic_gradient():
    images = tf.constant(RNG.normal(size=(3, 4, 4, 2)).astype(np.float32))

    def log_density(x):  # log p~(x) = -||x||^2 / 2 per example: score = -x.
        return -0.5 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3])

    value, score = energy.log_density_and_score(log_density, images)
    np.testing.assert_allclose(score, -images.numpy(), rtol=1e-6)
    np.testing.assert_allclose(value, -0.5 * np.sum(images.numpy() ** 2, axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(energy.score_norm(score), np.linalg.norm(images.numpy().reshape(3, -1), axis=1),
                               rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 4])
def test_marginal_and_joint_density_functions(batch):
    weights = tf.constant(RNG.normal(size=(4, 3)).astype(np.float32))

    def logits_fn(x):
        return tf.matmul(tf.reshape(x, [-1, 4]), weights)

    images = tf.constant(RNG.normal(size=(batch, 2, 2, 1)).astype(np.float32))
    logits = logits_fn(images).numpy()
    labels = np.arange(batch) % 3
    np.testing.assert_allclose(energy.marginal_log_density(logits_fn)(images),
                               scipy.special.logsumexp(logits, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(energy.joint_log_density(logits_fn, labels)(images),
                               logits[np.arange(batch), labels], rtol=1e-5)
