"""Shared test setup: quiet TensorFlow logs; two logical CPUs for distribution tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# Why a problem, if any, kept the two logical CPU devices from being made (see two_logical_cpus).
_LOGICAL_CPU_PROBLEM = None


def _prepare_tensorflow():
    """What every process that runs tests needs before its first test module is imported."""
    global _LOGICAL_CPU_PROBLEM  # noqa: PLW0603
    import fcntl  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    # Two logical CPU devices let MirroredStrategy run two replicas on this machine. This must happen
    # before any test touches a device.
    cpus = tf.config.list_physical_devices("CPU")
    _LOGICAL_CPU_PROBLEM = None if cpus else "TensorFlow lists no physical CPU"
    if cpus:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
            )
        except RuntimeError as error:  # devices already initialised by something imported earlier
            _LOGICAL_CPU_PROBLEM = str(error)

    # ART configures logging when first imported (logging.config.dictConfig), which closes every
    # handler that exists at that moment, pytest's log capture among them: a test that imported it
    # first (the robustness evaluation does, lazily) then failed at teardown with "I/O operation on
    # closed file". Imported here, before pytest's logging plugin makes its handlers (its
    # pytest_configure runs last).
    # ART also writes ~/.art/config.json at its first import, and fails with NameError ('_config')
    # when another process creates that file between its two checks for it: three workers starting
    # on a fresh machine did. The lock makes the workers import it one at a time.
    with (
        open(os.path.join(tempfile.gettempdir(), "jem_tf_tests_art_import.lock"), "w") as lock,
        warnings.catch_warnings(),
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)
        warnings.filterwarnings("ignore", message="PyTorch not found", category=UserWarning)
        import art  # noqa: F401, PLC0415


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts) starts one worker more than this process may use cores: with
    one per core the CPU was 89% busy, the workers waiting part of the time on the processes their
    tests start. On the 2-core machine, 3 workers took 587 and 579 s against 629 and 621 s for 2,
    each pair run back to back. xdist's own PYTEST_XDIST_AUTO_NUM_WORKERS still decides when it is set."""
    del config
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return len(os.sched_getaffinity(0)) + 1


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Under xdist the session's controller runs no test: it never imports TensorFlow (about 8 s of
    CPU before the first worker started) and starts the warm Python server (tests/warm_python.py)
    that all its workers share: one more TensorFlow import in all, not one per worker. Every other
    process (a worker, or this one under `-n 0`) prepares TensorFlow before it imports a test module.
    A second shared server forks the TensorFlow-only (Keras-free) serving processes: four of them
    otherwise imported TensorFlow each."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        import warm_python  # noqa: PLC0415

        warm_python.start_shared_server()
        warm_python.start_shared_server(warm_python.TENSORFLOW_ONLY)
    else:
        _prepare_tensorflow()


FILE_SECONDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "file_seconds.json")


def longest_files_first(items, file_seconds):
    """`items` ordered by their file's recorded seconds, longest first; a file without a record
    first of all (it may be long); a file's own tests keep their order."""
    rank = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        rank.setdefault(path, (-file_seconds.get(path, float("inf")), len(rank)))
    return sorted(items, key=lambda item: rank[item.nodeid.split("::")[0]])


def pytest_collection_modifyitems(config, items):
    """The longest test files first (tests/file_seconds.json, written by `python -m
    tools.suite_file_seconds` from a measured run): xdist (`--dist=loadfile --no-loadscope-reorder` in
    pyproject.toml) hands out files in this order, so the session ends on short files with every
    worker busy, instead of one worker alone on a long file that came last (the GPU check's or the
    multi-worker runs, when files were handed out by their number of tests)."""
    del config
    import json  # noqa: PLC0415

    try:
        with open(FILE_SECONDS) as f:
            file_seconds = json.load(f)["seconds"]
    except FileNotFoundError:
        file_seconds = {}
    items[:] = longest_files_first(items, file_seconds)


def pytest_collection_finish(session):
    """Once the test modules are imported, what they imported (TensorFlow, Keras, ... : about 450,000
    objects that live as long as the process) leaves the garbage collector's generations: every full
    collection, those the interpreter starts as the tests allocate and those pytest makes at the end,
    then scans what the tests made instead of all of it (0.9 of 1.1 s of collecting, over ten tiny
    training runs in one process). Objects made from here on are collected as before."""
    del session
    import gc  # noqa: PLC0415

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def two_logical_cpus():
    """The names of the two logical CPU devices for the 1-vs-2-replica tests.

    Fails, never skips, when they could not be made: a suite that quietly skipped its only
    distribution checks would pass without checking the replica arithmetic at all."""
    import tensorflow as tf  # noqa: PLC0415

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.fail(
            f"needs two logical CPU devices but TensorFlow has {devices}; tests/conftest.py creates them before "
            f"TensorFlow initialises its devices" + (f", which failed: {_LOGICAL_CPU_PROBLEM}" if _LOGICAL_CPU_PROBLEM
                                                     else "") + ". Run the tests with pytest from the repository "
            "root, so that conftest.py is imported before anything touches a device.")
    return devices[:2]


@pytest.fixture(autouse=True)
def _seed_everything():
    """Fixed initial weights and global seeds per test: results do not depend on test order."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "")


def _is_loopback(host) -> bool:
    """This machine: loopback names and addresses, or its own host name."""
    import socket  # noqa: PLC0415

    host = host.decode() if isinstance(host, bytes) else str(host)
    return (host in _LOOPBACK_HOSTS or host.startswith("127.") or host.endswith(".localhost")
            or host == socket.gethostname())


@pytest.fixture(autouse=True)
def _no_outside_network(monkeypatch):
    """No test talks to the outside world (our machines must not send traffic off the machine):
    Python sockets may reach this machine only. A connection or name lookup for any other host
    fails with an error naming it. (Child processes and gRPC's C core are not covered; the tests
    that start children block sockets in them where it matters.)"""
    import socket  # noqa: PLC0415

    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)

    def refuse(host):
        raise OSError(f"tests may not open connections off this machine (to {host!r})")

    def connect(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(address[0])
        return real_connect(sock, address, *args)

    def connect_ex(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(address[0])
        return real_connect_ex(sock, address, *args)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def _distinct_collective_keys():
    """Each test's MirroredStrategy gets its own collective group keys.

    Strategies built in one process otherwise all start at group key 1, and the runtime keeps
    each (group, instance) key's first tensor shape: a second test whose model has another shape
    then fails with "Shape mismatch in the collective instance". TensorFlow's own distribution
    tests avoid this the same way (strategy_combinations.py, `_collective_key_base` "only set this
    in tests"). Bumped after each test too, since a module-scoped fixture that builds a strategy
    runs before the next test's function-scoped fixtures.
    """
    import tensorflow as tf  # noqa: PLC0415

    tf.distribute.MirroredStrategy._collective_key_base += 100000
    yield
    tf.distribute.MirroredStrategy._collective_key_base += 100000


# -- tracing -------------------------------------------------------------------------------------

OWN_PACKAGES = ("jem_tf", "trainers", "export")


@pytest.fixture
def autograph_conversions(monkeypatch):
    """The functions of our packages that autograph converts from here on: a list of
    "module.qualname", recorded with an empty conversion cache so that a conversion an earlier test
    made in this process is not missed. Our code traces as written (`autograph=False`): converting
    its source costs 0.1-0.4 s a function, about 3 s each time a process starts training."""
    from tensorflow.python.autograph.impl import api  # noqa: PLC0415
    from tensorflow.python.autograph.pyct import cache  # noqa: PLC0415

    converted = []
    convert = api._convert_actual

    def record(entity, program_ctx):
        module = getattr(entity, "__module__", None) or ""
        if module.split(".")[0] in OWN_PACKAGES:
            converted.append(f"{module}.{getattr(entity, '__qualname__', entity)}")
        return convert(entity, program_ctx)

    monkeypatch.setattr(api._TRANSPILER, "_cache", cache.CodeObjectCache())
    monkeypatch.setattr(api, "_convert_actual", record)
    return converted


# -- the suite's one tiny run -------------------------------------------------------------------

TINY_FINAL_STEP = 10


def tiny_config(workdir, **overrides):
    """WRN-10-1 JEM on digits, TINY_FINAL_STEP steps with a checkpoint every 5 (0, 5, 10): the real
    training path at a size that runs in seconds. Tests pass what they change as overrides."""
    import dataclasses  # noqa: PLC0415

    from jem_tf.configs import get_preset  # noqa: PLC0415

    config = dataclasses.replace(
        get_preset("quick"), workdir=str(workdir), depth=10, width=1, buffer_size=100, sgld_steps=2, batch_size=16,
        export=False, summary_every_steps=5, sample_every_steps=100, max_steps=TINY_FINAL_STEP,
        checkpoint_every_steps=5, validation_fraction=0.0,
    )
    return dataclasses.replace(config, **overrides)


# tiny_config as `jem_tf.train` flags.
TINY_FLAGS = ["--preset=quick", "--depth=10", "--width=1", "--buffer_size=100", "--sgld_steps=2", "--batch_size=16",
              "--export=false", "--summary_every_steps=5", "--sample_every_steps=100",
              f"--max_steps={TINY_FINAL_STEP}", "--checkpoint_every_steps=5", "--validation_fraction=0"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """tiny_config trained once for the whole session, uninterrupted: checkpoints 0, 5, 10.

    Shared: read it, never change it. A test that damages, resumes or writes into a run takes
    `tiny_run_copy` instead."""
    import os  # noqa: PLC0415

    from jem_tf.workdir import checkpoints  # noqa: PLC0415
    from trainers import loop  # noqa: PLC0415

    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    metrics = loop.train(tiny_config(workdir))
    assert metrics["global_step"] == TINY_FINAL_STEP
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [0, 5, TINY_FINAL_STEP]
    return workdir


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A copy of the session's tiny run that the test may damage, resume or write into."""
    import shutil  # noqa: PLC0415

    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    return workdir


# -- checkpoints compared tensor by tensor --------------------------------------------------------


def checkpoint_tensors(workdir, step):
    """Every tensor of checkpoint `step` (weights, optimizer, replay buffer) by name; not the object
    graph or the count of saves, which differ when a run was interrupted."""
    import os  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints", f"ckpt-{step}"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter/")}


def assert_same_checkpoint(workdir, reference_workdir, step):
    """Checkpoint `step` of `workdir` equals the reference run's bit for bit: the same run."""
    import numpy as np  # noqa: PLC0415

    got, want = checkpoint_tensors(workdir, step), checkpoint_tensors(reference_workdir, step)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    return want


# -- command lines in process -----------------------------------------------------------------

# Commands whose `__main__` parses through `cli.run` (a bad flag exits 2); the others use absl's
# own `app.run` (a bad flag exits 1).
_CLI_RUN_COMMANDS = ("jem_tf.train", "jem_tf.evaluate", "export.savedmodel")


class CommandResult:
    """What a finished command left: its exit code, stdout, and stderr (its log lines included)."""

    def __init__(self, args, returncode, stdout, stderr):
        self.args, self.returncode, self.stdout, self.stderr = args, returncode, stdout, stderr

    def __repr__(self):
        return f"CommandResult({self.args!r}, returncode={self.returncode}, stderr={self.stderr[-2000:]!r})"


def run_command(module_name: str, *args: str) -> CommandResult:
    """`python -m module_name ARGS` run in this process, for the tests where a real process is not the
    point: the module's flags are defined on a fresh absl FlagValues and parsed as its `__main__`
    parses them, then its `main` runs; the exit code is what the process would exit with (SystemExit's
    code, `main`'s return value, 1 with the traceback on stderr for an uncaught exception).

    Saves the ~5-10 s TensorFlow import of a new interpreter per call. Tests of signals, of the
    process's own exit status or of a second process's view keep their subprocess."""
    import contextlib  # noqa: PLC0415
    import importlib  # noqa: PLC0415
    import io  # noqa: PLC0415
    import logging as std_logging  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    from absl import flags  # noqa: PLC0415

    from jem_tf import cli  # noqa: PLC0415

    module = importlib.import_module(module_name)
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    argv = [module_name, *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    handler = std_logging.StreamHandler(stderr)
    handler.setFormatter(std_logging.Formatter("%(levelname).1s %(filename)s:%(lineno)d] %(message)s"))
    absl_logger = std_logging.getLogger("absl")
    level = absl_logger.level
    saved = flags.FLAGS, getattr(module, "FLAGS", None)
    flags.FLAGS = flag_values
    if saved[1] is not None:
        module.FLAGS = flag_values
    absl_logger.addHandler(handler)
    absl_logger.setLevel(std_logging.INFO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                if module_name in _CLI_RUN_COMMANDS:
                    remaining = cli.parse_flags(argv)
                    if len(remaining) > 1:  # what cli.run says before main
                        raise cli.UsageError(f"Unexpected arguments {remaining[1:]}: every setting is a --flag=value.")
                else:
                    try:
                        remaining = flag_values(argv)
                    except flags.Error as error:
                        stderr.write(f"FATAL Flags parsing error: {error}\n")
                        raise SystemExit(1) from None
                code = module.main(remaining)
            except cli.UsageError as error:
                std_logging.getLogger("absl").error("%s", error)
                code = cli.EXIT_BAD_INPUT
            except SystemExit as exit_:
                code = exit_.code
            except Exception:  # noqa: BLE001 (a real process prints it and exits 1)
                traceback.print_exc(file=stderr)
                code = 1
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
        flags.FLAGS = saved[0]
        if saved[1] is not None:
            module.FLAGS = saved[1]
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit 1
        stderr.write(f"{code}\n")
        code = 1
    return CommandResult(argv, code, stdout.getvalue(), stderr.getvalue())
