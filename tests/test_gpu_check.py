"""benchmarks/gpu_check.sh: the --smoke run exercises every step on a CPU; without a GPU the real
run refuses with exit code 2; any failed check makes the command fail."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf
import warm_python

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run_script(*flags, python=None, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **({"PYTHON": python} if python else {}))
    return subprocess.run([str(SCRIPT), *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# `python -m benchmarks.gpu_check FLAGS` (what the script runs) in a warm process whose own Python
# commands, the training run and the serving check, start warm too: the smoke run is otherwise
# mostly three TensorFlow imports. The script itself is run by the no-GPU test below.
_WARM_CHECK = """
import runpy, subprocess, sys, warm_python
warm_python.use_server(sys.argv.pop(1))
subprocess.Popen, subprocess.run = warm_python.PythonCommandsWarm.Popen, warm_python.PythonCommandsWarm.run
sys.argv[0] = "benchmarks.gpu_check"
runpy.run_module("benchmarks.gpu_check", run_name="__main__", alter_sys=True)
"""


def _run_check_warm(*flags, timeout=900):
    python_path = os.pathsep.join([str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=python_path)
    return warm_python.run(["-c", _WARM_CHECK, warm_python.server_socket(), *flags], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_run_passes_every_check_and_writes_json_and_markdown(tmp_path):
    result = _run_check_warm("--smoke", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["passed"] and report["smoke"]
    assert [c["name"] for c in report["checks"]] == ["devices", "timings", "train", "serving"]
    assert all(c["passed"] for c in report["checks"])
    combos = {(e["precision"], e["xla"]) for e in report["epochs"]}
    assert combos == {(p, x) for p in gpu_check.PRECISIONS for x in ("off", "on")}
    for estimate in report["epochs"]:
        assert estimate["cifar10_epoch_seconds"] == pytest.approx(
            estimate["jem_iteration_ms"] / 1e3 * gpu_check.CIFAR10_ITERATIONS_PER_EPOCH)
    # The paper setup ran under MirroredStrategy through the real command line, and its export served.
    assert report["training"]["global_step"] == 2 and report["training"]["replicas"] == 1
    assert gpu_check.XLA_BACKEND_UNOPTIMISED in report["xla_flags"].split()
    assert Path(report["training"]["export"], "saved_model.pb").exists()
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| mixed_float16 | on |" in markdown and "| serving | yes |" in markdown


@pytest.mark.slow
@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible")
def test_without_a_gpu_the_real_run_refuses_with_exit_2_and_writes_nothing(tmp_path):
    # The script itself, its Python started warm (`$PYTHON`): a new interpreter would only add TensorFlow's import.
    result = _run_script(f"--output_dir={tmp_path / 'out'}", python=warm_python.python_executable(str(tmp_path)),
                         timeout=300)
    assert result.returncode == 2
    assert "No GPU visible" in result.stderr and "--smoke" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_check_fails_the_command_and_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # restored afterwards: the smoke run sets it for its process
    monkeypatch.setattr(gpu_check, "list_devices", lambda: dict(devices=[], tensorflow="x", tensor_float_32=False))
    monkeypatch.setattr(gpu_check, "run_timings", lambda sizes: None)

    def broken_training(*args):
        raise RuntimeError("`jem_tf.train` exited 3")

    monkeypatch.setattr(gpu_check, "run_training", broken_training)
    code = gpu_check.run(str(tmp_path), smoke=True)
    assert code == gpu_check.EXIT_FAILED
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["passed"]
    assert {c["name"]: c["passed"] for c in report["checks"]} == {"devices": True, "timings": True, "train": False}
    assert "exited 3" in (tmp_path / "gpu_check.md").read_text()


def test_the_smoke_run_compiles_xla_unoptimised_unless_xla_flags_set_the_level(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/dump")
    gpu_check.unoptimised_xla_backend()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/dump --xla_backend_optimization_level=0"
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    gpu_check.unoptimised_xla_backend()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
