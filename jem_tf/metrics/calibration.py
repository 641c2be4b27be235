"""Expected calibration error (Guo et al., 2017) and the reliability-diagram statistics.

The ECE itself comes from tensorflow-probability. The per-bin statistics for the reliability
diagram are computed here with the same binning op tfp uses (`tf.histogram_fixed_width_bins` over
[0, 1]), so the diagram and the reported ECE always describe the same bins; a test checks that
`ece_from_bins(reliability_bins(...))` equals tfp's value.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from jem_tf import energy

DEFAULT_NUM_BINS = 20


def _check_num_bins(num_bins):
    if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer; received {num_bins!r}.")


def expected_calibration_error(logits, labels, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """ECE of the argmax prediction with confidence max_y p(y|x), over equal-width bins of [0, 1].

    Args:
      logits: [n, K] classifier logits.
      labels: [n] integer true labels.
      num_bins: number of equal-width confidence bins.
    """
    _check_num_bins(num_bins)
    logits = tf.convert_to_tensor(logits, tf.float32)
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    if logits.shape[0] == 0:
        raise ValueError("expected_calibration_error needs at least one example; received none.")
    return float(tfp.stats.expected_calibration_error(num_bins, logits=logits, labels_true=labels))


@dataclasses.dataclass
class CalibrationBins:
    """Per-bin statistics of a reliability diagram; empty bins have count 0 and NaN means."""

    edges: np.ndarray  # [num_bins + 1]
    counts: np.ndarray  # [num_bins] int
    accuracy: np.ndarray  # [num_bins] fraction of correct predictions in the bin
    confidence: np.ndarray  # [num_bins] mean max_y p(y|x) in the bin

    def to_dict(self) -> dict:
        # JSON has no NaN; an empty bin is reported as null.
        def listify(values):
            return [None if not np.isfinite(v) else float(v) for v in values]

        return {
            "edges": listify(self.edges),
            "counts": [int(c) for c in self.counts],
            "accuracy": listify(self.accuracy),
            "confidence": listify(self.confidence),
        }


def reliability_bins(logits, labels, num_bins: int = DEFAULT_NUM_BINS) -> CalibrationBins:
    """Accuracy and mean confidence per confidence bin, binned exactly like tfp's ECE."""
    _check_num_bins(num_bins)
    logits = tf.convert_to_tensor(logits, tf.float32)
    labels = np.asarray(labels).astype(np.int64)
    probabilities = energy.class_probabilities(logits)
    predicted = tf.argmax(probabilities, axis=-1).numpy()
    confidence = tf.reduce_max(probabilities, axis=-1)
    bins = tf.histogram_fixed_width_bins(confidence, [0.0, 1.0], nbins=num_bins).numpy()
    confidence = confidence.numpy().astype(np.float64)
    correct = (predicted == labels).astype(np.float64)
    counts = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / counts
        mean_confidence = np.bincount(bins, weights=confidence, minlength=num_bins) / counts
    return CalibrationBins(
        edges=np.linspace(0.0, 1.0, num_bins + 1),
        counts=counts,
        accuracy=accuracy,
        confidence=mean_confidence,
    )


def ece_from_bins(bins: CalibrationBins) -> float:
    """sum_b (n_b / n) |accuracy_b - confidence_b|, skipping empty bins."""
    total = bins.counts.sum()
    if total == 0:
        raise ValueError("ece_from_bins needs at least one example; every bin is empty.")
    filled = bins.counts > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(bins.counts[filled] / total * gaps))
