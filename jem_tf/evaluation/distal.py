"""Distal adversarials (Figure 6): images optimised from noise to maximise p(y=c|x)
(`robustness.distal_adversarials`), for the run and the comparison run."""

import numpy as np

from jem_tf.evaluation import plots, registry, report, robustness

DISTAL_CONFIDENT = 0.9


@registry.register("distal")
class DistalEvaluation(registry.Evaluation):
    """Mean confidence p(y=c|x) of the distal adversarials and the fraction above DISTAL_CONFIDENT, and their grid."""

    title = "Distal adversarials (Figure 6)"

    def run(self, context):
        options = context.options
        classes = context.class_rows()
        for prefix, run in context.runs():
            images, targets, confidences = robustness.distal_adversarials(
                run.model, run.image_shape, classes, options.distal_per_class, steps=options.distal_steps,
                step_size=options.distal_step_size, seed=options.seed, progress=options.progress,
                description=f"Distal adversarials ({run.name})")
            context.results[f"{prefix}distal/mean_confidence"] = float(confidences.mean())
            context.results[f"{prefix}distal/fraction_above_{DISTAL_CONFIDENT}"] = float(
                np.mean(confidences > DISTAL_CONFIDENT))
            context.results[f"{prefix}distal/num_images"] = len(targets)
            captions = [f"{run.class_name(t)}: p={c:.2f}" for t, c in zip(targets, confidences, strict=True)]
            name = "distal_adversarials" if not prefix else "compare_distal_adversarials"
            context.figures[name] = plots.captioned_grid(
                context.figure_path(f"{name}.png"), images, captions, options.distal_per_class,
                f"Distal adversarials of {run.name}: {options.distal_steps} signed-gradient steps from noise "
                "maximising p(y=c|x)")

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        rows = [[name, results.get(prefix + "distal/num_images"),
                 report.fmt(results.get(prefix + "distal/mean_confidence"), percent=True),
                 report.fmt(results.get(prefix + "distal/fraction_above_0.9"), percent=True)]
                for prefix, name in report.models(results, run, compare) if prefix + "distal/num_images" in results]
        lines += report.table(["model", "images", "mean p(y=c|x)", "fraction with p > 0.9"], rows)
        lines += ["Images optimised from U(-1, 1) noise to maximise p(y=c|x). A model that is confident on such "
                  "images is easily fooled; in JEM, class features should emerge instead.", ""]
        return lines + report.image(figures, "distal_adversarials", "Distal adversarials") + report.image(
            figures, "compare_distal_adversarials", "Distal adversarials, comparison run")
