"""log p(x) histograms (Table 2): the distribution of log p~(x) on the test images and on every
available OOD set, with the OOD evaluation's scores (computed once, whichever runs first)."""

import numpy as np

from jem_tf.evaluation import common, plots, registry, report


@registry.register("logp_hist")
class LogpHistEvaluation(registry.Evaluation):
    """Mean and std of log p~(x) per data set, and their histograms in one figure."""

    title = "log p(x) histograms (Table 2)"
    uses_ood_sets = True

    def run(self, context):
        log_px = {context.run.dataset: context.in_scores("", context.run)["log_px"]}
        for name in context.options.ood_sets:
            if not isinstance(context.ood_images(name), str):
                log_px[name] = context.ood_scores("", context.run, name)["log_px"]
        for name, values in log_px.items():
            key = "in_distribution" if name == context.run.dataset else common.key_name(name)
            context.results[f"logp_hist/{key}/mean"] = float(np.nanmean(values))
            context.results[f"logp_hist/{key}/std"] = float(np.nanstd(values))
        context.figures["logp_hist"] = plots.logp_histogram(context.figure_path("logp_hist.png"), log_px,
                                                            context.run.dataset)

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        rows = [[k.split("/")[1], report.fmt(results[k]), report.fmt(results.get(k[: -len("mean")] + "std"))]
                for k in results if k.startswith("logp_hist/") and k.endswith("/mean")]
        lines += report.table(["data", "mean log p~(x)", "std"], rows)
        return lines + report.image(figures, "logp_hist", "log p(x) histograms")
