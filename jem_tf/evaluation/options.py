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

    num_examples: int = dataclasses.field(default=1000, metadata=dict(
        help="Cap on test images and on each OOD set."))
    eval_input_noise: float | None = dataclasses.field(default=None, metadata=dict(
        help="Std of N(0, sigma^2) noise added to test and OOD images (interp: after mixing noisy test images), "
             "seeded by --seed, as the reference code evaluates (the paper's numbers: 0.03). Default: the run's "
             "--data_noise; 0: clean images, as a served model sees them."))
    batch_size: int = dataclasses.field(default=100, metadata=dict(help="Evaluation batch size."))
    seed: int = dataclasses.field(default=0, metadata=dict(help="Seed of every random draw of the evaluation."))
    progress: bool = dataclasses.field(default=True, metadata=dict(help="Show progress bars."))
    refine_steps: tuple = dataclasses.field(default=(1, 10), metadata=dict(
        help="Accuracy after K SGLD refinement steps (the run's step size and noise), for each K (JEM-K); 0 "
             "steps is always reported."))
    calibration_bins: int = dataclasses.field(default=20, metadata=dict(
        help="Confidence bins of the ECE (tensorflow-probability) and reliability diagram."))
    ood_sets: tuple = dataclasses.field(default=ood.DEFAULT_OOD_SETS, metadata=dict(
        help="OOD sets: svhn, cifar10, cifar100, celeb_a (tfds: prepared or --download), digits, folder:PATH, "
             "uniform, constant, interp; resized and gray<->RGB converted to the run's images."))
    sample_steps: int = dataclasses.field(default=100, metadata=dict(
        help="SGLD steps of fresh chains from U(-1, 1)."))
    num_samples: int = dataclasses.field(default=100, metadata=dict(
        help="Fresh unconditional chains (and buffer images shown)."))
    samples_per_class: int = dataclasses.field(default=10, metadata=dict(
        help="Columns of class-conditional grids."))
    max_grid_classes: int = dataclasses.field(default=10, metadata=dict(
        help="Classes (rows) in class-conditional grids and distal adversarials."))
    inception_weights: str | None = dataclasses.field(default=None, metadata=dict(
        help="Local InceptionV3 weights (.h5 with top) for IS/FID; nothing is downloaded. 'random' runs the "
             "plumbing with random weights (meaningless numbers)."))
    inception_size: int = dataclasses.field(default=sample_quality.INCEPTION_SIZE, metadata=dict(
        flag=False, help="Side the images are resized to for InceptionV3 (the weights' input size)."))
    quality_splits: int = dataclasses.field(default=10, metadata=dict(help="Inception Score splits."))
    # Not a flag: results.json names the set "buffer_top10".
    quality_top_fraction: float = dataclasses.field(default=0.1, metadata=dict(
        flag=False, help="Fraction of the replay buffer, most confident by p(y|x) first, whose IS/FID is reported (the "
             "paper's appendix B: 0.1)."))
    attack_examples: int = dataclasses.field(default=100, metadata=dict(help="Test images attacked with PGD."))
    attack_refine_steps: tuple = dataclasses.field(default=(0, 1, 10), metadata=dict(
        help="Refinement steps of the defenses PGD (ART) attacks white-box through the refinement (paper: 0, "
             "1, 10)."))
    attack_refine_noise: float = dataclasses.field(default=0.0, metadata=dict(
        help="SGLD noise during attacked refinement (0: deterministic defense, exact gradients)."))
    linf_epsilons: tuple = dataclasses.field(default=DEFAULT_LINF_EPSILONS, metadata=dict(
        help="L-inf PGD radii in the [-1, 1] pixel scale (2/255 = one grey level)."))
    l2_epsilons: tuple = dataclasses.field(default=DEFAULT_L2_EPSILONS, metadata=dict(
        help="L2 PGD radii in the [-1, 1] pixel scale."))
    pgd_steps: int = dataclasses.field(default=20, metadata=dict(help="PGD iterations (paper: 100)."))
    pgd_restarts: int = dataclasses.field(default=1, metadata=dict(help="PGD random starts (paper: 20)."))
    boundary_examples: int = dataclasses.field(default=10, metadata=dict(
        help="Images attacked with the gradient-free boundary attack, a check for masked gradients (0: skip)."))
    boundary_steps: int = dataclasses.field(default=100, metadata=dict(help="Boundary attack iterations."))
    distal_per_class: int = dataclasses.field(default=4, metadata=dict(
        help="Distal adversarials (the paper's Figure 6) per class."))
    distal_steps: int = dataclasses.field(default=100, metadata=dict(
        help="Signed-gradient steps of distal adversarials."))
    distal_step_size: float = dataclasses.field(default=0.01, metadata=dict(help="Step size of distal adversarials."))

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
