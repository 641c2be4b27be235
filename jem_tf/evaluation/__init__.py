"""The paper's section 5 and appendices as library functions on a trained model, and the suite
that runs them all (`python -m jem_tf.evaluate`).

One module per evaluation, each registering an `Evaluation` by name (`registry`): accuracy (plain
and refined), calibration, ood (three scores, OOD sets), logp_hist, samples, sample_quality (IS /
FID with InceptionV3), robustness (ART PGD and boundary attacks through the refinement), distal
(distal adversarials). Shared by them: options (`EvalOptions`), context (the evaluated run and the
state one suite run shares), common, plots and report. suite runs the registered evaluations.
"""

from jem_tf.evaluation.common import Unavailable, is_unavailable, unavailable
from jem_tf.evaluation.context import EvalContext, EvaluatedRun
from jem_tf.evaluation.options import EvalOptions
from jem_tf.evaluation.registry import Evaluation, register
from jem_tf.evaluation.suite import evaluate_workdir, parse_evaluations, run_suite

__all__ = [
    "EvalContext",
    "EvalOptions",
    "EvaluatedRun",
    "Evaluation",
    "Unavailable",
    "evaluate_workdir",
    "is_unavailable",
    "parse_evaluations",
    "register",
    "run_suite",
    "unavailable",
]
