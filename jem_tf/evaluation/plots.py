"""Figures for the evaluation report, drawn with matplotlib's object API (no pyplot state, no
display needed: `Figure.savefig` renders with the Agg backend)."""

import io
import os
import textwrap

import numpy as np
from matplotlib.figure import Figure

from jem_tf.configs.base import write_file_atomically
from jem_tf.images import image_grid

# Colours of the paper's Table 2 histograms: in-distribution green, OOD red.
IN_COLOR = "tab:green"
OUT_COLOR = "tab:red"
NORM_LABELS = {"linf": r"$L_\infty$", "l2": r"$L_2$"}
SCORE_LABELS = {
    "log_px": r"$\log \tilde p(x)$",
    "max_prob": r"$\max_y p(y|x)$",
    "grad_norm": r"$-\|\partial \log \tilde p(x) / \partial x\|_2$",
}


def _save(figure: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=120, bbox_inches="tight", format=os.path.splitext(path)[1][1:] or "png")
    write_file_atomically(path, buffer.getvalue())  # no half-written figure on a full disk
    return path


def to_display(images) -> np.ndarray:
    """[-1, 1] model-range images -> [0, 1] for display (clipped: chains can leave the range)."""
    return np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _show(axis, image):
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axis.imshow(image, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])


def image_grid_figure(path: str, images, columns: int, title: str, row_labels=None) -> str:
    """Saves a figure of the images' grid (`jem_tf.images.image_grid`) with a title; `row_labels`
    names each row (e.g. the class of conditional samples)."""
    images = np.asarray(images)
    rows = max(1, int(np.ceil(len(images) / columns)))
    scale = max(0.5, 6.0 / max(columns, rows))
    figure = Figure(figsize=(columns * scale + 1.5, rows * scale + 0.8))
    axis = figure.subplots()
    _show(axis, image_grid(images, columns).astype(np.float32) / 255.0)
    axis.set_title(textwrap.fill(title, width=max(40, int(12 * (columns * scale + 1.5)))), fontsize=9)
    if row_labels is not None:
        axis.set_ylabel("class")
        height = images.shape[1] + 1  # a row and its gap
        axis.set_yticks([height * (i + 0.5) - 1 for i in range(len(row_labels))])
        axis.set_yticklabels(row_labels, fontsize=8)
    return _save(figure, path)


def captioned_grid(path: str, images, captions, columns: int, title: str) -> str:
    """Saves images each with a caption (e.g. the distal adversarials' target class and p(y|x))."""
    images = to_display(images)
    rows = max(1, int(np.ceil(len(images) / columns)))
    # Constrained layout keeps the suptitle next to the grid however tall the grid is.
    figure = Figure(figsize=(1.6 * columns, 1.8 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for index, axis in enumerate(axes):
        if index < len(images):
            _show(axis, images[index])
            axis.set_title(captions[index], fontsize=7)
        else:
            axis.axis("off")
    figure.suptitle(textwrap.fill(title, width=int(18 * columns)), fontsize=9)
    return _save(figure, path)


def reliability_diagram(path: str, panels) -> str:
    """One panel per run (the paper's Figure 4): accuracy per confidence bin against the diagonal.

    Args:
      panels: list of dicts with keys title, bins (`CalibrationBins`), ece, accuracy.
    """
    figure = Figure(figsize=(4.2 * len(panels), 4.2))
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)).reshape(-1)
    for axis, panel in zip(axes, panels, strict=True):
        bins = panel["bins"]
        width = np.diff(bins.edges)
        centers = bins.edges[:-1] + width / 2
        accuracy = np.nan_to_num(bins.accuracy, nan=0.0)
        axis.bar(centers, accuracy, width=width, edgecolor="black", color="tab:blue", alpha=0.8,
                 label="accuracy")
        filled = bins.counts > 0
        axis.bar(centers[filled], (bins.confidence - accuracy)[filled], bottom=accuracy[filled],
                 width=width[filled], color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
        axis.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel(r"confidence $\max_y p(y|x)$")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{panel['title']}\nECE = {100 * panel['ece']:.2f}%, accuracy = {100 * panel['accuracy']:.1f}%")
        axis.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def score_histograms(path: str, ood_name: str, in_name: str, in_scores: dict, out_scores: dict) -> str:
    """The paper's Table 2: per score, histograms of in-distribution (green) vs OOD (red) data."""
    names = [name for name in SCORE_LABELS if name in in_scores and name in out_scores]
    figure = Figure(figsize=(4.2 * len(names), 3.4))
    axes = np.atleast_1d(figure.subplots(1, len(names), squeeze=False)).reshape(-1)
    for axis, name in zip(axes, names, strict=True):
        values_in, values_out = _finite(in_scores[name]), _finite(out_scores[name])
        both = np.concatenate([values_in, values_out])
        edges = np.linspace(both.min(), both.max(), 41) if both.size and np.ptp(both) > 0 else 40
        axis.hist(values_in, bins=edges, density=True, alpha=0.5, color=IN_COLOR, label=f"{short_name(in_name)} (in)")
        axis.hist(values_out, bins=edges, density=True, alpha=0.5, color=OUT_COLOR,
                  label=f"{short_name(ood_name)} (OOD)")
        axis.set_xlabel(SCORE_LABELS[name])
        axis.set_ylabel("density")
        axis.legend(fontsize=8)
    figure.suptitle(f"OOD scores: {short_name(in_name)} (in-distribution) vs {short_name(ood_name)}")
    return _save(figure, path)


def logp_histogram(path: str, log_px_by_set: dict, in_name: str) -> str:
    """log p~(x) of the in-distribution test data and every OOD set, overlaid."""
    figure = Figure(figsize=(6.5, 4.0))
    axis = figure.subplots()
    values = {name: _finite(v) for name, v in log_px_by_set.items()}
    pooled = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
    low, high = np.percentile(pooled, [0.5, 99.5]) if pooled.size > 1 else (pooled.min(), pooled.max() + 1)
    edges = np.linspace(low, high if high > low else low + 1.0, 61)
    # Green is reserved for the in-distribution data, as in the paper's Table 2.
    ood_colours = iter(("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                        "tab:olive", "tab:cyan"))
    for name, v in values.items():
        if name == in_name:
            style = dict(color=IN_COLOR, alpha=0.6, label=f"{short_name(name)} (in)")
        else:
            style = dict(color=next(ood_colours, None), alpha=0.45, label=short_name(name))
        axis.hist(np.clip(v, low, high), bins=edges, density=True, histtype="stepfilled", **style)
    axis.set_xlabel(r"$\log \tilde p(x) = \mathrm{logsumexp}_y f(x)[y]$")
    axis.set_ylabel("density")
    axis.set_title("Unnormalised log-density: in-distribution vs OOD\n(values beyond the 0.5-99.5 percentiles are "
                   "drawn at the edges)", fontsize=10)
    axis.legend(fontsize=8)
    return _save(figure, path)


def robustness_curves(path: str, curves: dict, scale_note: str) -> str:
    """Robust accuracy against epsilon, one panel per norm (the paper's Figure 5).

    Args:
      curves: norm -> label -> (epsilons, accuracies, linestyle).
      scale_note: how epsilon is measured (pixel scale), shown on the x axis.
    """
    figure = Figure(figsize=(5.0 * len(curves), 4.0))
    axes = np.atleast_1d(figure.subplots(1, len(curves), squeeze=False)).reshape(-1)
    for axis, (norm, by_label) in zip(axes, curves.items(), strict=True):
        for label, (epsilons, accuracies, style) in by_label.items():
            axis.plot(epsilons, 100 * np.asarray(accuracies), style, marker="o", label=label)
        pretty = NORM_LABELS.get(norm, norm)
        axis.set_xlabel(f"epsilon ({pretty}; {scale_note})")
        axis.set_ylabel("robust accuracy (%)")
        axis.set_ylim(0, 100)
        axis.set_title(f"PGD, {pretty}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    return _save(figure, path)


def short_name(name: str) -> str:
    """'folder:/a/b/cifar10_jpg_subset' -> 'folder:cifar10_jpg_subset' for legends and titles."""
    if name.startswith("folder:"):
        return "folder:" + os.path.basename(os.path.normpath(name[len("folder:") :]))
    return name


def _finite(values) -> np.ndarray:
    values = np.asarray(values, np.float64).reshape(-1)
    return values[np.isfinite(values)]
