"""Writes a network as a SavedModel that stock TensorFlow Serving hosts: `export_model` writes TF
Serving's layout `OUTPUT/<version>/` (saved_model.pb, variables/, and assets.extra/jem_metadata.json,
which TF Serving ignores) with the signatures of the contract in `export.signatures`.

Why `keras.export.ExportArchive` and not `tf.saved_model.save` on a `tf.Module`: a module holding
a Keras 3 model saves and reloads in Python, but the C++ loader TF Serving uses fails with "Could
not find variable ..." unless the variables are tracked on the saved object itself, which
ExportArchive does. Only the plain network's weights are exported (never the JEM replay buffer
or the optimizer), and a version directory appears only when complete, because TF Serving may
load any numeric directory the moment it shows up.

A training run is exported by `export.savedmodel.export_run` (`python -m export.savedmodel`).
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

# Private: which class ExportArchive() makes, and the save context (see _ExportArchive).
from keras.src.backend.tensorflow.export import TFExportArchive
from tensorflow.python.saved_model import save_context

from export import graph_audit
from export import signatures as sig
from export.serving_functions import ServingFunctions
from jem_tf import precision as jem_precision

# Metadata layout version (independent of the serving contract's version).
METADATA_FORMAT = 1


def export_model(
    network,
    output_dir: str,
    version: int = 1,
    *,
    max_refine_steps: int = sig.DEFAULT_MAX_REFINE_STEPS,
    ood_threshold: float | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
    max_step_size: float = sig.DEFAULT_MAX_STEP_SIZE,
    max_noise_std: float = sig.DEFAULT_MAX_NOISE_STD,
    max_batch_size: int = sig.DEFAULT_MAX_BATCH_SIZE,
    max_image_bytes: int = sig.DEFAULT_MAX_IMAGE_BYTES,
    max_request_bytes: int = sig.DEFAULT_MAX_REQUEST_BYTES,
) -> str:
    """Writes `network` as a servable SavedModel to `output_dir/<version>` and returns that path.

    Args:
      network: a built `jem_tf.models.WideResNet` (or any built Keras model with
        `input_image_shape` and `num_classes` mapping images in [-1, 1] to logits). A trainer model
        (`Classifier`/`JEM`) is reduced with `to_wide_resnet()` first so that no training state
        is exported.
      output_dir: TF Serving's model base path; created if missing.
      version: the version directory name, a non-negative integer (TF Serving serves the largest).
      max_refine_steps: the largest `steps` `refine_then_classify` accepts.
      ood_threshold: if set, the classify family returns `is_out_of_distribution` = log_px below it.
      metadata: extra JSON-serialisable entries for assets.extra/jem_metadata.json (e.g. the run,
        how the OOD threshold was chosen). Keys set by the exporter take precedence.
      overwrite: replace an existing version directory; otherwise refuse with FileExistsError.
      max_step_size, max_noise_std: the largest `step_size` / `noise_std` `refine_then_classify`
        accepts.
      max_batch_size: the most images one request to any signature may carry.
      max_image_bytes, max_request_bytes: the most bytes of one encoded image, and of all the
        encoded images of one request, `classify_image_bytes` accepts.

    Returns:
      The path of the written version directory.
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(
            f"version must be a non-negative integer (TF Serving's version directory); received {version!r}."
        )
    version = int(version)
    if hasattr(network, "to_wide_resnet"):
        logging.info("Exporting %s.to_wide_resnet(): the weights without training state.", type(network).__name__)
        network = network.to_wide_resnet()
    if ood_threshold is not None and not np.isfinite(ood_threshold):
        raise ValueError(f"ood_threshold must be a finite number or None; received {ood_threshold!r}.")
    functions = ServingFunctions(
        network, max_refine_steps=max_refine_steps, ood_threshold=ood_threshold, max_step_size=max_step_size,
        max_noise_std=max_noise_std, max_batch_size=max_batch_size, max_image_bytes=max_image_bytes,
        max_request_bytes=max_request_bytes,
    )

    output_dir = os.fspath(output_dir)
    final_dir = os.path.join(output_dir, str(version))
    if os.path.exists(final_dir) and not overwrite:
        raise FileExistsError(
            f"Export version {final_dir!r} already exists; pass overwrite=True (--overwrite) to replace it "
            "or choose another version (--version)."
        )
    os.makedirs(output_dir, exist_ok=True)
    # Non-numeric names: TF Serving never mistakes a half-written or retired export for a version.
    staging_dir = os.path.join(output_dir, f".staging-{version}-{os.getpid()}")
    retired_dir = os.path.join(output_dir, f".retired-{version}-{os.getpid()}")
    for leftover in (staging_dir, retired_dir):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        _write_archive(functions, staging_dir)
        _write_metadata(staging_dir, functions, network, metadata)
        problems = graph_audit.find_unservable_ops(staging_dir)
        if problems:
            raise RuntimeError("The export would not run in TF Serving:\n  " + "\n  ".join(problems))
        if os.path.exists(final_dir):
            os.rename(final_dir, retired_dir)
        os.rename(staging_dir, final_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
        shutil.rmtree(retired_dir, ignore_errors=True)
    logging.info("Exported SavedModel to %s (signatures: %s).", final_dir, ", ".join(sig.ALL_SIGNATURE_NAMES))
    return final_dir


# The save's options: the variables are listed under the same ones, so the trace cache key matches.
_SAVE_OPTIONS = tf.saved_model.SaveOptions()


class _ExportArchive(TFExportArchive):
    """ExportArchive that traces each signature once instead of twice.

    `write_out` first traces every endpoint to list the variables it uses, then
    `tf.saved_model.save` traces it again: a tf.function's trace cache is keyed on whether it is
    inside a SavedModel save (and on the save's variable policy), so the first trace is never
    reused. Listing the variables inside a save context with the options `write_out` saves with
    makes that first trace the one the save reuses: the same graph, written once, in half the
    tracing time (the export's largest cost).
    """

    def _filter_and_track_resources(self):
        with save_context.save_context(_SAVE_OPTIONS):
            super()._filter_and_track_resources()


def _write_archive(functions: ServingFunctions, path: str) -> None:
    archive = _ExportArchive()  # what keras.export.ExportArchive() makes under TensorFlow, with one change
    # No `archive.track(network)`: add_endpoint already tracks every variable the signatures use on
    # the saved object (which the C++ loader needs), as the underlying tf.Variables. Tracking the
    # Keras model as well would save each weight a second time through its Keras wrapper, doubling
    # the export, and would add training-only state such as dropout seed generators.
    # Added in contract order: ExportArchive also exposes the first one as serving_default.
    for name in sig.SIGNATURE_ORDER:
        archive.add_endpoint(name, functions.function(name), input_signature=functions.input_signature(name))
    # The same tf.Variables again, in the network's order. add_endpoint lists them in the order
    # the traced functions captured them, which changes from process to process; the checkpoint
    # names each variable by the first path that reaches it, and this collection comes first, so
    # the variables file has the same keys for the same weights in every export. (Each variable
    # is still stored once.) It also gives reloaders `loaded.weights`.
    archive.add_variable_collection("weights", [_tf_variable(weight) for weight in functions.network.weights])
    archive.write_out(path, options=_SAVE_OPTIONS, verbose=False)


def _tf_variable(weight):
    """The tf.Variable behind a Keras 3 variable (the object add_endpoint tracks)."""
    value = getattr(weight, "value", weight)
    if not isinstance(value, tf.Variable):
        raise TypeError(f"Expected a TensorFlow-backed variable; {weight.path} holds {type(value).__name__}.")
    return value


def _write_metadata(export_dir: str, functions: ServingFunctions, network, extra: dict | None) -> None:
    """assets.extra/jem_metadata.json: what a deployer needs to know, deterministic (no clock)."""
    network_config = {
        key: getattr(network, key)
        for key in ("depth", "width", "num_classes", "norm", "activation", "dropout_rate")
        if hasattr(network, key)
    }
    metadata = dict(extra or {})
    ood = dict(metadata.get("ood") or {})
    if functions.ood_threshold is not None:
        ood.update(
            threshold=functions.ood_threshold,
            statistic=sig.LOG_PX,
            rule=f"{sig.IS_OUT_OF_DISTRIBUTION} = {sig.LOG_PX} < threshold",
        )
    elif not ood:
        ood = {"threshold": None, "reason": "no threshold was given to the exporter"}
    metadata.update(
        metadata_format=METADATA_FORMAT,
        contract_version=sig.CONTRACT_VERSION,
        image_shape=list(functions.image_shape),
        num_classes=functions.num_classes,
        network=network_config,
        precision={
            "policy": jem_precision.precision_of(network),
            "compute_dtype": network.compute_dtype,
            "io": "float32 inputs and outputs whatever the policy: weights, logits, energies and SGLD images are "
                  "float32",
        },
        preprocessing={
            "images": "float32 in [-1, 1]: uint8 pixels x mapped by x / 127.5 - 1",
            "image_bytes": "PNG, JPEG, BMP or GIF (first frame) of exactly the model's size, decoded to uint8 "
                           "with the model's channel count (1-channel models: RGB reduced to ITU-R 601-2 luma, as "
                           "Pillow's convert('L')), no resizing, then x / 127.5 - 1",
        },
        input_rules={
            "image_range": [sig.IMAGE_MIN, sig.IMAGE_MAX],
            "image_range_tolerance": sig.IMAGE_RANGE_TOLERANCE,
            "out_of_range": "refused (INVALID_ARGUMENT) beyond the tolerance; within it, clipped to the range",
            **functions.input_rules(),
        },
        signatures=sig.describe(functions.image_shape, functions.num_classes, functions.ood_threshold is not None),
        ood=ood,
        versions={"tensorflow": tf.__version__, "keras": keras.__version__},
    )
    directory = os.path.join(export_dir, sig.METADATA_DIR)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, sig.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
        f.write("\n")


def read_metadata(export_dir: str) -> dict:
    """The metadata an export was written with."""
    with open(os.path.join(export_dir, sig.METADATA_DIR, sig.METADATA_FILE)) as f:
        return json.load(f)
