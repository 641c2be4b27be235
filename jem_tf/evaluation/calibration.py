"""Calibration (section 5.2, appendix D): expected calibration error and reliability diagrams."""

import numpy as np

from jem_tf import metrics
from jem_tf.evaluation import plots


def evaluate_calibration(logits, labels, num_bins: int = metrics.calibration.DEFAULT_NUM_BINS):
    """Returns (results, bins): `calibration/ece` (tfp), `calibration/num_bins`,
    `calibration/mean_confidence`, `calibration/accuracy`, and the reliability-diagram bins."""
    bins = metrics.reliability_bins(logits, labels, num_bins)
    ece = metrics.expected_calibration_error(logits, labels, num_bins)
    total = max(int(bins.counts.sum()), 1)
    filled = bins.counts > 0
    results = {
        "calibration/ece": ece,
        "calibration/num_bins": int(num_bins),
        "calibration/accuracy": float(np.sum(np.nan_to_num(bins.accuracy) * bins.counts) / total),
        "calibration/mean_confidence": float(np.sum(bins.confidence[filled] * bins.counts[filled]) / total),
        "calibration/bins": bins.to_dict(),
    }
    return results, bins


def reliability_figure(path: str, runs) -> str:
    """One reliability panel per run; `runs` is a list of (title, results, bins)."""
    panels = [
        dict(title=title, bins=bins, ece=results["calibration/ece"], accuracy=results["calibration/accuracy"])
        for title, results, bins in runs
    ]
    return plots.reliability_diagram(path, panels)
