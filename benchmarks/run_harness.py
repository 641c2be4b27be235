"""One benchmark run (train, then evaluate) in the layout the CIFAR search uses, and its result JSON.

Shared by `benchmarks.cifar_cpu` and `benchmarks.variants --mode=cifar`. A run named NAME lives in

    OUTPUT_DIR/NAME/wd/             the training workdir (python -m jem_tf.train --workdir)
    OUTPUT_DIR/NAME/train.log       training output
    OUTPUT_DIR/NAME/train_rc.json   {"rc": exit code, "wall_s": seconds, "flags": "the run's own flags"}
    OUTPUT_DIR/NAME/eval/           python -m jem_tf.evaluate --output (results.json, figures)
    OUTPUT_DIR/NAME/eval.log        evaluation output
    OUTPUT_DIR/NAME/provenance.json commit, machine, date and command (written when this module trains it)
    OUTPUT_DIR/NAME/DONE | FAILED   finished (trained and evaluated) | the evaluation or training failed

A run with DONE is finished and reused (also one made by another runner in the same layout); a
FAILED or unfinished one is continued (training resumes from its workdir's checkpoints).
`result_record` turns a run directory into the committed per-run JSON; `write_result` writes it and
copies the run's figures, shrunk below FIGURE_MAX_BYTES.
"""

import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import logging

from benchmarks import machine_load

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE_FILE, FAILED_FILE = "DONE", "FAILED"
TRAIN_RC_FILE, PROVENANCE_FILE = "train_rc.json", "provenance.json"
WORKDIR, EVAL_DIR, TRAIN_LOG, EVAL_LOG = "wd", "eval", "train.log", "eval.log"
DIVERGED_EXIT = 3  # jem_tf.train: diverged after its automatic recoveries
FIGURE_MAX_BYTES = 200_000
PROGRESS_EVERY_S = 60.0


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One named run: its training flags (after --dataset and --workdir), why it is there, and how
    it is evaluated."""

    name: str
    why: str  # the source of the setting, or why it is in the table
    flags: tuple
    steps: int | None = None  # --max_steps; None: the preset's own budget
    group: str = "search"  # where the results page shows it
    data: str = "subset"  # subset | full: which --data folder it trains on
    evaluation: str | None = "search"  # a key of the caller's evaluation flag sets; None: not evaluated
    figures: tuple = ()  # evaluation figures (file stems) copied next to the results page


NOTE_FILE = "NOTE"


def run_paths(output_dir: str, name: str) -> dict:
    root = os.path.join(output_dir, name)
    return dict(root=root, workdir=os.path.join(root, WORKDIR), eval=os.path.join(root, EVAL_DIR),
                train_log=os.path.join(root, TRAIN_LOG), eval_log=os.path.join(root, EVAL_LOG),
                train_rc=os.path.join(root, TRAIN_RC_FILE), provenance=os.path.join(root, PROVENANCE_FILE),
                done=os.path.join(root, DONE_FILE), failed=os.path.join(root, FAILED_FILE),
                results=os.path.join(root, EVAL_DIR, "results.json"))


def read_json(path: str, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def is_finished(output_dir: str, name: str, evaluated: bool = True) -> bool:
    """Trained and (when `evaluated`) evaluated: the DONE marker, with the evaluation's results."""
    paths = run_paths(output_dir, name)
    if not evaluated:
        rc = read_json(paths["train_rc"])
        return rc is not None and rc.get("rc") in (0, DIVERGED_EXIT)
    return os.path.exists(paths["done"]) and os.path.exists(paths["results"])


def code_version() -> str:
    """The git commit of this checkout (with '+changes' for a dirty tree), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def machine() -> dict:
    """CPU model and cores, and the 1-minute load average now (a shared machine trains slower)."""
    description = machine_load.cpu_description()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return dict(cpu=description["model"], cores=description["num_cpus"], isa_flags=description["isa_flags"],
                load_average_1min=load)


def _last_progress(log_path: str) -> str | None:
    """The training's latest 'step/total' (keras' progress bar) in its log, or None."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 4000))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r"(\d+)/(\d+)\S*\s", tail)
    return f"{found[-1][0]}/{found[-1][1]}" if found else None


def run_logged(command, log_path: str, label: str = "") -> tuple:
    """Runs `command` with its output in `log_path`, logging its progress every minute; returns
    (exit code, seconds)."""
    started = time.monotonic()
    last_report = started
    with open(log_path, "w") as log:
        # From the caller's directory (relative data paths stay as given), with this checkout importable.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while process.poll() is None:
                time.sleep(1.0)
                if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    last_report = time.monotonic()
                    logging.info("%s: %.0f s, step %s (%s)", label or command[2], last_report - started,
                                 _last_progress(log_path) or "?", log_path)
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM via stop_on_sigterm): the run stops too, saving a checkpoint
            # (jem_tf.train resumes from it when the command is run again).
            if process.poll() is None:
                logging.warning("Stopping %s (pid %d); rerun the command to resume it.", label, process.pid)
                process.terminate()
                try:
                    process.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    process.kill()
            raise
    return process.returncode, time.monotonic() - started


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the benchmark's process, so `run_logged` stops its child
    run instead of leaving it training on its own."""

    def interrupt(signal_number, frame):
        del signal_number, frame
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


def _move_aside(root: str) -> None:
    """--rerun: the old run directory is renamed, never deleted."""
    if os.path.exists(root):
        aside = f"{root}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(root, aside)
        logging.info("--rerun: moved %s to %s.", root, aside)


def train_command(spec: RunSpec, paths: dict, data: str, base_flags=()) -> list:
    steps = [f"--max_steps={spec.steps}"] if spec.steps is not None else []
    return [sys.executable, "-m", "jem_tf.train", f"--dataset=folder:{data}", f"--workdir={paths['workdir']}",
            *base_flags, *spec.flags, *steps]


def run(spec: RunSpec, output_dir: str, data: str, eval_flags=(), base_flags=(), rerun: bool = False,
        runner=None) -> str:
    """Trains and evaluates `spec` unless finished; returns its status: reused | done | diverged |
    failed: why. A diverged run (exit 3) is still evaluated at its last good checkpoint."""
    runner = runner or run_logged
    paths = run_paths(output_dir, spec.name)
    if rerun:
        _move_aside(paths["root"])
    evaluated = spec.evaluation is not None
    if is_finished(output_dir, spec.name, evaluated):
        return "reused"
    os.makedirs(paths["root"], exist_ok=True)
    train_rc = read_json(paths["train_rc"])
    if train_rc is None or train_rc.get("rc") not in (0, DIVERGED_EXIT):
        command = train_command(spec, paths, data, base_flags)
        write_json(paths["provenance"], dict(commit=code_version(), machine=machine(),
                                              date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                              data=data, command=" ".join(command[1:])))
        logging.info("Training %s: %s", spec.name, " ".join(command[3:]))
        code, seconds = runner(command, paths["train_log"], f"train {spec.name}")
        run_flags = [*spec.flags, *([f"--max_steps={spec.steps}"] if spec.steps is not None else [])]
        train_rc = dict(rc=code, wall_s=round(seconds, 1), flags=" ".join(run_flags))
        write_json(paths["train_rc"], train_rc)
        if code not in (0, DIVERGED_EXIT):
            open(paths["failed"], "w").close()
            return f"failed: training exit {code} ({paths['train_log']})"
    if not evaluated:
        return "diverged" if train_rc["rc"] == DIVERGED_EXIT else "done"
    command = [sys.executable, "-m", "jem_tf.evaluate", f"--workdir={paths['workdir']}", f"--output={paths['eval']}",
               *eval_flags]
    logging.info("Evaluating %s.", spec.name)
    code, _ = runner(command, paths["eval_log"], f"evaluate {spec.name}")
    if code != 0 or not os.path.exists(paths["results"]):
        open(paths["failed"], "w").close()
        return f"failed: evaluation exit {code} ({paths['eval_log']})"
    if os.path.exists(paths["failed"]):
        os.remove(paths["failed"])
    open(paths["done"], "w").close()
    return "diverged" if train_rc["rc"] == DIVERGED_EXIT else "done"


def _divergence_step(paths: dict, train_rc: dict | None) -> int | None:
    if not train_rc or train_rc.get("rc") != DIVERGED_EXIT:
        return None
    status = read_json(os.path.join(paths["workdir"], "run_status.json"), {})
    if status.get("state") == "diverged":
        return int(status["step"])
    try:
        with open(paths["train_log"], errors="replace") as f:
            found = re.findall(r"diverged at step (\d+)", f.read())
    except OSError:
        found = []
    return int(found[-1]) if found else None


def result_record(spec: RunSpec, output_dir: str, data: str) -> dict | None:
    """The run's committed JSON: provenance, training outcome and every evaluation number; None
    when it has not trained yet."""
    paths = run_paths(output_dir, spec.name)
    train_rc = read_json(paths["train_rc"])
    if train_rc is None:
        return None
    provenance = read_json(paths["provenance"], {})
    workdir = paths["workdir"]
    metrics = read_json(os.path.join(workdir, "metrics.json"), {})
    config = read_json(os.path.join(workdir, "config.json"), {})
    recoveries = read_json(os.path.join(workdir, "recoveries.json"), [])
    results = read_json(paths["results"], {})
    status = read_json(os.path.join(workdir, "run_status.json"), {})
    steps = metrics.get("global_step", results.get("meta/global_step", status.get("step")))
    divergence = _divergence_step(paths, train_rc)
    if metrics.get("steps_this_session"):
        per_step = metrics["seconds_this_session"] / metrics["steps_this_session"]
        per_step_source = "training loop seconds / steps of the last session (metrics.json)"
    else:
        reached = divergence or steps
        per_step = train_rc["wall_s"] / reached if reached else None
        per_step_source = "training command wall seconds / steps reached (no metrics.json)"
    outcome = ("diverged" if divergence is not None or train_rc["rc"] == DIVERGED_EXIT
               else "finished" if train_rc["rc"] == 0 else f"failed (exit {train_rc['rc']})")
    return dict(
        name=spec.name, group=spec.group, why=spec.why, flags=train_rc.get("flags", " ".join(spec.flags)),
        command=provenance.get("command"),
        commit=provenance.get("commit") or train_rc.get("commit") or "unknown",
        # A run adopted from another runner in this layout has no provenance.json: it ran here.
        machine=provenance.get("machine") or train_rc.get("machine") or dict(machine(), source="adopting machine"),
        # Adopted runs: when the workdir's status was last written (the end of training).
        date=provenance.get("date") or train_rc.get("date") or status.get("time"),
        data=provenance.get("data") or config.get("dataset", f"folder:{data}").removeprefix("folder:"),
        budget_steps=spec.steps or config.get("max_steps"),
        steps_reached=steps, train_exit_code=train_rc["rc"], train_wall_s=train_rc["wall_s"],
        train_loop_s=metrics.get("seconds_this_session"),
        seconds_per_step=round(per_step, 4) if per_step else None, seconds_per_step_source=per_step_source,
        outcome=outcome, divergence_step=divergence, recoveries=recoveries, recovery_count=len(recoveries),
        test_accuracy_trainer=metrics.get("test_accuracy"),
        config={k: config[k] for k in sorted(config)},
        evaluation=results, evaluated=os.path.exists(paths["done"]),
        # A person's account of what happened (e.g. why a run was stopped by hand): OUTPUT_DIR/NAME/NOTE.
        note=read_note(os.path.join(paths["root"], NOTE_FILE)),
    )


def read_note(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def shrink_figure(source: str, target_stem: str, max_bytes: int = FIGURE_MAX_BYTES) -> str:
    """Copies an image as PNG, or as a JPEG of decreasing size when the PNG is over `max_bytes`;
    returns the written path."""
    from PIL import Image  # noqa: PLC0415 (only figures need it)

    if os.path.getsize(source) <= max_bytes:
        shutil.copyfile(source, target_stem + ".png")
        return target_stem + ".png"
    image = Image.open(source).convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        if buffer.tell() <= max_bytes or min(image.size) < 64:
            break
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4))
    with open(target_stem + ".jpg", "wb") as f:
        f.write(buffer.getvalue())
    return target_stem + ".jpg"


def write_result(record: dict, spec: RunSpec, output_dir: str, results_dir: str, figures_dir: str | None) -> str:
    """Writes results_dir/NAME.json (figures copied to figures_dir, their paths relative to the
    repository in the record's `figures`); returns the JSON's path."""
    os.makedirs(results_dir, exist_ok=True)
    figures = {}
    eval_dir = run_paths(output_dir, spec.name)["eval"]
    if figures_dir and spec.figures:
        os.makedirs(figures_dir, exist_ok=True)
        for stem in spec.figures:
            source = os.path.join(eval_dir, stem + ".png")
            if os.path.exists(source):
                written = shrink_figure(source, os.path.join(figures_dir, f"{spec.name}_{stem}"))
                figures[stem] = os.path.relpath(written, REPO_ROOT) if written.startswith(REPO_ROOT) else written
    record = dict(record, figures=figures)
    path = os.path.join(results_dir, f"{spec.name}.json")
    write_json(path, record)
    return path


def load_results(results_dir: str) -> dict:
    """name -> record of every results_dir/*.json."""
    records = {}
    if os.path.isdir(results_dir):
        for file_name in sorted(os.listdir(results_dir)):
            if file_name.endswith(".json"):
                record = read_json(os.path.join(results_dir, file_name))
                records[record.get("name", file_name[:-5])] = record
    return records
