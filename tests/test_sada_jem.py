"""The batch-norm JEM and SADA-JEM variants (issue #8, variants 5 and 6) as runs: a run stopped by a
signal and resumed ends bit-identical to the uninterrupted one (SAM's perturbed pass, the
un-augmented stream and the batch-norm moving averages all resume), and the command line trains,
exports and evaluates them."""

import glob
import json
import os
import signal

import conftest
import numpy as np
import pytest
from conftest import assert_same_checkpoint, run_command
from train_hooks import wrap_train_step

from jem_tf.workdir import checkpoints
from trainers import loop, preemption

FINAL_STEP = 6
# The documented flag sets (docs/jem_family.md, benchmarks/variants.py), as config fields.
VARIANTS = {
    "batch_norm_jem": dict(norm="batch"),
    "sada_jem": dict(norm="batch", sam_rho=2.0, sam_adaptive=True, generative_augmentation="none",
                     augmentation="crop_flip"),
}


def tiny_config(workdir, variant):
    """The suite's tiny run (conftest) as `variant`, 6 steps with a checkpoint every 3."""
    return conftest.tiny_config(workdir, summary_every_steps=3, max_steps=FINAL_STEP, checkpoint_every_steps=3,
                                **VARIANTS[variant])



def _sigterm_after(stop_step):
    """A step hook (train_hooks.wrap_train_step) that sends SIGTERM to this process after the loop's step
    `stop_step`, as a scheduler would."""

    def hook(step, logs, model):
        del model
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    return hook


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(variant, tmp_path, monkeypatch):
    reference = str(tmp_path / "reference")
    loop.train(tiny_config(reference, variant))
    workdir = str(tmp_path / "run")
    wrap_train_step(monkeypatch, _sigterm_after(4))
    with pytest.raises(preemption.TrainingPreemptedError):
        loop.train(tiny_config(workdir, variant))
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints"))[-1] == 4
    monkeypatch.undo()
    assert loop.train(tiny_config(workdir, variant))["steps_this_session"] == FINAL_STEP - 4
    want = assert_same_checkpoint(workdir, reference, FINAL_STEP)
    assert any("moving_mean" in key for key in want)


def _run(module, *args):
    """The command line's main in this process (a new interpreter would only add TensorFlow's import)."""
    result = run_command(module, *args)
    assert result.returncode == 0, f"{module} {args} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_sada_jem_trains_exports_and_evaluates_from_the_command_line(tmp_path):
    workdir = str(tmp_path / "sada")
    _run("jem_tf.train", "--preset=quick", "--max_steps=3", "--depth=10", "--width=1", "--batch_size=16",
         "--buffer_size=64", "--sgld_steps=2", "--norm=batch", "--sam_rho=2", "--sam_adaptive",
         "--generative_augmentation=none", f"--workdir={workdir}")
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["sam_rho"], config["sam_adaptive"], config["generative_augmentation"]) == (2.0, True, "none")
    assert glob.glob(os.path.join(workdir, "export", "*", "saved_model.pb"))  # the run exported itself
    output = str(tmp_path / "eval")
    _run("jem_tf.evaluate", f"--workdir={workdir}", "--eval=accuracy,ood", "--ood_sets=uniform",
         "--num_examples=10000", "--batch_size=100", "--eval_input_noise=0", f"--output={output}", "--noprogress")
    results = json.load(open(os.path.join(output, "results.json")))
    # The whole test split without input noise, in inference mode with the moving statistics from
    # the checkpoint: the trainer's own final test accuracy.
    trained = json.load(open(os.path.join(workdir, "metrics.json")))
    assert results["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)
    assert np.isfinite(results["ood/uniform/log_px/auroc"])
