"""The suite's own setup: how many xdist workers `-n auto` starts; the warm Python server they share."""

import os
import subprocess
import sys

import conftest
import pytest
import warm_python


def test_auto_starts_one_worker_more_than_the_usable_cores(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) == len(os.sched_getaffinity(0)) + 1
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")
    assert conftest.pytest_xdist_auto_num_workers(None) is None  # xdist's own variable decides


def test_xdist_workers_fork_their_commands_from_the_sessions_shared_server(worker_id):
    if worker_id == "master":
        pytest.skip("not run by an xdist worker (-n 0): this process starts its own server when it needs one")
    server = os.environ.get(warm_python.SHARED_SERVER)
    assert server, "the session's controller started no shared warm Python server (conftest.pytest_configure)"
    parent = warm_python.run(["-c", "import os; print(os.getppid())"], capture_output=True, text=True).stdout
    assert int(parent) == int(server.split(":")[0])


def test_the_xdist_controller_runs_no_test_and_imports_no_tensorflow(tmp_path):
    """Under xdist the controller only hands out tests; importing TensorFlow there cost about 8 s of
    CPU before any worker started. Its configure hook starts the shared warm server instead (not
    started here)."""
    script = """
import sys, types
import conftest, warm_python
warm_python.start_shared_server = lambda: print("server started")
conftest.pytest_configure(types.SimpleNamespace(option=types.SimpleNamespace(numprocesses=3)))
print("controller imported tensorflow:", "tensorflow" in sys.modules)
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["server started", "controller imported tensorflow: False"]


def test_what_the_test_modules_imported_is_frozen_out_of_garbage_collection():
    """conftest.pytest_collection_finish: the libraries' objects are not scanned by every full
    collection of the session."""
    import gc  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    assert gc.get_freeze_count() > 100_000
    assert not any(o is vars(tf) for o in gc.get_objects())  # the collector's generations only
