"""The warm Python server (tests/warm_python.py) behaves as `python` does where the tests look: exit
status, streams, signals, environment, working directory and sys.path. Each case runs both ways."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import warm_python

CASES = {
    "exit code": ["-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
    "exit message": ["-c", "import sys; sys.exit('bad input')"],
    "uncaught exception": ["-c", "raise ValueError('boom')"],
    "arguments": ["-c", "import sys; print(sys.argv)", "a", "--b=1"],
    "environment and folder": ["-c", "import os; print(os.environ['WARM_TEST'], os.getcwd())"],
    "module": ["-m", "json.tool", "--help"],
    "python path": ["-c", "import sys, warm_probe; print(sys.path[:2], warm_probe.VALUE)"],
    "atexit": ["-c", "import atexit; atexit.register(lambda: print('at exit'))"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_command_ends_as_it_does_in_a_new_interpreter(name, tmp_path):
    (tmp_path / "warm_probe.py").write_text("VALUE = 7\n")
    env = dict(os.environ, WARM_TEST="yes", PYTHONPATH=str(tmp_path))
    fresh = subprocess.run([sys.executable, *CASES[name]], cwd=tmp_path, env=env, capture_output=True, text=True)
    warm = warm_python.run(CASES[name], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout)
    # Tracebacks differ in their first frames; the last line names the error.
    assert warm.stderr.strip().splitlines()[-1:] == fresh.stderr.strip().splitlines()[-1:]


SLEEPER = ["-c", "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"]


def _start_both_and_signal(signal_number, tmp_path, caller_sigint):
    """Starts SLEEPER as a new interpreter, then warm, from a caller whose SIGINT handler is
    `caller_sigint`, sends each `signal_number` once it runs and returns both processes."""
    previous = signal.signal(signal.SIGINT, caller_sigint)
    processes = []
    try:
        for start in (lambda argv: subprocess.Popen([sys.executable, *argv]), warm_python.start):
            started = tmp_path / f"started_{len(processes)}"
            process = start([*SLEEPER, str(started)])
            deadline = time.monotonic() + 60
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal_number)
            processes.append(process)
    finally:
        signal.signal(signal.SIGINT, previous)
    return processes


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_ends_it_as_it_ends_a_new_interpreter(signal_number, tmp_path):
    # Ctrl-C reaches a child whose parent does not ignore it, however this suite was started.
    processes = _start_both_and_signal(signal_number, tmp_path, signal.default_int_handler)
    results = [process.wait(timeout=60) for process in processes]
    assert results[1] == results[0] == -signal_number


def test_ctrl_c_is_ignored_as_a_new_interpreter_ignores_it_when_its_parent_does(tmp_path):
    processes = _start_both_and_signal(signal.SIGINT, tmp_path, signal.SIG_IGN)
    time.sleep(0.5)
    assert [process.poll() for process in processes] == [None, None]
    for process in processes:
        process.terminate()
    assert [process.wait(timeout=60) for process in processes] == [-signal.SIGTERM] * 2


def test_a_child_is_a_process_of_its_own_and_a_timeout_kills_it():
    process = warm_python.start(["-c", "import time; time.sleep(60)"])
    assert process.pid not in (os.getpid(), None) and process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    with pytest.raises(subprocess.TimeoutExpired):
        warm_python.run(["-c", "import time; time.sleep(60)"], timeout=0.5)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL


def test_output_goes_to_an_open_file_even_after_the_caller_closes_it(tmp_path):
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        process = warm_python.start(["-c", "import sys; print('one'); print('two', file=sys.stderr)"], stdout=log,
                                    stderr=subprocess.STDOUT)
    assert process.wait(timeout=60) == 0
    assert sorted(log_path.read_text().split()) == ["one", "two"]


def _client_env():
    """A new Python's environment that imports warm_python and has no shared server of its own."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(warm_python.__file__),
                                                       *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop(warm_python.SHARED_SERVER, None)
    return env


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_the_server_stops_when_its_client_ends_without_running_atexit():
    # A test worker can end without its atexit functions (which ask the server to stop): the
    # server must not outlive it. The client preloads only json, to start quickly.
    client = ("import os, warm_python; warm_python.PRELOAD = ('json',); warm_python.server_socket(); "
              "print(warm_python._servers[warm_python.DEFAULT][0].pid, flush=True); os._exit(0)")
    result = subprocess.run([sys.executable, "-c", client], env=_client_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    server = int(result.stdout)
    deadline = time.monotonic() + 30
    while warm_python.is_running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    outlived = warm_python.is_running(server)
    if outlived:
        os.kill(server, signal.SIGKILL)
    assert not outlived, f"the warm server {server} outlived its client"


def test_processes_started_after_a_shared_server_fork_their_commands_from_it():
    # What the suite's controller does (tests/conftest.py) and what its workers then do.
    session = textwrap.dedent("""
        import os, subprocess, sys, warm_python
        warm_python.PRELOAD = ("json",)
        warm_python.start_shared_server()
        worker = ("import warm_python; "
                  "print(warm_python.run(['-c', 'import os; print(os.getppid())'], capture_output=True, "
                  "text=True).stdout.strip())")
        parents = [subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, check=True,
                                  timeout=120).stdout.strip() for _ in range(2)]
        print(os.environ[warm_python.SHARED_SERVER].split(":")[0], *parents)
    """)
    result = subprocess.run([sys.executable, "-c", session], env=_client_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    server, *parents = result.stdout.split()
    assert parents == [server, server]


def test_a_child_leaves_the_preloaded_objects_out_of_its_garbage_collections():
    # TensorFlow's objects alone are hundreds of thousands: a child's full collection scanned them
    # all (0.27 s of a tiny training run's child) and copied the pages it shares with the server.
    code = "import gc; gc.collect(); print(gc.get_freeze_count(), len(gc.get_objects()))"
    result = warm_python.run(["-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    frozen, scanned = map(int, result.stdout.split())
    assert frozen > 100_000 and scanned < frozen


def test_the_tensorflow_only_server_forks_children_that_cannot_import_keras():
    # The Keras-free serving processes: TensorFlow already imported, Keras blocked in the server
    # before that import, as those commands block it themselves.
    code = "import sys; print('tensorflow' in sys.modules, flush=True); import keras"
    result = warm_python.run(["-c", code], capture_output=True, text=True, kind=warm_python.TENSORFLOW_ONLY)
    assert result.stdout.split() == ["True"]
    assert result.returncode == 1 and "import of keras halted" in result.stderr
    # The default server's children have Keras: another server.
    assert warm_python.run(["-c", "import keras"], capture_output=True).returncode == 0


def test_a_memory_limited_child_is_capped_like_a_new_process_under_memory_limited():
    # What export.serving_check.runner.memory_limited does for a new interpreter.
    code = ("import resource, sys; print(resource.getrlimit(resource.RLIMIT_AS)[0], sys.argv[1:], flush=True); "
            "bytearray(8 << 30)")
    limit = 6 << 30
    result = warm_python.run(["-c", code, "a b"], capture_output=True, text=True, memory_limit_bytes=limit)
    assert result.stdout.strip() == f"{limit} ['a b']"
    assert result.returncode == 1 and "MemoryError" in result.stderr  # the 8 GiB allocation hit the cap


def test_the_python_executable_runs_a_script_warm_and_ends_as_its_child(tmp_path):
    # What the GPU check's bash script is given as $PYTHON: streams, folder and environment are the
    # caller's, and the exit status, a signal's included, is the child's.
    python = warm_python.python_executable(str(tmp_path))
    code = ("import json, os, sys; print(json.dumps([os.getcwd(), os.environ['WARM_TEST'], sys.argv[1:], "
            "os.getppid()])); sys.exit(3)")
    result = subprocess.run([python, "-c", code, "a b"], cwd=tmp_path, env=dict(os.environ, WARM_TEST="yes"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]
    folder, value, args, parent = json.loads(result.stdout)
    assert (folder, value, args) == (str(tmp_path), "yes", ["a b"])
    server = warm_python.run(["-c", "import os; print(os.getppid())"], capture_output=True, text=True).stdout
    assert parent == int(server)  # forked by the server, not a new interpreter
    for signal_number in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL's handler cannot even be set
        killed = subprocess.run([python, "-c", f"import os; os.kill(os.getpid(), {int(signal_number)})"],
                                capture_output=True, text=True, timeout=120)
        assert (killed.returncode, killed.stderr) == (-signal_number, "")
