"""Exporting a training run: `export_run` and `python -m export.savedmodel`.

The first tests stand in a small JEM for the restored checkpoint, so they test the exporter
alone; the last one trains with `--preset=quick` for a few steps and exports the real checkpoint
through the command line, as a user would.
"""

import os

import keras
import numpy as np
import pytest
import serving_oracle
import tensorflow as tf
import warm_python
from conftest import run_command

from export import archive, client, savedmodel
from export import signatures as sig
from export.serving_check import builder, request_cases, runner
from jem_tf.configs.quick import get_config
from jem_tf.workdir import restore
from trainers.jem import JEM

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restored_run(monkeypatch, tmp_path):
    """`jem_tf.workdir.restore.restore_run` answering with a small JEM's network (random weights)."""
    config = get_config()
    config.depth, config.width = 10, 1
    keras.utils.set_random_seed(0)
    model = JEM(depth=10, width=1, num_classes=10, buffer_size=128, sgld_steps=1)
    model.build((None, 8, 8, 1))
    checkpoint = str(tmp_path / "run" / "checkpoints" / "ckpt-7")
    tf.train.Checkpoint(weights=list(model.trainable_variables)).write(checkpoint)
    run_info = {"image_shape": [8, 8, 1], "num_classes": 10, "class_names": [str(d) for d in range(10)],
                "dataset": "digits", "checkpoint": checkpoint, "global_step": 7}
    calls = []

    def restore_run(workdir, checkpoint=None, *, with_replay_buffer=True, precision=None):
        calls.append((workdir, checkpoint, with_replay_buffer))
        return model.to_wide_resnet(), config, dict(run_info)

    monkeypatch.setattr(restore, "restore_run", restore_run)
    return model, calls


def test_export_run_versions_by_global_step_and_bakes_in_the_ood_threshold(restored_run, tmp_path):
    model, calls = restored_run
    path = savedmodel.export_run(str(tmp_path / "run"), str(tmp_path / "export"), checkpoint=7, ood_max_images=100)
    assert path == str(tmp_path / "export" / "7")
    assert calls == [(str(tmp_path / "run"), 7, False)]  # the replay buffer is never loaded for export
    metadata = archive.read_metadata(path)
    assert metadata["run"]["global_step"] == 7
    assert metadata["class_names"] == [str(d) for d in range(10)]
    assert metadata["refine_defaults"] == {
        sig.STEPS: savedmodel.SUGGESTED_REFINE_STEPS, sig.STEP_SIZE: 1.0, sig.NOISE_STD: 0.01,
        "source": metadata["refine_defaults"]["source"]}
    ood = metadata["ood"]
    assert ood["split"] == "validation" and ood["dataset"] == "digits" and ood["num_images"] == 100
    assert ood["quantile"] == 0.05 and ood["kept_fraction"] >= 0.95
    assert ood["rule"] == "is_out_of_distribution = log_px < threshold"
    defs = client.signature_defs_from_export(path)
    assert sig.IS_OUT_OF_DISTRIBUTION in defs[sig.CLASSIFY].outputs
    # Only the network: WRN-10-1's weights, not the 128-chain replay buffer or the optimizer.
    exported = os.path.getsize(os.path.join(path, "variables", "variables.data-00000-of-00001"))
    assert exported < 1.05 * 4 * model.to_wide_resnet().count_params()


def test_export_run_refuses_an_existing_version_unless_overwrite(restored_run, tmp_path):
    output = str(tmp_path / "export")
    savedmodel.export_run(str(tmp_path / "run"), output, version=2, ood_max_images=50)
    with pytest.raises(FileExistsError, match="overwrite"):
        savedmodel.export_run(str(tmp_path / "run"), output, version=2, ood_max_images=50)
    savedmodel.export_run(str(tmp_path / "run"), output, version=2, overwrite=True, ood_max_images=50)
    assert sorted(os.listdir(output)) == ["2"]


def test_weights_missing_from_the_checkpoint_are_refused(restored_run, tmp_path):
    model, _ = restored_run
    network = model.to_wide_resnet()
    checkpoint = str(tmp_path / "run" / "checkpoints" / "ckpt-7")
    savedmodel.verify_weights_from_checkpoint(network, checkpoint)
    network.trainable_weights[3].assign(network.trainable_weights[3] + 1.0)
    with pytest.raises(savedmodel.CheckpointMismatchError, match="1 of 20 weights .* not in checkpoint"):
        savedmodel.verify_weights_from_checkpoint(network, checkpoint)


def test_next_version(tmp_path):
    assert savedmodel.next_version(str(tmp_path / "none")) == 1
    for name in ("3", "10", ".staging-11-1", "notes"):
        os.makedirs(tmp_path / name)
    assert savedmodel.next_version(str(tmp_path)) == 11


def _run(args, timeout=600):
    python_path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=python_path)
    return warm_python.run(["-m", *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout)


@pytest.mark.slow
def test_quick_training_run_exports_and_serves(tmp_path):
    workdir = str(tmp_path / "run")
    # Training exports its final checkpoint itself, through export_run, to WORKDIR/export/<step>, in
    # its own process; the exports below run the command in this one (a fresh interpreter would only
    # add TensorFlow's import), so training's export is still compared with another process's.
    trained = _run(["jem_tf.train", "--preset=quick", f"--workdir={workdir}", "--max_steps=2", "--depth=10",
                    "--width=1"])
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert os.listdir(os.path.join(workdir, "export")) == ["2"]
    # The command line refuses to replace that version...
    again = run_command("export.savedmodel", f"--workdir={workdir}")
    assert again.returncode == 2 and "already exists" in again.stderr, again.stderr[-2000:]
    # ...and exports anywhere else, versioned by the checkpoint's global step.
    output = str(tmp_path / "models" / "jem")
    exported = run_command("export.savedmodel", f"--workdir={workdir}", f"--output={output}")
    assert exported.returncode == 0, exported.stderr[-4000:]
    path = exported.stdout.strip().splitlines()[-1]
    assert path == os.path.join(output, "2")
    assert archive.read_metadata(path)["ood"]["threshold"] is not None
    # Deterministic across processes: training's export and this one hold the same thing.
    by_training = os.path.join(workdir, "export", "2")
    assert client.signature_defs_from_export(path) == client.signature_defs_from_export(by_training)
    assert archive.read_metadata(path) == archive.read_metadata(by_training)
    first, second = (tf.train.load_checkpoint(os.path.join(p, "variables", "variables")) for p in (path, by_training))
    keys = sorted(set(first.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"})
    assert keys == sorted(set(second.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"})
    for key in keys:
        np.testing.assert_array_equal(first.get_tensor(key), second.get_tensor(key), err_msg=key)
    # It serves the trained weights.
    network = restore.restore_run(workdir, with_replay_buffer=False)[0]
    images = request_cases.valid_inputs(sig.CLASSIFY, (8, 8, 1), batch_size=3)[sig.IMAGES]
    threshold = archive.read_metadata(path)["ood"]["threshold"]
    want = serving_oracle.expected_outputs(network, sig.CLASSIFY, {sig.IMAGES: images}, threshold)
    got = tf.saved_model.load(path).signatures[sig.CLASSIFY](images=tf.constant(images))
    for key, value in want.items():
        np.testing.assert_allclose(got[key].numpy(), value, rtol=1e-4, atol=1e-4, err_msg=key)
    if builder.find_compiler() is not None:
        result, _, _ = runner.check_export(path, str(tmp_path / "requests"), bad_inputs=False)
        assert result.returncode == 0, result.stdout[-4000:]
