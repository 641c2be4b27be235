"""Threshold-free OOD detection metrics. Convention: in-distribution is the positive class and a
higher score means "more in-distribution" (the paper's s_theta(x))."""

import numpy as np
import scipy.stats


def _clean(scores, name):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError(f"{name} is empty; AUROC needs at least one in- and one out-of-distribution score.")
    # A NaN score (e.g. an overflowing log-density) cannot be ranked; treating it as the most OOD-like
    # value is the conservative choice for in-distribution data and harmless for OOD data.
    return np.where(np.isnan(scores), -np.inf, scores)


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve = P(s_in > s_out) + P(s_in = s_out) / 2 (Mann-Whitney U).

    Computed from average ranks, so ties count one half, as in sklearn's roc_auc_score.
    """
    in_scores = _clean(in_scores, "in_scores")
    out_scores = _clean(out_scores, "out_scores")
    ranks = scipy.stats.rankdata(np.concatenate([in_scores, out_scores]), method="average")
    num_in, num_out = in_scores.size, out_scores.size
    u_statistic = ranks[:num_in].sum() - num_in * (num_in + 1) / 2.0
    return float(u_statistic / (num_in * num_out))


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold that keeps at least `tpr` of in-distribution data.

    The threshold is the ceil(tpr * n_in)-th largest in-distribution score; OOD examples scoring at
    or above it are false positives.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1]; received {tpr!r}.")
    in_scores = np.sort(_clean(in_scores, "in_scores"))[::-1]
    out_scores = _clean(out_scores, "out_scores")
    # A small tolerance keeps e.g. 0.95 * 20 = 19.000000000000004 from rounding up to 20.
    needed = max(1, int(np.ceil(tpr * in_scores.size - 1e-9)))
    threshold = in_scores[needed - 1]
    return float(np.mean(out_scores >= threshold))
