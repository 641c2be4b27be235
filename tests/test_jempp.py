"""JEM++ (`--objective=jempp`): its settings, its sampler inside the model, the class Gaussians in
the checkpoint and the refusal of changed data, the real command with a SIGKILL and resume, and the
export and evaluation of its run."""

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import conftest
import keras
import numpy as np
import pytest
import tensorflow as tf
import warm_python
from absl import flags
from conftest import assert_same_checkpoint, checkpoint_tensors, run_command

from jem_tf import data as jem_data
from jem_tf import train as train_cli
from jem_tf.configs import TrainConfig, get_preset, objective_defaults
from jem_tf.configs.objectives import JEMPPConfig
from jem_tf.sampling import informative_init
from trainers import distribution, loop, objectives
from trainers.jem import JEM
from trainers.jempp import JEMPP

REPO = Path(__file__).resolve().parents[1]
# WRN-10-1 on digits, 16 chains per step from a 100-chain buffer: seconds per step on a CPU.
TINY = ["--preset=quick", "--objective=jempp", "--depth=10", "--width=1", "--buffer_size=100", "--batch_size=16",
        "--summary_every_steps=2", "--sample_every_steps=4", "--validation_fraction=0", "--max_steps=9",
        "--checkpoint_every_steps=3"]


# -- settings ---------------------------------------------------------------------------------


# JEM++'s published CIFAR-10 sampler (JEMPPConfig's defaults where they differ from JEM's).
JEMPP_SAMPLER = dict(sgld_steps=10, sgld_step_size=0.2, sgld_noise=0.0, chain_init="informative")


def test_choosing_jempp_brings_its_published_sampler_settings_and_explicit_flags_win():
    assert objective_defaults("jem", "jempp") == dict(JEMPP_SAMPLER, proximal_max_grad=1.0, proximal_inner_steps=5,
                                                      chain_init_jitter=1e-4)
    assert {name: getattr(JEMPPConfig(), name) for name in JEMPP_SAMPLER} == JEMPP_SAMPLER
    assert objective_defaults("jempp", "jempp") == {}, "a preset of the objective keeps its own settings"
    assert objective_defaults("jempp", "jem") == dict(sgld_steps=20, sgld_step_size=1.0, sgld_noise=0.01)
    flag_values = flags.FlagValues()
    train_cli.define_flags(flag_values)
    flag_values(["prog", "--preset=quick", "--objective=jempp"])
    config = train_cli.config_from_flags(flag_values)
    assert (config.sgld_steps, config.sgld_step_size, config.sgld_noise, config.chain_init) == (10, 0.2, 0.0,
                                                                                               "informative")
    assert (config.proximal_max_grad, config.proximal_inner_steps) == (1.0, 5)
    assert config.depth == get_preset("quick").depth  # the preset's other fields stay
    flag_values = flags.FlagValues()
    train_cli.define_flags(flag_values)
    flag_values(["prog", "--preset=quick", "--objective=jempp", "--sgld_steps=7"])
    assert train_cli.config_from_flags(flag_values).sgld_steps == 7
    flag_values = flags.FlagValues()
    train_cli.define_flags(flag_values)
    flag_values(["prog", "--preset=quick"])
    assert train_cli.config_from_flags(flag_values).sgld_steps == 20, "JEM keeps the paper's 20 steps"


@pytest.mark.parametrize("argv, message", [
    (["--chain_init=informative"], "--chain_init is read by --objective=jempp only, not by --objective=jem"),
    (["--proximal_max_grad=1"], "--proximal_max_grad is read by --objective=jempp only, not by --objective=jem"),
    (["--objective=classifier", "--sgld_noise=0"],
     "--sgld_noise is read by --objective=jem and jempp only, not by --objective=classifier"),
])
def test_a_jempp_flag_given_to_another_objective_is_refused_naming_jempp(argv, message):
    flag_values = flags.FlagValues()
    train_cli.define_flags(flag_values)
    flag_values(["prog", "--preset=quick", *argv])
    with pytest.raises(ValueError, match=message):
        train_cli.config_from_flags(flag_values)


@pytest.mark.parametrize("fields, message", [
    (dict(objective="jempp", proximal_max_grad=0.0), "--proximal_max_grad=0.0 is invalid: expected a positive"),
    (dict(objective="jempp", proximal_inner_steps=0), "--proximal_inner_steps=0 is invalid"),
    (dict(objective="jempp", chain_init="gaussian"), "--chain_init='gaussian' is invalid: expected one of"),
    (dict(objective="jempp", chain_init_jitter=-1e-4), "--chain_init_jitter=-0.0001 is invalid"),
])
def test_bad_jempp_settings_are_refused_naming_the_flag(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields).validate()


def test_jempp_is_registered_and_reads_its_fields():
    config = dataclasses.replace(get_preset("quick"), objective="jempp", depth=10, width=1, buffer_size=20,
                                 proximal_max_grad=0.5, proximal_inner_steps=3, chain_init="uniform",
                                 **{k: v for k, v in JEMPP_SAMPLER.items() if k != "chain_init"})
    assert objectives.get("jempp") is JEMPP
    model = objectives.build_model(config, (8, 8, 1), 10)
    assert (model.proximal_bounds.max_grad, model.proximal_bounds.inner_steps) == (0.5, 3)
    assert (model.sgld_steps, model.sgld_step_size, model.sgld_noise) == (10, 0.2, 0.0)
    # Uniform chains: no Gaussians to keep, the checkpoint holds what JEM's holds.
    assert model.class_gaussians is None and sorted(model.checkpoint_items()) == ["replay_buffer"]


# -- the sampler inside the model ---------------------------------------------------------------


def test_the_models_chains_move_by_the_bounded_proximal_update():
    """With a huge step, JEM's SGLD leaves [-1, 1]; JEM++'s chains stay in it and move at most
    steps x inner steps x step x bound per pixel."""
    network = dict(depth=10, width=1, num_classes=10, seed=0)
    sampler = dict(sgld_steps=2, sgld_step_size=50.0, sgld_noise=0.0, buffer_size=32, reinit_freq=0.0)
    jem = JEM(**network, **sampler)
    jempp = JEMPP(**network, **sampler, proximal_max_grad=1e-3, proximal_inner_steps=2, chain_init="uniform")
    for model in (jem, jempp):
        model.build((None, 8, 8, 1))
    jempp.set_weights(jem.get_weights())
    seed = tf.constant([1, 2], tf.int64)
    jem_samples, _ = jem.sample_chains(16, seed)
    assert np.abs(jem_samples.numpy()).max() > 1.0
    samples, slots = jempp.sample_chains(16, seed)
    start = tf.gather(jempp.replay_buffer.images, slots).numpy()
    moved = np.abs(samples.numpy() - start)
    assert np.abs(samples.numpy()).max() <= 1.0
    assert moved.max() <= 2 * 2 * 50.0 * 1e-3 + 1e-5
    assert moved.max() > 0.1, "the chains did move"


# -- training: the Gaussians in the checkpoint, changed data refused ----------------------------


def tiny_config(workdir, **overrides):
    """The suite's tiny run (conftest) with JEM++ and its sampler, 4 steps with a checkpoint every 2."""
    return conftest.tiny_config(workdir, **{**dict(objective="jempp", max_steps=4, checkpoint_every_steps=2,
                                                   **JEMPP_SAMPLER), **overrides})



def gaussians_in(tensors):
    return {key.split("/")[1]: value for key, value in tensors.items() if key.startswith("class_gaussians/")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("jempp")
    metrics = loop.train(tiny_config(workdir))
    assert metrics["global_step"] == 4 and metrics["objective"] == "jempp"
    return str(workdir)


def test_the_checkpoint_holds_the_gaussians_fitted_on_the_training_split_and_chains_drawn_from_them(trained):
    data = jem_data.load("digits", validation_fraction=0.0)
    fit = informative_init.fit_dataset(data.train, data.num_classes)
    for step in (0, 4):
        stored = gaussians_in(checkpoint_tensors(trained, step))
        np.testing.assert_array_equal(stored["means"], fit.means)
        np.testing.assert_array_equal(stored["scale_trils"], fit.scale_trils)
        assert stored["counts"].tolist() == fit.counts.tolist() and stored["jitter"] == fit.jitter
    # The step-0 chains are the Gaussians' draws for slot classes 0, 1, ..., 9, 0, ... (not U(-1, 1)).
    gaussians = informative_init.ClassGaussians(data.num_classes, data.image_shape)
    gaussians.assign(fit)
    buffer = checkpoint_tensors(trained, 0)["replay_buffer/images/.ATTRIBUTES/VARIABLE_VALUE"]
    expected = gaussians.sample(np.arange(100) % 10, tf.constant([0, 0x1DEA], tf.int64))
    np.testing.assert_array_equal(buffer, expected)


def test_a_resume_on_changed_data_is_refused_and_on_the_same_data_continues(trained, tmp_path):
    import shutil  # noqa: PLC0415

    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    run_files = {name: open(os.path.join(workdir, name)).read() for name in ("config.json", "run_info.json")}
    # --validation_fraction may change on resume, but it changes the training split the Gaussians fit.
    with pytest.raises(informative_init.DataChangedError, match="images per class .*training data changed"):
        loop.train(tiny_config(workdir, validation_fraction=0.1, max_steps=6))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints, "no checkpoint touched"
    assert {name: open(os.path.join(workdir, name)).read() for name in run_files} == run_files, "run files kept"
    metrics = loop.train(tiny_config(workdir, max_steps=6))
    assert metrics["global_step"] == 6 and metrics["steps_this_session"] == 2


def test_a_recovery_restarts_wild_chains_from_the_gaussians(trained):
    config = tiny_config("unused")
    model = objectives.build_model(config, (8, 8, 1), 10)
    tf.train.Checkpoint(model=model, **model.checkpoint_items()).read(
        os.path.join(trained, "checkpoints", "ckpt-4")).expect_partial()
    images = model.replay_buffer.images.numpy()
    images[[3, 17]] = 50.0  # two run-away chains
    model.replay_buffer.images.assign(images)
    change = model.apply_recovery(dataclasses.replace(config), seed=[0, 4, 0])
    after = model.replay_buffer.images.numpy()
    assert change["chains_reinitialised"] == 2
    np.testing.assert_array_equal(np.delete(after, [3, 17], axis=0), np.delete(images, [3, 17], axis=0))
    # Slot 3 holds class 3, slot 17 class 7: each restarts nearest its own class mean.
    means = model.class_gaussians.means.numpy()
    for slot, label in ((3, 3), (17, 7)):
        distances = ((after[slot].reshape(-1) - means) ** 2).sum(axis=1)
        assert np.argmin(distances) == label


# -- the command line: SIGKILL and resume, export, evaluation ------------------------------------


def run_cli(module, *args):
    """The command line's main in this process; only the run that is killed needs a process of its own."""
    result = run_command(module, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("jempp_cli"))
    run_cli("jem_tf.train", *TINY, f"--workdir={workdir}")
    return workdir


@pytest.mark.slow
def test_cli_run_killed_with_sigkill_and_resumed_is_bit_identical(uninterrupted, tmp_path):
    workdir = str(tmp_path / "killed")
    flags_ = [*TINY, f"--workdir={workdir}", "--export=false"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    process = warm_python.start(["-m", "jem_tf.train", *flags_], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and (
            tf.train.latest_checkpoint(checkpoints) or "ckpt-0").endswith("ckpt-0"):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not Path(workdir, "metrics.json").exists(), "killed too late: the run had already finished"
    result = run_cli("jem_tf.train", *flags_)
    assert "Resumed from" in result.stderr and "equal the checkpoint's" in result.stderr
    metrics = json.loads(Path(workdir, "metrics.json").read_text())
    assert metrics["global_step"] == 9 and metrics["steps_this_session"] < 9
    want = assert_same_checkpoint(workdir, uninterrupted, 9)
    assert any(key.startswith("class_gaussians/") for key in want)


@pytest.mark.slow
def test_the_run_exports_and_evaluates(uninterrupted, tmp_path):
    from export import signatures as sig  # noqa: PLC0415

    export = Path(uninterrupted, "export", "9")
    assert export.is_dir(), "training exports its final checkpoint"
    images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    outputs = tf.saved_model.load(str(export)).signatures[sig.CLASSIFY](images=tf.constant(images))
    assert outputs[sig.PROBABILITIES].shape == (3, 10)
    np.testing.assert_allclose(outputs[sig.PROBABILITIES].numpy().sum(axis=1), 1.0, rtol=1e-5)
    output = tmp_path / "eval"
    run_cli("jem_tf.evaluate", f"--workdir={uninterrupted}", "--eval=accuracy,calibration,ood,samples",
            f"--output={output}", "--num_examples=24", "--batch_size=12", "--refine_steps=1",
            "--ood_sets=uniform,constant", "--sample_steps=2", "--num_samples=4", "--samples_per_class=2",
            "--max_grid_classes=2", "--noprogress")
    results = json.loads((output / "results.json").read_text())
    # The evaluation's accuracy on the first 24 test images is the exported model's on them.
    test = jem_data.load("digits", validation_fraction=0.0).test.take(24)
    (test_images, test_labels), = jem_data.make_batches(test, 24, training=False).as_numpy_iterator()
    exported = tf.saved_model.load(str(export)).signatures[sig.CLASSIFY](images=tf.constant(test_images))
    exported_accuracy = np.mean(np.argmax(exported[sig.PROBABILITIES].numpy(), axis=1) == test_labels)
    assert results["accuracy"] == pytest.approx(exported_accuracy, abs=1e-6)
    assert np.isfinite(results["calibration/ece"]) and np.isfinite(results["ood/uniform/log_px/auroc"])
    assert any(name.startswith("samples_") and name.endswith(".png") for name in os.listdir(output))


def test_readers_restore_the_replay_buffer_because_the_checkpoint_holds_one(trained):
    from jem_tf.workdir import checkpoints, restore  # noqa: PLC0415

    stored = checkpoints.checkpoint_path(os.path.join(trained, "checkpoints"), 4)
    assert restore.replay_buffer_size(stored) == checkpoint_tensors(trained, 4)[
        "replay_buffer/images/.ATTRIBUTES/VARIABLE_VALUE"].shape[0]
    network, config, _ = restore.restore_run(trained)
    assert config.objective == "jempp"
    np.testing.assert_array_equal(network.replay_buffer.images.numpy(),
                                  checkpoint_tensors(trained, 4)["replay_buffer/images/.ATTRIBUTES/VARIABLE_VALUE"])


def _jempp_steps(strategy, initial_weights, steps=2):
    """`steps` JEM++ steps on 16 toy images of 4 classes; chains restart from the Gaussians half the time."""
    rng = np.random.default_rng(0)
    labels = np.arange(16) % 4
    uint8 = np.clip(labels[:, None, None, None] * 60 + rng.normal(20, 10, (16, 8, 8, 1)), 0, 255).astype(np.uint8)
    settings = dict(JEMPP_SAMPLER, sgld_steps=2)
    config = dataclasses.replace(get_preset("quick"), objective="jempp", depth=10, width=1, buffer_size=64, seed=3,
                                 reinit_freq=0.5, **settings)
    with strategy.scope():
        model = objectives.build_model(config, (8, 8, 1), 4)
        # SGD: Adam would turn rounding-level gradient differences into full-size steps (see test_jem).
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        model.optimizer.build(model.trainable_variables)
        model.prepare_for_data(tf.data.Dataset.from_tensor_slices((uint8, labels)), restored=False)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    images = jem_data.to_model_range(uint8).numpy()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).batch(8).repeat(steps)
    train_step = distribution.distributed_train_step(model, strategy)
    losses = [float(train_step(batch)["loss"]) for batch in strategy.experimental_distribute_dataset(dataset)]
    buffers = np.stack([v.numpy() for v in strategy.experimental_local_results(model.replay_buffer.images)])
    return model, losses, buffers


def test_two_replicas_match_one_device():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py makes two logical CPU devices before TensorFlow starts"
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    initial = _jempp_steps(one_device, None, steps=0)[0].get_weights()
    one, one_losses, one_buffer = _jempp_steps(one_device, initial)
    two, two_losses, two_buffers = _jempp_steps(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), initial)
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-4)
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(two_buffers[0], two_buffers[1])
    np.testing.assert_allclose(two_buffers[0], one_buffer[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(one_buffer[0], _jempp_steps(one_device, initial, steps=0)[2][0], atol=1e-3), \
        "the steps moved chains"
