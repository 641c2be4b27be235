"""Evaluation metrics with oracle tests: calibration, OOD detection and sample quality.

These are pure functions of scores, logits, probabilities or features; the model-facing code that
produces those inputs lives in `jem_tf.evaluation`.
"""

from jem_tf.metrics.calibration import (
    CalibrationBins,
    ece_from_bins,
    expected_calibration_error,
    reliability_bins,
)
from jem_tf.metrics.ood import auroc, fpr_at_tpr
from jem_tf.metrics.sample_quality import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_score,
)

__all__ = [
    "CalibrationBins",
    "auroc",
    "ece_from_bins",
    "expected_calibration_error",
    "feature_statistics",
    "fpr_at_tpr",
    "frechet_distance",
    "frechet_distance_from_features",
    "inception_score",
    "reliability_bins",
]
