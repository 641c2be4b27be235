"""The suite's own setup: how many xdist workers `-n auto` starts; the warm Python server they share."""

import os

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
