"""Parity with the official PyTorch JEM network, and importing its checkpoints without PyTorch.

The oracle is tests/data/reference/: checkpoints written by the reference code itself and its
outputs on fixed inputs (made by tools/make_reference_fixtures.py in the torch environment).
"""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import hostile_pt
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_command

from export import reference_state_dict, torch_checkpoint
from jem_tf import energy
from jem_tf.models import WideResNet
from jem_tf.workdir import restore, run_files
from trainers import from_reference, loop

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-5
FIXTURES = [("wrn10x1_zip.pt", "wrn10x1"), ("wrn10x1_legacy.pt", "wrn10x1"),
            ("wrn10x1_batchnorm_zip.pt", "wrn10x1_batchnorm")]


def network_from_reference(filename):
    state, buffer = reference_state_dict.split_checkpoint(torch_checkpoint.load(os.path.join(DATA, filename)))
    architecture = reference_state_dict.infer_architecture(state)
    network = WideResNet(depth=architecture["depth"], width=architecture["width"],
                         num_classes=architecture["num_classes"], norm=architecture["norm"])
    network.build((None, 32, 32, architecture["input_channels"]))
    reference_state_dict.check_keys(state, network)
    reference_state_dict.load_reference_state_dict(network, state)
    return network, architecture, buffer


def outputs(network, images_nhwc):
    """logits, log p~(x) and d sum log p~(x) / dx (NCHW, as the reference's gradient)."""
    images = tf.constant(images_nhwc)
    logits = network(images, training=False)
    log_px, score = energy.log_density_and_score(
        energy.marginal_log_density(lambda x: network(x, training=False)), images)
    return logits.numpy(), log_px.numpy(), np.transpose(score.numpy(), (0, 3, 1, 2))


def assert_close_relative(actual, expected, name):
    scale = np.max(np.abs(expected))
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= RTOL, f"{name}: max |difference| / max |reference| = {error:.3g} > {RTOL}"


@pytest.mark.parametrize("filename,outputs_name", FIXTURES)
def test_imported_network_reproduces_the_reference_outputs(filename, outputs_name):
    network, architecture, _ = network_from_reference(filename)
    expected = np.load(os.path.join(DATA, f"{outputs_name}_outputs.npz"))
    logits, log_px, gradient = outputs(network, np.transpose(expected["inputs"], (0, 2, 3, 1)))
    assert (architecture["depth"], architecture["width"], architecture["num_classes"]) == (10, 1, 10)
    assert architecture["norm"] == ("batch" if "batchnorm" in filename else "none")
    assert_close_relative(logits, expected["logits"], "logits")
    assert_close_relative(log_px, expected["log_px"], "log p~(x)")
    assert_close_relative(gradient, expected["input_gradient"], "input gradient")


def test_both_file_formats_hold_the_same_arrays():
    zipped = torch_checkpoint.load(os.path.join(DATA, "wrn10x1_zip.pt"))
    legacy = torch_checkpoint.load(os.path.join(DATA, "wrn10x1_legacy.pt"))
    assert list(zipped["model_state_dict"]) == list(legacy["model_state_dict"])
    for key, value in zipped["model_state_dict"].items():
        np.testing.assert_array_equal(value, legacy["model_state_dict"][key])
    np.testing.assert_array_equal(zipped["replay_buffer"], legacy["replay_buffer"])
    assert zipped["replay_buffer"].shape == (6, 3, 32, 32) and zipped["replay_buffer"].dtype == np.float32


@pytest.mark.parametrize("layout", ["wrn10x1_none", "wrn10x2_none", "wrn16x2_batch"])
def test_export_writes_the_reference_state_dict_layout_and_round_trips_exactly(layout):
    with open(os.path.join(DATA, "state_dict_layouts.json")) as f:
        reference_layout = json.load(f)[layout]
    depth, width = (int(v) for v in layout.split("_")[0][len("wrn"):].split("x"))
    norm = layout.split("_")[1]
    network = WideResNet(depth=depth, width=width, num_classes=10, norm=norm)
    network.build((None, 32, 32, 3))
    if norm == "batch":  # non-trivial running statistics
        for layer in network._flatten_layers():
            if hasattr(layer, "moving_variance"):
                layer.moving_mean.assign(tf.random.normal(layer.moving_mean.shape))
                layer.moving_variance.assign(tf.random.uniform(layer.moving_variance.shape, 0.5, 2.0))
    state = reference_state_dict.to_reference_state_dict(network)
    assert list(state) == list(reference_layout)
    assert {k: list(np.shape(v)) for k, v in state.items()} == reference_layout

    copy = WideResNet(depth=depth, width=width, num_classes=10, norm=norm)
    copy.build((None, 32, 32, 3))
    reference_state_dict.check_keys(state, copy)
    reference_state_dict.load_reference_state_dict(copy, state)
    assert len(copy.weights) == len(network.weights)
    for mine, theirs in zip(network.weights, copy.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    images = tf.random.uniform((2, 32, 32, 3), -1, 1)
    np.testing.assert_array_equal(network(images).numpy(), copy(images).numpy())


class _Payload:
    """Pickles to a call of os.system, as a malicious checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious_checkpoints(tmp_path, marker):
    payload = pickle.dumps({"model_state_dict": _Payload(f"touch {marker}")}, protocol=2)
    zipped = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(zipped, "w") as archive:  # laid out like torch.save's zip format
        archive.writestr("evil_zip/data.pkl", payload)
        archive.writestr("evil_zip/byteorder", "little")
    legacy = tmp_path / "evil_legacy.pt"
    stream = io.BytesIO()
    for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER, torch_checkpoint.LEGACY_PROTOCOL_VERSION,
                   {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, stream, protocol=2)
    stream.write(payload)
    pickle.dump([], stream, protocol=2)
    legacy.write_bytes(stream.getvalue())
    return zipped, legacy


def test_a_checkpoint_naming_another_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload_ran"
    # The payload works when unpickled normally: the test would notice a refusal that came too late.
    pickle.loads(pickle.dumps(_Payload(f"touch {tmp_path / 'control'}"), protocol=2))
    assert (tmp_path / "control").exists()
    for path in _malicious_checkpoints(tmp_path, marker):
        with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match=r"(posix|os)\.system"):
            torch_checkpoint.load(str(path))
        assert not marker.exists()


@pytest.mark.slow
def test_the_cli_refuses_a_malicious_checkpoint_with_exit_2_and_writes_nothing(tmp_path):
    marker = tmp_path / "payload_ran"
    zipped, _ = _malicious_checkpoints(tmp_path, marker)
    workdir = tmp_path / "imported"
    result = run_cli(f"--checkpoint={zipped}", "--dataset=cifar10", f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "system" in result.stderr and "refused" in result.stderr
    assert not marker.exists() and not workdir.exists()


def test_a_damaged_or_foreign_file_is_refused_clearly(tmp_path):
    foreign = tmp_path / "notes.pt"
    foreign.write_text("not a checkpoint")
    with pytest.raises(torch_checkpoint.CheckpointFormatError, match="neither a zip nor a legacy"):
        torch_checkpoint.load(str(foreign))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(os.path.join(DATA, "wrn10x1_legacy.pt"), "rb").read()[:-1000])
    with pytest.raises(torch_checkpoint.CheckpointFormatError, match="bytes"):
        torch_checkpoint.load(str(truncated))


def test_a_checkpoint_that_does_not_fit_the_dataset_is_refused_naming_the_mismatch(tmp_path):
    workdir = tmp_path / "imported"
    with pytest.raises(reference_state_dict.ReferenceCheckpointError, match="10 classes, but cifar100 has 100"):
        from_reference.import_checkpoint(os.path.join(DATA, "wrn10x1_zip.pt"), "cifar100", str(workdir))
    assert not workdir.exists()
    state, _ = reference_state_dict.split_checkpoint(torch_checkpoint.load(os.path.join(DATA, "wrn10x1_zip.pt")))
    del state["f.layer2.0.conv2.bias"]
    network = WideResNet(depth=10, width=1, num_classes=10)
    network.build((None, 32, 32, 3))
    with pytest.raises(reference_state_dict.ReferenceCheckpointError, match="missing.*f.layer2.0.conv2.bias"):
        reference_state_dict.check_keys(state, network)
    state["f.bn1.weight"] = np.ones(64, np.float32)
    with pytest.raises(reference_state_dict.ReferenceCheckpointError, match="does not implement"):
        reference_state_dict.infer_architecture(state)


def run_cli(*args):
    """The importer's command line, its main in this process (conftest.run_command)."""
    return run_command("trainers.from_reference", *args)


@pytest.mark.slow
def test_the_cli_writes_a_workdir_that_restores_with_network_and_buffer(tmp_path):
    workdir = tmp_path / "imported"
    result = run_cli(f"--checkpoint={os.path.join(DATA, 'wrn10x1_legacy.pt')}", "--dataset=cifar10",
                     f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "energy_output.weight" in result.stderr  # the skipped heads are named in the log
    model, config, run_info = restore.restore_run(str(workdir))
    assert (config.depth, config.width, config.norm, config.buffer_size) == (10, 1, "none", 6)
    assert run_info["num_classes"] == 10 and run_info["global_step"] == 0
    expected = np.load(os.path.join(DATA, "wrn10x1_outputs.npz"))
    logits, _, _ = outputs(model, np.transpose(expected["inputs"], (0, 2, 3, 1)))
    assert_close_relative(logits, expected["logits"], "logits")
    buffer = torch_checkpoint.load(os.path.join(DATA, "wrn10x1_legacy.pt"))["replay_buffer"]
    np.testing.assert_array_equal(model.replay_buffer.images.numpy(), np.transpose(buffer, (0, 2, 3, 1)))
    # A second import into the same workdir is refused rather than mixing two models.
    again = run_cli(f"--checkpoint={os.path.join(DATA, 'wrn10x1_zip.pt')}", "--dataset=cifar10", f"--workdir={workdir}")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_training_resumes_from_an_imported_workdir(tmp_path):
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy)

    from jem_tf.configs.base import TrainConfig  # noqa: PLC0415

    workdir = tmp_path / "imported"
    from_reference.import_checkpoint(os.path.join(DATA, "wrn10x1_zip.pt"), "cifar10", str(workdir))
    config = TrainConfig.load(str(workdir / run_files.CONFIG_FILE))
    config.max_steps, config.sgld_steps, config.export = 1, 2, False
    with tfds.testing.mock_data(num_examples=24):
        metrics = loop.train(config)
    assert metrics["global_step"] == 1
    model, _, _ = restore.restore_run(str(workdir))
    # The reference's warm-up gives the first step a learning rate of 0, so the network trained for
    # one step from the import is still exactly the reference's.
    expected = np.load(os.path.join(DATA, "wrn10x1_outputs.npz"))
    logits, _, _ = outputs(model, np.transpose(expected["inputs"], (0, 2, 3, 1)))
    assert_close_relative(logits, expected["logits"], "logits after one resumed step")


def test_a_corrupted_zip_checkpoint_is_refused_as_damaged(tmp_path):
    original = open(os.path.join(DATA, "wrn10x1_zip.pt"), "rb").read()
    damaged = tmp_path / "damaged.pt"
    # Keep the zip directory (so it is still recognised as a zip) but overwrite the pickle's bytes.
    start = original.index(b"data.pkl") + len(b"data.pkl")
    damaged.write_bytes(original[:start + 64] + b"\x00" * 512 + original[start + 576:])
    with pytest.raises(torch_checkpoint.CheckpointFormatError):
        torch_checkpoint.load(str(damaged))


# -- issue #15, item 8: tiny hostile files must not exhaust the importer -----------------------------

# Under this address-space limit a 4 TiB (or 16 GiB memo) allocation fails at once; the real
# fixtures import within it.
_MEMORY_LIMIT = 1 << 30
_TIME_LIMIT_S = 30
_LOAD_UNDER_LIMITS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from export import torch_checkpoint
try:
    torch_checkpoint.load(sys.argv[1])
    print("LOADED")
except torch_checkpoint.CheckpointFormatError as error:
    print("REFUSED", error)
"""


def _load_in_bounded_process(path):
    """torch_checkpoint.load(path) in a child with 1 GiB of address space and 30 s: (stdout, stderr)."""
    script = _LOAD_UNDER_LIMITS.format(limit=_MEMORY_LIMIT)
    result = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True, text=True, timeout=_TIME_LIMIT_S)
    return result.stdout, result.stderr


@pytest.mark.parametrize("name", sorted(hostile_pt.HOSTILE))
def test_a_tiny_hostile_checkpoint_is_refused_within_bounded_memory_and_time(tmp_path, name):
    path = hostile_pt.HOSTILE[name](str(tmp_path / "hostile.pt"))
    assert os.path.getsize(path) < 300_000
    stdout, stderr = _load_in_bounded_process(path)  # subprocess.TimeoutExpired fails the test
    assert "Traceback" not in stderr, stderr[-2000:]
    if name == "40 shared nested tuples":
        # Shared references are read once, not 2^40 times; the state dict check refuses it later.
        assert stdout.startswith("LOADED"), stdout
    else:
        assert stdout.startswith("REFUSED"), stdout
        assert re.search(r"budget|more than|nests containers|memo slot|bytes", stdout), stdout


def test_the_real_checkpoints_still_load_within_the_same_limits():
    for filename, _ in FIXTURES:
        stdout, stderr = _load_in_bounded_process(os.path.join(DATA, filename))
        assert stdout.startswith("LOADED"), stdout + stderr[-2000:]


@pytest.mark.slow
def test_the_cli_refuses_a_stride_zero_checkpoint_with_exit_2_and_no_traceback(tmp_path):
    path = hostile_pt.stride_zero(str(tmp_path / "stride0.pt"))
    workdir = tmp_path / "imported"
    result = run_cli(f"--checkpoint={path}", "--dataset=cifar10", f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Import refused" in result.stderr and "stride (0, 0)" in result.stderr
    assert "Traceback" not in result.stderr and not workdir.exists()
