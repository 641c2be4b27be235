"""Times the official PyTorch JEM iteration and ours on this machine, in one window, and prints the ratio.

    python -m benchmarks.compare_reference --reference_dir=/path/to/JEM --torch_python=/venv-torch/bin/python
    python -m benchmarks.compare_reference --reference_dir=... --torch_python=... --depth=28 --rounds=6 \\
        --output_json=/tmp/wrn28.json
    python -m benchmarks.compare_reference ... --ours_flag=--jit_compile   # any benchmarks.train_step flag
    python -m benchmarks.compare_reference ... --results_json=speed_vs_official  # also its row of the docs table

The official side (github.com/wgrathwohl/JEM; `--reference_dir` is a checkout, imported at run time by
`benchmarks/reference_worker.py` under `--torch_python`, never copied here) runs its `sample_q` and the
loop body of its `main()`: the data forward, `sample_q` on its replay buffer, L = xent + (E_data -
E_samples), backward, Adam step. Our side is `benchmarks.train_step`'s "JEM iteration" row (the
training loop's compiled step: buffer draw, SGLD, one pass over [data; samples], Adam, buffer write)
and its "SGLD step" row, for the same depth, width, batch and SGLD steps (32x32x3 images, 10 classes:
the reference's fixed shape). Flags of benchmarks.train_step reach our side through `--ours_flag`
and `--precision` is passed on as train_step's own `--precision` (where this checkout's train_step has
it; otherwise anything but float32 is refused); settings that must match both sides are set here and
refused there.

Each side runs in its own long-lived subprocess with `--threads` threads, built and warmed up once;
then rounds alternate official/ours, ours/official, ... (ABBA, so a slow drift of the machine's load
hits both alike), each timing `--samples_per_round` iterations while the other side waits. For every
sample /proc/stat gives the load of everything but the timed process (`benchmarks/machine_load.py`);
only samples with other load <= `--max_other_load` are "quiet", and the ratio is computed from the
quiet samples' medians. The output names the CPU model and its ISA extensions.

Exit codes: 0 ratio from quiet samples; 1 a worker failed (its log is named); 2 bad flags, reference
checkout or torch Python; 3 fewer than `--min_quiet_samples` quiet samples on a side (the table is still
printed; its all-sample numbers are not a speed claim).
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags, logging

from benchmarks import machine_load, reference_report, results_json
from benchmarks.reference_report import CHANNELS, IMAGE_SIZE, NUM_CLASSES, SIDES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_WORKER = os.path.join(REPO_ROOT, "benchmarks", "reference_worker.py")
# benchmarks.train_step flags this tool sets for both sides alike: not accepted through --ours_flag.
SHARED_SETTINGS = ("depth", "width", "batch_size", "sgld_steps", "threads", "warmup", "image_size", "channels",
                   "num_classes", "repeats", "compare_jit", "output_json", "precision", "results_json")
EXIT_WORKER_FAILED, EXIT_BAD_INPUT, EXIT_NOT_QUIET = 1, 2, 3


class WorkerError(Exception):
    """A worker process failed or answered nonsense; the message names its log."""


def define_flags(flag_values=flags.FLAGS):
    def define(kind, name, default, help_text, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values, **kwargs)

    define("string", "reference_dir", None, "Checkout of github.com/wgrathwohl/JEM (read, imported at run time).")
    define("string", "torch_python", None, "A Python interpreter with torch and numpy (torch is not a dependency "
           "of jem_tf; a separate virtual environment is fine).")
    define("integer", "depth", 16, "WideResNet depth 6n+4 (both sides).", lower_bound=10)
    define("integer", "width", 2, "WideResNet widening factor (both sides).", lower_bound=1)
    define("integer", "batch_size", 64, "Data images and SGLD chains per iteration (both sides).", lower_bound=1)
    define("integer", "sgld_steps", 20, "SGLD steps per iteration (both sides).", lower_bound=1)
    define("integer", "rounds", 6, "Timed rounds; sides alternate within each (ABBA order).", lower_bound=1)
    define("integer", "samples_per_round", 2, "Iterations timed per side per round.", lower_bound=1)
    define("integer", "warmup", 2, "Untimed iterations per side after building (tracing, allocation).",
           lower_bound=1)
    define("integer", "threads", 2, "Threads of each side (torch.set_num_threads; TensorFlow intra-op threads).",
           lower_bound=1)
    define("float", "max_other_load", 0.1, "A sample is quiet when other processes (and steal) used at most "
           "this fraction of the machine's CPU time while it ran.", lower_bound=0.0, upper_bound=1.0)
    define("integer", "min_quiet_samples", 3, "Quiet samples each side needs for a valid ratio (else exit 3).",
           lower_bound=1)
    define("string", "precision", "float32", "Our side's --precision (benchmarks.train_step's, where it has one: "
           "float32 | mixed_bfloat16 | mixed_float16); the official code runs float32.")
    define("multi_string", "ours_flag", [], "A benchmarks.train_step flag for our side, e.g. "
           "--ours_flag=--jit_compile (repeatable). Settings both sides share are refused here.")
    define("string", "output_json", None, "Also write every sample and the summary to this JSON file.")
    define("string", "results_json", None, "With a valid ratio, also write this run's row of the docs table "
           "docs/results/NAME.json (e.g. speed_vs_official; rows of other models and precisions are kept) with "
           "commit, machine, date and this command line, and re-render the docs from it.")
    flags.DEFINE_enum("worker", None, ["jem_tf"], "Internal: run as our side's timing worker.",
                      flag_values=flag_values)


def check_ours_flags(ours_flags) -> list:
    """Refuses --ours_flag values that would make the two sides time different settings."""
    for flag in ours_flags:
        name = flag.lstrip("-").split("=", 1)[0]
        if not flag.startswith("--") or name.removeprefix("no") in SHARED_SETTINGS:
            raise ValueError(f"--ours_flag={flag!r} is not accepted: pass benchmarks.train_step flags as "
                             f"'--name=value', except {', '.join(SHARED_SETTINGS)} which this tool sets for both "
                             "sides (use its own flags).")
    return list(ours_flags)


def our_step_flags(flag_values) -> list:
    """The benchmarks.train_step flags of our side: this tool's shared settings, --precision where it is
    not the default (so a checkout whose train_step has no precision still runs float32), --ours_flag."""
    precision = [] if flag_values.precision == "float32" else [f"--precision={flag_values.precision}"]
    return [f"--depth={flag_values.depth}", f"--width={flag_values.width}", f"--batch_size={flag_values.batch_size}",
            f"--sgld_steps={flag_values.sgld_steps}", f"--image_size={IMAGE_SIZE}", f"--channels={CHANNELS}",
            f"--num_classes={NUM_CLASSES}", f"--threads={flag_values.threads}", f"--warmup={flag_values.warmup}",
            *precision, *flag_values.ours_flag]


def parse_step_flags(step_flags: list):
    """benchmarks.train_step's flags parsed from `step_flags`; ValueError naming one it does not have."""
    from benchmarks import train_step  # noqa: PLC0415 (absl only; TensorFlow is imported lazily)

    flag_values = flags.FlagValues()
    train_step.define_flags(flag_values)
    try:
        flag_values(["train_step", *step_flags])
        train_step.settings_from_flags(flag_values)  # its own value checks (e.g. of a precision)
    except (flags.Error, app.UsageError) as error:
        raise ValueError(f"benchmarks.train_step refuses our side's flags {' '.join(step_flags)}: {error}") from error
    return flag_values


# ------------------------------------------------------------------------------------------------
# Workers


class Worker:
    """A timing subprocess speaking JSON lines: one 'ready' message, then one answer per request."""

    def __init__(self, name: str, command: list, log_dir: str, env=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, cwd=REPO_ROOT, env=env)
        self.info = None

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise WorkerError(f"the {self.name} worker exited with code {self.process.returncode}; "
                              f"its log: {self.log_path}\n{self.log_tail()}")
        try:
            return json.loads(line)
        except json.JSONDecodeError as error:
            raise WorkerError(f"the {self.name} worker wrote {line[:200]!r}; log: {self.log_path}") from error

    def wait_ready(self) -> dict:
        self.info = self.receive()
        return self.info

    def time(self, samples: int) -> list:
        self.process.stdin.write(json.dumps({"samples": samples}) + "\n")
        self.process.stdin.flush()
        return self.receive()["samples"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"exit": True}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log_tail(self, lines=20) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])


def reference_command(flag_values) -> list:
    return [flag_values.torch_python, REFERENCE_WORKER, "time", f"--reference_dir={flag_values.reference_dir}",
            f"--depth={flag_values.depth}", f"--width={flag_values.width}", f"--batch_size={flag_values.batch_size}",
            f"--sgld_steps={flag_values.sgld_steps}", f"--threads={flag_values.threads}",
            f"--warmup={flag_values.warmup}"]


def ours_command(flag_values) -> list:
    return [sys.executable, "-m", "benchmarks.compare_reference", "--worker=jem_tf", f"--depth={flag_values.depth}",
            f"--width={flag_values.width}", f"--batch_size={flag_values.batch_size}",
            f"--sgld_steps={flag_values.sgld_steps}", f"--threads={flag_values.threads}",
            f"--warmup={flag_values.warmup}", f"--precision={flag_values.precision}"] + [
                f"--ours_flag={flag}" for flag in flag_values.ours_flag]


def serve_ours(flag_values) -> int:
    """Our side's worker: benchmarks.train_step's JEM iteration and SGLD step rows, timed on request."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    from benchmarks import step_cases, train_step  # noqa: PLC0415 (imports TensorFlow)

    step_flags = parse_step_flags(our_step_flags(flag_values))
    train_step.set_threads(step_flags.threads, step_flags.inter_op_threads)
    settings = train_step.settings_from_flags(step_flags)
    import tensorflow as tf  # noqa: PLC0415

    # One precision is timed (train_step can list several); float32 is its default argument.
    precision = {} if flag_values.precision == "float32" else {"precision": flag_values.precision}
    cases, _ = step_cases.jem_cases(settings, settings.jit_settings[0], **precision)
    by_name = {case.name: case for case in cases}
    iteration, sgld = by_name["JEM iteration"], by_name["SGLD step"]
    for _ in range(settings.warmup):
        iteration.call()
        sgld.call()
    protocol.write(json.dumps(dict(ready=True, tensorflow=tf.__version__,
                                   threads=tf.config.threading.get_intra_op_parallelism_threads())) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("exit"):
            break
        samples = []
        for _ in range(int(request["samples"])):
            sample = machine_load.measure(iteration.call)
            sample.pop("result")
            chain = machine_load.measure(sgld.call)
            loads = [x for x in (sample["other_load"], chain["other_load"]) if x is not None]
            sample.update(sgld_step_seconds=chain["wall_seconds"] / sgld.units,
                          other_load=max(loads) if len(loads) == 2 else None)
            samples.append(sample)
        protocol.write(json.dumps(dict(samples=samples)) + "\n")
        protocol.flush()
    return 0


def check_inputs(flag_values) -> None:
    if not flag_values.reference_dir or not os.path.isfile(
            os.path.join(flag_values.reference_dir, "train_wrn_ebm.py")):
        raise ValueError(f"--reference_dir={flag_values.reference_dir!r} is not a checkout of "
                         "github.com/wgrathwohl/JEM (no train_wrn_ebm.py); clone it and pass its path.")
    python = flag_values.torch_python
    if not python:
        raise ValueError("--torch_python is required: a Python with torch and numpy.")
    try:
        probe = subprocess.run([python, "-c", "import torch, numpy; print(torch.__version__)"], capture_output=True,
                               text=True, timeout=300)
    except OSError as error:
        raise ValueError(f"--torch_python={python!r} cannot be run: {error}") from error
    if probe.returncode != 0:
        raise ValueError(f"--torch_python={python!r} cannot import torch and numpy: "
                         f"{probe.stderr.strip().splitlines()[-1:]}")
    check_ours_flags(flag_values.ours_flag)
    parse_step_flags(our_step_flags(flag_values))


def run_comparison(flag_values) -> dict:
    settings = dict(depth=flag_values.depth, width=flag_values.width, batch_size=flag_values.batch_size,
                    sgld_steps=flag_values.sgld_steps, threads=flag_values.threads, rounds=flag_values.rounds,
                    samples_per_round=flag_values.samples_per_round, warmup=flag_values.warmup,
                    precision=flag_values.precision, ours_flags=list(flag_values.ours_flag))
    log_dir = tempfile.mkdtemp(prefix="compare_reference_")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT)
    workers = {}
    try:
        # Built and warmed up one after the other, so neither start-up disturbs the other.
        logging.info("Starting the official side (logs in %s)...", log_dir)
        workers["official"] = Worker("official", reference_command(flag_values), log_dir, env)
        workers["official"].wait_ready()
        logging.info("Starting jem_tf's side...")
        workers["jem_tf"] = Worker("jem_tf", ours_command(flag_values), log_dir, env)
        workers["jem_tf"].wait_ready()
        samples = {side: [] for side in SIDES}
        for round_index in range(flag_values.rounds):
            for side in reference_report.round_order(round_index):
                new = workers[side].time(flag_values.samples_per_round)
                for sample in new:
                    sample["round"] = round_index
                samples[side].extend(new)
                logging.info("Round %d/%d, %s: %s", round_index + 1, flag_values.rounds, side,
                             ", ".join(f"{s['wall_seconds']:.2f} s (other load {s['other_load']:.0%})"
                                       if s.get("other_load") is not None else f"{s['wall_seconds']:.2f} s"
                                       for s in new))
    finally:
        for worker in workers.values():
            worker.close()
    versions = dict(torch=workers["official"].info.get("torch"), stand_ins=workers["official"].info.get("stand_ins"),
                    tensorflow=workers["jem_tf"].info.get("tensorflow"))
    return reference_report.build_report(samples, settings, machine_load.cpu_description(), versions,
                                         flag_values.max_other_load, flag_values.min_quiet_samples)


def write_results(name, report, flag_values, results_dir=results_json.results_tables.RESULTS):
    """docs/results/NAME.json: `reference_report.speed_table` of `report`, provenance from here."""
    versions = report["versions"]
    detail = (f"quiet samples only; PyTorch {versions.get('torch')} CPU vs TensorFlow {versions.get('tensorflow')}")
    provenance = results_json.provenance(results_json.command_line("benchmarks.compare_reference", flag_values),
                                         results_json.machine(report["cpu"], detail))
    return results_json.write(name, reference_report.speed_table(report, provenance), key_columns=2,
                              results=results_dir)


def main(argv, flag_values=None):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    flag_values = flags.FLAGS if flag_values is None else flag_values
    if flag_values.worker == "jem_tf":
        return serve_ours(flag_values)
    try:
        check_inputs(flag_values)
    except ValueError as error:
        logging.error("%s", error)
        return EXIT_BAD_INPUT
    try:
        report = run_comparison(flag_values)
    except WorkerError as error:
        logging.error("%s", error)
        return EXIT_WORKER_FAILED
    if flag_values.output_json:
        with open(flag_values.output_json, "w") as f:
            json.dump(report, f, indent=2)
        logging.info("Wrote %s", flag_values.output_json)
    print(reference_report.format_report(report), flush=True)
    if flag_values.results_json and report["valid"]:
        write_results(flag_values.results_json, report, flag_values)
    return 0 if report["valid"] else EXIT_NOT_QUIET


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
