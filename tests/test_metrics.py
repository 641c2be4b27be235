"""Metric oracles: a hand-worked ECE, sklearn's AUROC / ROC curve, scipy's matrix square root."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from sklearn import metrics as sk_metrics

from jem_tf import metrics


def _logits_from_probabilities(rows):
    return np.log(np.asarray(rows, np.float64)).astype(np.float32)


# Five predictions over 3 classes with 4 bins ([0, .25), [.25, .5), [.5, .75), [.75, 1]):
#   conf .9 correct, .8 wrong  -> bin 3: accuracy .5, confidence .85, gap .35, weight 2/5
#   conf .6 correct            -> bin 2: accuracy 1,  confidence .6,  gap .4,  weight 1/5
#   conf .4 wrong, .4 correct  -> bin 1: accuracy .5, confidence .4,  gap .1,  weight 2/5
# ECE = .4 * .35 + .2 * .4 + .4 * .1 = 0.26
HAND_PROBABILITIES = [
    [0.9, 0.05, 0.05],
    [0.8, 0.1, 0.1],
    [0.6, 0.3, 0.1],
    [0.4, 0.35, 0.25],
    [0.4, 0.35, 0.25],
]
HAND_LABELS = [0, 1, 0, 2, 0]
HAND_ECE = 0.26


def test_ece_matches_hand_worked_example():
    logits = _logits_from_probabilities(HAND_PROBABILITIES)
    assert metrics.expected_calibration_error(logits, HAND_LABELS, num_bins=4) == pytest.approx(HAND_ECE, abs=1e-5)


def test_reliability_bins_match_hand_worked_example_and_tfp():
    logits = _logits_from_probabilities(HAND_PROBABILITIES)
    bins = metrics.reliability_bins(logits, HAND_LABELS, num_bins=4)
    np.testing.assert_array_equal(bins.counts, [0, 2, 1, 2])
    np.testing.assert_allclose(bins.accuracy[1:], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(bins.confidence[1:], [0.4, 0.6, 0.85], atol=1e-6)
    assert np.isnan(bins.accuracy[0]) and bins.to_dict()["accuracy"][0] is None
    assert metrics.ece_from_bins(bins) == pytest.approx(HAND_ECE, abs=1e-6)


@pytest.mark.parametrize("num_bins", [1, 7, 20])
def test_binned_ece_equals_tfp_on_random_predictions(num_bins):
    rng = np.random.default_rng(num_bins)
    logits = rng.normal(scale=3.0, size=(300, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    bins = metrics.reliability_bins(logits, labels, num_bins)
    assert bins.counts.sum() == 300
    assert metrics.ece_from_bins(bins) == pytest.approx(
        metrics.expected_calibration_error(logits, labels, num_bins), abs=1e-5)


def test_ece_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        metrics.expected_calibration_error(np.zeros((2, 3), np.float32), [0, 1], num_bins=0)
    with pytest.raises(ValueError, match="at least one example"):
        metrics.expected_calibration_error(np.zeros((0, 3), np.float32), [], num_bins=5)


@pytest.mark.parametrize("case", ["continuous", "ties", "separable", "reversed"])
def test_auroc_matches_sklearn(case):
    rng = np.random.default_rng(0)
    if case == "continuous":
        in_scores, out_scores = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.5, 150)
    elif case == "ties":
        in_scores, out_scores = rng.integers(0, 5, 100).astype(float), rng.integers(0, 4, 80).astype(float)
    elif case == "separable":
        in_scores, out_scores = rng.uniform(2, 3, 50), rng.uniform(0, 1, 60)
    else:
        in_scores, out_scores = rng.uniform(0, 1, 50), rng.uniform(2, 3, 60)
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    expected = sk_metrics.roc_auc_score(labels, np.r_[in_scores, out_scores])
    assert metrics.auroc(in_scores, out_scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr_at_95_tpr_matches_sklearn_roc_curve(seed):
    rng = np.random.default_rng(seed)
    in_scores = np.round(rng.normal(1.0, 1.0, 120), 1)  # rounding creates ties
    out_scores = np.round(rng.normal(0.0, 1.0, 90), 1)
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = sk_metrics.roc_curve(labels, np.r_[in_scores, out_scores], drop_intermediate=False)
    expected = fpr[tpr >= 0.95].min()
    assert metrics.fpr_at_tpr(in_scores, out_scores, 0.95) == pytest.approx(expected)


def test_ood_metrics_treat_nan_as_most_out_of_distribution():
    assert metrics.auroc([np.nan, 2.0], [1.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        metrics.auroc([], [1.0])


def test_inception_score_extremes():
    # Confident predictions spread evenly over K classes give IS = K; identical predictions give 1.
    one_hot = np.eye(4)[np.arange(40) % 4]
    assert metrics.inception_score(one_hot, num_splits=2)[0] == pytest.approx(4.0)
    assert metrics.inception_score(np.full((30, 5), 0.2), num_splits=3) == pytest.approx((1.0, 0.0))


def _scipy_fid(features_a, features_b):
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


@pytest.mark.parametrize("count_a,count_b,dims", [(60, 50, 6), (5, 9, 12), (12, 4, 7)])
def test_frechet_distance_matches_scipy_sqrtm(count_a, count_b, dims):
    rng = np.random.default_rng(count_a)
    mixing = rng.normal(size=(dims, dims))
    features_a = rng.normal(size=(count_a, dims)) @ mixing
    features_b = rng.normal(0.5, 1.0, size=(count_b, dims)) @ mixing.T
    expected = _scipy_fid(features_a, features_b)
    statistics = metrics.feature_statistics(features_a) + metrics.feature_statistics(features_b)
    tolerance = 1e-6 * max(1.0, abs(expected))
    assert metrics.frechet_distance(*statistics) == pytest.approx(expected, abs=tolerance)
    assert metrics.frechet_distance_from_features(features_a, features_b) == pytest.approx(expected, abs=tolerance)


def test_frechet_distance_of_a_set_to_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(8, 20))
    assert metrics.frechet_distance_from_features(features, features) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="Feature dimensions differ"):
        metrics.frechet_distance_from_features(features, features[:, :5])


def test_metrics_accept_tensors():
    logits = tf.constant(_logits_from_probabilities(HAND_PROBABILITIES))
    assert metrics.expected_calibration_error(logits, tf.constant(HAND_LABELS), 4) == pytest.approx(HAND_ECE, abs=1e-5)
