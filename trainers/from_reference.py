"""Imports a checkpoint of the official PyTorch JEM code (github.com/wgrathwohl/JEM) into a jem_tf
workdir, without PyTorch and without running code from the file:

    python -m trainers.from_reference --checkpoint=PATH.pt --dataset=cifar10 --workdir=DIR

The checkpoint is what the reference's `checkpoint()` saves, `{"model_state_dict", "replay_buffer"}`
(or a bare state dict), in either of torch's file formats, read by `export.torch_checkpoint` and
mapped onto our network by `export.reference_state_dict`. Depth, width, classes, input channels and
normalisation are inferred from the state dict and checked against --dataset. DIR becomes a normal
jem_tf workdir (config.json, run_info.json, checkpoints/ckpt-0 with the network and the replay
buffer) that `jem_tf.evaluate`, `export.savedmodel` and `jem_tf.train` (resuming from step 0)
accept. It lives in trainers/ because what it writes is a training checkpoint (network, replay
buffer and a fresh optimizer, tracked as the training loop tracks them).

The reference's `CCF` network keeps two heads JEM never uses, `energy_output` (the unconditional `F`
model's energy) and `f.linear`; they are skipped with a log line. A checkpoint trained with the
reference's `--uncond` has its energy in `energy_output` and cannot be represented.

Exit codes: 0 imported; 2 bad flags, or a checkpoint that is unreadable, unsafe (names a global other
than tensor/storage rebuilding) or does not fit --dataset; nothing is written then.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from export import reference_state_dict, torch_checkpoint
from export.reference_state_dict import ReferenceCheckpointError
from jem_tf import cli, configs
from jem_tf import data as jem_data
from jem_tf.configs.base import write_json_atomically
from jem_tf.models.wide_resnet import NETWORK_LAYOUT
from jem_tf.workdir import run_files
from trainers import checkpointing, objectives, optimization

EXIT_BAD_INPUT = 2


def _dataset_info(dataset, data_dir):
    """run_info's dataset fields; the data itself is only needed to evaluate or train, so a dataset
    that is not prepared on this machine still imports, with tfds' static metadata."""
    tfds_names = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
    try:
        data = jem_data.load(dataset, data_dir=data_dir)
        return dict(dataset=data.name, image_shape=list(data.image_shape), num_classes=data.num_classes,
                    class_names=list(data.class_names), num_train=data.num_train,
                    num_validation=data.num_validation, num_test=data.num_test)
    except jem_data.DatasetUnavailableError:
        if dataset not in tfds_names:
            raise
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy)

    features = tfds.builder(tfds_names[dataset]).info.features
    logging.warning("%s is not prepared on this machine; run_info takes its shape and classes from tfds' metadata. "
                    "Evaluating or training on the import needs the data (see docs/training.md, Datasets).", dataset)
    return dict(dataset=dataset, image_shape=list(features["image"].shape),
                num_classes=features["label"].num_classes, class_names=list(features["label"].names),
                num_train=None, num_validation=None, num_test=None)


def import_checkpoint(checkpoint_path: str, dataset: str, workdir: str, data_dir=None) -> dict:
    """Imports a reference checkpoint into a new jem_tf workdir; returns its run_info.

    Everything is written to a staging directory first and renamed into place, so a failure leaves
    no half-written workdir. Raises ReferenceCheckpointError / torch_checkpoint errors / ValueError
    (bad dataset) / FileExistsError (workdir holds something).
    """
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise FileExistsError(f"--workdir={workdir!r} exists and is not empty; choose a new directory.")
    checkpoint = torch_checkpoint.load(checkpoint_path)
    state, buffer = reference_state_dict.split_checkpoint(checkpoint)
    architecture = reference_state_dict.infer_architecture(state)
    info = _dataset_info(dataset, data_dir)
    height, width_px, channels = info["image_shape"]
    problems = []
    if architecture["num_classes"] != info["num_classes"]:
        problems.append(f"{architecture['num_classes']} classes, but {dataset} has {info['num_classes']}")
    if architecture["input_channels"] != channels:
        problems.append(f"{architecture['input_channels']} input channels, but {dataset} images have {channels}")
    size = reference_state_dict.REFERENCE_IMAGE_SIZE
    if (height, width_px) != (size, size):
        problems.append(
            f"the reference network pools an 8x8 map (32x32 inputs), but {dataset} images are {height}x{width_px}")
    if buffer is not None and (buffer.ndim != 4 or tuple(buffer.shape[1:]) != (channels, height, width_px)):
        problems.append(f"the replay buffer has shape {buffer.shape}, not [n, {channels}, {height}, {width_px}]")
    if problems:
        raise ReferenceCheckpointError(
            f"{checkpoint_path} does not fit --dataset={dataset}: " + "; ".join(problems) + ".")

    config = configs.get_preset(dataset if dataset in configs.PRESETS else "paper")
    config.dataset, config.data_dir, config.workdir = dataset, data_dir, workdir
    config.depth, config.width, config.norm = architecture["depth"], architecture["width"], architecture["norm"]
    config.dropout_rate, config.activation = 0.0, "leaky_relu"
    if buffer is not None:
        config.buffer_size = int(buffer.shape[0])
        if config.batch_size > config.buffer_size:
            logging.warning("The imported buffer has only %d chains; the config's batch size drops from %d to %d so "
                            "resumed training can draw a batch of chains.", config.buffer_size, config.batch_size,
                            config.buffer_size)
            config.batch_size = config.buffer_size
    config.validate()
    model = objectives.build_model(config, info["image_shape"], info["num_classes"])
    skipped = reference_state_dict.check_keys(state, model)
    if skipped:
        logging.info("Skipping the reference heads JEM does not use: %s.", ", ".join(skipped))
    reference_state_dict.load_reference_state_dict(model, state)
    if buffer is not None:
        model.replay_buffer.images.assign(np.transpose(buffer, (0, 2, 3, 1)).astype(np.float32))
        logging.info("Imported the replay buffer: %d chains.", buffer.shape[0])
    elif hasattr(model, "replay_buffer"):
        logging.warning("The checkpoint has no replay buffer; the workdir's %d chains are fresh U(-1, 1) noise.",
                        config.buffer_size)

    with open(checkpoint_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    info.update(imported_from=dict(path=os.path.abspath(checkpoint_path), sha256=digest,
                                   skipped_keys=skipped, replay_buffer=buffer is not None),
                network_layout=NETWORK_LAYOUT)
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(workdir))}.importing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        write_json_atomically(os.path.join(staging, run_files.CONFIG_FILE), config.to_json())
        write_json_atomically(os.path.join(staging, run_files.RUN_INFO_FILE), json.dumps(info, indent=2))
        # A training checkpoint at step 0, fresh Adam state included (the reference saves none), so
        # resumed training starts its schedule, warm-up included, from the imported weights.
        # (The schedule is not checkpointed: training rebuilds it from the config and the data size.)
        optimizer = optimization.make_optimizer(optimization.learning_rate_schedule(config, steps_per_epoch=1))
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
        manager = tf.train.CheckpointManager(checkpointing.make_checkpoint(model, optimizer),
                                             os.path.join(staging, run_files.CHECKPOINT_DIR),
                                             max_to_keep=config.keep_checkpoints)
        manager.save(checkpoint_number=0)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty, checked above
        os.rename(staging, workdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("Imported WRN-%d-%d (norm=%s, %d classes) from %s into %s.", config.depth, config.width,
                 config.norm, info["num_classes"], checkpoint_path, workdir)
    return info


FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags in `flag_values` (absl's global FLAGS when run as a program)."""
    flags.DEFINE_string("checkpoint", None,
                        "A checkpoint of the reference JEM code (torch.save file, zip or legacy format).",
                        flag_values=flag_values)
    flags.DEFINE_string("dataset", None, "What the model was trained on: cifar10, cifar100, svhn or folder:PATH; "
                        "sets the classes, image shape and the config's defaults.", flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "New (or empty) directory to write the jem_tf workdir to.",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Prepared tfds data directory (as for jem_tf.train), recorded in the config.",
                        flag_values=flag_values)


def main(argv):
    if len(argv) > 1:
        logging.error("Unexpected arguments %s; all options are --flags.", argv[1:])
        return EXIT_BAD_INPUT
    for name in ("checkpoint", "dataset", "workdir"):
        if not getattr(FLAGS, name):
            logging.error("--%s is required (python -m trainers.from_reference --help).", name)
            return EXIT_BAD_INPUT
    try:
        import_checkpoint(FLAGS.checkpoint, FLAGS.dataset, FLAGS.workdir, FLAGS.data_dir)
    except (torch_checkpoint.CheckpointFormatError, ReferenceCheckpointError, OSError, ValueError,
            jem_data.DatasetUnavailableError) as error:
        logging.error("Import refused: %s", error)
        return EXIT_BAD_INPUT
    return 0


def command():
    """The `jem-import-reference` console script (pyproject.toml): `python -m trainers.from_reference`
    under another name."""
    cli.run_as_main("trainers.from_reference")


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
