"""The report of `benchmarks.compare_reference` (no TensorFlow, no torch: tested on fake timings):
quiet-sample medians per side, the ratios ours / official, the printed table, and the docs table
(docs/results/speed_vs_official.json)."""

from benchmarks import machine_load

SIDES = ("official", "jem_tf")
# The reference's fixed image shape (train_wrn_ebm.py: im_sz = 32, n_ch = 3) and class count.
IMAGE_SIZE, CHANNELS, NUM_CLASSES = 32, 3, 10


def round_order(round_index: int) -> tuple:
    """ABBA: official first in even rounds, ours first in odd ones."""
    return SIDES if round_index % 2 == 0 else SIDES[::-1]


def summarize_side(samples: list, max_other_load: float) -> dict:
    """Medians of iteration and SGLD-step seconds over the quiet samples and over all of them."""
    quiet = [s for s in samples if machine_load.is_quiet(s, max_other_load)]
    loads = [s["other_load"] for s in samples if s.get("other_load") is not None]
    return dict(
        num_samples=len(samples), num_quiet=len(quiet),
        iteration_quiet=machine_load.summarize(s["wall_seconds"] for s in quiet),
        iteration_all=machine_load.summarize(s["wall_seconds"] for s in samples),
        sgld_step_quiet=machine_load.summarize(s["sgld_step_seconds"] for s in quiet),
        sgld_step_all=machine_load.summarize(s["sgld_step_seconds"] for s in samples),
        other_load=machine_load.summarize(loads),
    )


def build_report(samples: dict, settings: dict, cpu: dict, versions: dict, max_other_load: float,
                 min_quiet_samples: int) -> dict:
    """Everything printed and saved: settings, CPU, per-side summaries and the ratios (ours / official)."""
    sides = {side: summarize_side(samples[side], max_other_load) for side in SIDES}
    valid = all(sides[side]["num_quiet"] >= min_quiet_samples for side in SIDES)

    def ratio(kind):
        official, ours = sides["official"][kind], sides["jem_tf"][kind]
        return None if not official or not ours else ours["median"] / official["median"]

    return dict(settings=settings, cpu=cpu, versions=versions, max_other_load=max_other_load,
                min_quiet_samples=min_quiet_samples, sides=sides, valid=valid,
                iteration_ratio=ratio("iteration_quiet") if valid else None,
                sgld_step_ratio=ratio("sgld_step_quiet") if valid else None,
                iteration_ratio_all_samples=ratio("iteration_all"),
                sgld_step_ratio_all_samples=ratio("sgld_step_all"), samples=samples)


def _seconds(summary, scale=1.0, unit="s"):
    if not summary:
        return "–"
    return f"{summary['median'] * scale:.3g} {unit} (min {summary['min'] * scale:.3g})"


def format_report(report: dict) -> str:
    s, cpu, v = report["settings"], report["cpu"], report["versions"]
    lines = [
        f"### Official JEM vs jem_tf: WRN-{s['depth']}-{s['width']}, batch {s['batch_size']}, "
        f"{s['sgld_steps']} SGLD steps, {IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}, {s['threads']} thread(s) per side",
        "",
        f"CPU: {cpu['model']}, {cpu['num_cpus']} CPU(s); ISA: {' '.join(cpu['isa_flags']) or 'none of interest'}"
        + (f"; lscpu: {', '.join(f'{k}: {val}' for k, val in cpu['lscpu'].items())}" if cpu.get("lscpu") else ""),
        f"Official: PyTorch {v.get('torch', '?')} (stand-ins: {', '.join(v.get('stand_ins') or []) or 'none'}); "
        f"jem_tf: TensorFlow {v.get('tensorflow', '?')}, precision {s.get('precision', 'float32')}"
        + (f", our flags {' '.join(s['ours_flags'])}" if s.get("ours_flags") else "") + ".",
        f"{s['rounds']} rounds x {s['samples_per_round']} sample(s) per side, alternating (ABBA); quiet = other "
        f"processes and steal used <= {report['max_other_load']:.0%} of the machine during the sample.",
        "",
        "| implementation | quiet / all samples | JEM iteration, quiet median | SGLD step, quiet median "
        "| other load (median) | JEM iteration, all samples |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side, label in zip(SIDES, ("official (PyTorch)", "jem_tf")):
        summary = report["sides"][side]
        load = "–" if not summary["other_load"] else f"{summary['other_load']['median']:.0%}"
        lines.append(
            f"| {label} | {summary['num_quiet']} / {summary['num_samples']} | {_seconds(summary['iteration_quiet'])} "
            f"| {_seconds(summary['sgld_step_quiet'], 1e3, 'ms')} | {load} "
            f"| {_seconds(summary['iteration_all'])} |")
    lines.append("")
    if report["valid"]:
        ratio = report["iteration_ratio"]
        lines.append(f"**Ratio jem_tf / official, JEM iteration (quiet medians): {ratio:.3f}** "
                     f"(jem_tf {1 / ratio:.2f}x as fast); SGLD step: {report['sgld_step_ratio']:.3f}.")
    else:
        all_ratio = report["iteration_ratio_all_samples"]
        lines.append(
            f"**No valid ratio**: a side has fewer than {report['min_quiet_samples']} quiet samples (the machine was "
            "busy). The all-sample ratio"
            + (f" ({all_ratio:.3f})" if all_ratio else "") + " is NOT a speed claim; rerun on a quiet machine.")
    lines.append("SGLD step: official = its `sample_q` time inside the iteration / steps; jem_tf = the compiled "
                 "sampler's chain / steps (benchmarks.train_step's row).")
    return "\n".join(lines)


SPEED_COLUMNS = ["model", "jem_tf precision", "official iteration (quiet median)", "jem_tf iteration",
                 "ratio jem_tf / official", "SGLD step ratio", "ABBA rounds"]


def speed_table(report: dict, provenance: dict) -> dict:
    """The docs table (docs/results/speed_vs_official.json's shape): this run's row. A report without a
    valid ratio (too few quiet samples) is no speed claim and is refused with ValueError."""
    if not report["valid"]:
        raise ValueError("no valid ratio (too few quiet samples): nothing is written to docs/results/")
    s, sides = report["settings"], report["sides"]
    precision = " ".join([s.get("precision", "float32"), *s.get("ours_flags", [])])
    row = [f"WRN-{s['depth']}-{s['width']}", precision,
           float(f"{sides['official']['iteration_quiet']['median']:.3g}"),
           float(f"{sides['jem_tf']['iteration_quiet']['median']:.3g}"),
           round(report["iteration_ratio"], 2), round(report["sgld_step_ratio"], 2), s["rounds"]]
    note = (f"Batch {s['batch_size']}, {s['sgld_steps']} SGLD steps, {IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}, "
            f"{s['threads']} threads per side, only quiet samples (other load at most {report['max_other_load']:.0%}), "
            f"{s['samples_per_round']} samples per side per round. The official code always runs float32.")
    return dict(**provenance, columns=SPEED_COLUMNS, align=["l", "l", "r", "r", "r", "r", "r"],
                formats=[None, None, "{:#.3g} s", "{:#.3g} s", "{:.2f}", "{:.2f}", None], rows=[row], notes=[note])
