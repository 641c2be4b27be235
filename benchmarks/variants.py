"""Trains every JEM-family variant at CPU scale and evaluates each the same way, for one table.

    python -m benchmarks.variants --output_dir=/tmp/variants              # every variant
    python -m benchmarks.variants --output_dir=/tmp/variants --only=jem,classifier

Each variant is `python -m jem_tf.train` with the base flags (`--base_flags`, default the quick
preset: WRN-10-2 on scikit-learn digits, 240 steps) plus the variant's documented flag set, then
`python -m jem_tf.evaluate` on that run (accuracy, calibration, OOD by log p(x) against uniform,
constant and interp images, samples). It prints a markdown table and writes OUTPUT_DIR/variants.md,
OUTPUT_DIR/variants.json, OUTPUT_DIR/variants_samples.png (every variant's fresh SGLD samples side
by side) and each run's log under OUTPUT_DIR/logs/; the runs stay under OUTPUT_DIR/runs/ (all
figures: OUTPUT_DIR/runs/NAME/eval/). A run that finished before is
reused unless --rerun (so an interrupted table continues).

CIFAR mode (issue #17, the family on natural images):

    python -m benchmarks.variants --mode=cifar --output_dir=/work/runs/variants_cifar \
        [--data=../shared/data/cifar10_jpg_subset] [--only=jem,classifier]

runs CIFAR_VARIANTS (classifier, jem, jempp, sada_jem, jem_stabilised) from the cifar_cpu preset (its
step budget; its stabilisers switched off except in jem_stabilised) on the CIFAR folder, in
benchmarks/run_harness.py's layout (OUTPUT_DIR/NAME/{wd,eval,train_rc.json,DONE}), evaluates each as
benchmarks.cifar_cpu does, and writes one committed JSON per row to --results_dir (default
docs/results/variants_cifar/NAME.json). The table is rebuilt from those JSON files, so rows measured
earlier (another day, another machine) are reused, not retyped; docs/cifar_cpu.md shows them.

A variant that diverges (exit code 3) is a result and shown as such. Exit codes: 0 done; 1 a run or
an evaluation failed otherwise (its log is named); 2 bad flags.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from benchmarks import cifar_cpu, run_harness


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    source: str  # the paper or code the variant comes from
    flags: tuple  # the documented flag set, added to --base_flags


# One row each, in docs/jem_family.md's order. The flag sets are the ones it documents.
VARIANTS = (
    Variant("classifier", "baseline: the same WideResNet, cross-entropy only", ("--objective=classifier",)),
    Variant("jem", "JEM (Grathwohl et al., ICLR 2020), Algorithm 1", ("--objective=jem",)),
    Variant("jem_class_cond", "class-conditional JEM: the official code's --class_cond_p_x_sample; paper appendix A",
            ("--objective=jem", "--class_cond_p_x_sample")),
    Variant("jem_log_pxy_only", "the p(x|y) ablation, log p(x, y) only: paper section 4, Table 1 row 4",
            ("--objective=jem", "--p_y_given_x_weight=0", "--p_x_weight=0", "--p_xy_weight=1")),
    Variant("short_run", "short-run EBM (Nijkamp et al. 2019): paper appendix G.2; the official code's --buffer_size 0",
            ("--objective=jem", "--buffer_size=0", "--sgld_steps=100")),
    Variant("jem_stabilised", "JEM + energy L2 0.1 (wgrathwohl/JEM issue #4) + chains clamped to [-1, 1] (JEM++)",
            ("--objective=jem", "--energy_l2=0.1", "--sgld_clamp")),
    # Semi-supervised: both see the same 10 labelled images per class (chosen by the seed); JEM's
    # log p(x) term also sees every other training image.
    Variant("classifier_10_labels", "baseline for semi-supervised JEM: cross-entropy on 10 labelled images per class",
            ("--objective=classifier", "--labels_per_class=10")),
    Variant("jem_10_labels", "semi-supervised JEM (Grathwohl et al., ICLR 2020, semi-supervised experiments; "
            "the reference code's --labels_per_class)", ("--objective=jem", "--labels_per_class=10")),
    Variant("jempp", "JEM++ (Yang & Ji, ICCV 2021; github.com/sndnyang/JEMPP): proximal sampler, informative "
            "initialisation", ("--objective=jempp",)),
    Variant("jem_batch_norm", "JEM with batch norm as JEM++ (Yang & Ji, ICCV 2021) and SADA-JEM train it: batch "
            "statistics of the data only, samples in inference mode", ("--objective=jem", "--norm=batch")),
    Variant("sada_jem", "SADA-JEM (Yang, Su & Ji, CVPR 2023): ASAM (rho 2) on the whole loss, log p(x) on "
            "un-augmented images, batch norm, its SGLD settings",
            ("--objective=jem", "--norm=batch", "--sam_rho=2", "--sam_adaptive", "--generative_augmentation=none",
             "--sgld_steps=5", "--sgld_noise=0", "--data_noise=0")),
)

# What the table shows: (column title, results.json key of the evaluation, format).
COLUMNS = (
    ("accuracy", "accuracy", "{:.3f}"),
    ("ECE", "calibration/ece", "{:.3f}"),
    ("AUROC uniform", "ood/uniform/log_px/auroc", "{:.3f}"),
    ("AUROC constant", "ood/constant/log_px/auroc", "{:.3f}"),
    ("AUROC interp", "ood/interp/log_px/auroc", "{:.3f}"),
    ("log p(x) test", "ood/in_distribution/log_px/mean", "{:.2f}"),
    ("log p(x) fresh samples", "samples/fresh/mean_log_px", "{:.2f}"),
)

EVAL_FLAGS = ("--eval=accuracy,calibration,ood,samples", "--ood_sets=uniform,constant,interp", "--progress=false")
DIVERGED_EXIT = 3
PROVENANCE_FILE = "variant.json"  # in each run's workdir: the commit and flags it was trained with

# CIFAR mode: the rows issue #17 asks for, from the cifar_cpu preset with its stabilisers off (each
# variant's own flags set them where it has them).
CIFAR_VARIANTS = ("classifier", "jem", "jempp", "sada_jem", "jem_stabilised")
CIFAR_BASE_FLAGS = ("--preset=cifar_cpu", "--energy_l2=0", "--nosgld_clamp")
CIFAR_RESULTS_DIR = os.path.join(run_harness.REPO_ROOT, "docs/results/variants_cifar")

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "quick", ["quick", "cifar"], "quick: the digits table (--base_flags); cifar: CIFAR_VARIANTS "
                  "with the cifar_cpu preset's budget on --data, rows as committed JSON in --results_dir.")
flags.DEFINE_string("data", cifar_cpu.DEFAULT_DATA, "--mode=cifar: the CIFAR image folder (train/, test/).")
flags.DEFINE_string("results_dir", CIFAR_RESULTS_DIR, "--mode=cifar: one JSON per row (read back for the table).")
flags.DEFINE_string("output_dir", None, "Directory for the runs, logs and the table.")
flags.DEFINE_list("only", None, "Variants to run (default: all): " + ", ".join(v.name for v in VARIANTS) + ".")
flags.DEFINE_list("base_flags", ["--preset=quick"], "Training flags every variant starts from.")
flags.DEFINE_list("eval_flags", list(EVAL_FLAGS), "Flags of python -m jem_tf.evaluate for every run.")
flags.DEFINE_bool("rerun", False, "Train and evaluate again even where OUTPUT_DIR holds a finished run.")


def _run(command, log_path) -> tuple:
    """Runs `command` with its output in `log_path`; returns (exit code, seconds)."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    return code, time.monotonic() - started


def run_variant(variant: Variant, output_dir: str, base_flags, eval_flags, rerun: bool) -> dict:
    """Trains and evaluates one variant; returns its row (results, times, status)."""
    workdir = os.path.join(output_dir, "runs", variant.name)
    logs = os.path.join(output_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    row = dict(name=variant.name, source=variant.source, flags=list(variant.flags), workdir=workdir)
    finished = os.path.exists(os.path.join(workdir, "metrics.json"))
    if rerun or not finished:
        train_log = os.path.join(logs, f"{variant.name}_train.log")
        logging.info("Training %s: %s", variant.name, " ".join(variant.flags))
        command = [sys.executable, "-m", "jem_tf.train", *base_flags, *variant.flags, f"--workdir={workdir}"]
        code, seconds = _run(command, train_log)
        row["train_seconds"] = round(seconds, 1)
        if code == DIVERGED_EXIT:
            row["status"] = "diverged"
            return row
        if code != 0:
            row["status"] = f"training failed (exit {code}, {train_log})"
            return row
        with open(os.path.join(workdir, PROVENANCE_FILE), "w") as f:
            json.dump(dict(code=_code_version(), flags=list(variant.flags), base_flags=list(base_flags)), f)
    results_path = os.path.join(workdir, "eval", "results.json")
    if rerun or not finished or not os.path.exists(results_path):
        eval_log = os.path.join(logs, f"{variant.name}_eval.log")
        logging.info("Evaluating %s.", variant.name)
        code, seconds = _run([sys.executable, "-m", "jem_tf.evaluate", f"--workdir={workdir}", *eval_flags], eval_log)
        row["eval_seconds"] = round(seconds, 1)
        if code != 0 or not os.path.exists(results_path):
            row["status"] = f"evaluation failed (exit {code}, {eval_log})"
            return row
    with open(results_path) as f:
        results = json.load(f)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    row["global_step"] = metrics["global_step"]
    # Divergences the run recovered from (trainers/recovery.py): a row can be "ok" and still unstable.
    row["recoveries"] = metrics.get("recoveries", 0)
    row["results"] = {key: results.get(key) for _, key, _ in COLUMNS}
    provenance_path = os.path.join(workdir, PROVENANCE_FILE)
    # The commit the run was trained on (a reused run keeps its own, not today's).
    row["code"] = json.load(open(provenance_path))["code"] if os.path.exists(provenance_path) else "unknown"
    row["status"] = "ok"
    return row


def _code_version() -> str:
    """The git commit the row was measured on (with '+changes' for a dirty tree), or 'unknown'."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _cell(value, fmt) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "n/a"


def markdown_table(rows) -> str:
    header = ["variant", *(title for title, _, _ in COLUMNS), "recoveries", "status", "commit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        results = row.get("results", {})
        cells = [row["name"], *(_cell(results.get(key), fmt) for _, key, fmt in COLUMNS),
                 str(row.get("recoveries", "n/a")), row["status"], row.get("code", "n/a")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SAMPLES_FIGURE = "samples_fresh_unconditional.png"  # what jem_tf.evaluate's samples evaluation draws


def samples_figure(rows, path: str) -> str | None:
    """One figure with each evaluated variant's fresh SGLD samples (its evaluation's
    samples_fresh_unconditional.png), titled by variant; None when no row has them."""
    import matplotlib  # noqa: PLC0415 (only this figure needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = [(row["name"], os.path.join(row["workdir"], "eval", SAMPLES_FIGURE)) for row in rows
              if row["status"] == "ok" and os.path.exists(os.path.join(row["workdir"], "eval", SAMPLES_FIGURE))]
    if not panels:
        return None
    columns = min(4, len(panels))
    rows_needed = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows_needed, columns, figsize=(4 * columns, 4.3 * rows_needed), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (name, image_path) in zip(axes.flat, panels):
        axis.imshow(plt.imread(image_path))
        axis.set_title(name)
    figure.tight_layout()
    figure.savefig(path, dpi=60)
    plt.close(figure)
    return path


def cifar_spec(variant: Variant) -> run_harness.RunSpec:
    """A variant as a CIFAR-mode run: the cifar_cpu preset (stabilisers off) plus its flags."""
    # The classifier reads no stabiliser flag, and a flag its objective does not read is refused.
    base = CIFAR_BASE_FLAGS[:1] if "--objective=classifier" in variant.flags else CIFAR_BASE_FLAGS
    return run_harness.RunSpec(variant.name, variant.source, (*base, *variant.flags), group="family",
                               evaluation="full")


def cifar_row(record: dict) -> dict:
    """A committed CIFAR record as a row of `markdown_table`."""
    status = {"finished": "ok", "diverged": "diverged"}.get(record["outcome"], record["outcome"])
    if record["outcome"] == "diverged" and record.get("divergence_step") is not None:
        status = f"diverged at step {record['divergence_step']}"
    return dict(name=record["name"], status=status, recoveries=record.get("recovery_count", "n/a"),
                code=record.get("commit", "unknown"),
                results={key: record.get("evaluation", {}).get(key) for _, key, _ in COLUMNS})


def run_cifar(chosen, output_dir: str, data: str, results_dir: str, rerun: bool) -> int:
    """CIFAR mode: runs (or reuses) each chosen row, writes its JSON, and rebuilds the table from
    every JSON in results_dir."""
    known = {v.name: v for v in VARIANTS}
    failed = []
    for index, name in enumerate(chosen, 1):
        spec = cifar_spec(known[name])
        logging.info("CIFAR variant %d of %d: %s", index, len(chosen), name)
        status = run_harness.run(spec, output_dir, data, cifar_cpu.EVALUATIONS[spec.evaluation], rerun=rerun)
        record = run_harness.result_record(spec, output_dir, data)
        if record is not None:
            logging.info("%s: %s; wrote %s", name, status,
                         run_harness.write_result(record, spec, output_dir, results_dir, None))
        if status.startswith("failed"):
            failed.append(f"{name} ({status})")
    rows = [cifar_row(record) for record in run_harness.load_results(results_dir).values()]
    table = markdown_table(rows)
    with open(os.path.join(output_dir, "variants_cifar.md"), "w") as f:
        f.write(table + "\n")
    sys.stdout.write(table + "\n")
    if failed:
        logging.error("Failed: %s (see their logs).", "; ".join(failed))
        return 1
    return 0


def main(argv):
    del argv
    if not FLAGS.output_dir:
        logging.error("--output_dir is required: the directory for the runs, logs and the table.")
        return 2
    known = {v.name: v for v in VARIANTS}
    chosen = FLAGS.only or (list(CIFAR_VARIANTS) if FLAGS.mode == "cifar" else list(known))
    unknown = [name for name in chosen if name not in known]
    if unknown:
        logging.error("--only=%s names unknown variants %s; known: %s.", ",".join(chosen), unknown, ", ".join(known))
        return 2
    if FLAGS.mode == "cifar":
        if not os.path.isdir(os.path.join(FLAGS.data, "train")):
            logging.error("--data=%s is not an image folder with train/ and test/ class folders.", FLAGS.data)
            return 2
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        run_harness.stop_on_sigterm()
        return run_cifar(chosen, FLAGS.output_dir, FLAGS.data, FLAGS.results_dir, FLAGS.rerun)
    rows = []
    for index, name in enumerate(chosen, 1):
        logging.info("Variant %d of %d: %s", index, len(chosen), name)
        rows.append(run_variant(known[name], FLAGS.output_dir, FLAGS.base_flags, FLAGS.eval_flags, FLAGS.rerun))
        logging.info("%s: %s", name, rows[-1]["status"])
    table = markdown_table(rows)
    with open(os.path.join(FLAGS.output_dir, "variants.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.output_dir, "variants.json"), "w") as f:
        json.dump(dict(base_flags=FLAGS.base_flags, eval_flags=FLAGS.eval_flags, rows=rows), f, indent=2)
    figure = samples_figure(rows, os.path.join(FLAGS.output_dir, "variants_samples.png"))
    if figure:
        logging.info("Fresh samples of every variant: %s", figure)
    sys.stdout.write(table + "\n")
    failed = [row["name"] for row in rows if row["status"] not in ("ok", "diverged")]
    if failed:
        logging.error("Failed: %s (see their logs).", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
