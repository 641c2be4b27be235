"""Multi-worker training (issue #9 item 4) on localhost: two `python -m jem_tf.train
--strategy=multi_worker` processes, each with its own TF_CONFIG, against one in-process run with
two replicas (MirroredStrategy over the two logical CPUs tests/conftest.py creates). Both split each
global batch over two replicas the same way, so losses, weights, optimizer state and the replay
buffer must agree within float tolerance (the all-reduce sums in another order over gRPC).

Every subprocess is bounded by a timeout; on this 2-core machine a worker spends most of its time
starting TensorFlow and the gRPC collectives.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf
import warm_python
from conftest import checkpoint_tensors

from jem_tf import cluster as cluster_lib
from jem_tf.configs import get_preset
from jem_tf.workdir import checkpoints, run_files
from trainers import loop, run_plan

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL_STEP = 10
SHORT_RUN = 4
# Flags of the tiny run, shared by the workers' command lines and the reference's config.
SETTINGS = dict(
    dataset="digits", depth=10, width=1, batch_size=8, sgld_steps=1, buffer_size=64, export=False,
    summary_every_steps=1, sample_every_steps=1000, checkpoint_every_steps=2, keep_checkpoints=10,
    validation_fraction=0.0, max_steps=FINAL_STEP,
)
WORKER_TIMEOUT_S = 300
# Float tolerance: the two runs differ only in the order of the all-reduce sums.
RTOL, ATOL = 1e-4, 1e-5


def _command_line(workdir, **overrides):
    settings = dict(SETTINGS, **overrides)
    """What follows `python` on a worker's command line."""
    args = ["-m", "jem_tf.train", "--preset=quick", "--strategy=multi_worker", f"--workdir={workdir}"]
    for name, value in settings.items():
        args.append(f"--{name}" if value is True else f"--no{name}" if value is False else f"--{name}={value}")
    return args


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(workdir, log_dir, tag, **overrides):
    """Two worker processes on fresh ports; returns [(process, log path)]."""
    addresses = [f"localhost:{port}" for port in _free_ports(2)]
    workers = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}))
        log_path = os.path.join(log_dir, f"{tag}-worker{index}.log")
        with open(log_path, "w") as log:
            process = warm_python.start(_command_line(workdir, **overrides), cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
        workers.append((process, log_path))
    return workers


def _wait(workers, timeout=WORKER_TIMEOUT_S):
    """Exit codes; kills every worker still running at the deadline and fails."""
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for process, _ in workers:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        for process, _ in workers:
            process.kill()
            process.wait()
        pytest.fail(f"multi-worker run exceeded {timeout} s; logs: {[log for _, log in workers]}\n"
                    + _tail(workers[0][1]))
    return codes


def _tail(log_path, lines=30):
    with open(log_path) as f:
        return "".join(f.readlines()[-lines:])


def _assert_same_state(workdir, reference_workdir, step):
    got, want = checkpoint_tensors(workdir, step), checkpoint_tensors(reference_workdir, step)
    assert sorted(got) == sorted(want)
    assert any("replay_buffer" in key for key in want)  # the buffer is compared too
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)


def _train_losses(workdir):
    """{step: train/loss} from the run's TensorBoard events."""
    losses = {}
    directory = os.path.join(workdir, run_files.TENSORBOARD_DIR)
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory, two_logical_cpus):
    """One process, two replicas (MirroredStrategy over two logical CPUs), to FINAL_STEP."""
    devices = two_logical_cpus
    workdir = str(tmp_path_factory.mktemp("two_replicas"))
    config = dataclasses.replace(get_preset("quick"), workdir=workdir, strategy="mirrored", **SETTINGS)
    original = run_plan.make_strategy
    # `--strategy=mirrored` takes GPUs or one CPU; the two logical CPUs are given explicitly here.
    run_plan.make_strategy = lambda name: tf.distribute.MirroredStrategy(devices[:2])
    try:
        metrics = loop.train(config)
    finally:
        run_plan.make_strategy = original
    assert metrics["global_step"] == FINAL_STEP
    return workdir


def test_two_workers_match_two_replicas_in_one_process(reference, tmp_path):
    workdir = str(tmp_path / "run")
    workers = _start_workers(workdir, str(tmp_path), "short", max_steps=SHORT_RUN)
    codes = _wait(workers)
    assert codes == [0, 0], [_tail(log) for _, log in workers]
    _assert_same_state(workdir, reference, SHORT_RUN)
    losses, reference_losses = _train_losses(workdir), _train_losses(reference)
    assert sorted(losses) == list(range(1, SHORT_RUN + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                               [reference_losses[s] for s in sorted(losses)], rtol=RTOL, atol=ATOL)
    # Only the chief wrote the run's files; the other worker's checkpoint copies are gone.
    with open(os.path.join(workdir, run_files.METRICS_FILE)) as f:
        assert json.load(f)["global_step"] == SHORT_RUN
    assert checkpoints.checkpoint_steps(checkpoints.checkpoint_dir(workdir)) == [0, 2, 4]
    assert "not the chief" in _tail(workers[1][1], lines=200)


def _start_workers_past_step_2(workdir, log_dir):
    """Starts both workers and returns them once the step-2 checkpoint exists (training is under way);
    fails the test, killing them, if they end or time out first."""
    workers = _start_workers(workdir, log_dir, "first")
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not os.path.exists(os.path.join(checkpoints.checkpoint_dir(workdir), "ckpt-2.index")):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
            for p, _ in workers:
                p.kill()
            pytest.fail("the workers did not reach step 2:\n" + _tail(workers[0][1]) + _tail(workers[1][1]))
        time.sleep(0.1)
    return workers


def test_sigterm_to_one_worker_stops_both_at_one_checkpoint_and_restart_resumes(reference, tmp_path):
    workdir = str(tmp_path / "run")
    checkpoint_folder = checkpoints.checkpoint_dir(workdir)
    # Preempt the non-chief worker once training is under way (after the step-2 checkpoint).
    workers = _start_workers_past_step_2(workdir, str(tmp_path))
    workers[1][0].send_signal(signal.SIGTERM)
    codes = _wait(workers)
    assert codes == [143, 143], [_tail(log) for _, log in workers]  # both stopped: 128 + SIGTERM
    status = run_files.read_json(os.path.join(workdir, run_files.RUN_STATUS_FILE), {})
    assert status["state"] == "preempted"
    stopped_at = status["step"]
    assert 2 <= stopped_at < FINAL_STEP
    assert checkpoints.checkpoint_steps(checkpoint_folder)[-1] == stopped_at
    # Restarting both resumes from that checkpoint and reaches the end, as an uninterrupted run.
    workers = _start_workers(workdir, str(tmp_path), "restart")
    codes = _wait(workers)
    assert codes == [0, 0], [_tail(log) for _, log in workers]
    assert f"(step {stopped_at})" in _tail(workers[0][1], lines=400)  # "Resumed from ... (step N)."
    _assert_same_state(workdir, reference, FINAL_STEP)


def test_sigkill_of_one_worker_fails_the_other_and_restarting_both_resumes(reference, tmp_path):
    workdir = str(tmp_path / "run")
    checkpoint_folder = checkpoints.checkpoint_dir(workdir)
    workers = _start_workers_past_step_2(workdir, str(tmp_path))
    workers[1][0].kill()  # no checkpoint, no goodbye
    codes = _wait(workers)
    # The chief's next collective fails (TensorFlow's heartbeats or the broken connection): a
    # failure with a traceback, not a hang and not a clean end.
    assert codes[0] == 1 and codes[1] == -signal.SIGKILL, codes
    status = run_files.read_json(os.path.join(workdir, run_files.RUN_STATUS_FILE), {})
    assert status["state"] == "failed"
    last = checkpoints.checkpoint_steps(checkpoint_folder)[-1]
    assert 2 <= last < FINAL_STEP
    workers = _start_workers(workdir, str(tmp_path), "restart")
    codes = _wait(workers)
    assert codes == [0, 0], [_tail(log) for _, log in workers]
    assert f"(step {last})" in _tail(workers[0][1], lines=400)
    _assert_same_state(workdir, reference, FINAL_STEP)


def test_missing_or_invalid_tf_config_is_refused_before_anything_is_written(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop(cluster_lib.ENV_VAR, None)
    result = warm_python.run(_command_line(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=WORKER_TIMEOUT_S)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "TF_CONFIG is not set" in result.stderr
    assert not os.path.exists(workdir)
