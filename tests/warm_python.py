"""Real Python processes for the tests without paying for the TensorFlow import in each.

A new interpreter spends 12-15 s of CPU importing TensorFlow and Keras on the 2-core machine, and the
suite starts over a hundred of them where a real process is the point (signals, exit codes, a second
process's view, multi-worker training). This module is a fork server: one process per test worker
imports the heavy libraries once, before TensorFlow's runtime has started any thread pool, and forks
a child for each command. The child is a real process: its own pid, environment, working directory,
standard streams, signal handling and exit status, and it runs `-m module`, `-c code` or a script
as `python` would. What differs from a fresh interpreter is only that the libraries in `PRELOAD` are
already imported (never our own code, so module-level state and flag definitions start fresh),
and that their objects are frozen out of the garbage collector's generations (`gc.freeze`).

Use `start(...)` where the tests used `subprocess.Popen([sys.executable, ...])` and `run(...)` for
`subprocess.run`. Commands that must not have Keras loaded (the TensorFlow-only serving processes)
pass `kind=TENSORFLOW_ONLY`: a second server, which blocks Keras before it imports TensorFlow as
those commands do themselves, forks them.

Run as a script, this file is the server: `python tests/warm_python.py SOCKET MODULE...` (the
modules to preload; `!MODULE` blocks one). It stops when its client asks it to or exits: the client
holds the other end of the server's stdin, so the server sees end of file when the client is gone,
however it ended (a test worker ends without running its atexit functions).
"""

import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# Third-party libraries only: importing them costs the time; running them is the command's job.
PRELOAD = ("numpy", "absl.app", "absl.flags", "absl.logging", "tensorflow", "keras", "PIL.Image", "scipy.stats",
           "sklearn.datasets", "matplotlib")
# The kinds of server. TENSORFLOW_ONLY's first names are blocked ("!name": importing it fails in the
# server and its children), then TensorFlow and what the serving processes load are imported.
DEFAULT, TENSORFLOW_ONLY = "default", "tensorflow_only"
TENSORFLOW_ONLY_PRELOAD = ("!keras", "!tf_keras", "numpy", "tensorflow", "tensorflow_serving.apis.predict_pb2")


# -- the server -------------------------------------------------------------------------------

# The server's sys.path without its script's folder and its own PYTHONPATH: the interpreter's part.
_BASE_PATH = []


def _run_child(request, standard_fds, inherited_fds):
    """In the forked child: become the requested process, run the command, exit with its status.
    Never returns: a failure to set up exits 70 with the reason on the command's stderr."""
    try:
        for fd in inherited_fds:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # A new interpreter keeps Ctrl-C ignored when its parent ignores it (a background job of a
        # shell) and raises KeyboardInterrupt otherwise: the caller's disposition, not the server's.
        signal.signal(signal.SIGINT, signal.SIG_IGN if request["sigint_ignored"] else signal.default_int_handler)
        for fd, given in enumerate(standard_fds):
            os.dup2(given, fd)
        for given in set(standard_fds):
            if given > 2:
                os.close(given)
        os.chdir(request["cwd"])
        if request.get("memory_limit_bytes"):
            # What export.serving_check.runner.memory_limited gives a new process: the address space capped.
            import resource  # noqa: PLC0415

            resource.setrlimit(resource.RLIMIT_AS, (request["memory_limit_bytes"],) * 2)
        os.environ.clear()
        os.environ.update(request["env"])
        # sys.path as a new interpreter with this PYTHONPATH would start it; [0] is set per command below.
        python_path = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[1:] = [*python_path, *(p for p in _BASE_PATH if p not in python_path)]
    except BaseException as error:  # noqa: BLE001
        os.write(2, f"warm_python: could not start the command: {error!r}\n".encode())
        os._exit(70)
    code = 0
    try:
        argv = request["argv"]
        if argv[0] == "-m":
            import runpy  # noqa: PLC0415

            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            import types  # noqa: PLC0415

            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            main = sys.modules["__main__"] = types.ModuleType("__main__")
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            import runpy  # noqa: PLC0415

            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    except KeyboardInterrupt:
        # What python does with an uncaught Ctrl-C: the traceback, then death by SIGINT.
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 (python prints it and exits 1)
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    # The interpreter's own shutdown, in its order: non-daemon threads, atexit, flushed streams.
    try:
        threading._shutdown()
        import atexit  # noqa: PLC0415

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


def serve(socket_path, preload=PRELOAD):
    """Single-threaded, so that forking is safe: one request per connection, answered with the child's
    pid and, when it ends, its wait status. Returns when asked to stop or when stdin ends."""
    own_python_path = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    _BASE_PATH[:] = [p for p in sys.path[1:] if p not in own_python_path]
    for name in preload:
        if name.startswith("!"):
            sys.modules[name[1:]] = None
        else:
            __import__(name)
    gc.collect()  # the imports' garbage, so that only live objects are frozen before each fork
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path + ".binding")
    listener.listen(64)
    # Only a listening socket appears under its path: a client that finds the path can connect.
    os.rename(socket_path + ".binding", socket_path)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "client")
    children = {}  # pid -> the connection that asked for it
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.data == "client":
                if not os.read(key.fd, 4096):  # end of file: the client is gone
                    return
            elif key.data == "accept":
                connection, _ = listener.accept()
                # First the command's stdin, stdout and stderr (one byte carrying them), then the request.
                _, standard_fds, _, _ = socket.recv_fds(connection, 1, 3)
                request = json.loads(connection.makefile("r").readline())
                if request.get("stop"):
                    return
                inherited = [listener.fileno(), wake_read, wake_write, connection.fileno(),
                             *(c.fileno() for c in children.values())]
                # Everything this process holds (about 400,000 objects, nearly all the preloads')
                # leaves the collector's generations: a child's full collection would otherwise scan
                # them all (0.27 s of CPU in a tiny training run's child) and, by writing to their
                # headers, copy the pages it shares with this process (20,000 page faults).
                gc.freeze()
                pid = os.fork()
                if pid == 0:
                    _run_child(request, standard_fds, inherited)
                for fd in standard_fds:
                    os.close(fd)
                children[pid] = connection
                connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            else:
                os.read(wake_read, 4096)
                while children:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        break
                    connection = children.pop(pid, None)
                    if connection is not None:
                        try:
                            connection.sendall(json.dumps({"status": status}).encode() + b"\n")
                        except OSError:  # the client went away
                            pass
                        connection.close()


# -- the client -------------------------------------------------------------------------------

_servers = {}  # kind -> (this process's own server process, or None for a shared one; its socket)
_server_lock = threading.Lock()
# One server of each kind for a whole test session: "PID:SOCKET" of the server the session's first
# process started (tests/conftest.py), inherited by the test workers it starts.
SHARED_SERVER = "WARM_PYTHON_SERVER"
SHARED_SERVER_TIMEOUT_S = 600
# subprocess's own functions, for PythonCommandsWarm to fall back on when it is patched in.
_POPEN, _RUN = subprocess.Popen, subprocess.run


def shared_variable(kind):
    """The environment variable naming the session's shared server of `kind`."""
    return SHARED_SERVER if kind == DEFAULT else f"{SHARED_SERVER}_{kind.upper()}"


def _preload(kind):
    return PRELOAD if kind == DEFAULT else TENSORFLOW_ONLY_PRELOAD


def use_server(socket_path, kind=DEFAULT):
    """Makes this process a client of a server that is already running (a warm child passes its
    server's socket on to the commands it starts itself)."""
    _servers[kind] = (None, socket_path)


def server_socket(kind=DEFAULT):
    """The session's shared server of `kind` (`start_shared_server`) once it listens, else this
    process's own, started on first use and stopped when this process exits."""
    with _server_lock:
        server = _servers.get(kind)
        if server is not None and server[0] is None:
            return server[1]
        if os.environ.get(shared_variable(kind)):
            pid, path = os.environ[shared_variable(kind)].split(":", 1)
            _wait_until_listening(int(pid), path)
            _servers[kind] = (None, path)
            return path
        if server is None or server[0].poll() is not None:
            process, path = _start_server(kind)
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the warm Python server did not start (exit {process.wait()})")
            _servers[kind] = (process, path)
        return _servers[kind][1]


def start_shared_server(kind=DEFAULT):
    """Starts a server of `kind` for this process and the processes it starts afterwards (they
    inherit its variable), without waiting for its imports: a test session's workers then share one
    server instead of each importing TensorFlow once more for its own."""
    with _server_lock:
        process, path = _start_server(kind)
        os.environ[shared_variable(kind)] = f"{process.pid}:{path}"


def _start_server(kind):
    directory = tempfile.mkdtemp(prefix="warm_python_")
    path = os.path.join(directory, "socket")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    for other in (DEFAULT, TENSORFLOW_ONLY):
        env.pop(shared_variable(other), None)
    # stdin: the pipe whose end of file tells the server this process is gone.
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), path, *_preload(kind)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                               text=True)
    import atexit  # noqa: PLC0415

    atexit.register(_stop_server, process, path)
    return process, path


def _wait_until_listening(pid, path):
    deadline = time.monotonic() + SHARED_SERVER_TIMEOUT_S
    while not os.path.exists(path):
        if not is_running(pid):
            raise RuntimeError(f"the shared warm Python server (pid {pid}, {SHARED_SERVER}) ended before it listened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shared warm Python server (pid {pid}) did not listen on {path} within "
                               f"{SHARED_SERVER_TIMEOUT_S} s")
        time.sleep(0.05)


def is_running(pid):
    """Whether `pid` runs; a zombie (ended, not yet reaped by its parent) does not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel, which counts a zombie as running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _stop_server(process, path):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(path)
            with open(os.devnull) as null:
                socket.send_fds(connection, [b"-"], [null.fileno()] * 3)
            connection.sendall(b'{"stop": true}\n')
        process.wait(timeout=10)
    except Exception:  # noqa: BLE001 (best effort at exit)
        process.kill()


class WarmProcess:
    """The parts of `subprocess.Popen` the tests use, for a child of the warm server."""

    def __init__(self, argv, cwd=None, env=None, stdout=None, stderr=None, text=False, kind=DEFAULT,
                 memory_limit_bytes=None):
        """`argv` is what follows `python` on a command line. stdout/stderr: None (inherit),
        subprocess.DEVNULL, subprocess.PIPE (read by `communicate`), subprocess.STDOUT (stderr only),
        or an open file. `kind`: the server that forks it; `memory_limit_bytes`: its address space
        capped (RLIMIT_AS) as `export.serving_check.runner.memory_limited` caps a new process's."""
        self.args = [sys.executable, *argv]
        self.returncode = None
        self._text = text
        self._captured = {}
        opened = [os.open(os.devnull, os.O_RDONLY)]  # stdin, as the tests never write to a child
        fds = [opened[0]]
        for name, target, inherited in (("stdout", stdout, 1), ("stderr", stderr, 2)):
            if target is None:
                fds.append(inherited)
            elif target == subprocess.DEVNULL:
                opened.append(os.open(os.devnull, os.O_WRONLY))
                fds.append(opened[-1])
            elif target == subprocess.PIPE:  # a file read back by communicate()
                handle, path = tempfile.mkstemp(prefix=f"warm_{name}_")
                self._captured[name] = path
                opened.append(handle)
                fds.append(handle)
            elif target == subprocess.STDOUT:
                fds.append(fds[1])
            else:
                target.flush()
                fds.append(target.fileno())
        request = dict(argv=list(argv), cwd=os.path.abspath(cwd or os.getcwd()),
                       env=dict(os.environ if env is None else env),
                       sigint_ignored=signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                       memory_limit_bytes=memory_limit_bytes)
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connection.connect(server_socket(kind))
            socket.send_fds(self._connection, [b"-"], fds)
            self._connection.sendall(json.dumps(request).encode() + b"\n")
        finally:
            for fd in opened:
                os.close(fd)
        self._reader = self._connection.makefile("r")
        self.pid = json.loads(self._reader.readline())["pid"]

    def poll(self):
        if self.returncode is None:
            ready = selectors.DefaultSelector()
            ready.register(self._connection, selectors.EVENT_READ)
            if ready.select(timeout=0):
                self._finish()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            ready = selectors.DefaultSelector()
            ready.register(self._connection, selectors.EVENT_READ)
            if not ready.select(timeout=timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._finish()
        return self.returncode

    def _finish(self):
        line = self._reader.readline()
        self._connection.close()
        if not line:
            raise RuntimeError(f"the warm Python server lost track of process {self.pid}")
        self.returncode = os.waitstatus_to_exitcode(json.loads(line)["status"])

    def communicate(self, timeout=None):
        self.wait(timeout)
        out = []
        for name in ("stdout", "stderr"):
            path = self._captured.pop(name, None)
            if path is None:
                out.append(None)
                continue
            with open(path, "rb") as f:
                data = f.read()
            os.unlink(path)
            out.append(data.decode(errors="replace") if self._text else data)
        return tuple(out)

    def send_signal(self, signal_number):
        if self.returncode is None:
            os.kill(self.pid, signal_number)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def start(argv, **kwargs) -> WarmProcess:
    """`subprocess.Popen([sys.executable, *argv], **kwargs)` without the import time."""
    return WarmProcess(argv, **kwargs)


def run(argv, cwd=None, env=None, capture_output=False, text=False, timeout=None, stdout=None,
        stderr=None, kind=DEFAULT, memory_limit_bytes=None) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, *argv], ...)` without the import time; kills the child past
    `timeout` and raises TimeoutExpired, as subprocess.run does."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    process = WarmProcess(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text, kind=kind,
                          memory_limit_bytes=memory_limit_bytes)
    try:
        stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


class PythonCommandsWarm:
    """Stands in for the `subprocess` module of code under test: its `Popen` and `run` start
    `sys.executable` commands in the warm server and anything else as usual."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(command, **kwargs):  # noqa: N802 (subprocess's name)
        if command[0] != sys.executable:
            return _POPEN(command, **kwargs)
        return start(command[1:], **kwargs)

    @staticmethod
    def run(command, **kwargs):
        if command[0] != sys.executable:
            return _RUN(command, **kwargs)
        return run(command[1:], **kwargs)


def launch(socket_path, argv):
    """`python tests/warm_python.py --run SOCKET ARGS...`: `python ARGS` forked by the server at
    SOCKET, with this process's stdout, stderr, environment and folder (stdin is /dev/null, as for
    every warm child); SIGTERM and SIGINT are passed on, and this process ends as the child did.
    What a script that starts `$PYTHON` (the GPU check's bash script) is given as `PYTHON`, through
    `python_executable`."""
    use_server(socket_path)
    process = WarmProcess(argv)
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: process.send_signal(number))
    code = process.wait()
    if code < 0:
        if -code != signal.SIGKILL:  # SIGKILL's disposition cannot be set, and is always the default
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def python_executable(directory):
    """An executable in `directory` that runs `python ARGS` warm (`launch`), for a script that
    starts Python as `$PYTHON`."""
    path = os.path.join(directory, "warm_python")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -S "{os.path.abspath(__file__)}" --run "{server_socket()}" "$@"\n')
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    if sys.argv[1] == "--run":
        launch(sys.argv[2], sys.argv[3:])
    serve(sys.argv[1], sys.argv[2:])
