"""The project's own fault sweep (issue #15): run-directory, importer and command-line faults, each
tried the way an unlucky operator or an attacker would, and counted as survived only when nothing
was lost (checkpoints kept or moved into checkpoints/broken/, planted link targets untouched, no
partial file) and the command ended cleanly (its documented exit code, no traceback).

    python tests/fault_sweep.py                       # writes docs/results/hostile_faults.json
    python tests/fault_sweep.py --output=/tmp/x.json

tests/test_fault_sweep.py runs every fault as a test. Faults needing a small tmpfs (root) are
counted as skipped where it cannot be mounted. A couple of minutes on 2 cores.
"""

import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
for _path in (REPO, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import conftest  # noqa: E402
import hostile_pt  # noqa: E402
import warm_python  # noqa: E402
from conftest import TINY_FINAL_STEP as FINAL_STEP  # noqa: E402 (the suite's one tiny run)
from conftest import TINY_FLAGS, tiny_config  # noqa: E402

FAULTS = {}  # name -> (group, function(sweep) -> detail); raises Unsurvived or Skipped


class Unsurvived(AssertionError):
    """The fault lost something or ended uncleanly."""


class Skipped(Exception):
    """The fault cannot be tried on this machine (e.g. no tmpfs without root)."""


def fault(group):
    def register(function):
        FAULTS[function.__name__.removeprefix("fault_").replace("_", " ")] = (group, function)
        return function
    return register


def expect(condition, message):
    if not condition:
        raise Unsurvived(message)


class Sweep:
    """A scratch folder and one trained tiny run (checkpoints 0, 5, 10) that faults copy: `reference`,
    a trained tiny_config run to use instead of training one (the tests pass a copy of the session's).
    `in_process` (the tests): commands run in this process, and those that need a process of their own
    start warm (tests/warm_python.py); the standalone sweep starts a new interpreter for each."""

    def __init__(self, root, reference=None, in_process=False):
        self.root = root
        self._reference = reference
        self.in_process = in_process
        self._count = 0
        self._lock = threading.Lock()

    def scratch(self, name="case"):
        with self._lock:
            self._count += 1
            path = os.path.join(self.root, f"{self._count:02d}-{name}")
        os.makedirs(path)
        return path

    @property
    def reference(self):
        if self._reference is None:
            from trainers import loop  # noqa: PLC0415

            self._reference = os.path.join(self.root, "reference")
            loop.train(tiny_config(self._reference))
        return self._reference

    def copy(self):
        workdir = os.path.join(self.scratch("run"), "run")
        shutil.copytree(self.reference, workdir)
        return workdir

    def command(self, module, *args):
        """(exit code, stderr) of `python -m module args`: a new interpreter, or with `in_process`
        (the tests, which run one fault at a time) the module's main in this one through
        conftest.run_command, which ends with the same exit code and logs the same lines."""
        if not self.in_process:
            return run_command(module, *args)
        result = conftest.run_command(module, *args)
        return result.returncode, result.stderr

    def process(self, module, *args, env=None):
        """(exit code, stderr) of `python -m module args` in a process of its own, for the faults where
        the process is the point (the serving check's refusals): a new interpreter, or in the tests a
        warm one from tests/warm_python.py."""
        return run_command(module, *args, env=env, warm=self.in_process)

    @contextlib.contextmanager
    def tmpfs(self, size):
        mount_point = self.scratch("tmpfs")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount_point],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            raise Skipped(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", "-l", mount_point], capture_output=True)


def checkpoint_folder(workdir):
    return os.path.join(workdir, "checkpoints")


def steps(workdir):
    from jem_tf.workdir import checkpoints  # noqa: PLC0415

    return checkpoints.checkpoint_steps(checkpoint_folder(workdir))


def broken_steps(workdir):
    broken = os.path.join(checkpoint_folder(workdir), "broken")
    names = os.listdir(broken) if os.path.isdir(broken) else []
    return sorted(int(n.split(".")[0].split("-")[1]) for n in names if n.startswith("ckpt-") and n.endswith(".index"))


def data_file(workdir, step):
    (name,) = [n for n in os.listdir(checkpoint_folder(workdir)) if n.startswith(f"ckpt-{step}.data-")]
    return os.path.join(checkpoint_folder(workdir), name)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def run_command(module, *args, env=None, timeout=300, warm=False):
    """`python -m module args`: (exit code, stderr); `warm`: started by tests/warm_python.py."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, **(env or {}))
    if warm:
        result = warm_python.run(["-m", module, *args], cwd=REPO, env=environment, capture_output=True, text=True,
                                 timeout=timeout)
        return result.returncode, result.stderr
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=timeout)
    return result.returncode, result.stderr


def expect_clean_exit(code, stderr, expected, *message_parts):
    tail = stderr[-1500:]
    expect("Traceback" not in stderr, f"a traceback (exit {code}): {tail}")
    expect(code == expected, f"exit code {code}, expected {expected}: {tail}")
    for part in message_parts:
        expect(part in stderr, f"the message does not name {part!r}: {tail}")
    return f"exit {code}, no traceback"


# -- the run directory (in-process training, as the tests do) ------------------------------------


def _resume(workdir, **overrides):
    from trainers import loop  # noqa: PLC0415

    return loop.train(tiny_config(workdir, **overrides))


@fault("run directory")
def fault_checkpoint_state_file_deleted(sweep):
    workdir = sweep.copy()
    os.remove(os.path.join(checkpoint_folder(workdir), "checkpoint"))
    metrics = _resume(workdir)
    expect(metrics["steps_this_session"] == 0, "restarted instead of resuming at step 10")
    return "resumed at step 10"


@fault("run directory")
def fault_checkpoint_state_file_garbled(sweep):
    workdir = sweep.copy()
    with open(os.path.join(checkpoint_folder(workdir), "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-\x00\ngarbage {{{')
    expect(_resume(workdir)["steps_this_session"] == 0, "restarted instead of resuming at step 10")
    return "resumed at step 10"


@fault("run directory")
def fault_newest_checkpoint_truncated(sweep):
    workdir = sweep.copy()
    truncate(data_file(workdir, FINAL_STEP))
    metrics = _resume(workdir)
    expect(metrics["steps_this_session"] == FINAL_STEP - 5, "did not resume from checkpoint 5")
    expect(broken_steps(workdir) == [FINAL_STEP], "the damaged checkpoint was not kept in checkpoints/broken/")
    return "resumed from step 5; ckpt-10 kept in checkpoints/broken/"


@fault("run directory")
def fault_newest_index_deleted(sweep):
    workdir = sweep.copy()
    os.remove(os.path.join(checkpoint_folder(workdir), f"ckpt-{FINAL_STEP}.index"))
    expect(_resume(workdir)["steps_this_session"] == FINAL_STEP - 5, "did not resume from checkpoint 5")
    return "resumed from step 5"


@fault("run directory")
def fault_keep_checkpoints_after_a_repair(sweep):
    workdir = sweep.copy()
    os.remove(os.path.join(checkpoint_folder(workdir), "checkpoint"))
    _resume(workdir, max_steps=20, keep_checkpoints=2)
    expect(steps(workdir) == [15, 20], f"kept {steps(workdir)}; a fresh run keeps [15, 20]")
    _resume(workdir, max_steps=25, keep_checkpoints=2)
    expect(steps(workdir) == [20, 25], f"kept {steps(workdir)} after the next start; expected [20, 25]")
    return "rotates like a fresh run"


@fault("run directory")
def fault_every_checkpoint_corrupt(sweep):
    from jem_tf.workdir import checkpoints  # noqa: PLC0415

    workdir = sweep.copy()
    for step in (0, 5, FINAL_STEP):
        truncate(data_file(workdir, step))
    status = open(os.path.join(workdir, "run_status.json")).read()
    try:
        _resume(workdir)
    except checkpoints.NoUsableCheckpointError as error:
        expect(error.exit_code == 5 and "--restart_from_scratch" in str(error), f"unclear refusal: {error}")
    else:
        raise Unsurvived("trained from step 0 without being asked to")
    expect(broken_steps(workdir) == [0, 5, FINAL_STEP], "a damaged checkpoint was not kept")
    expect(open(os.path.join(workdir, "run_status.json")).read() == status, "run_status.json was overwritten")
    return "stopped (exit 5) naming checkpoints/broken/ and --restart_from_scratch"


def _planted_lock(sweep, make_link):
    from jem_tf.workdir import lock  # noqa: PLC0415

    workdir = sweep.copy()
    target = os.path.join(os.path.dirname(workdir), "precious.txt")
    with open(target, "w") as f:
        f.write("keep me")
    os.remove(os.path.join(workdir, ".lock"))
    make_link(target, os.path.join(workdir, ".lock"))
    try:
        _resume(workdir)
    except lock.UnsafeWorkdirError as error:
        expect(error.exit_code == 2, f"exit code {error.exit_code}")
    else:
        raise Unsurvived("trained through a planted lock link")
    expect(open(target).read() == "keep me", "the link's target was overwritten")
    return "refused (exit 2), target untouched"


@fault("run directory")
def fault_lock_is_a_symbolic_link(sweep):
    return _planted_lock(sweep, os.symlink)


@fault("run directory")
def fault_lock_is_a_hard_link(sweep):
    return _planted_lock(sweep, os.link)


@fault("run directory")
def fault_links_planted_at_run_file_names(sweep):
    workdir = sweep.copy()
    target = os.path.join(os.path.dirname(workdir), "precious.txt")
    with open(target, "w") as f:
        f.write("keep me")
    os.symlink(target, os.path.join(workdir, f"config.json.tmp-{os.getpid()}"))
    os.symlink(target, os.path.join(workdir, "samples", "step_0000011.png"))
    _resume(workdir, max_steps=FINAL_STEP + 1)
    expect(open(target, "rb").read() == b"keep me", "a run file was written through a planted link")
    return "config.json and the sample grid written beside the links, targets untouched"


@fault("run directory")
def fault_leftovers_of_a_killed_run(sweep):
    workdir = sweep.copy()
    os.makedirs(os.path.join(checkpoint_folder(workdir), "ckpt-15_temp", "part-00000-of-00001"))
    os.makedirs(os.path.join(workdir, "export", ".staging-15-999999999"))
    with open(os.path.join(workdir, "config.json.tmp-999999999"), "w") as f:
        f.write("{")
    expect(_resume(workdir)["steps_this_session"] == 0, "did not resume at step 10")
    expect(not os.path.exists(os.path.join(checkpoint_folder(workdir), "ckpt-15_temp")), "a staging folder was left")
    return "cleaned; resumed at step 10"


@fault("run directory")
def fault_second_writer(sweep):
    from jem_tf.workdir import lock  # noqa: PLC0415

    workdir = sweep.copy()
    config = open(os.path.join(workdir, "config.json")).read()
    with lock.WorkdirLock(workdir):
        try:
            _resume(workdir, learning_rate=0.02)
        except lock.WorkdirLockedError as error:
            expect(error.exit_code == 2 and "PID" in str(error), f"unclear refusal: {error}")
        else:
            raise Unsurvived("a second writer trained")
    expect(open(os.path.join(workdir, "config.json")).read() == config, "config.json was rewritten")
    return "refused (exit 2) naming the holder"


# -- the reference importer: hostile .pt files, read under 1 GiB of address space and 30 s ------

_BOUNDED_LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from export import torch_checkpoint
try:
    torch_checkpoint.load(sys.argv[1])
    print("LOADED")
except torch_checkpoint.CheckpointFormatError as error:
    print("REFUSED", error)
"""


def _bounded_load(path):
    try:
        result = subprocess.run([sys.executable, "-c", _BOUNDED_LOAD, path], cwd=REPO, capture_output=True, text=True,
                                timeout=30, env=dict(os.environ, PYTHONPATH=REPO))
    except subprocess.TimeoutExpired:
        raise Unsurvived("still reading after 30 s") from None
    expect("Traceback" not in result.stderr, f"a traceback: {result.stderr[-1500:]}")
    return result.stdout


def _importer_fault(make, loads=False):
    def run(sweep):
        path = make(os.path.join(sweep.scratch("pt"), "hostile.pt"))
        stdout = _bounded_load(path)
        if loads:  # shared references: read once; the state-dict check refuses it
            expect(stdout.startswith("LOADED"), stdout[-500:])
            return "read in bounded time and memory; refused later as not a reference network"
        expect(stdout.startswith("REFUSED"), f"not refused: {stdout[-500:]}")
        return stdout.strip()[len("REFUSED "):][:160]
    return run


for _name, _make in hostile_pt.HOSTILE.items():
    FAULTS[_name] = ("importer", _importer_fault(_make, loads=_name == "40 shared nested tuples"))


@fault("importer")
def fault_checkpoint_calling_os_system(sweep):
    import pickle  # noqa: PLC0415

    directory = sweep.scratch("pt")
    marker = os.path.join(directory, "payload_ran")

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = hostile_pt.zip_file(os.path.join(directory, "evil.pt"), pickle.dumps({"model_state_dict": Payload()}, 2))
    stdout = _bounded_load(path)
    expect(stdout.startswith("REFUSED") and "system" in stdout, stdout[-500:])
    expect(not os.path.exists(marker), "the payload ran")
    return "refused, nothing executed"


@fault("importer")
def fault_truncated_legacy_checkpoint(sweep):
    path = os.path.join(sweep.scratch("pt"), "truncated.pt")
    with open(os.path.join(TESTS, "data", "reference", "wrn10x1_legacy.pt"), "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-1000])
    expect(_bounded_load(path).startswith("REFUSED"), "not refused")
    return "refused as damaged"


@fault("importer")
def fault_importer_command_on_a_stride_zero_file(sweep):
    directory = sweep.scratch("pt")
    path = hostile_pt.stride_zero(os.path.join(directory, "stride0.pt"))
    code, stderr = sweep.command("trainers.from_reference", f"--checkpoint={path}", "--dataset=cifar10",
                                 f"--workdir={os.path.join(directory, 'imported')}")
    detail = expect_clean_exit(code, stderr, 2, "Import refused")
    expect(not os.path.exists(os.path.join(directory, "imported")), "a workdir was written")
    return detail


# -- the commands' exit codes and messages (`Sweep.command`; the serving check always in a process of
# its own, as it is run: it builds and runs a C++ binary and reads its cache from the environment) --


@fault("commands")
def fault_train_with_an_empty_workdir(sweep):
    return expect_clean_exit(*sweep.command("jem_tf.train", *TINY_FLAGS, "--workdir="), 2, "--workdir='' is empty")


@fault("commands")
def fault_evaluate_with_an_empty_workdir(sweep):
    return expect_clean_exit(*sweep.command("jem_tf.evaluate", "--workdir="), 2, "--workdir='' is empty")


@fault("commands")
def fault_export_with_an_empty_workdir(sweep):
    return expect_clean_exit(*sweep.command("export.savedmodel", "--workdir="), 2, "--workdir='' is empty")


@fault("commands")
def fault_train_command_on_a_workdir_whose_checkpoints_are_all_corrupt(sweep):
    workdir = sweep.copy()
    for step in (0, 5, FINAL_STEP):
        truncate(data_file(workdir, step))
    detail = expect_clean_exit(*sweep.command("jem_tf.train", *TINY_FLAGS, f"--workdir={workdir}"), 5,
                               "checkpoints/broken", "--restart_from_scratch")
    expect(broken_steps(workdir) == [0, 5, FINAL_STEP], "a damaged checkpoint was not kept")
    return detail


def _fill(mount_point):
    """Fills a tmpfs to the last byte."""
    with contextlib.suppress(OSError), open(os.path.join(mount_point, "filler"), "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def _files_under(directory):
    return sorted(os.path.relpath(os.path.join(d, n), directory) for d, _, names in os.walk(directory) for n in names)


@fault("commands")
def fault_export_on_a_full_disk(sweep):
    workdir = sweep.reference
    with sweep.tmpfs("300k") as mount_point:
        output = os.path.join(mount_point, "export")
        code, stderr = sweep.command("export.savedmodel", f"--workdir={workdir}", f"--output={output}",
                                     "--ood_max_images=20")
        detail = expect_clean_exit(code, stderr, 4, "No space left")
        expect(_files_under(mount_point) == [], f"left behind: {_files_under(mount_point)}")
    return detail + ", nothing left in --output"


@fault("commands")
def fault_evaluate_output_on_a_full_disk(sweep):
    workdir = sweep.reference
    with sweep.tmpfs("200k") as mount_point:
        _fill(mount_point)
        output = os.path.join(mount_point, "eval")
        code, stderr = sweep.command("jem_tf.evaluate", f"--workdir={workdir}", f"--output={output}",
                                     "--eval=accuracy", "--num_examples=20")
        detail = expect_clean_exit(code, stderr, 4, "No space left", "--output")
        left = [name for name in _files_under(mount_point) if name != "filler"]
        expect(left == [], f"left behind: {left}")
    return detail + ", no partial report"


@fault("commands")
def fault_evaluate_on_a_read_only_workdir_without_output(sweep):
    with sweep.tmpfs("16m") as mount_point:
        workdir = os.path.join(mount_point, "run")
        shutil.copytree(sweep.reference, workdir)
        subprocess.run(["mount", "-o", "remount,ro", mount_point], check=True)
        code, stderr = sweep.command("jem_tf.evaluate", f"--workdir={workdir}", "--eval=accuracy", "--num_examples=20")
        return expect_clean_exit(code, stderr, 4, "--output")


def _serving_check(sweep, spoil):
    from export.serving_check import builder  # noqa: PLC0415

    directory = sweep.scratch("serving")
    export_dir = os.path.join(directory, "export", "1")
    os.makedirs(export_dir)
    open(os.path.join(export_dir, "saved_model.pb"), "wb").close()  # refused before the export is read
    cache = os.path.join(directory, "cache")
    os.makedirs(cache, mode=0o700)
    spoil(cache, builder.binary_path(cache))
    code, stderr = sweep.process("export.serving_check", f"--export_dir={export_dir}", env={builder.CACHE_ENV: cache})
    return expect_clean_exit(code, stderr, 2, "Refusing to run the serving check")


@fault("commands")
def fault_serving_check_with_a_group_writable_cache(sweep):
    return _serving_check(sweep, lambda cache, binary: os.chmod(cache, 0o770))


@fault("commands")
def fault_serving_check_with_a_symlinked_binary(sweep):
    def spoil(cache, binary):
        os.makedirs(os.path.dirname(binary), mode=0o700)
        os.symlink("/bin/true", binary)
    return _serving_check(sweep, spoil)


@fault("commands")
def fault_serving_check_with_a_foreign_owned_binary(sweep):
    def spoil(cache, binary):
        if os.geteuid() != 0:
            raise Skipped("needs root to give the binary another owner")
        os.makedirs(os.path.dirname(binary), mode=0o700)
        shutil.copy("/bin/true", binary)
        os.chown(binary, 12345, 12345)
    return _serving_check(sweep, spoil)


@fault("commands")
def fault_serving_check_without_an_export(sweep):
    return expect_clean_exit(*sweep.process("export.serving_check", f"--export_dir={sweep.scratch('none')}"), 2,
                             "saved_model.pb")


# -- running the sweep ---------------------------------------------------------------------------


def run_fault(sweep, name):
    """(outcome, detail, seconds): outcome is survived, lost or skipped."""
    _, function = FAULTS[name]
    start = time.time()
    try:
        detail, outcome = function(sweep), "survived"
    except Skipped as reason:
        detail, outcome = str(reason), "skipped"
    except Exception as error:  # noqa: BLE001 (an unexpected exception is a fault not survived)
        detail, outcome = f"{type(error).__name__}: {str(error)[:500]}", "lost"
    return outcome, detail, round(time.time() - start, 1)


def _commit():
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def main(argv):
    import logging as std_logging  # noqa: PLC0415

    from absl import logging  # noqa: PLC0415

    output = os.path.join(REPO, "docs", "results", "hostile_faults.json")
    for arg in argv[1:]:
        if not arg.startswith("--output="):
            sys.stderr.write(f"usage: python tests/fault_sweep.py [--output=PATH]; got {arg!r}\n")
            return 2
        output = arg.split("=", 1)[1]
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    logging.set_verbosity(logging.ERROR)  # the faults' own warnings are expected
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fault_sweep_") as root:
        sweep = Sweep(root)
        sweep.reference  # noqa: B018 (trained once, before the faults that copy it run side by side)
        # The command faults are subprocesses (mostly TensorFlow's import): they run beside the
        # in-process ones, a few at a time.
        with futures.ThreadPoolExecutor(max_workers=3) as pool:
            pending = {name: pool.submit(run_fault, sweep, name) for name, (group, _) in FAULTS.items()
                       if group == "commands"}
            for name, (group, _) in FAULTS.items():
                outcome, detail, seconds = pending[name].result() if name in pending else run_fault(sweep, name)
                rows.append(dict(group=group, fault=name, outcome=outcome, detail=detail, seconds=seconds))
                sys.stderr.write(f"[{outcome:8s}] {group}: {name} ({seconds} s): {detail}\n")
    tried = [row for row in rows if row["outcome"] != "skipped"]
    summary = dict(
        commit=_commit(), date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        machine=dict(host=socket.gethostname(), platform=platform.platform(), python=platform.python_version(),
                     cpus=os.cpu_count(), root=os.geteuid() == 0),
        command="python tests/fault_sweep.py", seconds=round(time.time() - started, 1),
        faults_tried=len(tried), faults_survived=sum(row["outcome"] == "survived" for row in rows),
        faults_skipped=len(rows) - len(tried),
        by_group={group: dict(tried=sum(r["group"] == group and r["outcome"] != "skipped" for r in rows),
                              survived=sum(r["group"] == group and r["outcome"] == "survived" for r in rows))
                  for group in dict.fromkeys(r["group"] for r in rows)},
        faults=rows,
    )
    summary.update(table_of(summary))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    sys.stderr.write(f"{summary['faults_survived']} of {summary['faults_tried']} faults survived "
                     f"({summary['faults_skipped']} skipped) in {summary['seconds']} s; wrote {output}\n")
    return 0 if summary["faults_survived"] == summary["faults_tried"] else 1


def table_of(summary: dict) -> dict:
    """The counts as a docs table (tools/results_tables.py renders it in docs/reliability.md)."""
    rows = [[group, counts["tried"], counts["survived"]] for group, counts in summary["by_group"].items()]
    return dict(columns=["faults", "tried", "survived"], align=["l", "r", "r"],
                rows=rows + [["all", summary["faults_tried"], summary["faults_survived"]]])


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv))
