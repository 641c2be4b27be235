"""End to end: the `python -m jem_tf.train` command, resume after SIGKILL, refusal of bad input, the
divergence guard, and the paper's tfds code path under mock data.

A real process is started where it is the point (a signal, a kill, a second process holding the
lock); every other command runs in process through `conftest.run_command`, which gives the exit code
and stderr the process would."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import warm_python
from conftest import TINY_FLAGS, assert_same_checkpoint, run_command, tiny_config

from jem_tf import data as jem_data
from jem_tf.configs import get_preset
from jem_tf.workdir import restore
from trainers import loop

REPO = Path(__file__).resolve().parents[1]
# The suite's tiny run with 12 steps and a checkpoint every 3, so that a signal after the first
# checkpoint past step 0 lands with most of the run still ahead (absl keeps a repeated flag's last value).
TINY = [*TINY_FLAGS, "--max_steps=12", "--checkpoint_every_steps=3", "--summary_every_steps=2",
        "--sample_every_steps=4"]


def run_cli(*flags, check=True):
    """`python -m jem_tf.train FLAGS` in this process."""
    result = run_command("jem_tf.train", *flags)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_buffer(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    name = next(n for n in reader.get_variable_to_shape_map() if n.startswith("replay_buffer/images"))
    return reader.get_tensor(name), path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = run_cli(*TINY, f"--workdir={workdir}")
    return workdir, result


@pytest.mark.slow
def test_cli_trains_and_writes_metrics_checkpoints_summaries_samples(uninterrupted):
    workdir, result = uninterrupted
    metrics = json.loads(Path(workdir, "metrics.json").read_text())
    assert metrics["global_step"] == 12 and metrics["objective"] == "jem" and metrics["dataset"] == "digits"
    # The reported accuracy is the final weights' on the whole test split, recounted here image by image.
    network, config, _ = restore.restore_run(workdir, with_replay_buffer=False)
    data = jem_data.load(config.dataset, config.data_dir, config.validation_fraction, config.validation_size)
    correct = total = 0
    for images, labels in jem_data.make_batches(data.test, 100, training=False):
        correct += int(np.sum(np.argmax(network(images, training=False).numpy(), -1) == labels.numpy()))
        total += len(labels)
    assert total == data.num_test > 0
    assert metrics["test_accuracy"] == pytest.approx(correct / total, abs=1e-6)
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-12")
    assert sorted(os.listdir(Path(workdir, "samples")))[-1] == "step_0000012.png"
    assert any(name.startswith("events") for name in os.listdir(Path(workdir, "tensorboard")))
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_rerunning_a_finished_run_resumes_instead_of_restarting(uninterrupted):
    workdir, _ = uninterrupted
    result = run_cli(*TINY, f"--workdir={workdir}")
    assert "Resumed from" in result.stderr
    assert json.loads(Path(workdir, "metrics.json").read_text())["steps_this_session"] == 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_reaches_the_same_final_state(uninterrupted, tmp_path):
    reference_workdir, _ = uninterrupted
    workdir = str(tmp_path / "killed")
    flags = [*TINY, f"--workdir={workdir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    process = warm_python.start(["-m", "jem_tf.train", *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    checkpoints = Path(workdir, "checkpoints")
    deadline = time.time() + 240
    # Kill as soon as a mid-run checkpoint (after the step-0 one) is registered in the manager's
    # index (step 3 of 12; an epoch of digits is 80 steps).
    while time.time() < deadline and (tf.train.latest_checkpoint(str(checkpoints)) or "ckpt-0").endswith("ckpt-0"):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not Path(workdir, "metrics.json").exists(), "killed too late: the run had already finished"
    result = run_cli(*flags)
    assert "Resumed from" in result.stderr
    metrics = json.loads(Path(workdir, "metrics.json").read_text())
    assert metrics["global_step"] == 12 and metrics["steps_this_session"] < 12
    resumed_buffer, _ = read_buffer(workdir)
    reference_buffer, _ = read_buffer(reference_workdir)
    # Same data order, same stateless noise keyed by the restored step: the same run.
    np.testing.assert_allclose(resumed_buffer, reference_buffer, atol=1e-5)


def assert_same_final_state(workdir, reference_workdir):
    assert_same_checkpoint(workdir, reference_workdir, 12)


def start_cli(*flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return warm_python.start(["-m", "jem_tf.train", *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint_after_step_0(workdir, process, timeout=240):
    checkpoints = str(Path(workdir, "checkpoints"))
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and (
            tf.train.latest_checkpoint(checkpoints) or "ckpt-0").endswith("ckpt-0"):
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_exits_with_its_code_and_a_rerun_finishes_the_same_run(
        uninterrupted, tmp_path, signal_number):
    reference_workdir, _ = uninterrupted
    workdir = str(tmp_path / "preempted")
    flags = [*TINY, f"--workdir={workdir}"]
    process = start_cli(*flags)
    wait_for_checkpoint_after_step_0(workdir, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=240)
    assert not Path(workdir, "metrics.json").exists(), "signalled too late: the run had already finished"
    assert process.returncode == 128 + signal_number, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    status = json.loads(Path(workdir, "run_status.json").read_text())
    assert status["state"] == "preempted" and status["signal"] == signal.Signals(signal_number).name
    assert f"Stopped by {status['signal']} at step {status['step']}" in stderr
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith(f"ckpt-{status['step']}")
    result = run_cli(*flags)
    assert f"Resumed from {os.path.join(workdir, 'checkpoints', 'ckpt-' + str(status['step']))}" in result.stderr
    assert json.loads(Path(workdir, "run_status.json").read_text())["state"] == "finished"
    assert_same_final_state(workdir, reference_workdir)


@pytest.mark.slow
def test_a_full_disk_stops_cleanly_and_the_rerun_with_space_finishes_the_same_run(uninterrupted, tmp_path):
    reference_workdir, _ = uninterrupted
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    # A checkpoint of this run is ~1 MB: 2.5 MB hold the step-0 and step-3 ones, not the step-6 one.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        workdir = str(mount_point / "run")
        flags = [*TINY, f"--workdir={workdir}"]
        full = run_cli(*flags, check=False)
        assert full.returncode == 4, full.stderr[-3000:]
        assert "No space left on device" in full.stderr and "re-run" in full.stderr
        assert "Traceback" not in full.stderr
        assert json.loads(Path(workdir, "run_status.json").read_text())["state"] == "failed"
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount_point)], check=True)
        result = run_cli(*flags)
        assert "Resumed from" in result.stderr
        assert_same_final_state(workdir, reference_workdir)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_exits_2_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "locked")
    locked = tmp_path / "locked_by_holder"
    holder = warm_python.start(
        ["-c", "import pathlib, sys, time; from jem_tf.workdir.lock import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); pathlib.Path(sys.argv[2]).touch(); time.sleep(600)", workdir,
         str(locked)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.monotonic() + 120
        while not locked.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert locked.exists(), f"the lock holder did not start (exit {holder.poll()})"
        result = run_cli(*TINY, f"--workdir={workdir}", "--max_steps=2", "--learning_rate=0.02", check=False)
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"PID {holder.pid} on host" in result.stderr and "Traceback" not in result.stderr
        assert sorted(os.listdir(workdir)) == [".lock"], "the refused run must write nothing"
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock with the process
        holder.wait()
    run_cli(*TINY, f"--workdir={workdir}", "--max_steps=2")
    assert json.loads(Path(workdir, "config.json").read_text())["learning_rate"] != 0.02


@pytest.mark.slow
def test_incompatible_workdir_is_refused_and_left_untouched(uninterrupted):
    workdir, _ = uninterrupted
    before = Path(workdir, "config.json").read_text()
    result = run_cli(*TINY, f"--workdir={workdir}", "--width=2", check=False)
    assert result.returncode == 2
    assert "width: 1 -> 2" in result.stderr and "Traceback" not in result.stderr
    assert Path(workdir, "config.json").read_text() == before


@pytest.mark.slow
def test_unavailable_dataset_exits_2_with_one_clear_message(tmp_path):
    result = run_cli("--dataset=svhn", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}", check=False)
    assert result.returncode == 2
    assert "--data_dir" in result.stderr and "svhn" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_flag_value_exits_2_naming_it(tmp_path):
    result = run_cli("--preset=quick", "--reinit_freq=2", f"--workdir={tmp_path}", check=False)
    assert result.returncode == 2 and "--reinit_freq=2.0" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing should be written for a refused run"


@pytest.mark.slow
def test_divergence_stops_cleanly_naming_step_and_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "diverge")
    run_cli(*TINY, f"--workdir={workdir}", "--max_steps=2", "--checkpoint_every_steps=2")
    buffer_before, checkpoint = read_buffer(workdir)
    # A guard threshold no real step satisfies makes step 3 "diverge" deterministically; without
    # automatic recoveries the run stops there.
    result = run_cli(*TINY, f"--workdir={workdir}", "--max_steps=4", "--checkpoint_every_steps=1",
                     "--max_abs_generative_loss=1e-12", "--max_recoveries=0", check=False)
    assert result.returncode == 3
    assert "diverged at step 3" in result.stderr and "ckpt-2" in result.stderr
    assert "Traceback" not in result.stderr
    buffer_after, latest = read_buffer(workdir)
    assert latest == checkpoint
    np.testing.assert_array_equal(buffer_after, buffer_before)


@pytest.mark.parametrize("dataset,num_classes", [("svhn", 10), ("cifar100", 100)])
def test_paper_datasets_code_path_under_mock_data(tmp_path, dataset, num_classes):
    config = get_preset(dataset)
    config.workdir = str(tmp_path)
    config.depth, config.width, config.buffer_size, config.batch_size = 10, 1, 64, 8
    config.max_steps, config.sgld_steps, config.export = 2, 2, False
    with tfds.testing.mock_data(num_examples=40):
        metrics = loop.train(config)
    assert metrics["global_step"] == 2 and metrics["dataset"] == dataset
    model, restored_config, run_info = restore.restore_run(str(tmp_path))
    assert run_info["image_shape"] == [32, 32, 3] and run_info["num_classes"] == num_classes
    assert model.replay_buffer.images.shape == (64, 32, 32, 3)
    assert restored_config.dataset == dataset


def test_restore_run_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a jem_tf training workdir"):
        restore.restore_run(str(tmp_path))


@pytest.mark.slow
def test_paper_setup_runs_unchanged_through_the_cli_on_mock_svhn(tmp_path):
    """`python -m jem_tf.train --dataset=svhn` with the paper's WRN-28-10 and every Table 4 default,
    capped at one step on a batch of one image so that one iteration fits in a test."""
    with tfds.testing.mock_data(num_examples=8):
        result = run_cli("--dataset=svhn", f"--workdir={tmp_path}", "--max_steps=1", "--batch_size=1",
                         "--export=false", "--validation_fraction=0.25", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads(Path(tmp_path, "config.json").read_text())
    assert (config["depth"], config["width"], config["sgld_steps"], config["buffer_size"]) == (28, 10, 20, 10000)
    assert json.loads(Path(tmp_path, "metrics.json").read_text())["global_step"] == 1


def test_a_run_and_its_export_trace_our_code_as_written(tmp_path, autograph_conversions):
    """No autograph conversion of our functions: the training step, the evaluator, the data pipeline
    and the export's OOD threshold are traced as written."""
    from export import savedmodel  # noqa: PLC0415

    workdir = str(tmp_path / "run")
    loop.train(tiny_config(workdir, max_steps=1))
    savedmodel.export_run(workdir, str(tmp_path / "export"), ood_max_images=20)
    assert autograph_conversions == []


def test_a_finished_run_keeps_none_of_its_traced_graphs_alive(tmp_path):
    """Runs one after another in one process (a sweep, a notebook, this suite's workers) must not
    pile up: a traced training step holds the model's weights and optimizer state (their handles)
    and thousands of Python objects, and TensorFlow's all-reduce and a sampler shared by every
    model each kept one alive per run until the process exited. JEM has both; the classifier
    shares the optimizer's."""
    import gc  # noqa: PLC0415

    from tensorflow.python.framework import func_graph  # noqa: PLC0415

    def graphs():
        gc.collect()
        return sum(isinstance(o, func_graph.FuncGraph) for o in gc.get_objects())

    loop.train(tiny_config(str(tmp_path / "first"), max_steps=1))
    before = graphs()
    loop.train(tiny_config(str(tmp_path / "second"), max_steps=1))
    assert graphs() == before
