"""Semi-supervised training end to end (`--labels_per_class`): JEM and the classifier train on it,
record their labelled subset, resume bit-identically mid-epoch, export and evaluate; the JEM
objective's log p(x) data term is on the every-image batch and the classifier ignores it."""

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import warm_python
from conftest import assert_same_checkpoint, checkpoint_tensors, run_command

from jem_tf import data, energy
from jem_tf.configs import get_preset
from jem_tf.workdir import run_files
from trainers import distribution, loop, registry

REPO = Path(__file__).resolve().parents[1]
FINAL_STEP = 12
LABELS_PER_CLASS = 2


def semi_supervised_config(workdir, objective, **overrides):
    """WRN-10-1 on digits with 90 % held out: 144 training images (at least 8 a class), 9 steps an
    epoch of batch 16, 20 labelled images (one labelled batch a pass); checkpoints 0, 5, 10, 12."""
    config = dataclasses.replace(
        get_preset("quick"), workdir=str(workdir), objective=objective, depth=10, width=1, buffer_size=100,
        sgld_steps=2, batch_size=16, export=False, summary_every_steps=5, sample_every_steps=100,
        max_steps=FINAL_STEP, checkpoint_every_steps=5, validation_fraction=0.9, labels_per_class=LABELS_PER_CLASS,
    )
    return dataclasses.replace(config, **overrides)



@pytest.fixture(scope="module", params=["jem", "classifier"])
def uninterrupted(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"semisup_{request.param}")
    metrics = loop.train(semi_supervised_config(workdir, request.param))
    assert metrics["global_step"] == FINAL_STEP and metrics["objective"] == request.param
    return request.param, str(workdir)


def test_run_info_records_the_labelled_subset(uninterrupted):
    objective, workdir = uninterrupted
    recorded = run_files.load_run_info(workdir)["labelled_subset"]
    config = semi_supervised_config(workdir, objective)
    digits = data.load("digits", validation_fraction=config.validation_fraction)
    assert recorded == data.training_data_record(digits, config)["labelled_subset"]
    labels = np.array([label for _, label in digits.train.as_numpy_iterator()])
    np.testing.assert_array_equal(np.bincount(labels[recorded["indices"]], minlength=10), [LABELS_PER_CLASS] * 10)


def test_a_run_that_died_mid_epoch_resumes_bit_identically(uninterrupted, tmp_path):
    """The workdir of a run killed after its step-5 checkpoint (step 5 of a 9-step epoch, in the
    labelled stream's sixth pass): a re-run resumes there and ends where the uninterrupted run ended."""
    objective, reference = uninterrupted
    workdir = str(tmp_path / "died")
    shutil.copytree(reference, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    for name in os.listdir(checkpoints):
        if name.startswith(("ckpt-10.", f"ckpt-{FINAL_STEP}.")):
            os.remove(os.path.join(checkpoints, name))
    os.remove(os.path.join(workdir, "metrics.json"))
    metrics = loop.train(semi_supervised_config(workdir, objective))
    assert metrics["steps_this_session"] == FINAL_STEP - 5
    assert_same_checkpoint(workdir, reference, FINAL_STEP)


def test_training_on_the_labelled_subset_is_not_training_on_every_label(uninterrupted, tmp_path):
    """The same run without --labels_per_class ends elsewhere after 5 steps: the flag is live."""
    objective, reference = uninterrupted
    fully_labelled = str(tmp_path / "fully_labelled")
    loop.train(semi_supervised_config(fully_labelled, objective, labels_per_class=None, max_steps=5))
    got, want = checkpoint_tensors(fully_labelled, 5), checkpoint_tensors(reference, 5)
    assert any(not np.array_equal(got[key], want[key]) for key in want if key.startswith("model/"))


def _tiny_model(objective):
    config = semi_supervised_config("unused", objective, sgld_steps=1)
    model = registry.build_model(config, (8, 8, 1), 10)
    model.compile(optimizer="adam")
    return model


def _batch(seed):
    generator = np.random.default_rng(seed)
    images = tf.constant(generator.uniform(-1, 1, size=(4, 8, 8, 1)), tf.float32)
    return images, tf.constant(generator.integers(0, 10, size=4), tf.int32)


def test_jem_takes_log_px_of_the_data_on_the_third_element():
    model = _tiny_model("jem")
    labelled, labels = _batch(0)
    every_image, _ = _batch(1)
    want = float(tf.reduce_mean(energy.log_marginal(model(every_image, training=False))))
    not_this = float(tf.reduce_mean(energy.log_marginal(model(labelled, training=False))))
    logs = model.train_step((labelled, labels, every_image))
    assert abs(want - not_this) > 1e-4
    np.testing.assert_allclose(float(logs["log_px_data"]), want, rtol=1e-5)


def test_the_classifier_trains_on_the_labelled_batch_only():
    labelled, labels = _batch(0)
    every_image, _ = _batch(1)
    weights = []
    for batch in ((labelled, labels), (labelled, labels, every_image)):
        tf.keras.utils.set_random_seed(0)
        model = _tiny_model("classifier")
        model.train_step(batch)
        weights.append(model.get_weights())
    for with_third, without in zip(weights[1], weights[0]):
        np.testing.assert_array_equal(with_third, without)


@pytest.mark.slow
def test_a_semi_supervised_run_exports_and_evaluates(uninterrupted, tmp_path):
    objective, workdir = uninterrupted
    export = run_command("export.savedmodel", f"--workdir={workdir}", f"--output={tmp_path / 'export'}")
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "export" / str(FINAL_STEP) / "saved_model.pb").exists()
    evaluations = "accuracy,calibration,ood" if objective == "jem" else "accuracy,calibration"
    evaluate = run_command("jem_tf.evaluate", f"--workdir={workdir}", f"--eval={evaluations}", "--num_examples=64",
                          "--ood_sets=uniform", f"--output={tmp_path / 'eval'}", "--progress=false")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    wanted = ["accuracy", "calibration/ece"] + (["ood/uniform/log_px/auroc"] if objective == "jem" else [])
    for key in wanted:
        assert isinstance(results.get(key), float) and np.isfinite(results[key]), (key, results.get(key))
    # The report says which labels the run learned from.
    sha = run_files.load_run_info(workdir)["labelled_subset"]["indices_sha256"]
    assert results["meta/training_labels"].startswith(f"{LABELS_PER_CLASS} per class, {10 * LABELS_PER_CLASS} images")
    assert sha[:16] in results["meta/training_labels"]
    assert results["meta/training_labels"] in (tmp_path / "eval" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# the command line

CLI_FLAGS = ["--preset=quick", "--depth=10", "--width=1", "--buffer_size=100", "--sgld_steps=2", "--batch_size=16",
             "--export=false", "--validation_fraction=0.9", f"--labels_per_class={LABELS_PER_CLASS}",
             f"--max_steps={FINAL_STEP}", "--checkpoint_every_steps=3", "--summary_every_steps=5"]


@pytest.mark.slow
def test_the_cli_trains_with_the_flag_and_a_sigkilled_run_resumes_bit_identically(tmp_path):
    reference = str(tmp_path / "uninterrupted")
    result = run_command("jem_tf.train", *CLI_FLAGS, f"--workdir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(Path(reference, "metrics.json").read_text())["global_step"] == FINAL_STEP
    assert run_files.load_run_info(reference)["labelled_subset"]["num_labelled"] == 10 * LABELS_PER_CLASS

    # Only the run that is killed needs a process of its own; the others run the command in this one.
    workdir = str(tmp_path / "killed")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    process = warm_python.start(["-m", "jem_tf.train", *CLI_FLAGS, f"--workdir={workdir}"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 240
    # Killed once a checkpoint after step 0 is registered: step 3 or 6 of a 9-step epoch.
    while time.time() < deadline and process.poll() is None and (
            tf.train.latest_checkpoint(checkpoints) or "ckpt-0").endswith("ckpt-0"):
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not Path(workdir, "metrics.json").exists(), "killed too late: the run had already finished"
    result = run_command("jem_tf.train", *CLI_FLAGS, f"--workdir={workdir}")
    assert result.returncode == 0 and "Resumed from" in result.stderr, result.stderr[-3000:]
    assert json.loads(Path(workdir, "metrics.json").read_text())["steps_this_session"] < FINAL_STEP
    assert_same_checkpoint(workdir, reference, FINAL_STEP)


@pytest.mark.parametrize("value,message", [
    ("0", "--labels_per_class=0 is invalid"),
    ("9", "--labels_per_class=9 is more than the 8 training images of class"),  # digits' smallest class here
    ("1", "--labels_per_class=1 gives 10 labelled images, fewer than one --batch_size=16 batch"),
])
def test_a_bad_labels_per_class_exits_2_naming_it_and_writes_nothing(tmp_path, value, message):
    workdir = tmp_path / "run"
    flags = [flag for flag in CLI_FLAGS if not flag.startswith("--labels_per_class")]
    result = run_command("jem_tf.train", *flags, f"--labels_per_class={value}", f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr
    assert not workdir.exists() or not any(workdir.iterdir())


def _two_replica_steps(strategy, initial_weights, batches, steps=3):
    config = semi_supervised_config("unused", "jem", buffer_size=64, seed=3, sgld_step_size=0.1)
    with strategy.scope():
        model = registry.build_model(config, (8, 8, 1), 10)
        # SGD (not Adam, whose first steps turn rounding-level differences into full-size ones).
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05))
        model.optimizer.build(model.trainable_variables)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    train_step = distribution.distributed_train_step(model, strategy)
    batches = distribution.distribute_dataset(strategy, batches.take(steps))
    losses = [float(train_step(batch)["loss"]) for batch in batches]
    return model, losses


def test_semi_supervised_jem_on_two_replicas_matches_one_device():
    """The three-part batch splits over replicas like the two-part one: each replica gets its rows
    of the labelled and of the every-image batch, and the replica-scaled loss is the one-device loss."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py must create two logical CPUs before TensorFlow starts"
    digits = data.load("digits", validation_fraction=0.9)
    config = semi_supervised_config("unused", "jem", batch_size=8, augmentation="none", data_noise=0.0)
    batches = data.make_training_batches(digits, config, epoch=0, skip_batches=0)
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    initial = _two_replica_steps(one_device, None, batches, steps=0)[0].get_weights()
    one, one_losses = _two_replica_steps(one_device, initial, batches)
    two, two_losses = _two_replica_steps(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), initial,
                                         batches)
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-4)
    assert max(np.abs(a - b).max() for a, b in zip(one.get_weights(), initial)) > 1e-3
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_jempp_fits_its_class_gaussians_on_the_labelled_subset_only(tmp_path):
    """JEM++'s informative initialisation reads labels: a semi-supervised run must fit it on the N
    labelled images per class, never on the labels it is meant not to have."""
    workdir = str(tmp_path / "jempp")
    loop.train(semi_supervised_config(workdir, "jempp", chain_init="informative", max_steps=1))
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints", "ckpt-1"))
    (counts_key,) = [key for key in reader.get_variable_to_shape_map() if "class_gaussians/counts" in key]
    np.testing.assert_array_equal(reader.get_tensor(counts_key), [LABELS_PER_CLASS] * 10)
