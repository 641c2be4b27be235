"""Writes the evaluation outputs: results.json, report.md (the numbers in the paper's table
layouts, with the figures) and TensorBoard summaries (scalars, figures, the report as text)."""

import json
import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf.configs.base import write_file_atomically
from jem_tf.evaluation import common

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
TENSORBOARD_DIR = "tensorboard"


def _json_value(value):
    """numpy scalars -> Python; non-finite floats -> 'inf' / '-inf' / 'nan' (JSON has none)."""
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value


def write_results(path: str, results: dict) -> None:
    write_file_atomically(path, json.dumps(_json_value(results), indent=2, sort_keys=True))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# Formatting helpers of the evaluations' report sections.


def fmt(value, percent=False, digits=4) -> str:
    """A result as table text: numbers to `digits` significant digits (or a percentage), strings in italics."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return f"*{value}*"
    if not _is_number(value):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}g}"


def _cell(value) -> str:
    # A bare "|" (as in p(y|x)) would end the table cell.
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header, rows) -> list:
    """A markdown table's lines (and a blank line)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def image(figures, name, caption) -> list:
    """The markdown image line of figure `name`, or nothing when the evaluation made no such figure."""
    if name not in figures:
        return []
    return [f"![{caption}]({os.path.basename(figures[name])})", ""]


def unavailable_line(results, key) -> list:
    """A bold line for the result `key` when it is "unavailable: why"."""
    value = results.get(key)
    return [f"**{key}**: {value}", ""] if common.is_unavailable(value) else []


def models(results, run, compare):
    """(result-key prefix, model name) for the run and the comparison run."""
    return [("", run.name)] + ([("compare/", compare.name)] if compare is not None else [])


def generic_section(heading: str, name: str, results: dict, figures: dict) -> list:
    """An evaluation's section without a layout of its own: its results (under `<name>/`, and
    `compare/<name>/` for the comparison run) as a table, then its figures (named `<name>...`)."""
    lines = ["## " + heading, ""]
    rows = [[key, fmt(value) if not isinstance(value, (dict, list)) else json.dumps(_json_value(value))]
            for key, value in results.items() if key.startswith((f"{name}/", f"compare/{name}/"))]
    if rows:
        lines += table(["result", "value"], rows)
    for figure in figures:
        if figure.startswith(name):
            lines += image(figures, figure, figure)
    return lines


def render_report(results: dict, figures: dict, run, compare=None, evaluations=None) -> str:
    """report.md: the run's facts, then one section per evaluation (`evaluations`: name ->
    registry.Evaluation, in order), then the timings."""
    evaluations = evaluations or {}
    lines = [f"# JEM evaluation: {run.name}", ""]
    lines += table(["", ""], [
        ["workdir", f"`{results.get('meta/workdir') or '–'}`"],
        ["checkpoint", f"`{results.get('meta/checkpoint') or '–'}` (step {results.get('meta/global_step')})"],
        ["dataset", f"{run.dataset}, {results.get('meta/num_examples')} test images, {run.image_shape}"],
        ["compared with", "–" if compare is None
         else compare.name + (f" (`{compare.workdir}`)" if compare.workdir else "")],
        ["evaluations", ", ".join(results.get("meta/evaluations", evaluations))],
        ["input noise", f"N(0, {results.get('meta/eval_input_noise', 0.0):g}^2) added to test and OOD images "
                        f"({results.get('meta/eval_input_noise_source', '–')}; the paper's numbers: 0.03)"],
        ["run's validation split", results.get("meta/validation_split") or "–"],
        ["run's training labels", results.get("meta/training_labels") or "–"],
    ])
    for name, evaluation in evaluations.items():
        if common.is_unavailable(results.get(name)):
            lines += [f"## {evaluation.heading()}", "", f"**{results[name]}**", ""]
            lines += evaluation.unavailable_details(results)
        elif f"errors/{name}" in results:
            lines += [f"## {evaluation.heading()}", "", f"**failed**: `{results[f'errors/{name}']}` (see the log)", ""]
        else:
            lines += evaluation.report_section(results, figures, run, compare)
    timings = [[k[len("timing/"):-len("_seconds")], f"{results[k]:.1f}"] for k in results if k.startswith("timing/")]
    if timings:
        lines += ["## Timing", ""] + table(["evaluation", "seconds"], timings)
    return "\n".join(lines)


def write_tensorboard(log_dir: str, results: dict, figures: dict, report_text: str, step: int) -> None:
    """Scalars for every numeric result, each figure as an image, and the report as text."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=int(step)):
        for key, value in results.items():
            if _is_number(value) and not key.startswith("meta/"):
                tf.summary.scalar(f"eval/{key}", float(value))
        for name, path in figures.items():
            image = tf.io.decode_png(tf.io.read_file(path), channels=4)
            tf.summary.image(f"eval/figures/{name}", image[None])
        tf.summary.text("eval/report", report_text)
    writer.flush()
    writer.close()


def write_outputs(output_dir: str, results: dict, figures: dict, run, compare=None, evaluations=None) -> str:
    """results.json, report.md (sections of `evaluations`, see render_report) and TensorBoard;
    returns the report's path."""
    os.makedirs(output_dir, exist_ok=True)
    write_results(os.path.join(output_dir, RESULTS_FILE), results)
    text = render_report(results, figures, run, compare, evaluations)
    report_path = os.path.join(output_dir, REPORT_FILE)
    write_file_atomically(report_path, text + "\n")  # never a 0-byte report.md on a full disk
    write_tensorboard(os.path.join(output_dir, TENSORBOARD_DIR), results, figures, text,
                      results.get("meta/global_step", 0))
    logging.info("Wrote %s, %s, %d figures and TensorBoard summaries to %s.", RESULTS_FILE, REPORT_FILE, len(figures),
                 output_dir)
    return report_path
