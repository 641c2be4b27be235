"""Trains the official PyTorch JEM and jem_tf on the same images with the same settings, and compares.

    python -m benchmarks.compare_training --reference_dir=/path/to/JEM --torch_python=/venv-torch/bin/python \\
        --data=../shared/data/cifar10_jpg_subset --steps=300 --seeds=1,2 --output_dir=/tmp/compare_training \\
        --results_json=training_dynamics   # also docs/results/training_dynamics_{runs,curves}.json

For each seed it runs the reference (its own `main()`, imported from `--reference_dir` by
`benchmarks/reference_worker.py` under `--torch_python`; never copied here) and then
`python -m jem_tf.train`, each for `--steps` iterations: WRN-depth-width without normalisation, Adam
`--learning_rate` with `--warmup_steps` of linear warm-up, `--sgld_steps` SGLD steps of size 1 and
noise 0.01, a `--buffer_size` replay buffer with 5 % re-initialisation, N(0, `--data_noise`) on the
training images, reflect-pad-4 crops and flips, and a random `--validation_size` hold-out drawn the
same way on both sides (numpy seed 1234 over the same image order). Both read the same images: the
folder is decoded once by jem_tf's data layer and handed to the reference as arrays in that order.

It prints the curves (cross-entropy, accuracy, log p~(x) of data and of samples: per-step values
averaged over windows of `--report_every` steps and over the seeds that are still running), a table
per run (divergence step, final test accuracy) and how many runs of each diverged; writes
OUTPUT_DIR/compare_training.json, OUTPUT_DIR/compare_training.png (the curves, every run) and each
run's log under OUTPUT_DIR/logs/. A run diverges when its own guard stops it (the reference: |L| >
1e8; jem_tf: |generative loss| > 1e8 or a non-finite loss, exit code 3) or when a logged value is not
finite.

jem_tf runs with `--xent_batch` (default `independent`): its cross-entropy then takes a second,
independently drawn batch, as the reference's does (`--xent_batch=same`: the p(x) batch, jem_tf's
default, as runs before this flag). Known differences that remain: the reference evaluates its test
accuracy with N(0, data_noise) input noise (jem_tf's trainer: clean images); the rest are listed in
docs/reference.md ("Remaining differences in training").

Exit codes: 0 done (divergence is a result, not a failure); 1 a run crashed (its log is named);
2 bad flags, data, checkout or torch Python.
"""

import concurrent.futures
import glob
import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from benchmarks import machine_load, results_json, training_curves
from benchmarks.training_curves import (
    IMPLEMENTATIONS,
    METRICS,
    RunResult,
    count_diverged,
    format_report,
    mark_non_finite,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_WORKER = os.path.join(REPO_ROOT, "benchmarks", "reference_worker.py")
# jem_tf.train's exit code for a diverged run.
EXIT_DIVERGED = 3
EXIT_RUN_FAILED, EXIT_BAD_INPUT = 1, 2


class RunFailed(Exception):
    """A training run crashed (not a divergence); the message names its log."""


def define_flags(flag_values=flags.FLAGS):
    def define(kind, name, default, help_text, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values, **kwargs)

    define("string", "reference_dir", None, "Checkout of github.com/wgrathwohl/JEM (imported at run time).")
    define("string", "torch_python", None, "A Python with torch and numpy (not a dependency of jem_tf).")
    define("string", "data", None, "Image folder PATH/{train,test}/<class>/*.jpg|png with 10 or 100 classes of "
           "32x32 RGB images (the reference's fixed shape), e.g. ../shared/data/cifar10_jpg_subset.")
    define("string", "output_dir", None, "Where the JSON, the PNG, the logs and the runs go.")
    define("integer", "steps", 300, "Training iterations per run.", lower_bound=1)
    define("list", "seeds", ["1", "2"], "One run per implementation per seed.")
    define("list", "implementations", list(IMPLEMENTATIONS), "Which to run: official, jem_tf or both.")
    define("integer", "depth", 10, "WideResNet depth 6n+4.", lower_bound=10)
    define("integer", "width", 2, "WideResNet widening factor.", lower_bound=1)
    define("integer", "batch_size", 64, "Batch size.", lower_bound=1)
    define("integer", "sgld_steps", 10, "SGLD steps per iteration.", lower_bound=1)
    define("float", "learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
    define("integer", "warmup_steps", 100, "Linear learning-rate warm-up steps.", lower_bound=0)
    define("integer", "buffer_size", 10000, "Replay buffer size (a multiple of the class count).", lower_bound=1)
    define("integer", "validation_size", 1000, "Random validation hold-out of the training images.", lower_bound=1)
    define("float", "data_noise", 0.03, "N(0, sigma) noise on training images.", lower_bound=0.0)
    flags.DEFINE_enum("xent_batch", "independent", ["independent", "same"], "jem_tf's --xent_batch: independent "
                      "(the reference's second batch for the cross-entropy) or same (the p(x) batch).",
                      flag_values=flag_values)
    define("integer", "threads", 2, "Threads of each run (torch.set_num_threads; TensorFlow intra-op).",
           lower_bound=1)
    define("integer", "report_every", 50, "Steps per window of the printed curves.", lower_bound=1)
    define("string", "official_results", None, "A folder of official_seed<SEED>.json files that "
           "`benchmarks/reference_worker.py train --output=...` wrote elsewhere (e.g. on a lent GPU machine, with "
           "the images carried by `benchmarks.image_pack`): the official runs are read from there, not run.")
    define("string", "jem_tf_results", None, "A folder of finished jem_tf workdirs jem_tf_seed<SEED>/ trained "
           "with this command's settings and --max_recoveries=0 (e.g. by a queue of runs): read, not run; each "
           "must have ended 'finished' or 'diverged' (its run_status.json).")
    define("bool", "parallel", False, "Run the two implementations of a seed at the same time (each with "
           "--threads threads): the curves do not depend on it, the wall time does.")
    define("string", "results_json", None, "Also write the docs tables docs/results/NAME_runs.json and "
           "NAME_curves.json (e.g. training_dynamics) with commit, machine, date and this command line, and "
           "re-render the docs from them.")


def export_images(data: str, output_dir: str) -> dict:
    """Decodes the folder with jem_tf's data layer; writes train.npz / test.npz (uint8 NHWC, labels)
    in that order for the reference. Returns the dataset's facts."""
    import numpy as np  # noqa: PLC0415

    from jem_tf import data as jem_data  # noqa: PLC0415

    images = jem_data.load(f"folder:{data}", validation_fraction=0.0)
    if images.image_shape != (32, 32, 3) or images.num_classes not in (10, 100):
        raise ValueError(
            f"--data={data!r} has {images.num_classes} classes of {images.image_shape} images; the reference code "
            "trains only on 32x32x3 images with 10 (cifar10) or 100 (cifar100) classes.")
    for split, dataset in (("train", images.train), ("test", images.test)):
        pixels, labels = [], []
        for batch_images, batch_labels in dataset.batch(1000):
            pixels.append(batch_images.numpy())
            labels.append(batch_labels.numpy())
        np.savez(os.path.join(output_dir, f"{split}.npz"), images=np.concatenate(pixels),
                 labels=np.concatenate(labels))
    return dict(num_classes=images.num_classes, num_train=images.num_train, num_test=images.num_test)


def _run_logged(command, log_path, env=None) -> int:
    with open(log_path, "w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env).returncode


def _log_tail(path, lines=15) -> str:
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def official_result_path(folder: str, seed: int) -> str:
    return os.path.join(folder, f"official_seed{seed}.json")


def read_official(output: str, seed: int, seconds: float, log_path: str) -> RunResult:
    """A reference_worker.py result file as a RunResult."""
    with open(output) as f:
        result = json.load(f)
    run = RunResult("official", seed, {int(k): v for k, v in result["curves"].items()}, steps=result["steps"],
                    diverged=result["diverged"], diverged_at=result.get("step"), reason=result.get("reason", ""),
                    test_accuracy=result.get("test_accuracy"), seconds=seconds, log=log_path,
                    device=result.get("device", "cpu")
                    + (", TF32 off" if result.get("cudnn_allow_tf32") is False else ""))
    return mark_non_finite(run)


def run_official(flag_values, seed: int, npz_dir: str, num_classes: int, run_dir: str, log_dir: str) -> RunResult:
    output = official_result_path(run_dir, seed)
    log_path = os.path.join(log_dir, f"official_seed{seed}.log")
    command = [flag_values.torch_python, REFERENCE_WORKER, "train", f"--reference_dir={flag_values.reference_dir}",
               f"--data_dir={npz_dir}", f"--dataset={'cifar100' if num_classes == 100 else 'cifar10'}",
               f"--steps={flag_values.steps}", f"--seed={seed}",
               f"--lr={flag_values.learning_rate}", f"--warmup_iters={flag_values.warmup_steps}",
               f"--buffer_size={flag_values.buffer_size}", f"--n_valid={flag_values.validation_size}",
               f"--data_noise={flag_values.data_noise}", f"--depth={flag_values.depth}",
               f"--width={flag_values.width}", f"--batch_size={flag_values.batch_size}",
               f"--sgld_steps={flag_values.sgld_steps}", f"--threads={flag_values.threads}", f"--output={output}"]
    started = time.time()
    code = _run_logged(command, log_path)
    if code != 0 or not os.path.exists(output):
        raise RunFailed(f"the official run (seed {seed}) exited with code {code}; log: {log_path}\n"
                        f"{_log_tail(log_path)}")
    return read_official(output, seed, time.time() - started, log_path)


def read_tensorboard_curves(log_dir: str) -> dict:
    """train/{xent, accuracy, log_px_data, log_px_samples} of a jem_tf run -> {step before the
    update: {metric: value}} (TensorBoard's step is the step after it)."""
    import tensorflow as tf  # noqa: PLC0415

    curves = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                metric = value.tag.removeprefix("train/")
                if value.tag.startswith("train/") and metric in METRICS:
                    curves.setdefault(int(event.step) - 1, {})[metric] = float(tf.make_ndarray(value.tensor))
    return curves


def run_ours(flag_values, seed: int, run_dir: str, log_dir: str) -> RunResult:
    workdir = os.path.join(run_dir, f"jem_tf_seed{seed}")
    log_path = os.path.join(log_dir, f"jem_tf_seed{seed}.log")
    never = 10**9
    command = [sys.executable, "-m", "jem_tf.train", f"--dataset=folder:{os.path.abspath(flag_values.data)}",
               f"--workdir={workdir}", f"--depth={flag_values.depth}", f"--width={flag_values.width}",
               "--norm=none", f"--batch_size={flag_values.batch_size}", f"--sgld_steps={flag_values.sgld_steps}",
               "--sgld_step_size=1", "--sgld_noise=0.01", "--reinit_freq=0.05",
               f"--learning_rate={flag_values.learning_rate}", f"--warmup_steps={flag_values.warmup_steps}",
               f"--buffer_size={flag_values.buffer_size}", f"--validation_size={flag_values.validation_size}",
               f"--data_noise={flag_values.data_noise}", "--augmentation=crop_flip", f"--seed={seed}",
               f"--xent_batch={flag_values.xent_batch}",
               f"--max_steps={flag_values.steps}", f"--epochs={never}", "--lr_decay_epochs=160,180",
               "--summary_every_steps=1", f"--sample_every_steps={never}", f"--checkpoint_every_steps={never}",
               "--export=false"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               TF_NUM_INTRAOP_THREADS=str(flag_values.threads), TF_NUM_INTEROP_THREADS=str(flag_values.threads))
    started = time.time()
    code = _run_logged(command, log_path, env)
    if code not in (0, EXIT_DIVERGED):
        raise RunFailed(f"the jem_tf run (seed {seed}) exited with code {code}; log: {log_path}\n"
                        f"{_log_tail(log_path)}")
    return read_ours(workdir, seed, code == EXIT_DIVERGED, time.time() - started, log_path)


def read_ours(workdir: str, seed: int, diverged: bool, seconds: float, log_path: str) -> RunResult:
    """A finished jem_tf workdir (trained with --max_recoveries=0, as run_ours does) as a RunResult."""
    curves = read_tensorboard_curves(os.path.join(workdir, "tensorboard"))
    run = RunResult("jem_tf", seed, curves, steps=(max(curves) + 1) if curves else 0, seconds=seconds, log=log_path,
                    device=f"cpu ({machine_load.cpu_description()['model']})")
    if diverged:
        # The guard stops before anything of the diverged step is logged.
        run.diverged, run.diverged_at = True, run.steps
        run.reason = "jem_tf's divergence guard (exit code 3)"
    else:
        with open(os.path.join(workdir, "metrics.json")) as f:
            run.test_accuracy = float(json.load(f)["test_accuracy"])
    return mark_non_finite(run)


def check_inputs(flag_values) -> list:
    run_official_here = "official" in flag_values.implementations and not flag_values.official_results
    needed = ["data", "output_dir"] + (["reference_dir", "torch_python"] if run_official_here else [])
    for name in needed:
        if not flag_values[name].value:
            raise ValueError(f"--{name} is required.")
    unknown = set(flag_values.implementations) - set(IMPLEMENTATIONS)
    if unknown or not flag_values.implementations:
        raise ValueError(f"--implementations={','.join(flag_values.implementations)} is invalid: choose from "
                         f"{', '.join(IMPLEMENTATIONS)}.")
    try:
        seeds = [int(seed) for seed in flag_values.seeds]
    except ValueError as error:
        raise ValueError(f"--seeds={','.join(flag_values.seeds)} is invalid: expected integers.") from error
    if not seeds:
        raise ValueError("--seeds is empty: give at least one seed.")
    if not os.path.isdir(os.path.join(flag_values.data, "train")):
        raise ValueError(f"--data={flag_values.data!r} has no train/ folder: expected PATH/{{train,test}}/<class>/.")
    if "jem_tf" in flag_values.implementations and flag_values.jem_tf_results:
        unfinished = []
        for seed in seeds:
            status_path = os.path.join(flag_values.jem_tf_results, f"jem_tf_seed{seed}", "run_status.json")
            try:
                with open(status_path) as f:
                    state = json.load(f).get("state")
            except (OSError, ValueError):
                state = None
            if state not in ("finished", "diverged"):
                unfinished.append(f"{status_path} ({state or 'missing'})")
        if unfinished:
            raise ValueError(f"--jem_tf_results={flag_values.jem_tf_results!r}: runs not finished or diverged: "
                             f"{', '.join(unfinished)}.")
    if "official" in flag_values.implementations and flag_values.official_results:
        missing = [official_result_path(flag_values.official_results, seed) for seed in seeds
                   if not os.path.isfile(official_result_path(flag_values.official_results, seed))]
        if missing:
            raise ValueError(f"--official_results={flag_values.official_results!r} lacks {', '.join(missing)}: one "
                             "reference_worker.py result per seed in --seeds.")
    if run_official_here:
        if not os.path.isfile(os.path.join(flag_values.reference_dir, "train_wrn_ebm.py")):
            raise ValueError(f"--reference_dir={flag_values.reference_dir!r} is not a checkout of "
                             "github.com/wgrathwohl/JEM (no train_wrn_ebm.py).")
        try:
            probe = subprocess.run([flag_values.torch_python, "-c", "import torch, numpy"], capture_output=True,
                                   text=True, timeout=300)
        except OSError as error:
            raise ValueError(f"--torch_python={flag_values.torch_python!r} cannot be run: {error}") from error
        if probe.returncode:
            raise ValueError(f"--torch_python={flag_values.torch_python!r} cannot import torch and numpy.")
    return seeds


def write_results(name, runs, settings, flag_values, results_dir=results_json.results_tables.RESULTS):
    """docs/results/NAME_runs.json and NAME_curves.json (`training_curves.dynamics_tables`), provenance from here."""
    provenance = results_json.provenance(results_json.command_line("benchmarks.compare_training", flag_values))
    tables = training_curves.dynamics_tables(runs, settings, provenance)
    return [results_json.write(f"{name}_{part}", table, results=results_dir) for part, table in tables.items()]


def main(argv, flag_values=None):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        seeds = check_inputs(flag_values)
        output_dir = flag_values.output_dir
        run_dir, log_dir = os.path.join(output_dir, "runs"), os.path.join(output_dir, "logs")
        os.makedirs(run_dir, exist_ok=True)
        os.makedirs(log_dir, exist_ok=True)
        facts = export_images(flag_values.data, run_dir)
    except ValueError as error:
        logging.error("%s", error)
        return EXIT_BAD_INPUT
    settings = dict(data=flag_values.data, steps=flag_values.steps, seeds=seeds, depth=flag_values.depth,
                    width=flag_values.width, batch_size=flag_values.batch_size, sgld_steps=flag_values.sgld_steps,
                    learning_rate=flag_values.learning_rate, warmup_steps=flag_values.warmup_steps,
                    buffer_size=flag_values.buffer_size, validation_size=flag_values.validation_size,
                    data_noise=flag_values.data_noise, xent_batch=flag_values.xent_batch, threads=flag_values.threads,
                    report_every=flag_values.report_every, official_results=flag_values.official_results,
                    jem_tf_results=flag_values.jem_tf_results, **facts)
    runs = []
    implementations = [i for i in IMPLEMENTATIONS if i in flag_values.implementations]

    def run_one(implementation, seed):
        logging.info("Starting %s, seed %d, %d steps (log in %s)...", implementation, seed, flag_values.steps,
                     log_dir)
        if implementation == "jem_tf" and flag_values.jem_tf_results:
            workdir = os.path.join(flag_values.jem_tf_results, f"jem_tf_seed{seed}")
            with open(os.path.join(workdir, "run_status.json")) as f:
                state = json.load(f)["state"]
            run = read_ours(workdir, seed, state == "diverged", 0.0, workdir)
        elif implementation == "official" and flag_values.official_results:
            path = official_result_path(flag_values.official_results, seed)
            with open(path) as f:
                seconds = json.load(f).get("seconds", 0.0)
            run = read_official(path, seed, seconds, path)
        elif implementation == "official":
            run = run_official(flag_values, seed, run_dir, facts["num_classes"], run_dir, log_dir)
        else:
            run = run_ours(flag_values, seed, run_dir, log_dir)
        logging.info("... %s, seed %d: %d steps in %.1f min, %s, test accuracy %s.", implementation, seed,
                     run.steps, run.seconds / 60, f"diverged at step {run.diverged_at}" if run.diverged
                     else "no divergence", run.test_accuracy)
        return run

    try:
        for seed in seeds:
            # Seed by seed, both implementations, so a change in the machine's load falls on both.
            if flag_values.parallel:
                with concurrent.futures.ThreadPoolExecutor(len(implementations)) as pool:
                    futures = [pool.submit(run_one, implementation, seed) for implementation in implementations]
                    runs.extend(future.result() for future in futures)
            else:
                runs.extend(run_one(implementation, seed) for implementation in implementations)
    except RunFailed as error:
        logging.error("%s", error)
        return EXIT_RUN_FAILED
    report = format_report(runs, settings)
    with open(os.path.join(output_dir, "compare_training.json"), "w") as f:
        json.dump(dict(settings=settings, runs=[run.to_dict() for run in runs],
                       diverged={k: list(v) for k, v in count_diverged(runs).items()}, report=report), f, indent=1)
    plot = training_curves.plot_curves(runs, os.path.join(output_dir, "compare_training.png"), flag_values.report_every)
    logging.info("Wrote %s and %s.", os.path.join(output_dir, "compare_training.json"), plot)
    if flag_values.results_json:
        write_results(flag_values.results_json, runs, settings, flag_values)
    print(report, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
