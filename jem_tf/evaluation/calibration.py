"""Calibration (section 5.2, appendix D): expected calibration error and reliability diagrams."""

import numpy as np

from jem_tf import metrics
from jem_tf.evaluation import plots, registry, report


def evaluate_calibration(logits, labels, num_bins: int = metrics.calibration.DEFAULT_NUM_BINS):
    """Returns (results, bins): `calibration/ece` (tfp), `calibration/num_bins`,
    `calibration/mean_confidence`, `calibration/accuracy`, and the reliability-diagram bins."""
    bins = metrics.reliability_bins(logits, labels, num_bins)
    ece = metrics.expected_calibration_error(logits, labels, num_bins)
    total = max(int(bins.counts.sum()), 1)
    filled = bins.counts > 0
    results = {
        "calibration/ece": ece,
        "calibration/num_bins": int(num_bins),
        "calibration/accuracy": float(np.sum(np.nan_to_num(bins.accuracy) * bins.counts) / total),
        "calibration/mean_confidence": float(np.sum(bins.confidence[filled] * bins.counts[filled]) / total),
        "calibration/bins": bins.to_dict(),
    }
    return results, bins


def reliability_figure(path: str, runs) -> str:
    """One reliability panel per run; `runs` is a list of (title, results, bins)."""
    panels = [
        dict(title=title, bins=bins, ece=results["calibration/ece"], accuracy=results["calibration/accuracy"])
        for title, results, bins in runs
    ]
    return plots.reliability_diagram(path, panels)


@registry.register("calibration")
class CalibrationEvaluation(registry.Evaluation):
    """Expected calibration error and the reliability diagram (Figure 4) of the run and the comparison run."""

    title = "Calibration (section 5.2, Figure 4)"

    def run(self, context):
        panels = []
        for prefix, run in context.runs():
            results, bins = evaluate_calibration(
                context.plain_logits(prefix, run), context.labels, context.options.calibration_bins)
            context.results.update({prefix + key: value for key, value in results.items()})
            panels.append((run.name, results, bins))
        # The paper's Figure 4 puts the baseline first.
        context.figures["reliability_diagram"] = reliability_figure(
            context.figure_path("reliability_diagram.png"), panels[::-1])

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        rows = [[name, report.fmt(results.get(prefix + "calibration/accuracy"), percent=True),
                 report.fmt(results.get(prefix + "calibration/ece"), percent=True),
                 report.fmt(results.get(prefix + "calibration/mean_confidence"), percent=True)]
                for prefix, name in report.models(results, run, compare)]
        lines += report.table(["model", "accuracy", "ECE", "mean confidence"], rows)
        lines += [f"ECE over {results.get('calibration/num_bins')} equal-width confidence bins "
                  "(tensorflow-probability).", ""]
        return lines + report.image(figures, "reliability_diagram", "Reliability diagram")
