"""Imports a checkpoint of the official PyTorch JEM code (github.com/wgrathwohl/JEM) into a jem_tf
workdir, without PyTorch and without running code from the file:

    python -m export.from_reference --checkpoint=PATH.pt --dataset=cifar10 --workdir=DIR

The checkpoint is what the reference's `checkpoint()` saves, `{"model_state_dict", "replay_buffer"}`
(or a bare state dict), in either of torch's file formats, read by `export.torch_checkpoint`. Depth,
width, classes, input channels and normalisation are inferred from the state dict and checked against
--dataset. DIR becomes a normal jem_tf workdir (config.json, run_info.json, checkpoints/ckpt-0 with
the network and the replay buffer) that `jem_tf.evaluate`, `export.savedmodel` and `jem_tf.train`
(resuming from step 0) accept.

The reference's `CCF` network keeps two heads JEM never uses, `energy_output` (the unconditional `F`
model's energy) and `f.linear`; they are skipped with a log line. A checkpoint trained with the
reference's `--uncond` has its energy in `energy_output` and cannot be represented.

Exit codes: 0 imported; 2 bad flags, or a checkpoint that is unreadable, unsafe (names a global other
than tensor/storage rebuilding) or does not fit --dataset; nothing is written then.
"""

import collections
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from export import torch_checkpoint
from jem_tf import configs
from jem_tf import data as jem_data
from jem_tf.configs.base import write_json_atomically
from jem_tf.models.wide_resnet import NETWORK_LAYOUT

# Heads of the reference's F/CCF that JEM's classifier-as-energy never reads.
UNUSED_HEADS = ("energy_output.", "f.linear.")
EXIT_BAD_INPUT = 2
# The reference's stem width and its average pool over the last 8x8 map (32x32 inputs).
_STEM_CHANNELS = 16
_REFERENCE_IMAGE_SIZE = 32


class ReferenceCheckpointError(ValueError):
    """The checkpoint does not hold a reference JEM network that fits the requested import."""


def _parameter_map(network):
    """[(reference key, variable, kind)] for every variable of our WideResNet, in the reference's
    state-dict order. kind: 'conv' (OIHW <-> HWIO), 'dense' (out x in <-> in x out) or 'vector'."""
    entries = []

    def conv(prefix, layer):
        entries.extend([(f"{prefix}.weight", layer.kernel, "conv"), (f"{prefix}.bias", layer.bias, "vector")])

    def norm(prefix, layer):
        if layer is None:
            return
        if network.norm != "batch":
            raise ReferenceCheckpointError(
                f"norm={network.norm!r} has no counterpart in the reference (its 'layer' norm is GroupNorm(1), "
                "jem_tf's 'group' uses gcd(channels, 32) groups); only 'none' and 'batch' map."
            )
        for suffix, variable in (("weight", layer.gamma), ("bias", layer.beta),
                                 ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
            entries.append((f"{prefix}.{suffix}", variable, "vector"))

    conv("f.conv1", network.stem)
    for name in network.block_names:
        stage, index = name[len("stage"):].split("_block")
        block = getattr(network, name)
        prefix = f"f.layer{stage}.{int(index) - 1}"
        norm(f"{prefix}.bn1", block.norm1)
        conv(f"{prefix}.conv1", block.conv1)
        norm(f"{prefix}.bn2", block.norm2)
        conv(f"{prefix}.conv2", block.conv2)
        if block.shortcut is not None:
            conv(f"{prefix}.shortcut.0", block.shortcut)
    norm("f.bn1", network.final_norm)
    entries.append(("class_output.weight", network.classifier.kernel, "dense"))
    entries.append(("class_output.bias", network.classifier.bias, "vector"))
    return entries


def _to_reference(value, kind):
    if kind == "conv":
        return np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
    if kind == "dense":
        return np.transpose(value)
    return value


def _from_reference(value, kind):
    if kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "dense":
        return np.transpose(value)
    return value


def to_reference_state_dict(network) -> collections.OrderedDict:
    """Our network's weights as the reference CCF's `model_state_dict` (numpy, NCHW layouts).

    The heads JEM does not use (`f.linear`, `energy_output`) are written as zeros so that the
    reference's strict `load_state_dict` accepts the result; batch norm's `num_batches_tracked`
    (used only when momentum is None, which the reference never sets) is 0.
    """
    state = collections.OrderedDict()
    for key, variable, kind in _parameter_map(network):
        state[key] = _to_reference(variable.numpy(), kind)
        if key.endswith(".running_var"):
            state[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    features = 64 * network.width
    head = collections.OrderedDict()
    for prefix, outputs in (("f.linear", 10), ("energy_output", 1)):
        head[f"{prefix}.weight"] = np.zeros((outputs, features), np.float32)
        head[f"{prefix}.bias"] = np.zeros((outputs,), np.float32)
    # The reference registers f.linear before the F-level heads, and energy_output before class_output.
    ordered = collections.OrderedDict((k, v) for k, v in state.items() if k.startswith("f."))
    ordered.update(head)
    ordered.update((k, v) for k, v in state.items() if not k.startswith("f."))
    return ordered


def load_reference_state_dict(network, state_dict) -> None:
    """Assigns a reference CCF state dict (numpy, as `infer_architecture` accepted it) to our network."""
    for key, variable, kind in _parameter_map(network):
        value = _from_reference(np.asarray(state_dict[key]), kind)
        if tuple(value.shape) != tuple(variable.shape):
            raise ReferenceCheckpointError(
                f"{key} has shape {np.asarray(state_dict[key]).shape}, but WRN-{network.depth}-{network.width} with "
                f"{network.num_classes} classes needs {tuple(_to_reference(np.zeros(variable.shape), kind).shape)}."
            )
        variable.assign(value.astype(np.float32))


def split_checkpoint(checkpoint):
    """(model state dict, replay buffer or None) from what torch_checkpoint.load returned."""
    if isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:
        state, buffer = checkpoint["model_state_dict"], checkpoint.get("replay_buffer")
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
        state, buffer = checkpoint, None
    else:
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ReferenceCheckpointError(
            f"expected the reference's {{'model_state_dict', 'replay_buffer'}} checkpoint or a state dict; found {keys}."
        )
    if not isinstance(state, dict):
        raise ReferenceCheckpointError(f"model_state_dict is a {type(state).__name__}, not a state dict.")
    if state and all(str(k).startswith("module.") for k in state):  # saved from nn.DataParallel
        state = collections.OrderedDict((k[len("module."):], v) for k, v in state.items())
    if buffer is not None and not isinstance(buffer, np.ndarray):
        raise ReferenceCheckpointError(f"replay_buffer is a {type(buffer).__name__}, not a tensor.")
    return state, buffer


def infer_architecture(state) -> dict:
    """depth, width, num_classes, norm and input channels of a reference CCF state dict.

    Raises ReferenceCheckpointError naming what is missing or has no jem_tf counterpart.
    """
    def shape(key):
        if key not in state:
            raise ReferenceCheckpointError(
                f"the state dict has no {key!r}; it is not a reference JEM (F/CCF with a Wide_ResNet `f.`) network. "
                f"Its first keys: {list(state)[:6]}."
            )
        return np.shape(state[key])

    stem = shape("f.conv1.weight")
    if len(stem) != 4 or stem[0] != _STEM_CHANNELS:
        raise ReferenceCheckpointError(f"f.conv1.weight has shape {stem}; the reference's stem is [16, C, 3, 3].")
    first = shape("f.layer1.0.conv1.weight")
    if first[0] % _STEM_CHANNELS:
        raise ReferenceCheckpointError(f"f.layer1.0.conv1.weight has {first[0]} filters, not a multiple of 16.")
    blocks = [sum(1 for i in range(1000) if f"f.layer{s}.{i}.conv1.weight" in state) for s in (1, 2, 3)]
    if len(set(blocks)) != 1 or blocks[0] == 0:
        raise ReferenceCheckpointError(f"the three stages have {blocks} blocks; a Wide_ResNet has the same number in each.")
    classes = shape("class_output.weight")
    if "f.bn1.running_mean" in state:
        norm = "batch"
    elif any(k.startswith("f.bn1.") for k in state):
        found = sorted(k for k in state if k.startswith("f.bn1."))
        raise ReferenceCheckpointError(
            f"the network uses a normalisation with parameters {found} (the reference's 'instance', 'layer' or 'act' "
            "norm), which jem_tf does not implement; only norm=None (the paper's) and 'batch' can be imported."
        )
    else:
        norm = "none"
    return dict(depth=6 * blocks[0] + 4, width=first[0] // _STEM_CHANNELS, num_classes=int(classes[0]),
                norm=norm, input_channels=int(stem[1]))


def check_keys(state, network) -> list:
    """Refuses keys the network lacks or does not use (other than the unused heads); returns the
    skipped head keys."""
    expected = {key for key, _, _ in _parameter_map(network)}
    skipped = sorted(k for k in state if k.startswith(UNUSED_HEADS))
    ignorable = set(skipped) | {k for k in state if k.endswith(".num_batches_tracked")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - ignorable)
    if missing or unexpected:
        raise ReferenceCheckpointError(
            f"the state dict does not match WRN-{network.depth}-{network.width} (norm={network.norm}): "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}."
        )
    return skipped


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
                    "Evaluating or training on the import needs the data (see README, Datasets).", dataset)
    return dict(dataset=dataset, image_shape=list(features["image"].shape),
                num_classes=features["label"].num_classes, class_names=list(features["label"].names),
                num_train=None, num_validation=None, num_test=None)


def import_checkpoint(checkpoint_path: str, dataset: str, workdir: str, data_dir=None) -> dict:
    """Imports a reference checkpoint into a new jem_tf workdir; returns its run_info.

    Everything is written to a staging directory first and renamed into place, so a failure leaves
    no half-written workdir. Raises ReferenceCheckpointError / torch_checkpoint errors / ValueError
    (bad dataset) / FileExistsError (workdir holds something).
    """
    from trainers import loop  # noqa: PLC0415 (entry point: the only module here allowed to cross)

    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise FileExistsError(f"--workdir={workdir!r} exists and is not empty; choose a new directory.")
    checkpoint = torch_checkpoint.load(checkpoint_path)
    state, buffer = split_checkpoint(checkpoint)
    architecture = infer_architecture(state)
    info = _dataset_info(dataset, data_dir)
    height, width_px, channels = info["image_shape"]
    problems = []
    if architecture["num_classes"] != info["num_classes"]:
        problems.append(f"{architecture['num_classes']} classes, but {dataset} has {info['num_classes']}")
    if architecture["input_channels"] != channels:
        problems.append(f"{architecture['input_channels']} input channels, but {dataset} images have {channels}")
    if (height, width_px) != (_REFERENCE_IMAGE_SIZE, _REFERENCE_IMAGE_SIZE):
        problems.append(f"the reference network pools an 8x8 map (32x32 inputs), but {dataset} images are {height}x{width_px}")
    if buffer is not None and (buffer.ndim != 4 or tuple(buffer.shape[1:]) != (channels, height, width_px)):
        problems.append(f"the replay buffer has shape {buffer.shape}, not [n, {channels}, {height}, {width_px}]")
    if problems:
        raise ReferenceCheckpointError(f"{checkpoint_path} does not fit --dataset={dataset}: " + "; ".join(problems) + ".")

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
    model = loop.build_model(config, info["image_shape"], info["num_classes"])
    skipped = check_keys(state, model)
    if skipped:
        logging.info("Skipping the reference heads JEM does not use: %s.", ", ".join(skipped))
    load_reference_state_dict(model, state)
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
        write_json_atomically(os.path.join(staging, loop.CONFIG_FILE), config.to_json())
        write_json_atomically(os.path.join(staging, loop.RUN_INFO_FILE), json.dumps(info, indent=2))
        # A training checkpoint at step 0, fresh Adam state included (the reference saves none), so
        # resumed training starts its schedule, warm-up included, from the imported weights.
        # (The schedule is not checkpointed: training rebuilds it from the config and the data size.)
        optimizer = loop.make_optimizer(config, steps_per_epoch=1)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
        manager = tf.train.CheckpointManager(loop._make_checkpoint(model, optimizer),
                                             os.path.join(staging, loop.CHECKPOINT_DIR),
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


def define_flags():
    flags.DEFINE_string("checkpoint", None, "A checkpoint of the reference JEM code (torch.save file, zip or legacy format).")
    flags.DEFINE_string("dataset", None, "What the model was trained on: cifar10, cifar100, svhn or folder:PATH; "
                        "sets the classes, image shape and the config's defaults.")
    flags.DEFINE_string("workdir", None, "New (or empty) directory to write the jem_tf workdir to.")
    flags.DEFINE_string("data_dir", None, "Prepared tfds data directory (as for jem_tf.train), recorded in the config.")


def main(argv):
    if len(argv) > 1:
        logging.error("Unexpected arguments %s; all options are --flags.", argv[1:])
        return EXIT_BAD_INPUT
    for name in ("checkpoint", "dataset", "workdir"):
        if not getattr(FLAGS, name):
            logging.error("--%s is required (python -m export.from_reference --help).", name)
            return EXIT_BAD_INPUT
    try:
        import_checkpoint(FLAGS.checkpoint, FLAGS.dataset, FLAGS.workdir, FLAGS.data_dir)
    except (torch_checkpoint.CheckpointFormatError, ReferenceCheckpointError, OSError, ValueError,
            jem_data.DatasetUnavailableError) as error:
        logging.error("Import refused: %s", error)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
