"""Exports a trained jem_tf classifier as a SavedModel that stock TensorFlow Serving hosts.

    python -m export.savedmodel --workdir=runs/quick --output=/models/jem [--version=N] [--overwrite]

writes TF Serving's layout `OUTPUT/<version>/` (saved_model.pb, variables/, and
assets.extra/jem_metadata.json, which TF Serving ignores). The signatures and their keys are the
contract in `export.signatures`; see export/serving/README.md for serving it.

Why `keras.export.ExportArchive` and not `tf.saved_model.save` on a `tf.Module`: a module holding
a Keras 3 model saves and reloads in Python, but the C++ loader TF Serving uses fails with "Could
not find variable ..." unless the variables are tracked on the saved object itself, which
ExportArchive does. Only the plain network's weights are exported (never the JEM replay buffer
or the optimizer), and a version directory appears only when complete, because TF Serving may
load any numeric directory the moment it shows up.
"""

import hashlib
import json
import os
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from export import graph_audit
from export import signatures as sig
from export.serving_functions import ServingFunctions
from jem_tf import cli, energy
from jem_tf import precision as jem_precision

# Metadata layout version (independent of the serving contract's version).
METADATA_FORMAT = 1
# OOD threshold defaults: keep 95 % of in-distribution validation images, from at most this many.
DEFAULT_OOD_QUANTILE = 0.05
DEFAULT_OOD_MAX_IMAGES = 2000
# Steps suggested to clients in the metadata; the paper evaluates 0, 1 and 10 (section 5.4).
SUGGESTED_REFINE_STEPS = 10


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
        max_noise_std=max_noise_std, max_batch_size=max_batch_size,
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


def _write_archive(functions: ServingFunctions, path: str) -> None:
    archive = keras.export.ExportArchive()
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
    archive.write_out(path, verbose=False)


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


# -- OOD threshold ----------------------------------------------------------------------------


def log_px_of_images(network, batches) -> np.ndarray:
    """log p~(x) of every image in `batches` (an iterable of float images, or (images, labels))."""
    compute = tf.function(lambda images: energy.log_marginal(network(images, training=False)))
    values = []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
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


# -- a training run ---------------------------------------------------------------------------


class CheckpointMismatchError(ValueError):
    """The network to export does not hold the weights stored in its checkpoint."""


def verify_weights_from_checkpoint(network, checkpoint_path: str) -> None:
    """Raises CheckpointMismatchError unless every trainable weight of `network` equals (bit for
    bit) some tensor stored in `checkpoint_path`.

    A restore that silently skips part of a model (e.g. layers the checkpoint does not track)
    leaves those weights at their random initialisation; exporting that would serve a model that
    looks healthy but is not the one trained. Matching by value needs no knowledge of the
    checkpoint's layout. Only tensors of a weight's shape are read.
    """
    reader = tf.train.load_checkpoint(checkpoint_path)
    pending = {}
    for weight in network.trainable_weights:
        digest = hashlib.sha256(np.ascontiguousarray(weight.numpy()).tobytes()).digest()
        pending.setdefault(tuple(weight.shape), {})[digest] = weight.path
    for key, shape in sorted(reader.get_variable_to_shape_map().items()):
        waiting = pending.get(tuple(shape))
        if waiting:
            waiting.pop(hashlib.sha256(np.ascontiguousarray(reader.get_tensor(key)).tobytes()).digest(), None)
    missing = sorted(path for waiting in pending.values() for path in waiting.values())
    if missing:
        raise CheckpointMismatchError(
            f"{len(missing)} of {len(network.trainable_weights)} weights of the restored network are not in "
            f"checkpoint {checkpoint_path!r} (e.g. {', '.join(missing[:3])}): the checkpoint does not hold them or "
            "they were not restored, so they are still randomly initialised. Refusing to export."
        )


def next_version(output_dir: str) -> int:
    """One more than the largest numeric version directory in `output_dir` (1 if none)."""
    if not os.path.isdir(output_dir):
        return 1
    versions = [int(name) for name in os.listdir(output_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def export_run(
    workdir: str,
    output: str,
    version: int | None = None,
    checkpoint=None,
    overwrite: bool = False,
    *,
    max_refine_steps: int = sig.DEFAULT_MAX_REFINE_STEPS,
    ood_quantile: float = DEFAULT_OOD_QUANTILE,
    ood_max_images: int = DEFAULT_OOD_MAX_IMAGES,
    max_step_size: float = sig.DEFAULT_MAX_STEP_SIZE,
    max_noise_std: float = sig.DEFAULT_MAX_NOISE_STD,
    max_batch_size: int = sig.DEFAULT_MAX_BATCH_SIZE,
    download: bool = False,
    precision: str | None = None,
) -> str:
    """Exports a training run's checkpoint to `output/<version>` and returns that path.

    Args:
      workdir: the training workdir.
      output: TF Serving's model base path.
      version: the version directory; None: the checkpoint's global step (so a later checkpoint
        is a newer version), or the next free number if the run does not record it.
      checkpoint: None for the latest, a step number, or a checkpoint path prefix.
      overwrite: replace an existing version.
      max_refine_steps: the largest `steps` `refine_then_classify` accepts.
      ood_quantile: fraction of validation images the OOD threshold may flag.
      ood_max_images: validation images used for the threshold, at most.
      max_step_size, max_noise_std, max_batch_size: the serving limits (see `export_model`).
      download: if the run's tfds dataset (for the OOD threshold) is not prepared, download and
        prepare it first (`jem_tf.data.prepare`; DatasetDownloadError if that fails).
      precision: the precision the exported network computes in (`jem_tf.precision`); None: the
        run's own. Inputs and outputs are float32 in every precision.
    """
    from jem_tf import workdir as workdir_lib  # noqa: PLC0415

    # Read-only: the newest checkpoint that verifies, even while the run is training; no buffer.
    network, config, run_info = workdir_lib.restore_run(workdir, checkpoint, with_replay_buffer=False,
                                                        precision=precision)
    if run_info.get("checkpoint"):
        verify_weights_from_checkpoint(network, run_info["checkpoint"])
    else:
        logging.warning("The run does not name its checkpoint; cannot verify the restored weights.")
    if version is None:
        version = run_info.get("global_step")
        if version is None:
            version = next_version(output)
    if download:
        from jem_tf import data as jem_data  # noqa: PLC0415 (heavy: tensorflow_datasets)

        jem_data.prepare(config.dataset, config.data_dir)
    threshold, ood_info = validation_ood_threshold(network, config, ood_quantile, ood_max_images)
    metadata = {
        "run": {
            "workdir": os.path.abspath(workdir),
            "checkpoint": run_info.get("checkpoint"),
            "global_step": run_info.get("global_step"),
            "dataset": run_info.get("dataset", config.dataset),
            "objective": config.objective,
            "preset": config.preset,
        },
        "class_names": list(run_info.get("class_names") or []),
        "refine_defaults": {
            sig.STEPS: SUGGESTED_REFINE_STEPS,
            sig.STEP_SIZE: config.sgld_step_size,
            sig.NOISE_STD: config.sgld_noise,
            "source": "the run's training SGLD settings; steps as in the paper's section 5.4 (0, 1, 10)",
        },
        "ood": ood_info,
    }
    return export_model(
        network, output, version, max_refine_steps=max_refine_steps, ood_threshold=threshold,
        metadata=metadata, overwrite=overwrite, max_step_size=max_step_size, max_noise_std=max_noise_std,
        max_batch_size=max_batch_size,
    )


# -- command line -----------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("workdir", None, "Training workdir to export (config.json, run_info.json, checkpoints/).")
    flags.DEFINE_string("output", None, "TF Serving model base path; the export goes to OUTPUT/<version>. "
                        "Default: WORKDIR/export.")
    flags.DEFINE_integer("version", None, "Version directory (default: the checkpoint's global step).")
    flags.DEFINE_string("checkpoint", None, "Checkpoint step or path prefix (default: the latest).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing OUTPUT/<version>.")
    flags.DEFINE_integer("max_refine_steps", sig.DEFAULT_MAX_REFINE_STEPS,
                         "Largest `steps` refine_then_classify accepts.")
    flags.DEFINE_float("max_step_size", sig.DEFAULT_MAX_STEP_SIZE,
                       "Largest `step_size` refine_then_classify accepts (the paper uses 1).")
    flags.DEFINE_float("max_noise_std", sig.DEFAULT_MAX_NOISE_STD,
                       "Largest `noise_std` refine_then_classify accepts (the paper uses 0.01).")
    flags.DEFINE_integer("max_batch_size", sig.DEFAULT_MAX_BATCH_SIZE,
                         "Most images one request to any signature may carry; larger batches are refused.")
    flags.DEFINE_bool("download", False, "If the run's tfds dataset (used for the OOD threshold) is not prepared in "
                      "its data_dir, download and prepare it first (needs internet access; off by default).")
    flags.DEFINE_float("ood_quantile", DEFAULT_OOD_QUANTILE,
                       "Fraction of validation images the OOD threshold may flag.")
    flags.DEFINE_integer("ood_max_images", DEFAULT_OOD_MAX_IMAGES, "Validation images used for the OOD threshold.")
    flags.DEFINE_enum("precision", None, list(jem_precision.PRECISIONS),
                      "Precision of the exported network's computation (default: the run's --precision); "
                      "inputs and outputs are float32 in every precision.")
    flags.mark_flag_as_required("workdir")


def main(argv):
    del argv  # cli.run refuses positional arguments
    from jem_tf.data import DatasetUnavailableError  # noqa: PLC0415 (heavy: tensorflow_datasets)

    output = FLAGS.output or os.path.join(FLAGS.workdir, "export")
    try:
        path = export_run(
            FLAGS.workdir, output, version=FLAGS.version, checkpoint=FLAGS.checkpoint, overwrite=FLAGS.overwrite,
            max_refine_steps=FLAGS.max_refine_steps, ood_quantile=FLAGS.ood_quantile,
            ood_max_images=FLAGS.ood_max_images, max_step_size=FLAGS.max_step_size,
            max_noise_std=FLAGS.max_noise_std, max_batch_size=FLAGS.max_batch_size, download=FLAGS.download,
            precision=FLAGS.precision,
        )
    except (FileExistsError, FileNotFoundError, ValueError, DatasetUnavailableError) as error:
        # ValueError includes CheckpointMismatchError; DatasetUnavailableError a failed --download.
        logging.error("%s", error)
        sys.exit(cli.EXIT_BAD_INPUT)
    print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
