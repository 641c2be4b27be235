"""Writes the evaluation outputs: results.json, report.md (the numbers in the paper's table
layouts, with the figures) and TensorBoard summaries (scalars, figures, the report as text)."""

import json
import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf.evaluation import common

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
TENSORBOARD_DIR = "tensorboard"
TITLES = {
    "accuracy": "Accuracy (JEM-K: K refinement steps before classifying)",
    "calibration": "Calibration (section 5.2, Figure 4)",
    "ood": "Out-of-distribution detection (section 5.3, Tables 3 and 7)",
    "logp_hist": "log p(x) histograms (Table 2)",
    "samples": "Samples (appendices B and C)",
    "sample_quality": "Sample quality: Inception Score and FID (appendix B)",
    "robustness": "Adversarial robustness (section 5.4, appendix F, Figure 5)",
    "distal": "Distal adversarials (Figure 6)",
}
SCORE_TITLES = {"log_px": "log p(x)", "max_prob": "max_y p(y|x)", "grad_norm": "-‖∂ log p(x)/∂x‖"}


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
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_json_value(results), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _fmt(value, percent=False, digits=4) -> str:
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


def _table(header, rows) -> list:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _image(figures, name, caption) -> list:
    if name not in figures:
        return []
    return [f"![{caption}]({os.path.basename(figures[name])})", ""]


def _unavailable_line(results, key) -> list:
    value = results.get(key)
    return [f"**{key}**: {value}", ""] if common.is_unavailable(value) else []


def _models(results, run, compare):
    return [("", run.name)] + ([("compare/", compare.name)] if compare is not None else [])


def _accuracy_section(results, run, compare) -> list:
    lines = ["## " + TITLES["accuracy"], ""]
    steps = sorted(int(k.split("/")[1][len("steps_"):]) for k in results
                   if k.startswith("refinement/steps_") and k.endswith("/accuracy"))
    rows = []
    for prefix, name in _models(results, run, compare):
        rows.append([name, 0, _fmt(results.get(prefix + "accuracy"), percent=True),
                     _fmt(results.get(prefix + "cross_entropy")), _fmt(results.get(prefix + "mean_log_px"))])
        if not prefix:
            for k in steps:
                base = f"refinement/steps_{k}/"
                rows.append([name, k, _fmt(results.get(base + "accuracy"), percent=True),
                             _fmt(results.get(base + "cross_entropy")), _fmt(results.get(base + "mean_log_px"))])
    lines += _table(["model", "refinement steps", "accuracy", "cross-entropy", "mean log p~(x)"], rows)
    if steps:
        lines += [f"Refinement: SGLD on log p~(x) with step size {_fmt(results.get('refinement/step_size'))} and "
                  f"noise {_fmt(results.get('refinement/noise_std'))} (the training run's settings).", ""]
    return lines


def _calibration_section(results, run, compare, figures) -> list:
    lines = ["## " + TITLES["calibration"], ""]
    rows = [[name, _fmt(results.get(prefix + "calibration/accuracy"), percent=True),
             _fmt(results.get(prefix + "calibration/ece"), percent=True),
             _fmt(results.get(prefix + "calibration/mean_confidence"), percent=True)]
            for prefix, name in _models(results, run, compare)]
    lines += _table(["model", "accuracy", "ECE", "mean confidence"], rows)
    lines += [f"ECE over {results.get('calibration/num_bins')} equal-width confidence bins (tensorflow-probability).",
              ""]
    return lines + _image(figures, "reliability_diagram", "Reliability diagram")


def _ood_section(results, run, compare, figures) -> list:
    lines = ["## " + TITLES["ood"], ""]
    sets = []
    for key in results:
        parts = key.split("/")
        if key.startswith("ood/") and len(parts) == 4 and parts[3] == "auroc" and parts[1] != "in_distribution":
            if parts[1] not in sets:
                sets.append(parts[1])
    if sets:
        for metric, title in (("auroc", "AUROC"), ("fpr_at_95_tpr", "FPR at 95% TPR (lower is better)")):
            count = results.get("ood/in_distribution/num_examples")
            lines += [f"**{title}** — in-distribution: {run.dataset} test ({count} images)", ""]
            rows = []
            for score, score_title in SCORE_TITLES.items():
                for prefix, name in _models(results, run, compare):
                    rows.append([score_title, name] + [_fmt(results.get(f"{prefix}ood/{s}/{score}/{metric}"), digits=3)
                                                       for s in sets])
            lines += _table(["score", "model"] + sets, rows)
    lines += _ood_unavailable_lines(results)
    for s in sets:
        lines += _image(figures, f"ood_histograms_{s}", f"Score histograms, {s}")
    return lines


def _ood_unavailable_lines(results) -> list:
    lines = [f"- **{k.split('/', 1)[1]}**: {v}" for k, v in results.items()
             if k.startswith("ood/") and k.count("/") == 1 and common.is_unavailable(v)]
    return lines + [""] if lines else []


def _logp_section(results, figures) -> list:
    lines = ["## " + TITLES["logp_hist"], ""]
    rows = [[k.split("/")[1], _fmt(results[k]), _fmt(results.get(k[: -len("mean")] + "std"))]
            for k in results if k.startswith("logp_hist/") and k.endswith("/mean")]
    lines += _table(["data", "mean log p~(x)", "std"], rows)
    return lines + _image(figures, "logp_hist", "log p(x) histograms")


def _samples_section(results, figures) -> list:
    lines = ["## " + TITLES["samples"], ""]
    rows = []
    for name in ("fresh", "fresh_conditional", "buffer"):
        base = f"samples/{name}"
        if f"{base}/num_images" in results:
            rows.append([name, results[f"{base}/num_images"], _fmt(results.get(f"{base}/mean_log_px")),
                         _fmt(results.get(f"{base}/mean_max_prob"), percent=True)])
    lines += _table(["samples", "images", "mean log p~(x)", "mean max p(y|x)"], rows)
    if "samples/fresh_conditional/class_agreement" in results:
        lines += [f"Class-conditional chains classified as their target class: "
                  f"{_fmt(results['samples/fresh_conditional/class_agreement'], percent=True)}.", ""]
    lines += _unavailable_line(results, "samples/buffer")
    for name, caption in (("samples_fresh_unconditional", "Fresh unconditional samples"),
                          ("samples_fresh_conditional", "Fresh class-conditional samples"),
                          ("samples_buffer_unconditional", "Replay buffer"),
                          ("samples_buffer_conditional", "Conditional samples from the replay buffer")):
        lines += _image(figures, name, caption)
    return lines


def _quality_section(results) -> list:
    lines = ["## " + TITLES["sample_quality"], ""]
    sets = [k.split("/")[1] for k in results if k.startswith("sample_quality/") and k.endswith("/inception_score")]
    if sets:
        lines += [f"InceptionV3 weights: {results.get('sample_quality/weights')}. FID is measured against the "
                  "real test images; Keras-InceptionV3 numbers are not comparable with the paper's (appendix B).", ""]
        rows = [[s, results.get(f"sample_quality/{s}/num_images"),
                 f"{_fmt(results.get(f'sample_quality/{s}/inception_score'))} ± "
                 f"{_fmt(results.get(f'sample_quality/{s}/inception_score_std'), digits=2)}",
                 _fmt(results.get(f"sample_quality/{s}/fid"))] for s in sets]
        lines += _table(["images", "count", "Inception Score", "FID"], rows)
    return lines


def _robustness_section(results, run, compare, figures) -> list:
    lines = ["## " + TITLES["robustness"], ""]
    if "robustness/num_examples" not in results:
        return lines
    lines += [f"White-box PGD (ART) through the refinement: {results['robustness/pgd_steps']} iteration(s), "
              f"{results['robustness/pgd_restarts']} random start(s), step 2.5·ε/iterations, on the first "
              f"{results['robustness/num_examples']} test images. Refinement noise during attacks: "
              f"{_fmt(results['robustness/refine_noise_std'])} (deterministic defense). ε is in the model's "
              "[-1, 1] pixel scale; the 0–255 column is the same ε in grey levels.", ""]
    for norm in ("linf", "l2"):
        columns = []
        for prefix, name in _models(results, run, compare):
            head = f"{prefix}robustness/{norm}/refine_"
            steps = sorted({int(k[len(head):].split("/")[0]) for k in results if k.startswith(head)})
            columns += [(prefix, name, k) for k in steps]
        epsilons = sorted({float(k.split("/")[3][len("eps_"):]) for k in results
                           if k.startswith(f"robustness/{norm}/refine_") and k.endswith("/accuracy")})
        if not columns:
            continue
        rows = []
        for eps in epsilons:
            key = common.format_float_key(eps)
            rows.append([_fmt(eps), _fmt(eps * 127.5, digits=3)] + [
                _fmt(results.get(f"{prefix}robustness/{norm}/refine_{k}/eps_{key}/accuracy"), percent=True)
                for prefix, _, k in columns])
        header = ["ε ([-1, 1])", "ε (0–255)"] + [f"{name}, K={k}" for _, name, k in columns]
        lines += [f"**PGD, {'L∞' if norm == 'linf' else 'L2'}: robust accuracy**", ""] + _table(header, rows)
    lines += _image(figures, "robustness", "Robust accuracy against epsilon")
    rows = []
    for prefix, name in _models(results, run, compare):
        head = f"{prefix}robustness/boundary/refine_"
        for steps in sorted({int(k[len(head):].split("/")[0]) for k in results if k.startswith(head)}):
            base = f"{head}{steps}"
            rows.append([name, steps, results[f"{base}/num_examples"], results[f"{base}/num_attacked"],
                         _fmt(results[f"{base}/success_rate"], percent=True), _fmt(results[f"{base}/median_l2"]),
                         _fmt(results[f"{base}/median_linf"]), results[f"{base}/pgd_missed"],
                         "yes" if results[f"{base}/gradient_masking_suspected"] else "no"])
    if rows:
        lines += ["**Gradient-free check (boundary attack, L2)**: adversarials it finds within an ε at which PGD "
                  "found none would mean PGD's gradients are masked. Distances are in the [-1, 1] scale; "
                  "\"attacked\" counts the correctly classified images.", ""]
        lines += _table(["model", "refinement steps", "images", "attacked", "success", "median L2", "median L∞",
                         "(image, ε) PGD missed", "masking suspected"], rows)
    return lines


def _distal_section(results, run, compare, figures) -> list:
    lines = ["## " + TITLES["distal"], ""]
    rows = [[name, results.get(prefix + "distal/num_images"), _fmt(results.get(prefix + "distal/mean_confidence"),
                                                                    percent=True),
             _fmt(results.get(prefix + "distal/fraction_above_0.9"), percent=True)]
            for prefix, name in _models(results, run, compare) if prefix + "distal/num_images" in results]
    lines += _table(["model", "images", "mean p(y=c|x)", "fraction with p > 0.9"], rows)
    lines += ["Images optimised from U(-1, 1) noise to maximise p(y=c|x). A model that is confident on such "
              "images is easily fooled; in JEM, class features should emerge instead.", ""]
    return lines + _image(figures, "distal_adversarials", "Distal adversarials") + _image(
        figures, "compare_distal_adversarials", "Distal adversarials, comparison run")


def render_report(results: dict, figures: dict, run, compare=None) -> str:
    evaluations = results.get("meta/evaluations", [])
    lines = [f"# JEM evaluation: {run.name}", ""]
    lines += _table(["", ""], [
        ["workdir", f"`{results.get('meta/workdir') or '–'}`"],
        ["checkpoint", f"`{results.get('meta/checkpoint') or '–'}` (step {results.get('meta/global_step')})"],
        ["dataset", f"{run.dataset}, {results.get('meta/num_examples')} test images, {run.image_shape}"],
        ["compared with", "–" if compare is None
         else compare.name + (f" (`{compare.workdir}`)" if compare.workdir else "")],
        ["evaluations", ", ".join(evaluations)],
        ["input noise", f"N(0, {results.get('meta/eval_input_noise', 0.0):g}^2) added to test and OOD images "
                        f"({results.get('meta/eval_input_noise_source', '–')}; the paper's numbers: 0.03)"],
        ["run's validation split", results.get("meta/validation_split") or "–"],
    ])
    sections = {
        "accuracy": lambda: _accuracy_section(results, run, compare),
        "calibration": lambda: _calibration_section(results, run, compare, figures),
        "ood": lambda: _ood_section(results, run, compare, figures),
        "logp_hist": lambda: _logp_section(results, figures),
        "samples": lambda: _samples_section(results, figures),
        "sample_quality": lambda: _quality_section(results),
        "robustness": lambda: _robustness_section(results, run, compare, figures),
        "distal": lambda: _distal_section(results, run, compare, figures),
    }
    for name in evaluations:
        if common.is_unavailable(results.get(name)):
            lines += [f"## {TITLES[name]}", "", f"**{results[name]}**", ""]
            if name == "ood":
                lines += _ood_unavailable_lines(results)
        elif f"errors/{name}" in results:
            lines += [f"## {TITLES[name]}", "", f"**failed**: `{results[f'errors/{name}']}` (see the log)", ""]
        else:
            lines += sections[name]()
    timings = [[k[len("timing/"):-len("_seconds")], f"{results[k]:.1f}"] for k in results if k.startswith("timing/")]
    if timings:
        lines += ["## Timing", ""] + _table(["evaluation", "seconds"], timings)
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


def write_outputs(output_dir: str, results: dict, figures: dict, run, compare=None) -> str:
    """results.json, report.md and TensorBoard; returns the report's path."""
    os.makedirs(output_dir, exist_ok=True)
    write_results(os.path.join(output_dir, RESULTS_FILE), results)
    text = render_report(results, figures, run, compare)
    report_path = os.path.join(output_dir, REPORT_FILE)
    with open(report_path, "w") as f:
        f.write(text + "\n")
    write_tensorboard(os.path.join(output_dir, TENSORBOARD_DIR), results, figures, text,
                      results.get("meta/global_step", 0))
    logging.info("Wrote %s, %s, %d figures and TensorBoard summaries to %s.", RESULTS_FILE, REPORT_FILE, len(figures),
                 output_dir)
    return report_path
