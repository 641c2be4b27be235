"""The paper's section 5 and appendices as library functions on a trained model, and the suite
that runs them all (`python -m jem_tf.evaluate`).

Modules: accuracy (plain and refined), calibration, ood (three scores, OOD sets), samples, sample
quality (IS / FID with InceptionV3), robustness (ART PGD and boundary attacks through the
refinement, distal adversarials), plots, report, and suite (the orchestration).
"""

from jem_tf.evaluation.common import Unavailable, is_unavailable, unavailable
from jem_tf.evaluation.suite import (
    EVALUATIONS,
    EvalOptions,
    EvaluatedRun,
    evaluate_workdir,
    parse_evaluations,
    run_suite,
)

__all__ = [
    "EVALUATIONS",
    "EvalOptions",
    "EvaluatedRun",
    "Unavailable",
    "evaluate_workdir",
    "is_unavailable",
    "parse_evaluations",
    "run_suite",
    "unavailable",
]
