"""The official PyTorch JEM network's state dict (github.com/wgrathwohl/JEM, `CCF` over its
`Wide_ResNet`) mapped onto jem_tf's WideResNet, in both directions, as numpy arrays:

  to_reference_state_dict(network)        our weights as the reference's `model_state_dict`
  load_reference_state_dict(network, sd)  the reference's weights into our network
  split_checkpoint / infer_architecture / check_keys
                                          read what `export.torch_checkpoint.load` returned

No PyTorch and nothing about training: `trainers.from_reference` (`python -m trainers.from_reference`)
uses this to turn a reference checkpoint into a training workdir, and
tools/check_reference_export.py to feed our weights to the reference code.
"""

import collections

import numpy as np

# Heads of the reference's F/CCF that JEM's classifier-as-energy never reads.
UNUSED_HEADS = ("energy_output.", "f.linear.")
# The reference's stem width and its average pool over the last 8x8 map (32x32 inputs).
_STEM_CHANNELS = 16
REFERENCE_IMAGE_SIZE = 32


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
            "expected the reference's {'model_state_dict', 'replay_buffer'} checkpoint or a state dict; "
            f"found {keys}."
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
        raise ReferenceCheckpointError(
            f"the three stages have {blocks} blocks; a Wide_ResNet has the same number in each.")
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
