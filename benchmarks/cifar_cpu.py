"""JEM on CIFAR-10 on two CPU cores (issue #17): the recipe search, the recipe on 3 seeds, the
same-wall-clock classifier, the whole training set, and the results page written from JSON.

    python -m benchmarks.cifar_cpu --output_dir=/work/runs                 # everything, reusing finished runs
    python -m benchmarks.cifar_cpu --output_dir=/work/runs --only=recipe_seed0,classifier
    python -m benchmarks.cifar_cpu --page_only                             # the page from the JSON alone

Runs one at a time, in this order: the SEARCH rows (each a named setting with its source, flags and
steps), the `cifar_cpu` preset on seeds 0, 1, 2, four short calibration runs (recipe and classifier), the plain
classifier (same preset, network, data and augmentation) for the step count whose training loop
takes as long as the recipe's (per-step times measured back to back, see `classifier_budget`), then the recipe and the
classifier on the whole training set (`--full_data`). Every run is evaluated with `jem_tf.evaluate`
(search rows: accuracy, calibration and OOD; the others also samples and PGD robustness through SGLD
refinement). The run layout is `benchmarks/run_harness.py`'s (OUTPUT_DIR/NAME/{wd,eval,train.log,
train_rc.json,DONE}); a run with DONE is reused, whoever ran it, unless --rerun.

After each run its JSON goes to --results_dir (default docs/results/cifar_cpu/NAME.json: commit,
machine, date, data, flags, steps reached, wall seconds, seconds per step, divergence step,
recoveries, every evaluation number) and its figures to --figures_dir (docs/cifar_cpu/); then the page
--page (docs/cifar_cpu.md) is rewritten from those JSON files alone, with the variant table's CIFAR
rows (docs/results/variants_cifar/, `benchmarks.variants --mode=cifar`) and the official-code
comparison (`benchmarks.compare_training`'s JSON, --compare_training_json) where present.

Exit codes: 0 done (a divergence is a result); 1 a run or evaluation failed (its log is named);
2 bad flags.
"""

import math
import os
import re
import statistics
import sys

from absl import app, flags, logging

from benchmarks import results_json, run_harness
from benchmarks.run_harness import RunSpec
from jem_tf.configs.cifar_cpu import BUDGET_STEPS

REPO_ROOT = run_harness.REPO_ROOT
DEFAULT_DATA = "../shared/data/cifar10_jpg_subset"
DEFAULT_FULL_DATA = "../shared/data/cifar10_jpg"

# What the lead's search runner adds to every search row (and so do we): the same layout and cadence.
SEARCH_BASE_FLAGS = ("--noexport", "--sample_every_steps=250", "--checkpoint_every_steps=250",
                     "--summary_every_steps=25")
OOD_SETS = ("digits", "uniform", "constant", "interp")
EVALUATIONS = {
    # Cheap enough for every search row (the search runner's own evaluation).
    "search": ("--eval=accuracy,calibration,ood", "--ood_sets=" + ",".join(OOD_SETS)),
    # The paper's section 5 on the 2,000 test images; PGD on a few hundred images, few radii.
    "full": ("--eval=accuracy,calibration,ood,samples,robustness", "--ood_sets=" + ",".join(OOD_SETS),
             "--num_examples=2000", "--attack_examples=200", "--attack_refine_steps=0,1,10", "--pgd_steps=10",
             "--linf_epsilons=0,0.0314,0.0627", "--l2_epsilons=0,0.5,1", "--boundary_examples=0"),
}
FIGURES = ("reliability_diagram", "ood_histograms_digits", "ood_histograms_uniform", "samples_fresh_unconditional",
           "samples_fresh_conditional", "robustness")

# What every search row shares: the network, the batch, the warm-up, the buffer and the seed.
SEARCH_SHARED_FLAGS = ("--depth=10", "--width=2", "--batch_size=64", "--warmup_steps=200", "--buffer_size=10000",
                       "--seed=0")


def search_row(name: str, why: str, own_flags: tuple, steps: int = 1000) -> RunSpec:
    """A search row: what it tries (objective, sampler, learning rate, precision) on the shared flags."""
    return RunSpec(name, why, (*own_flags, *SEARCH_SHARED_FLAGS), steps=steps)


# Every setting tried in the recipe search, in the order tried. Steps: each row's own budget.
SEARCH = (
    search_row("s01_jem_stab_lr3e-4",
               "JEM + energy L2 0.1 + clamped chains (wgrathwohl/JEM issue #4, JEM++), Adam 3e-4, 10 SGLD steps, "
               "bf16",
               ("--objective=jem", "--sgld_steps=10", "--learning_rate=3e-4", "--energy_l2=0.1", "--sgld_clamp",
                "--precision=mixed_bfloat16")),
    search_row("s02_sada_bn_lr1e-3",
               "SADA-JEM (Yang, Su & Ji 2023): batch norm, ASAM rho 2, un-augmented log p(x), 5 noiseless SGLD "
               "steps; Adam 1e-3",
               ("--objective=jem", "--norm=batch", "--sam_rho=2", "--sam_adaptive", "--generative_augmentation=none",
                "--sgld_steps=5", "--sgld_noise=0", "--data_noise=0", "--learning_rate=1e-3",
                "--precision=mixed_bfloat16")),
    search_row("s03_jempp_lr3e-4",
               "JEM++ (Yang & Ji 2021): proximal sampler, informative initialisation; Adam 3e-4",
               ("--objective=jempp", "--learning_rate=3e-4", "--precision=mixed_bfloat16")),
    search_row("s04_jempp_lr1e-3",
               "JEM++ as s03 with Adam 1e-3 (s03's samples tracked the data closely: room for a faster learning "
               "rate)",
               ("--objective=jempp", "--learning_rate=1e-3", "--precision=mixed_bfloat16")),
    search_row("s06_jem_lr3e-4",
               "plain JEM (no stabilisers) at Adam 3e-4: the official code at these settings trained 6,000 steps on "
               "2 seeds without diverging (test accuracy 0.41; docs/results/compare_training_cifar.json)",
               ("--objective=jem", "--sgld_steps=10", "--learning_rate=3e-4", "--precision=mixed_bfloat16")),
    search_row("s07_jem_lr3e-4_fp32",
               "s06 in float32 (and with the PyTorch-Adam parity change): whether the runaway of s06 comes from "
               "bfloat16",
               ("--objective=jem", "--sgld_steps=10", "--learning_rate=3e-4", "--precision=float32"), steps=600),
    search_row("s08_jem_lr3e-4_fp32_xent_independent",
               "s07 with the cross-entropy on its own batch, as the official code does (--xent_batch=independent): "
               "whether that is the difference behind s06/s07's runaway",
               ("--objective=jem", "--sgld_steps=10", "--learning_rate=3e-4", "--precision=float32",
                "--xent_batch=independent"), steps=600),
    search_row("s09_jempp_uniform_lr1e-3",
               "s04 with chains started from U(-1, 1) instead of class Gaussians: whether JEM++'s sampler keeps "
               "s04's accuracy while log p(x) learns to reject uniform noise again (s01: AUROC 1.0)",
               ("--objective=jempp", "--chain_init=uniform", "--learning_rate=1e-3", "--precision=mixed_bfloat16")),
    search_row("s10_jem_stab_lr1e-3",
               "s01 (stable, log p(x) rejects uniform noise) at Adam 1e-3: whether the stabilisers keep it stable at "
               "s04's learning rate",
               ("--objective=jem", "--sgld_steps=10", "--learning_rate=1e-3", "--energy_l2=0.1", "--sgld_clamp",
                "--precision=mixed_bfloat16")),
)

SEEDS = (0, 1, 2)
RECIPE_WHY = "the chosen recipe: --preset=cifar_cpu"
CALIBRATION_STEPS = (50, 250)  # two lengths: their difference is the per-step time without start-up
CALIBRATED = (("recipe", "jem"), ("classifier", "classifier"))  # (run name part, --objective)


def recipe_specs():
    return tuple(RunSpec(f"recipe_seed{seed}", f"{RECIPE_WHY}, seed {seed}", ("--preset=cifar_cpu", f"--seed={seed}"),
                         group="seeds", evaluation="full", figures=FIGURES if seed == 0 else ())
                 for seed in SEEDS)


def calibration_specs():
    """Two lengths of the recipe and of the classifier, run back to back on a quiet machine: the
    difference of each pair is that objective's seconds per step without start-up."""
    return tuple(RunSpec(f"calib_{name}_{steps}", f"per-step time of the {name} (not a result)",
                         ("--preset=cifar_cpu", f"--objective={objective}", "--export=false"), steps=steps,
                         group="calibration", evaluation=None)
                 for name, objective in CALIBRATED for steps in CALIBRATION_STEPS)


def classifier_spec(steps: int, full: bool = False) -> RunSpec:
    return RunSpec("classifier_full" if full else "classifier",
                   "plain classifier: the recipe's network, data and augmentation, cross-entropy only, the same "
                   "wall-clock budget", ("--preset=cifar_cpu", "--objective=classifier"), steps=steps,
                   group="full" if full else "baseline", data="full" if full else "subset", evaluation="full",
                   figures=() if full else FIGURES)


def recipe_full_spec() -> RunSpec:
    return RunSpec("recipe_full", f"{RECIPE_WHY}, seed 0, on the whole training set", ("--preset=cifar_cpu",),
                   group="full", data="full", evaluation="full")


def classifier_budget(output_dir: str, given_steps: int | None = None) -> dict:
    """The classifier's step count for the recipe's wall-clock budget, and how it was chosen.

    Measured: the recipe's steps (BUDGET_STEPS) x the recipe's seconds per step / the classifier's
    seconds per step, each per-step time from its pair of calibration runs (CALIBRATION_STEPS), which
    ran back to back on the same machine: per step = difference of their training-loop seconds /
    difference of their steps, so start-up (imports, data, graph building) cancels. The recipe seeds
    themselves are not the clock: they run for an hour and may share the CPU with other work, which
    makes them slower, not the budget longer. Raises ValueError naming what is missing."""
    if given_steps:
        return dict(steps=int(given_steps), method="given by --classifier_steps")
    per_step, loads = {}, {}
    for name, _ in CALIBRATED:
        runs = [f"calib_{name}_{steps}" for steps in CALIBRATION_STEPS]
        short, long = (run_harness.read_json(os.path.join(output_dir, run, "wd", "metrics.json")) for run in runs)
        if not (short and long):
            raise ValueError(f"the classifier's budget needs the calibration runs {', '.join(runs)} finished in "
                             f"{output_dir} (--only={','.join(runs)}, on a quiet machine)")
        per_step[name] = ((long["seconds_this_session"] - short["seconds_this_session"])
                          / (long["global_step"] - short["global_step"]))
        if per_step[name] <= 0:
            raise ValueError(f"the calibration runs measured {per_step[name]:.4f} s per {name} step; rerun them "
                             f"(--rerun --only={','.join(runs)}) on a quieter machine")
        # How busy the machine was as each measurement started (a shared machine makes steps slower).
        for run in runs:
            loads[run] = ((run_harness.read_json(os.path.join(output_dir, run, run_harness.PROVENANCE_FILE)) or {})
                          .get("machine") or {}).get("load_average_1min")
    steps = max(1, round(BUDGET_STEPS * per_step["recipe"] / per_step["classifier"]))
    return dict(steps=int(steps), method=f"{BUDGET_STEPS} recipe steps x recipe seconds per step / classifier "
                "seconds per step, both from calibration runs back to back on one machine",
                recipe_seconds=round(BUDGET_STEPS * per_step["recipe"], 1),
                recipe_source=f"{BUDGET_STEPS} steps x {per_step['recipe']:.4f} s per recipe step (calibration)",
                recipe_seconds_per_step=round(per_step["recipe"], 5),
                classifier_seconds_per_step=round(per_step["classifier"], 5),
                calibration_steps=list(CALIBRATION_STEPS), load_average_1min_at_start=loads)


# ------------------------------------------------------------------------------------------------
# The results page: from the per-run JSON alone (no TensorFlow).

ACCURACY, ECE = "accuracy", "calibration/ece"
REFINED = ("refinement/steps_1/accuracy", "refinement/steps_10/accuracy")
SCORES = ("log_px", "max_prob", "grad_norm")
SCORE_TITLES = {"log_px": "log p(x)", "max_prob": "max p(y|x)", "grad_norm": "grad-norm"}
RUN_COLUMNS = (("accuracy", ACCURACY), ("JEM-10 accuracy", REFINED[1]), ("ECE", ECE),
               *((f"log p(x) AUROC {s}", f"ood/{s}/log_px/auroc") for s in OOD_SETS))
ROBUSTNESS_KEY = re.compile(r"^robustness/(l2|linf)/refine_(\d+)/eps_([^/]+)/accuracy$")
TARGET_ACCURACY_GAP, TARGET_UNIFORM_AUROC, TARGET_TRAINING_MINUTES = 0.05, 0.95, 60

PAGE_HEADER = """# CIFAR-10 on two cores: JEM's recipe, its search and the paper's section 5 at CPU scale

*Generated by `python -m benchmarks.cifar_cpu --page_only` from the JSON under `{results_dir}`; do not edit.*

## CIFAR-10 on two cores

`python -m jem_tf.train --preset=cifar_cpu --dataset=folder:../shared/data/cifar10_jpg_subset` trains JEM on
32x32 CIFAR-10 JPEGs within a fixed step budget on a 2-core CPU (the preset: `jem_tf/configs/cifar_cpu.py`).
Everything below is measured by one command, which reruns what is missing and reuses finished runs:

    python -m benchmarks.cifar_cpu --output_dir=DIR [--data=../shared/data/cifar10_jpg_subset] \\
        [--full_data=../shared/data/cifar10_jpg] [--only=NAME,...] [--rerun]

It trains the search rows, the recipe on 3 seeds, the plain classifier for the same wall-clock budget
and both on the whole training set, evaluates each with `python -m jem_tf.evaluate`, writes one JSON per
run and rewrites this page. Rows of the variant table on CIFAR come from
`python -m benchmarks.variants --mode=cifar`. Runs that shared the CPU with other work are slower, not
shorter: each row's seconds per step and the machine's load are in its JSON. The budget assumes a CPU
with bfloat16 instructions (AVX512-BF16 or AMX; each JSON names its machine's): on one without them a
JEM step of this network is many times slower even in float32
([performance.md](performance.md#bfloat16-needs-bfloat16-instructions)).
"""


def _get(record, key):
    value = (record or {}).get("evaluation", {}).get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 run)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} runs)"


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def outcome_text(record) -> str:
    if record["outcome"] == "diverged":
        step = record.get("divergence_step")
        text = f"diverged at step {step}" if step is not None else "diverged"
    else:
        text = record["outcome"]
    return f"{text}: {record['note']}" if record.get("note") else text


def recoveries_text(record) -> str:
    steps = [str(r.get("step")) for r in record.get("recoveries", [])]
    return f"{len(steps)} (at {', '.join(steps)})" if steps else "0"


def _table(header, rows) -> list:
    cell = lambda value: str(value).replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in rows] + [""])


def run_table(records, with_why=True) -> list:
    header = ["run", *(["setting (source / why)"] if with_why else []), "outcome", "steps", "recoveries",
              "s/step", *(title for title, _ in RUN_COLUMNS), "commit"]
    rows = []
    for record in records:
        steps = f"{record.get('steps_reached')} / {record.get('budget_steps')}"
        rows.append([f"`{record['name']}`", *([f"{record['why']}: `{record['flags']}`"] if with_why else []),
                     outcome_text(record), steps, recoveries_text(record), _fmt(record.get("seconds_per_step")),
                     *(_fmt(_get(record, key)) for _, key in RUN_COLUMNS), f"`{record.get('commit', 'unknown')}`"])
    return _table(header, rows)


def section5_table(jem_records, classifier) -> list:
    keys = [("test accuracy", ACCURACY), ("accuracy after 1 SGLD refinement step", REFINED[0]),
            ("accuracy after 10 SGLD refinement steps", REFINED[1]), ("ECE (lower is better)", ECE)]
    keys += [(f"{SCORE_TITLES[score]} AUROC vs {name}", f"ood/{name}/{score}/auroc")
             for name in OOD_SETS for score in SCORES]
    robustness = sorted({key for record in [*jem_records, classifier] if record for key in record["evaluation"]
                         if ROBUSTNESS_KEY.match(key)},
                        key=lambda k: (ROBUSTNESS_KEY.match(k).group(1), int(ROBUSTNESS_KEY.match(k).group(2)),
                                       float(ROBUSTNESS_KEY.match(k).group(3))))
    for key in robustness:
        norm, refine, eps = ROBUSTNESS_KEY.match(key).groups()
        keys.append((f"PGD {norm.replace('linf', 'L-inf').replace('l2', 'L2')} ε={eps}, {refine} refinement steps: "
                     "accuracy", key))
    rows = []
    for title, key in keys:
        jem_value, classifier_value = _mean([_get(r, key) for r in jem_records]), _get(classifier, key)
        difference = (_fmt(jem_value - classifier_value) if None not in (jem_value, classifier_value) else "n/a")
        rows.append([title, _mean_sd([_get(r, key) for r in jem_records]), _fmt(classifier_value), difference])
    return _table(["measure", "JEM recipe (mean ± sd over seeds)", "classifier, same wall clock",
                   "JEM − classifier"], rows)


def claims(jem_records, classifier) -> list:
    """(claim and target, JEM, classifier, shows / does not show / not measured) from the numbers."""
    def verdict(condition):
        return "not measured" if condition is None else ("**shows**" if condition else "**does not show**")

    def value(key, records):
        return _mean([_get(r, key) for r in records])

    rows = []
    jem_accuracy, classifier_accuracy = value(ACCURACY, jem_records), _get(classifier, ACCURACY)
    both = None not in (jem_accuracy, classifier_accuracy)
    rows.append(["JEM's test accuracy within 5 points of the same-budget classifier", _fmt(jem_accuracy),
                 _fmt(classifier_accuracy),
                 verdict(jem_accuracy >= classifier_accuracy - TARGET_ACCURACY_GAP if both else None)])
    num_classes = next((r.get("num_classes") for r in jem_records if r.get("num_classes")), 10)
    rows.append([f"JEM beats chance ({1 / num_classes:.2f})", _fmt(jem_accuracy), "",
                 verdict(jem_accuracy > 1 / num_classes if jem_accuracy is not None else None)])
    uniform = value("ood/uniform/log_px/auroc", jem_records)
    rows.append([f"log p(x) AUROC ≥ {TARGET_UNIFORM_AUROC} against uniform noise", _fmt(uniform),
                 _fmt(_get(classifier, "ood/uniform/log_px/auroc")),
                 verdict(uniform >= TARGET_UNIFORM_AUROC if uniform is not None else None)])
    for name, words in (("constant", "constant images"), ("digits", "a real other dataset (digits, 32x32x3)")):
        key = f"ood/{name}/log_px/auroc"
        jem_value, classifier_value = value(key, jem_records), _get(classifier, key)
        rows.append([f"log p(x) AUROC against {words} above the classifier's", _fmt(jem_value),
                     _fmt(classifier_value),
                     verdict(jem_value > classifier_value if None not in (jem_value, classifier_value) else None)])
    jem_ece, classifier_ece = value(ECE, jem_records), _get(classifier, ECE)
    rows.append(["ECE no worse than the classifier's", _fmt(jem_ece), _fmt(classifier_ece),
                 verdict(jem_ece <= classifier_ece if None not in (jem_ece, classifier_ece) else None)])
    diverged = sum(r["outcome"] != "finished" for r in jem_records)
    recovered = sum(r.get("recovery_count", 0) > 0 for r in jem_records)
    seeds_outcome = f"{diverged} diverged, {recovered} with recoveries" if jem_records else "n/a"
    rows.append([f"stable across seeds: every seed finishes its budget, recoveries on fewer than 2 of "
                 f"{len(jem_records) or 3}", seeds_outcome, "",
                 verdict(diverged == 0 and recovered < 2 if jem_records else None)])
    walls = [r["train_wall_s"] / 60 for r in jem_records if r.get("train_wall_s")]
    loads = sorted({(r.get("machine") or {}).get("load_average_1min") for r in jem_records} - {None})
    # A run that shared the CPU is slower, never shorter: the fastest seed is the closest to a quiet machine.
    rows.append([f"the budget trains within {TARGET_TRAINING_MINUTES} minutes on the 2-core machine (each seed's "
                 "training command, wall clock; runs that shared the CPU are slower, so the fastest counts"
                 + (f"; 1-minute load average at their start: {', '.join(map(str, loads))}" if loads else "") + ")",
                 ", ".join(f"{w:.1f} min" for w in walls) or "n/a", "",
                 verdict(min(walls) <= TARGET_TRAINING_MINUTES if walls else None)])
    return _table(["claim (issue #17's target)", "JEM", "classifier", "at this scale"], rows)


def compare_training_section(compares) -> list:
    """One block per `benchmarks.compare_training` JSON (e.g. the recipe's budget, the paper's settings
    on the whole set): its settings, each run with the device it ran on, the divergence counts."""
    compares = [c for c in compares if c]
    if not compares:
        return ["Not run yet (`python -m benchmarks.compare_training ... --output_dir=DIR`, then copy its "
                "`compare_training.json` to a path given by `--compare_training_json`).", ""]
    lines = []
    for compare in compares:
        settings = compare.get("settings", {})
        lines += [f"### {settings.get('steps')} steps at Adam {settings.get('learning_rate')} on "
                  f"`{settings.get('data')}`", "",
                  f"Settings: `{', '.join(f'{k}={v}' for k, v in sorted(settings.items()))}`", ""]
        rows = [[run["implementation"], run["seed"], run.get("steps"),
                 f"step {run.get('diverged_at')}" if run.get("diverged") else "no", _fmt(run.get("test_accuracy")),
                 run.get("device") or "not recorded"]
                for run in compare.get("runs", [])]
        lines += _table(["implementation", "seed", "steps", "diverged", "test accuracy", "ran on"], rows)
        counts = compare.get("diverged", {})
        if counts:
            lines += ["Diverged runs: " + "; ".join(f"{impl} {d} of {n}" for impl, (d, n) in sorted(counts.items())),
                      ""]
    return lines


def figures_section(records, page_dir: str) -> list:
    lines = []
    for record in records:
        for stem, path in sorted((record or {}).get("figures", {}).items()):
            relative = os.path.relpath(os.path.join(REPO_ROOT, path), page_dir)
            lines += [f"![{record['name']}: {stem}]({relative})", ""]
    return lines


def render_page(records: dict, family: dict, compares: list, results_dir: str, page_dir: str) -> str:
    """The results page from the per-run records (name -> record), the variant table's CIFAR
    records and the official-code comparison's JSON."""
    by_group = lambda group: [r for r in records.values() if r.get("group") == group]  # noqa: E731
    jem = by_group("seeds")
    baseline = next(iter(by_group("baseline")), None)
    lines = [PAGE_HEADER.format(results_dir=os.path.relpath(results_dir, REPO_ROOT))]
    lines += ["## Which of the paper's claims show at this scale", "",
              "Computed from the numbers below (JEM: the recipe's mean over its seeds; classifier: the same "
              "network, data and augmentation for the same wall-clock time).", ""]
    lines += claims(jem, baseline)
    lines += ["## The recipe search", "", "Every setting tried, in order, with its outcome.", ""]
    lines += run_table(by_group("search")) if by_group("search") else ["No search row has finished yet.", ""]
    lines += ["## The recipe on 3 seeds", ""]
    if jem:
        lines += run_table(jem, with_why=False)
        lines += [f"Test accuracy {_mean_sd([_get(r, ACCURACY) for r in jem])}; recoveries "
                  f"{sum(r.get('recovery_count', 0) for r in jem)} in all; training wall time "
                  + ", ".join(f"{r['train_wall_s'] / 60:.1f} min" for r in jem)
                  + " (each run's machine and its load are in its JSON).", ""]
    else:
        lines += ["Not run yet.", ""]
    lines += ["## JEM against the classifier with the same budget (the paper's section 5)", ""]
    if baseline:
        budget = baseline.get("budget") or {}
        lines += [f"The classifier trained {baseline.get('steps_reached')} steps: {budget.get('method', 'n/a')}"
                  + (f" ({budget['recipe_seconds']:.0f} s of recipe training, "
                     f"{budget['classifier_seconds_per_step']:.3f} s per classifier step)"
                     if "recipe_seconds" in budget else "") + ".", ""]
    lines += section5_table(jem, baseline)
    lines += ["## The whole training set (50,000 images)", ""]
    lines += run_table(by_group("full"), with_why=False) if by_group("full") else ["Not run yet.", ""]
    lines += ["## The family on CIFAR (`benchmarks.variants --mode=cifar`)", ""]
    lines += run_table(list(family.values())) if family else ["Not run yet.", ""]
    lines += ["## Against the official code (`benchmarks.compare_training`)", ""]
    lines += compare_training_section(compares)
    lines += ["## Figures", ""]
    lines += figures_section([*jem, baseline], page_dir) or ["None yet.", ""]
    return "\n".join(lines).rstrip() + "\n"


SUMMARY_FIGURE = "summary.png"
SUMMARY_MEASURES = (("accuracy", ACCURACY), ("ECE", ECE), ("log p(x) AUROC uniform", "ood/uniform/log_px/auroc"),
                    ("log p(x) AUROC constant", "ood/constant/log_px/auroc"),
                    ("log p(x) AUROC digits", "ood/digits/log_px/auroc"))


def summary_figure(records, path: str) -> str | None:
    """Grouped bars, one group per run (search rows, seeds, classifier, whole set, family), of the
    SUMMARY_MEASURES; None when no run has numbers."""
    runs = [r for r in records if any(_get(r, key) is not None for _, key in SUMMARY_MEASURES)]
    if not runs:
        return None
    import matplotlib  # noqa: PLC0415 (only the figure needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    width = 0.8 / len(SUMMARY_MEASURES)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(runs) + 2), 3.6))
    for index, (title, key) in enumerate(SUMMARY_MEASURES):
        values = [_get(r, key) for r in runs]
        axis.bar([i + index * width for i in range(len(runs))], [v if v is not None else 0 for v in values], width,
                 label=title)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(runs))])
    axis.set_xticklabels([r["name"] for r in runs], rotation=35, ha="right", fontsize=7)
    axis.axhline(TARGET_UNIFORM_AUROC, color="grey", linewidth=0.6, linestyle="--")
    axis.set_ylim(0, 1.3)  # room for the legend above the bars
    axis.legend(fontsize=7, ncol=3, loc="upper left")
    axis.set_title("Every run's test numbers (dashed: the 0.95 AUROC target)", fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


HEADLINE_NAME = "cifar_cpu_headline"  # docs/results/cifar_cpu_headline.json, the README's table


def headline_table(records: dict) -> dict | None:
    """The README's table (tools.results_tables format): the recipe over its seeds and the
    same-budget classifier, each with the commits, machines and dates of its runs; None before any
    recipe seed has a result."""
    seeds = [r for r in records.values() if r.get("group") == "seeds"]
    if not seeds:
        return None
    baseline = [r for r in records.values() if r.get("group") == "baseline"]
    columns = ["model", "runs", "steps", "test accuracy", "ECE", "log p(x) AUROC vs uniform noise",
               "log p(x) AUROC vs digits", "diverged or recovered"]
    rows, runs = [], []
    for label, group in (("JEM, `--preset=cifar_cpu`", seeds), ("classifier, same wall clock", baseline)):
        if not group:
            continue
        runs += group
        unstable = sum(r["outcome"] != "finished" or r.get("recovery_count", 0) > 0 for r in group)
        rows.append([label, len(group), " / ".join(sorted({str(r.get("steps_reached")) for r in group})),
                     _mean_sd([_get(r, ACCURACY) for r in group]).replace(f" ({len(group)} runs)", "")
                     .replace(" (1 run)", ""),
                     _fmt(_mean([_get(r, ECE) for r in group])),
                     _fmt(_mean([_get(r, "ood/uniform/log_px/auroc") for r in group])),
                     _fmt(_mean([_get(r, "ood/digits/log_px/auroc") for r in group])),
                     f"{unstable} of {len(group)}"])

    def field(key, text=str):
        return " | ".join(f"{value} [{', '.join(names)}]" for value, names in _group_by(runs, key, text).items())

    return dict(commit=field("commit"), machine=field("machine", _machine_text), date=field("date", lambda d: d[:10]),
                command="python -m benchmarks.cifar_cpu --output_dir=DIR (this table: --page_only)",
                columns=columns, rows=rows, align=["l", "r", "r", "r", "r", "r", "r", "r"],
                notes=["CIFAR-10 JPEGs, 10,000 training and 2,000 test images, on 2 CPU cores; accuracy is the "
                       "mean ± sd over the recipe's seeds. Every number, the search behind the recipe and the "
                       "paper's claims at this scale: [docs/cifar_cpu.md](docs/cifar_cpu.md)."])


def _group_by(runs, key, text) -> dict:
    grouped = {}
    for run in runs:
        grouped.setdefault(text(run.get(key) or "unknown"), []).append(run["name"])
    return grouped


def _machine_text(machine) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    return f"{machine.get('cpu')}, {machine.get('cores')} cores"


def write_page(results_dir: str, family_dir: str, compare_jsons: list, page: str,
               figures_dir: str | None = None, headline_dir: str | None = None) -> str:
    """The page (and, with figures_dir, its summary figure) from the JSON files alone; with
    headline_dir, also HEADLINE_NAME.json there, and the README's region rendered from it."""
    records = run_harness.load_results(results_dir)
    family = run_harness.load_results(family_dir)
    compares = [run_harness.read_json(path) for path in compare_jsons or ()]
    page_dir = os.path.dirname(os.path.abspath(page))
    text = render_page(records, family, compares, results_dir, page_dir)
    if figures_dir:
        order = {"search": 0, "seeds": 1, "baseline": 2, "full": 3}
        runs = sorted(records.values(), key=lambda r: order.get(r.get("group"), 4)) + list(family.values())
        figure = summary_figure(runs, os.path.join(figures_dir, SUMMARY_FIGURE))
        if figure:
            text += f"\n![Every run's test numbers]({os.path.relpath(figure, page_dir)})\n"
    with open(page, "w") as f:
        f.write(text)
    logging.info("Wrote %s from %d run records.", page, len(records))
    headline = headline_table(records) if headline_dir else None
    if headline:
        path = results_json.write(HEADLINE_NAME, headline, results=headline_dir)
        logging.info("Wrote %s and the README's table from it.", path)
    return page


# ------------------------------------------------------------------------------------------------
# The command.


def define_flags(flag_values=flags.FLAGS):
    def define(kind, name, default, text):
        getattr(flags, f"DEFINE_{kind}")(name, default, text, flag_values=flag_values)

    define("string", "output_dir", None, "Directory of the runs (OUTPUT_DIR/NAME/...); required unless --page_only.")
    define("string", "data", DEFAULT_DATA, "Image folder (train/ and test/ class folders) of the subset runs.")
    define("string", "full_data", DEFAULT_FULL_DATA, "Image folder of the whole-training-set runs.")
    define("list", "only", None, "Runs to (re)run, by name (default: all, in order).")
    define("bool", "rerun", False, "Train and evaluate the chosen runs again (old run directories are moved aside).")
    define("bool", "page_only", False, "Only rewrite the page from the JSON under --results_dir.")
    define("integer", "classifier_steps", None, "The classifier's steps (default: measured, see classifier_budget).")
    define("string", "results_dir", os.path.join(REPO_ROOT, "docs/results/cifar_cpu"), "Per-run JSON folder.")
    define("string", "figures_dir", os.path.join(REPO_ROOT, "docs/cifar_cpu"), "Figures copied for the page.")
    define("string", "family_results_dir", os.path.join(REPO_ROOT, "docs/results/variants_cifar"),
           "The variant table's CIFAR rows (benchmarks.variants --mode=cifar).")
    define("list", "compare_training_json", [os.path.join(REPO_ROOT, "docs/results/compare_training_cifar.json"),
                                             os.path.join(REPO_ROOT, "docs/results/compare_training_cifar_fp32.json"),
                                             os.path.join(REPO_ROOT, "docs/results/compare_training_cifar_full.json")],
           "benchmarks.compare_training JSON files for the official-code comparisons (each shown when present): the "
           "recipe's budget on the subset, the paper's settings scaled to a CPU on the whole set.")
    define("string", "page", os.path.join(REPO_ROOT, "docs/cifar_cpu.md"), "The results page to write.")
    define("string", "headline_dir", os.path.join(REPO_ROOT, "docs/results"),
           f"Where {HEADLINE_NAME}.json, the README's headline table, is written ('' for nowhere); the README is "
           "re-rendered from it when this is the repository's docs/results.")


def all_names() -> list:
    return [s.name for s in (*SEARCH, *recipe_specs(), *calibration_specs())] + [
        "classifier", "recipe_full", "classifier_full"]


def run_and_record(spec: RunSpec, settings, extra: dict | None = None) -> str:
    """Runs one spec (or reuses it), writes its JSON and the page; returns its status."""
    data = settings.full_data if spec.data == "full" else settings.data
    base = SEARCH_BASE_FLAGS if spec.group == "search" else ()
    status = run_harness.run(spec, settings.output_dir, data, EVALUATIONS.get(spec.evaluation, ()), base,
                             rerun=settings.rerun)
    record = run_harness.result_record(spec, settings.output_dir, data)
    if record is not None and spec.evaluation is not None:
        run_info = run_harness.read_json(os.path.join(settings.output_dir, spec.name, "wd", "run_info.json"), {})
        record = dict(record, num_classes=run_info.get("num_classes"), **(extra or {}))
        path = run_harness.write_result(record, spec, settings.output_dir, settings.results_dir, settings.figures_dir)
        logging.info("%s: %s; wrote %s", spec.name, status, path)
        write_page(settings.results_dir, settings.family_results_dir, settings.compare_training_json, settings.page,
                   settings.figures_dir, settings.headline_dir or None)
    else:
        logging.info("%s: %s", spec.name, status)
    return status


def run_all(settings) -> int:
    """Every run in order (or those of settings.only); 1 when one failed."""
    chosen = set(settings.only or all_names())
    failed = []
    # The specs whose definition does not depend on measurements first.
    fixed = [*SEARCH, *recipe_specs(), *calibration_specs()]
    planned = [s for s in fixed if s.name in chosen] + [n for n in ("classifier", "recipe_full", "classifier_full")
                                                         if n in chosen]
    for index, item in enumerate(planned, 1):
        name = item if isinstance(item, str) else item.name
        logging.info("Run %d of %d: %s", index, len(planned), name)
        extra = None
        if name == "recipe_full":
            spec = recipe_full_spec()
        elif isinstance(item, str):
            try:
                budget = (_stored_budget(settings, name) or _subset_classifier_budget(settings, name)
                          or classifier_budget(settings.output_dir, settings.classifier_steps))
            except ValueError as error:
                logging.error("%s: %s", name, error)
                failed.append(name)
                continue
            spec, extra = classifier_spec(budget["steps"], full=name == "classifier_full"), dict(budget=budget)
        else:
            spec = item
        status = run_and_record(spec, settings, extra)
        if extra:  # after the run: --rerun moves the old run directory (and its budget) aside first
            _store_budget(settings, name, extra["budget"])
        if status.startswith("failed"):
            failed.append(f"{name} ({status})")
    if failed:
        logging.error("Failed: %s", "; ".join(failed))
        return 1
    return 0


def _budget_path(settings, name):
    return os.path.join(settings.output_dir, name, "budget.json")


def _stored_budget(settings, name):
    """The budget a classifier run was started with (kept so a resumed or reused run keeps it)."""
    if settings.rerun or settings.classifier_steps:
        return None
    return run_harness.read_json(_budget_path(settings, name))


def _subset_classifier_budget(settings, name):
    """classifier_full keeps the budget the subset classifier was given (recorded in its result JSON):
    the budget is the recipe's wall clock, which does not depend on the data set, and its calibration
    runs need not be in this output directory."""
    if name != "classifier_full" or settings.rerun or settings.classifier_steps:
        return None
    budget = (run_harness.read_json(os.path.join(settings.results_dir, "classifier.json")) or {}).get("budget")
    if not budget:
        return None
    return dict(budget, method=f"the subset classifier's budget (from its result JSON): {budget['method']}")


def _store_budget(settings, name, budget):
    os.makedirs(os.path.dirname(_budget_path(settings, name)), exist_ok=True)
    run_harness.write_json(_budget_path(settings, name), budget)


def main(argv, settings=None):
    if len(argv) > 1:
        logging.error("Unexpected arguments %s: every setting is a flag.", argv[1:])
        return 2
    settings = settings or flags.FLAGS
    if settings.page_only:
        write_page(settings.results_dir, settings.family_results_dir, settings.compare_training_json, settings.page,
                   settings.figures_dir, settings.headline_dir or None)
        return 0
    if not settings.output_dir:
        logging.error("--output_dir is required (the runs' directory), unless --page_only.")
        return 2
    unknown = [name for name in settings.only or () if name not in all_names()]
    if unknown:
        logging.error("--only names unknown runs %s; known: %s.", unknown, ", ".join(all_names()))
        return 2
    for flag_name in ("data", "full_data"):
        folder = getattr(settings, flag_name)
        needed = flag_name == "data" or any(n in (settings.only or all_names()) for n in ("recipe_full",
                                                                                            "classifier_full"))
        if needed and not os.path.isdir(os.path.join(folder, "train")):
            logging.error("--%s=%s is not an image folder with train/ and test/ class folders.", flag_name, folder)
            return 2
    if settings.classifier_steps is not None and settings.classifier_steps < 1:
        logging.error("--classifier_steps=%s: expected a positive number of steps.", settings.classifier_steps)
        return 2
    run_harness.stop_on_sigterm()
    return run_all(settings)


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
