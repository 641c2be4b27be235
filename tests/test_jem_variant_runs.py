"""The jem variants as whole runs (issue #8 variants 1, 3, 7): each trains through `loop.train`,
survives SIGKILL to the same final state as an uninterrupted run, exports, and evaluates through
the `jem_tf.evaluate` command line (its main, in process). Tiny runs: WRN-10-1 on digits, 8 steps,
a checkpoint every 2."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import tensorflow as tf
import warm_python
from conftest import assert_same_checkpoint, checkpoint_tensors, run_command

from jem_tf.configs.base import TrainConfig
from trainers import loop

REPO = Path(__file__).resolve().parents[1]
FINAL_STEP = 8

VARIANTS = {
    # 3 + 7: short-run chains (no buffer) with both stabilisers.
    "short_run_stabilised": dict(buffer_size=0, sgld_steps=3, energy_l2=0.1, sgld_clamp=True),
    # 1: class-conditional p(x) samples beside a down-weighted cross-entropy and the log p(x, y) term.
    "class_conditional": dict(class_cond_p_x_sample=True, p_xy_weight=1.0, p_y_given_x_weight=0.5),
    # 1: the p(x|y) ablation, log p(x, y) only.
    "log_p_x_y_only": dict(p_y_given_x_weight=0.0, p_x_weight=0.0, p_xy_weight=1.0),
}


def tiny_config(workdir, variant, **overrides):
    """The suite's tiny run (conftest) as `variant`, 8 steps with a checkpoint every 2 and samples every 4."""
    return conftest.tiny_config(workdir, summary_every_steps=2, sample_every_steps=4, max_steps=FINAL_STEP,
                                checkpoint_every_steps=2, **{**VARIANTS[variant], **overrides}).validate()



@pytest.fixture(scope="module", params=sorted(VARIANTS))
def uninterrupted(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(request.param)
    metrics = loop.train(tiny_config(workdir, request.param))
    assert metrics["global_step"] == FINAL_STEP
    return request.param, str(workdir)


def test_a_run_trains_and_keeps_a_buffer_only_when_it_has_one(uninterrupted):
    variant, workdir = uninterrupted
    keys = checkpoint_tensors(workdir, FINAL_STEP)
    has_buffer = any(key.startswith("replay_buffer/") for key in keys)
    assert has_buffer == (tiny_config(workdir, variant).buffer_size > 0), sorted(keys)
    assert all(np.all(np.isfinite(value)) for value in keys.values() if value.dtype.kind == "f")
    # The sample grid: persistent chains, or fresh short-run chains when there is no buffer.
    assert sorted(os.listdir(os.path.join(workdir, "samples")))[-1] == f"step_{FINAL_STEP:07d}.png"


def _start_training(config: TrainConfig):
    code = ("import json, sys; from jem_tf.configs.base import TrainConfig; from trainers import loop; "
            "loop.train(TrainConfig.from_dict(json.loads(sys.argv[1])))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return warm_python.start(["-c", code, config.to_json()], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_final_state(uninterrupted, tmp_path):
    variant, reference = uninterrupted
    workdir = str(tmp_path / "killed")
    config = tiny_config(workdir, variant)
    process = _start_training(config)
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and (
            tf.train.latest_checkpoint(checkpoints) or "ckpt-0").endswith("ckpt-0"):
        time.sleep(0.05)
    assert process.poll() is None, f"training ended before it could be killed: {process.stderr.read()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(workdir, "metrics.json")), "killed too late: the run had finished"
    metrics = loop.train(config)
    assert metrics["global_step"] == FINAL_STEP and metrics["steps_this_session"] < FINAL_STEP
    assert_same_checkpoint(workdir, reference, FINAL_STEP)


def test_the_run_exports_and_the_export_classifies(uninterrupted, tmp_path):
    from export import savedmodel  # noqa: PLC0415

    _, workdir = uninterrupted
    path = savedmodel.export_run(workdir, output=str(tmp_path / "export"))
    served = tf.saved_model.load(path)
    images = tf.random.stateless_uniform((3, 8, 8, 1), seed=[1, 2], minval=-1, maxval=1)
    outputs = served.signatures["classify"](images=images)
    assert outputs["probabilities"].shape == (3, 10)
    np.testing.assert_allclose(tf.reduce_sum(outputs["probabilities"], -1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_the_run_evaluates_with_the_command_line(uninterrupted, tmp_path):
    variant, workdir = uninterrupted
    output = tmp_path / "eval"
    result = run_command(
        "jem_tf.evaluate", f"--workdir={workdir}", "--eval=accuracy,calibration,ood,samples",
        f"--output={output}", "--num_examples=24", "--batch_size=12", "--ood_sets=uniform,constant,interp",
        "--sample_steps=2", "--num_samples=4", "--samples_per_class=1", "--max_grid_classes=2", "--noprogress")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    assert not [key for key in results if key.startswith("errors/")], results
    assert results["meta/global_step"] == FINAL_STEP
    assert "ood/uniform/log_px/auroc" in results and "samples/fresh_conditional/class_agreement" in results
    # The buffer's samples exactly when the run kept one (read from the checkpoint, not the objective).
    buffered = tiny_config(workdir, variant).buffer_size > 0
    assert isinstance(results.get("samples/buffer/mean_log_px"), float) == buffered, results.get("samples/buffer")
    if not buffered:
        assert results["samples/buffer"].startswith("unavailable: ")
