"""The out-of-distribution threshold an export carries: `is_out_of_distribution = log_px < t`,
with t chosen on in-distribution (validation) images so that at most a given fraction of them is
flagged. The statistic is the energy core's log p~(x) (`jem_tf.energy.log_marginal`).
"""

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import energy

# Defaults: keep 95 % of in-distribution validation images, from at most this many.
DEFAULT_OOD_QUANTILE = 0.05
DEFAULT_OOD_MAX_IMAGES = 2000


def log_px_of_images(network, batches) -> np.ndarray:
    """log p~(x) of every image in `batches` (an iterable of float images, or (images, labels))."""
    compute = None
    values = []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if compute is None:  # traced for any batch size: the last, smaller batch is not traced again
            spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
            compute = tf.function(lambda images: energy.log_marginal(network(images, training=False)),
                                  input_signature=[spec], autograph=False)
        values.append(compute(images).numpy())
    return np.concatenate(values) if values else np.zeros([0], np.float32)


def ood_threshold_from_log_px(log_px, quantile: float = DEFAULT_OOD_QUANTILE) -> dict:
    """The largest threshold t among the observed values with at most `quantile` of them below it.

    `is_out_of_distribution = log_px < t` then flags at most `quantile` of in-distribution images
    (it keeps at least 1 - quantile). Returns the threshold and how it was chosen.
    """
    log_px = np.asarray(log_px, np.float64)
    if log_px.ndim != 1 or log_px.size == 0:
        raise ValueError("Need a non-empty vector of log_px values to choose an OOD threshold.")
    if not np.all(np.isfinite(log_px)):
        raise ValueError("log_px has NaN or Inf values; cannot choose an OOD threshold.")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1); received {quantile!r}.")
    # 'lower' returns an observed value, sorted[floor(q * (n - 1))]: at most q * n values lie below.
    threshold = float(np.quantile(log_px, quantile, method="lower"))
    return {
        "threshold": threshold,
        "method": f"quantile {quantile:g} ('lower', an observed value) of log_px over in-distribution images",
        "quantile": quantile,
        "num_images": int(log_px.size),
        "kept_fraction": float(np.mean(log_px >= threshold)),
    }


def validation_ood_threshold(network, config, quantile=DEFAULT_OOD_QUANTILE, max_images=DEFAULT_OOD_MAX_IMAGES):
    """(threshold or None, metadata dict) from the run's validation split.

    Without the data (not on this machine) or without a validation split, returns None and the
    reason, which is logged: the export then has no `is_out_of_distribution` output.
    """
    from jem_tf import data as jem_data  # noqa: PLC0415 (heavy: tensorflow_datasets)

    try:
        image_data = jem_data.load(config.dataset, config.data_dir, config.validation_fraction,
                                   skip_bad_files=config.skip_bad_files, drop_empty_classes=config.drop_empty_classes,
                                   validation_size=config.validation_size)
    except (jem_data.DatasetUnavailableError, ValueError) as error:
        reason = f"dataset {config.dataset!r} is not available here: {error}"
        logging.warning("No OOD threshold in the export: %s", reason)
        return None, {"threshold": None, "reason": reason}
    if image_data.num_validation == 0:
        reason = f"the run has no validation split (validation_fraction={config.validation_fraction})"
        logging.warning("No OOD threshold in the export: %s", reason)
        return None, {"threshold": None, "reason": reason}
    count = min(image_data.num_validation, max_images)
    batches = jem_data.make_batches(image_data.validation.take(count), 256, training=False)
    info = ood_threshold_from_log_px(log_px_of_images(network, batches), quantile)
    info.update(split="validation", dataset=config.dataset)
    logging.info(
        "OOD threshold log_px < %.4f: the %g quantile of %d %s validation images.",
        info["threshold"], quantile, info["num_images"], config.dataset,
    )
    return info["threshold"], info
