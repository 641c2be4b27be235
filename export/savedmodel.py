"""Exports a training run as a SavedModel that stock TensorFlow Serving hosts.

    python -m export.savedmodel --workdir=runs/quick --output=/models/jem [--version=N] [--overwrite]

writes TF Serving's layout `OUTPUT/<version>/` (saved_model.pb, variables/, and
assets.extra/jem_metadata.json, which TF Serving ignores). The signatures and their keys are the
contract in `export.signatures`; see export/serving/README.md for serving it.

`export_run` restores the run's checkpoint (`jem_tf.workdir.restore`), checks that the restored weights are
the checkpoint's, chooses the OOD threshold on the run's validation split (`export.ood_threshold`)
and writes the archive (`export.archive.export_model`).
"""

import hashlib
import os
import sys

import numpy as np
import tensorflow as tf
from absl import flags, logging

from export import archive, ood_threshold
from export import signatures as sig
from jem_tf import cli
from jem_tf import precision as jem_precision

# Steps suggested to clients in the metadata; the paper evaluates 0, 1 and 10 (section 5.4).
SUGGESTED_REFINE_STEPS = 10


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
    ood_quantile: float = ood_threshold.DEFAULT_OOD_QUANTILE,
    ood_max_images: int = ood_threshold.DEFAULT_OOD_MAX_IMAGES,
    max_step_size: float = sig.DEFAULT_MAX_STEP_SIZE,
    max_noise_std: float = sig.DEFAULT_MAX_NOISE_STD,
    max_batch_size: int = sig.DEFAULT_MAX_BATCH_SIZE,
    max_image_bytes: int = sig.DEFAULT_MAX_IMAGE_BYTES,
    max_request_bytes: int = sig.DEFAULT_MAX_REQUEST_BYTES,
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
      max_step_size, max_noise_std, max_batch_size, max_image_bytes, max_request_bytes: the serving
        limits (see `export.archive.export_model`).
      download: if the run's tfds dataset (for the OOD threshold) is not prepared, download and
        prepare it first (`jem_tf.data.prepare`; DatasetDownloadError if that fails).
      precision: the precision the exported network computes in (`jem_tf.precision`); None: the
        run's own. Inputs and outputs are float32 in every precision.
    """
    from jem_tf.workdir import restore  # noqa: PLC0415

    # Read-only: the newest checkpoint that verifies, even while the run is training; no buffer.
    network, config, run_info = restore.restore_run(workdir, checkpoint, with_replay_buffer=False,
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
    threshold, ood_info = ood_threshold.validation_ood_threshold(network, config, ood_quantile, ood_max_images)
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
    return archive.export_model(
        network, output, version, max_refine_steps=max_refine_steps, ood_threshold=threshold,
        metadata=metadata, overwrite=overwrite, max_step_size=max_step_size, max_noise_std=max_noise_std,
        max_batch_size=max_batch_size, max_image_bytes=max_image_bytes, max_request_bytes=max_request_bytes,
    )


# -- command line -----------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags in `flag_values` (absl's global FLAGS when run as a program)."""
    flags.DEFINE_string("workdir", None, "Training workdir to export (config.json, run_info.json, checkpoints/).",
                        flag_values=flag_values)
    flags.DEFINE_string("output", None, "TF Serving model base path; the export goes to OUTPUT/<version>. "
                        "Default: WORKDIR/export.", flag_values=flag_values)
    flags.DEFINE_integer("version", None, "Version directory (default: the checkpoint's global step).",
                         flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Checkpoint step or path prefix (default: the latest).",
                        flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace an existing OUTPUT/<version>.", flag_values=flag_values)
    flags.DEFINE_integer("max_refine_steps", sig.DEFAULT_MAX_REFINE_STEPS,
                         "Largest `steps` refine_then_classify accepts.", flag_values=flag_values)
    flags.DEFINE_float("max_step_size", sig.DEFAULT_MAX_STEP_SIZE,
                       "Largest `step_size` refine_then_classify accepts (the paper uses 1).", flag_values=flag_values)
    flags.DEFINE_float("max_noise_std", sig.DEFAULT_MAX_NOISE_STD,
                       "Largest `noise_std` refine_then_classify accepts (the paper uses 0.01).",
                       flag_values=flag_values)
    flags.DEFINE_integer("max_batch_size", sig.DEFAULT_MAX_BATCH_SIZE,
                         "Most images one request to any signature may carry; larger batches are refused.",
                         flag_values=flag_values)
    flags.DEFINE_integer("max_image_bytes", sig.DEFAULT_MAX_IMAGE_BYTES,
                         "Most bytes one encoded image sent to classify_image_bytes may have.", flag_values=flag_values)
    flags.DEFINE_integer("max_request_bytes", sig.DEFAULT_MAX_REQUEST_BYTES,
                         "Most bytes all encoded images of one classify_image_bytes request may have together.",
                         flag_values=flag_values)
    flags.DEFINE_bool("download", False, "If the run's tfds dataset (used for the OOD threshold) is not prepared in "
                      "its data_dir, download and prepare it first (needs internet access; off by default).",
                      flag_values=flag_values)
    flags.DEFINE_float("ood_quantile", ood_threshold.DEFAULT_OOD_QUANTILE,
                       "Fraction of validation images the OOD threshold may flag.", flag_values=flag_values)
    flags.DEFINE_integer("ood_max_images", ood_threshold.DEFAULT_OOD_MAX_IMAGES,
                         "Validation images used for the OOD threshold.", flag_values=flag_values)
    flags.DEFINE_enum("precision", None, list(jem_precision.PRECISIONS),
                      "Precision of the exported network's computation (default: the run's --precision); "
                      "inputs and outputs are float32 in every precision.", flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def main(argv):
    del argv  # cli.run refuses positional arguments
    from jem_tf.data import DatasetUnavailableError  # noqa: PLC0415 (heavy: tensorflow_datasets)

    output = FLAGS.output or os.path.join(FLAGS.workdir, "export")
    try:
        path = export_run(
            FLAGS.workdir, output, version=FLAGS.version, checkpoint=FLAGS.checkpoint, overwrite=FLAGS.overwrite,
            max_refine_steps=FLAGS.max_refine_steps, ood_quantile=FLAGS.ood_quantile,
            ood_max_images=FLAGS.ood_max_images, max_step_size=FLAGS.max_step_size,
            max_noise_std=FLAGS.max_noise_std, max_batch_size=FLAGS.max_batch_size,
            max_image_bytes=FLAGS.max_image_bytes, max_request_bytes=FLAGS.max_request_bytes, download=FLAGS.download,
            precision=FLAGS.precision,
        )
    except (FileExistsError, FileNotFoundError, ValueError, DatasetUnavailableError) as error:
        # ValueError includes CheckpointMismatchError; DatasetUnavailableError a failed --download.
        logging.error("%s", error)
        sys.exit(cli.EXIT_BAD_INPUT)
    except Exception as error:
        # A full or read-only disk, as Python's OSError or from TensorFlow's own file system (the
        # SavedModel's variables); the export was staged in a hidden folder, removed on failure.
        if not cli.write_failure(error):
            raise
        cli.exit_write_failed(error, f"the export to {output!r}", "Free space (or choose another --output) and re-run.")
    print(path)


def command():
    """The `jem-export` console script (pyproject.toml): `python -m export.savedmodel` under another name."""
    cli.run_as_main("export.savedmodel")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
