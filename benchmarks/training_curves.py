"""What `benchmarks.compare_training` reports (no TensorFlow, no torch: tested on fake runs): a run's
curves and divergence, the printed tables and plot, and the docs tables
(docs/results/training_dynamics_runs.json and training_dynamics_curves.json)."""

import dataclasses
import math

IMPLEMENTATIONS = ("official", "jem_tf")
METRICS = ("xent", "accuracy", "log_px_data", "log_px_samples")
METRIC_TITLES = {"xent": "cross-entropy", "accuracy": "accuracy (batch)", "log_px_data": "log p~(x) data",
                 "log_px_samples": "log p~(x) samples"}
@dataclasses.dataclass
class RunResult:
    implementation: str
    seed: int
    curves: dict  # step (updates done before the batch) -> {metric: value}
    steps: int = 0
    diverged: bool = False
    diverged_at: int | None = None
    reason: str = ""
    test_accuracy: float | None = None
    seconds: float = 0.0
    log: str = ""
    device: str = ""  # where it ran: the reference's result names its device; jem_tf runs on this machine's CPU

    def to_dict(self):
        return dict(dataclasses.asdict(self), curves={str(k): v for k, v in sorted(self.curves.items())})


# ------------------------------------------------------------------------------------------------
# Curves, divergence and tables (no TensorFlow, no torch: tested on fake runs).


def mark_non_finite(run: RunResult) -> RunResult:
    """A run whose logged values become NaN or infinite diverged there, whatever its own guard said
    (the reference's |L| > 1e8 check lets NaN through)."""
    for step in sorted(run.curves):
        if any(not math.isfinite(v) for v in run.curves[step].values()):
            if not run.diverged or (run.diverged_at is not None and step < run.diverged_at):
                run.diverged, run.diverged_at = True, step
                run.reason = run.reason or "non-finite logged values"
            break
    return run


def count_diverged(runs) -> dict:
    """implementation -> (diverged runs, runs)."""
    return {impl: (sum(r.diverged for r in runs if r.implementation == impl),
                   sum(r.implementation == impl for r in runs))
            for impl in IMPLEMENTATIONS if any(r.implementation == impl for r in runs)}


def window_means(run: RunResult, every: int, steps: int) -> dict:
    """metric -> {window end: mean of the finite values at steps in [end - every, end)}."""
    windows = {}
    for metric in METRICS:
        for end in range(every, steps + every, every):
            values = [run.curves[s][metric] for s in range(end - every, min(end, steps))
                      if s in run.curves and metric in run.curves[s] and math.isfinite(run.curves[s][metric])]
            if values:
                windows.setdefault(metric, {})[min(end, steps)] = sum(values) / len(values)
    return windows


def curve_table(runs, every: int, steps: int) -> str:
    """Markdown: per window, each metric as 'official | jem_tf' means over the seeds' window means."""
    implementations = [impl for impl in IMPLEMENTATIONS if any(r.implementation == impl for r in runs)]
    means = {id(run): window_means(run, every, steps) for run in runs}
    ends = sorted({end for m in means.values() for w in m.values() for end in w})
    header = ["steps"] + [f"{METRIC_TITLES[m]}: {impl}" for m in METRICS for impl in implementations]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for end in ends:
        cells = [f"{max(0, end - every)}–{end - 1}"]
        for metric in METRICS:
            for impl in implementations:
                values = [means[id(r)][metric][end] for r in runs
                          if r.implementation == impl and end in means[id(r)].get(metric, {})]
                cells.append(f"{sum(values) / len(values):.4g} ({len(values)})" if values else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(runs) -> str:
    lines = ["| implementation | seed | steps run | diverged | final test accuracy | minutes |",
             "|---|---:|---:|---|---:|---:|"]
    for run in runs:
        diverged = f"yes, at step {run.diverged_at} ({run.reason})" if run.diverged else "no"
        accuracy = "–" if run.test_accuracy is None else f"{run.test_accuracy:.4f}"
        lines.append(f"| {run.implementation} | {run.seed} | {run.steps} | {diverged} | {accuracy} | "
                     f"{run.seconds / 60:.1f} |")
    return "\n".join(lines)


def format_report(runs, settings: dict) -> str:
    diverged = count_diverged(runs)
    s = settings
    lines = [
        f"### Official JEM vs jem_tf, training: WRN-{s['depth']}-{s['width']}, batch {s['batch_size']}, "
        f"{s['sgld_steps']} SGLD steps, lr {s['learning_rate']:g} (warm-up {s['warmup_steps']}), buffer "
        f"{s['buffer_size']}, {s['steps']} steps, seeds {', '.join(map(str, s['seeds']))}",
        "",
        f"Data: {s['data']} ({s['validation_size']} random validation images held out).",
        "Diverged: " + "; ".join(f"{impl} {d} of {n}" for impl, (d, n) in diverged.items()) + ".",
        "",
        run_table(runs),
        "",
        f"Curves: per-step values averaged over windows of {s['report_every']} steps, then over the seeds still "
        "running (their number in parentheses).",
        "",
        curve_table(runs, s["report_every"], s["steps"]),
    ]
    return "\n".join(lines)


def plot_curves(runs, path: str, every: int) -> str:
    """Four panels (one per metric), a running mean over `every` // 5 steps for every run."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    colours = {"official": "tab:blue", "jem_tf": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    smoothing = max(1, every // 5)
    seeds = sorted({r.seed for r in runs})
    for axis, metric in zip(axes.flat, METRICS):
        for run in runs:
            steps = [s for s in sorted(run.curves) if metric in run.curves[s]
                     and math.isfinite(run.curves[s][metric])]
            values = [run.curves[s][metric] for s in steps]
            smoothed = [sum(values[max(0, i - smoothing + 1):i + 1]) / len(values[max(0, i - smoothing + 1):i + 1])
                        for i in range(len(values))]
            label = f"{run.implementation}, seed {run.seed}" + (" (diverged)" if run.diverged else "")
            axis.plot(steps, smoothed, styles[seeds.index(run.seed) % len(styles)],
                      color=colours[run.implementation], label=label)
        axis.set_title(METRIC_TITLES[metric])
        axis.set_xlabel("step")
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(f"Official JEM vs jem_tf (running mean over {smoothing} steps)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------------
# Runs


def dynamics_tables(runs, settings: dict, provenance: dict) -> dict:
    """The docs tables {'runs': ..., 'curves': ...} in the shape of docs/results/training_dynamics_runs.json
    and training_dynamics_curves.json: one row per run, and the window means of `curve_table`."""
    diverged = count_diverged(runs)
    run_rows = [[run.implementation, run.seed, run.steps, f"yes, at step {run.diverged_at}" if run.diverged else "no",
                 None if run.test_accuracy is None else round(run.test_accuracy, 4)] for run in runs]
    runs_table = dict(
        **provenance, columns=["implementation", "seed", "steps run", "diverged", "final test accuracy"],
        align=["l", "r", "r", "l", "r"], formats=[None, None, None, None, "{:.4f}"], rows=run_rows,
        notes=["Diverged: " + ", ".join(f"{impl} {d} of {n}" for impl, (d, n) in diverged.items()) + ". Final test "
               "accuracy: the reference's own `eval_classification` on inputs with its "
               f"N(0, {settings['data_noise']:g}) noise; jem_tf's trainer on clean images."])
    every, steps = settings["report_every"], settings["steps"]
    implementations = [impl for impl in IMPLEMENTATIONS if any(r.implementation == impl for r in runs)]
    means = {id(run): window_means(run, every, steps) for run in runs}
    ends = sorted({end for m in means.values() for w in m.values() for end in w})
    rows, counts = [], set()
    for end in ends:
        row = [f"{max(0, end - every)}–{end - 1}"]
        for metric in METRICS:
            for impl in implementations:
                values = [means[id(r)][metric][end] for r in runs
                          if r.implementation == impl and end in means[id(r)].get(metric, {})]
                counts.add(len(values))
                row.append(float(f"{sum(values) / len(values):.4g}") if values else None)
        rows.append(row)
    seeds = "the seed" if len(settings["seeds"]) == 1 else f"the {len(settings['seeds'])} seeds"
    cells = f"{min(counts)} to {max(counts)}" if len(counts) > 1 else f"{max(counts, default=0)}"
    curves_table = dict(
        **provenance, columns=["steps"] + [f"{METRIC_TITLES[m]}: {impl}" for m in METRICS for impl in implementations],
        align=["r"] * (1 + len(METRICS) * len(implementations)), rows=rows,
        notes=[f"Per-step values averaged over {every}-step windows and over {seeds} still running "
               f"({cells} runs in a cell)."])
    return dict(runs=runs_table, curves=curves_table)
