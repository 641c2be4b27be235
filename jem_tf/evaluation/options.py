"""Sizes and settings of every evaluation: `EvalOptions`, whose fields the command-line flags of
`python -m jem_tf.evaluate` map onto."""

import dataclasses
import math

from jem_tf.evaluation import ood, sample_quality

# Defaults in the model's [-1, 1] pixel scale, i.e. twice the [0, 1] scale: 2/255 here is 1/255 there.
# L-inf: 0, 1, 2, 4, 8 and 16 of 255 grey levels.
DEFAULT_LINF_EPSILONS = tuple(round(2.0 * levels / 255.0, 5) for levels in (0, 1, 2, 4, 8, 16))
DEFAULT_L2_EPSILONS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass
class EvalOptions:
    """Sizes and settings of every evaluation; the command-line flags map onto these fields."""

    num_examples: int = 1000  # cap on in-distribution test images and on each OOD set
    # N(0, sigma^2) added to test and OOD images (interp: after mixing noisy test images), as the
    # reference code's evaluation does with the sigma it trains with; None: the run's data_noise.
    eval_input_noise: float | None = None
    batch_size: int = 100
    seed: int = 0
    progress: bool = True
    refine_steps: tuple = (1, 10)  # accuracy after K refinement steps (JEM-K); 0 is always reported
    calibration_bins: int = 20
    ood_sets: tuple = ood.DEFAULT_OOD_SETS
    sample_steps: int = 100  # SGLD steps of fresh chains from U(-1, 1)
    num_samples: int = 100  # fresh unconditional chains (and buffer images shown)
    samples_per_class: int = 10  # columns of the class-conditional grids
    max_grid_classes: int = 10  # rows of class-conditional grids and distal adversarials
    inception_weights: str | None = None  # local InceptionV3 .h5; 'random' tests the plumbing
    inception_size: int = sample_quality.INCEPTION_SIZE
    quality_splits: int = 10
    quality_top_fraction: float = 0.1  # appendix B: top 10 % of the buffer by p(y|x)
    attack_examples: int = 100
    attack_refine_steps: tuple = (0, 1, 10)
    attack_refine_noise: float = 0.0
    linf_epsilons: tuple = DEFAULT_LINF_EPSILONS
    l2_epsilons: tuple = DEFAULT_L2_EPSILONS
    pgd_steps: int = 20
    pgd_restarts: int = 1
    boundary_examples: int = 10
    boundary_steps: int = 100
    distal_per_class: int = 4
    distal_steps: int = 100
    distal_step_size: float = 0.01

    def validate(self) -> "EvalOptions":
        """Raises ValueError naming the first bad setting."""
        positive = ("num_examples", "batch_size", "num_samples", "samples_per_class", "max_grid_classes",
                    "calibration_bins", "quality_splits", "pgd_steps", "boundary_steps", "distal_per_class")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name}={getattr(self, name)!r} is invalid: expected a positive integer.")
        non_negative = ("sample_steps", "attack_examples", "pgd_restarts", "boundary_examples", "distal_steps",
                        "attack_refine_noise", "distal_step_size")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}={getattr(self, name)!r} is invalid: expected a value >= 0.")
        for field in dataclasses.fields(self):
            values = getattr(self, field.name)
            if any(isinstance(v, float) and not math.isfinite(v) for v in (values if isinstance(values, tuple)
                                                                           else (values,))):
                raise ValueError(f"--{field.name}={values!r} is invalid: expected finite numbers (no inf or nan).")
        for name in ("refine_steps", "attack_refine_steps", "linf_epsilons", "l2_epsilons"):
            if any(float(v) < 0 for v in getattr(self, name)):
                raise ValueError(f"--{name}={list(getattr(self, name))} is invalid: values must be >= 0.")
        if self.eval_input_noise is not None and not 0.0 <= float(self.eval_input_noise) < float("inf"):
            raise ValueError(f"--eval_input_noise={self.eval_input_noise!r} is invalid: expected a finite "
                             "standard deviation >= 0 (0: clean inputs; unset: the run's --data_noise).")
        if not 0.0 < self.quality_top_fraction <= 1.0:
            raise ValueError(f"--quality_top_fraction={self.quality_top_fraction!r} must be in (0, 1].")
        if self.inception_size < sample_quality.MIN_INCEPTION_SIZE:
            raise ValueError(f"inception_size must be >= {sample_quality.MIN_INCEPTION_SIZE}.")
        return self
