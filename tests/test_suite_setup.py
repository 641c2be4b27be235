"""The suite's own setup: how many xdist workers `-n auto` starts, the warm Python server they share,
the controller that imports no TensorFlow, the frozen imports, and the longest test files first."""

import json
import os
import subprocess
import sys
import tomllib
from types import SimpleNamespace

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
    for kind in (warm_python.DEFAULT, warm_python.TENSORFLOW_ONLY):
        server = os.environ.get(warm_python.shared_variable(kind))
        assert server, f"the session's controller started no shared {kind} warm server (conftest.pytest_configure)"
        parent = warm_python.run(["-c", "import os; print(os.getppid())"], capture_output=True, text=True,
                                 kind=kind).stdout
        assert int(parent) == int(server.split(":")[0]), kind


def test_the_xdist_controller_runs_no_test_and_imports_no_tensorflow(tmp_path):
    """Under xdist the controller only hands out tests; importing TensorFlow there cost about 8 s of
    CPU before any worker started. Its configure hook starts the shared warm server instead (not
    started here)."""
    script = """
import sys, types
import conftest, warm_python
warm_python.start_shared_server = lambda kind=warm_python.DEFAULT: print("server started:", kind)
conftest.pytest_configure(types.SimpleNamespace(option=types.SimpleNamespace(numprocesses=3)))
print("controller imported tensorflow:", "tensorflow" in sys.modules)
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["server started: default", "server started: tensorflow_only",
                                             "controller imported tensorflow: False"]


def test_what_the_test_modules_imported_is_frozen_out_of_garbage_collection():
    """conftest.pytest_collection_finish: the libraries' objects are not scanned by every full
    collection of the session."""
    import gc  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    assert gc.get_freeze_count() > 100_000
    assert not any(o is vars(tf) for o in gc.get_objects())  # the collector's generations only


def test_test_files_are_handed_out_longest_first_each_keeping_its_order():
    ids = ["tests/test_a.py::one", "tests/test_b.py::one", "tests/test_a.py::two", "tests/test_new.py::x",
           "tests/test_c.py::one[p]", "tests/test_b.py::two", "tests/test_c.py::one[q]"]
    items = [SimpleNamespace(nodeid=nodeid) for nodeid in ids]
    recorded = {"tests/test_a.py": 3.0, "tests/test_b.py": 40.0, "tests/test_c.py": 7.5}
    ordered = [item.nodeid for item in conftest.longest_files_first(items, recorded)]
    # Not recorded (new, maybe long) first, then by recorded seconds; within a file, as collected.
    assert ordered == ["tests/test_new.py::x", "tests/test_b.py::one", "tests/test_b.py::two",
                       "tests/test_c.py::one[p]", "tests/test_c.py::one[q]", "tests/test_a.py::one",
                       "tests/test_a.py::two"]


def test_xdist_keeps_the_collection_order_and_the_record_is_longest_first():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        addopts = tomllib.load(f)["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "--dist=loadfile" in addopts and "--no-loadscope-reorder" in addopts
    with open(conftest.FILE_SECONDS) as f:
        recorded = json.load(f)["seconds"]
    assert all(seconds >= 0 for seconds in recorded.values())
    assert sorted(recorded.values(), reverse=True) == list(recorded.values())


def test_file_seconds_are_summed_per_file_and_averaged_over_logs(tmp_path):
    from tools import suite_file_seconds  # noqa: PLC0415

    first = ("== slowest durations ==\n12.50s call     tests/test_a.py::test_x[1]\n"
             "2.50s setup    tests/test_a.py::test_x[1]\n1.00s call     tests/test_b.py::Test::test_y\n"
             "==== 3 passed in 20.0s ====\n")
    second = "4.00s call     tests/test_a.py::test_x[1]\n3.00s teardown tests/test_b.py::Test::test_y\n"
    assert suite_file_seconds.file_seconds(first) == {"tests/test_a.py": 15.0, "tests/test_b.py": 1.0}
    means = suite_file_seconds.mean_file_seconds([first, second], ["tests/test_a.py", "tests/test_quick.py"])
    assert means == {"tests/test_a.py": 9.5, "tests/test_b.py": 2.0, "tests/test_quick.py": 0.0}
    assert list(means) == ["tests/test_a.py", "tests/test_b.py", "tests/test_quick.py"]

    (tmp_path / "first.log").write_text(first)
    (tmp_path / "second.log").write_text(second)
    output = tmp_path / "file_seconds.json"
    assert suite_file_seconds.main([f"--log={tmp_path / 'first.log'}", f"--log={tmp_path / 'second.log'}",
                                   "--commit=abc1234", f"--output={output}"]) == 0
    record = json.loads(output.read_text())
    assert record["commit"] == "abc1234" and record["seconds"]["tests/test_a.py"] == 9.5
    assert set(record["seconds"]) >= {"tests/test_suite_setup.py", "tests/test_b.py"}  # every test file listed

    (tmp_path / "no_durations.log").write_text("==== 3 passed in 20.0s ====\n")
    assert suite_file_seconds.main([f"--log={tmp_path / 'no_durations.log'}", "--commit=abc1234",
                                   f"--output={tmp_path / 'other.json'}"]) == 2
    assert not (tmp_path / "other.json").exists()
