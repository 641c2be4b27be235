"""Inception Score (Salimans et al., 2016) and Frechet Inception Distance (Heusel et al., 2017).

Pure numpy on classifier probabilities / features; `jem_tf.evaluation.sample_quality` produces
those with Keras InceptionV3.
"""

import numpy as np


def inception_score(probabilities, num_splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split; returns (mean, std) over splits.

    Args:
      probabilities: [n, K] class probabilities of the generated images (rows sum to 1).
      num_splits: the images are split into this many equal parts (the last takes the remainder);
        capped at n so every split has at least one image.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"probabilities must be [n > 0, K]; received shape {probabilities.shape}.")
    if num_splits < 1:
        raise ValueError(f"num_splits must be a positive integer; received {num_splits!r}.")
    num_splits = min(num_splits, probabilities.shape[0])
    scores = []
    for part in np.array_split(probabilities, num_splits):
        marginal = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: classes with zero probability contribute nothing to the KL divergence.
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and covariance [d, d] (unbiased, rows are examples) of features [n, d]."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [n >= 2, d]; received shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix):
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    # Round-off makes tiny eigenvalues of a rank-deficient covariance slightly negative.
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as S_a S_b; this avoids the
    complex round-off a general matrix square root produces for rank-deficient covariances (few
    samples in 2048 dimensions).
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mean_a.shape * 2:
        raise ValueError(
            f"Mismatched statistics: means {mean_a.shape} and {mean_b.shape}, covariances {cov_a.shape} and "
            f"{cov_b.shape}; expected [d] and [d, d]."
        )
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def frechet_distance_from_features(features_a, features_b) -> float:
    """FID between two feature sets [n_a, d] and [n_b, d], exactly, without d x d matrix roots.

    With centred features A and B, S_a = A^T A / (n_a - 1) and S_b = B^T B / (n_b - 1), the nonzero
    eigenvalues of S_a S_b are the squared singular values of A B^T / sqrt((n_a - 1)(n_b - 1)), so
    tr((S_a S_b)^(1/2)) is that matrix's nuclear norm: a min(n_a, n_b)-sized eigenproblem instead
    of a 2048 x 2048 one when there are fewer images than feature dimensions (the usual case for a
    capped evaluation). With more images than dimensions, the covariance form is cheaper.
    """
    features_a = np.asarray(features_a, np.float64)
    features_b = np.asarray(features_b, np.float64)
    for features in (features_a, features_b):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must be [n >= 2, d]; received shape {features.shape}.")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"Feature dimensions differ: {features_a.shape[1]} and {features_b.shape[1]}.")
    (count_a, dims), count_b = features_a.shape, features_b.shape[0]
    if min(count_a, count_b) >= dims:
        return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))
    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    centred_a, centred_b = features_a - mean_a, features_b - mean_b
    cross = centred_a @ centred_b.T / np.sqrt((count_a - 1) * (count_b - 1))
    gram = cross @ cross.T if count_a <= count_b else cross.T @ cross
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)))
    difference = mean_a - mean_b
    trace_a = np.sum(centred_a**2) / (count_a - 1)
    trace_b = np.sum(centred_b**2) / (count_b - 1)
    return float(difference @ difference + trace_a + trace_b - 2.0 * trace_sqrt)
