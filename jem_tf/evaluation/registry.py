"""The evaluations by name: what `--eval` chooses from and what the suite runs.

An evaluation is an `Evaluation` subclass registered under its name:

    @registry.register("my_metric")
    class MyMetric(registry.Evaluation):
        title = "My metric"

        def run(self, context):  # jem_tf.evaluation.context.EvalContext
            context.results["my_metric/value"] = ...

Its results land in results.json, its figures (`context.figures`) in the output folder and
TensorBoard, and its `report_section` in report.md. `--eval=all` runs the built-in evaluations in
the paper's order, then the others in the order they were registered. The built-in ones register
when `jem_tf.evaluation` is imported.
"""

from jem_tf.evaluation import report
from jem_tf.registry import Registry

# The built-in evaluations, in the order `--eval=all` runs them: the paper's section 5, then its appendices.
BUILTIN_ORDER = ("accuracy", "calibration", "ood", "logp_hist", "samples", "sample_quality", "robustness", "distal")


class Evaluation:
    """One evaluation: `run` computes its numbers and figures into the shared context."""

    name = ""  # set by `register`
    title = ""  # report.md's section heading; default: the name
    # Reads the OOD sets of --ood_sets (so `--download` prepares them first).
    uses_ood_sets = False

    def run(self, context) -> None:
        """Adds results (`context.results`) and figures (`context.figures`); raises
        `common.Unavailable` when it cannot run here."""
        raise NotImplementedError

    def report_section(self, results: dict, figures: dict, run, compare) -> list:
        """report.md lines (heading included) once `run` succeeded. By default, a table of every
        result under `<name>/` (and `compare/<name>/`) and its figures."""
        return report.generic_section(self.heading(), self.name, results, figures)

    def unavailable_details(self, results: dict) -> list:
        """Extra report.md lines under an "unavailable" heading (e.g. which inputs were missing)."""
        del results
        return []

    def heading(self) -> str:
        return self.title or self.name


def register(name: str):
    """Class decorator: registers an `Evaluation` subclass under `name` (what `--eval` accepts)."""
    if not name or not all(c.isalnum() or c == "_" for c in name) or name == "all":
        raise ValueError(f"Evaluation name {name!r} is invalid: use letters, digits and '_' (and not 'all').")
    return _EVALUATIONS.register(name)


def unregister(name: str) -> None:
    """Removes a registered evaluation (tests register temporary ones)."""
    _EVALUATIONS.unregister(name)


def get(name: str):
    """The Evaluation class registered as `name`; ValueError naming the registered ones."""
    return _EVALUATIONS.get(name)


def names() -> tuple:
    """The registered names: the built-in ones in the paper's order, then the others as registered."""
    registered = _EVALUATIONS.names()
    builtin = [name for name in BUILTIN_ORDER if name in registered]
    return tuple(builtin + [name for name in registered if name not in BUILTIN_ORDER])


_EVALUATIONS = Registry(
    "evaluation", base=Evaluation,
    unknown=lambda name, _: f"Unknown evaluation {name!r}; choose from {', '.join(names())} or 'all'.")
