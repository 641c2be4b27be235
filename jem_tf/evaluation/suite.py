"""The evaluation suite: every experiment of the paper's section 5 and appendices on one trained run.

    results = evaluate_workdir("runs/quick", ["all"], EvalOptions(num_examples=500))

writes OUTPUT/results.json, one PNG per figure, OUTPUT/report.md and TensorBoard summaries under
OUTPUT/tensorboard. `run_suite` is the same on an in-memory model and arrays (what the tests use).
"""

import dataclasses
import math
import os
import time

import keras
import numpy as np
from absl import logging

from jem_tf import energy
from jem_tf import precision as jem_precision
from jem_tf.evaluation import (
    accuracy,
    calibration,
    common,
    ood,
    plots,
    report,
    robustness,
    sample_quality,
    samples,
)

EVALUATIONS = ("accuracy", "calibration", "ood", "logp_hist", "samples", "sample_quality", "robustness", "distal")
# Defaults in the model's [-1, 1] pixel scale, i.e. twice the [0, 1] scale: 2/255 here is 1/255 there.
# L-inf: 0, 1, 2, 4, 8 and 16 of 255 grey levels.
DEFAULT_LINF_EPSILONS = tuple(round(2.0 * levels / 255.0, 5) for levels in (0, 1, 2, 4, 8, 16))
DEFAULT_L2_EPSILONS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
DISTAL_CONFIDENT = 0.9


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


@dataclasses.dataclass
class EvaluatedRun:
    """A trained model and what the evaluations need to know about its run."""

    model: keras.Model
    name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple = ()
    dataset: str = ""
    sgld_step_size: float = 1.0
    sgld_noise: float = 0.01
    seed: int = 0
    global_step: int = 0
    workdir: str | None = None
    checkpoint: str | None = None
    data_noise: float = 0.0  # training input noise: the default evaluation input noise
    validation_split: str = ""  # how the run held out its validation images, for the report

    def input_noise(self, options) -> float:
        """The evaluation's input noise: --eval_input_noise, else the run's training data noise."""
        return float(self.data_noise if options.eval_input_noise is None else options.eval_input_noise)

    @property
    def has_replay_buffer(self) -> bool:
        return getattr(self.model, "replay_buffer", None) is not None

    def class_name(self, label: int) -> str:
        return str(self.class_names[label]) if label < len(self.class_names) else str(label)


def parse_evaluations(names) -> list:
    """['all'] or a list of names -> the ordered list of evaluations to run."""
    names = [n.strip() for n in names if n.strip()]
    if not names or "all" in names:
        return list(EVALUATIONS)
    unknown = sorted(set(names) - set(EVALUATIONS))
    if unknown:
        raise ValueError(f"Unknown evaluation(s) {unknown}; choose from {', '.join(EVALUATIONS)} or 'all'.")
    return [name for name in EVALUATIONS if name in names]


class _Suite:
    """Runs the evaluations in order, sharing what several need (logits, scores, samples)."""

    def __init__(self, run, test_images, test_labels, options, output_dir, compare=None, data_dir=None):
        self.run = run
        self.compare = compare
        self.input_noise = run.input_noise(options)
        self.images = common.add_input_noise(
            np.asarray(test_images, np.float32)[: options.num_examples], self.input_noise, options.seed, "test")
        self.labels = np.asarray(test_labels).astype(np.int64)[: options.num_examples]
        self.options = options
        self.output_dir = output_dir
        self.data_dir = data_dir
        self.results = {}
        self.figures = {}
        self._plain_logits = {}
        self._in_scores = {}
        self._ood_images = {}
        self._ood_scores = {}
        self._sample_sets = None
        # One compiled function per (kind, run): tracing WRN gradients is costly, so never twice.
        self._compiled = {}

    # Shared intermediate results -------------------------------------------------------------

    def _runs(self):
        """(result-key prefix, run) for this run and the comparison run."""
        return [("", self.run)] + ([("compare/", self.compare)] if self.compare is not None else [])

    def _figure(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def predictor(self, prefix, run):
        key = ("predictor", prefix)
        if key not in self._compiled:
            self._compiled[key] = accuracy.make_refined_predictor(run.model, run.image_shape, run.sgld_step_size,
                                                                  run.sgld_noise)
        return self._compiled[key]

    def score_function(self, prefix, run):
        key = ("scores", prefix)
        if key not in self._compiled:
            self._compiled[key] = ood.make_score_function(run.model, run.image_shape)
        return self._compiled[key]

    def plain_logits(self, prefix, run):
        if prefix not in self._plain_logits:
            self._plain_logits[prefix], _ = accuracy.predict_logits(
                run.model, self.images, self.options.batch_size, progress=self.options.progress,
                predictor=self.predictor(prefix, run), description=f"Logits of {run.name}")
        return self._plain_logits[prefix]

    def in_scores(self, prefix, run):
        if prefix not in self._in_scores:
            self._in_scores[prefix] = ood.compute_scores(
                run.model, self.images, self.options.batch_size, f"OOD scores of {run.dataset} test ({run.name})",
                self.options.progress, score_fn=self.score_function(prefix, run))
        return self._in_scores[prefix]

    def ood_images(self, name):
        """Images of one OOD set, or the reason it is unavailable (a string)."""
        if name not in self._ood_images:
            if name == self.run.dataset:
                self._ood_images[name] = "it is the in-distribution dataset"
            else:
                try:
                    # interp mixes the (already noisy) test images; like every set, it then gets its own noise.
                    self._ood_images[name] = common.add_input_noise(ood.load_ood_images(
                        name, self.run.image_shape, self.options.num_examples, reference_images=self.images,
                        data_dir=self.data_dir, seed=self.options.seed, batch_size=self.options.batch_size),
                        self.input_noise, self.options.seed, f"ood/{name}")
                except common.Unavailable as reason:
                    self._ood_images[name] = str(reason)
                if isinstance(self._ood_images[name], str):
                    logging.warning("OOD set %s unavailable: %s", name, self._ood_images[name])
        return self._ood_images[name]

    def ood_scores(self, prefix, run, name):
        key = (prefix, name)
        if key not in self._ood_scores:
            self._ood_scores[key] = ood.compute_scores(
                run.model, self.ood_images(name), self.options.batch_size, f"OOD scores of {name} ({run.name})",
                self.options.progress, score_fn=self.score_function(prefix, run))
        return self._ood_scores[key]

    # Evaluations ------------------------------------------------------------------------------

    def accuracy(self):
        for prefix, run in self._runs():
            steps = self.options.refine_steps if not prefix else ()
            results, logits = accuracy.evaluate_accuracy(
                run.model, self.images, self.labels, refine_steps=steps, step_size=run.sgld_step_size,
                noise_std=run.sgld_noise, seed=self.options.seed, batch_size=self.options.batch_size,
                progress=self.options.progress, predictor=self.predictor(prefix, run))
            self._plain_logits[prefix] = logits
            self.results.update({prefix + key: value for key, value in results.items()})
            if not prefix:
                self.results["refinement/step_size"] = run.sgld_step_size
                self.results["refinement/noise_std"] = run.sgld_noise

    def calibration(self):
        panels = []
        for prefix, run in self._runs():
            results, bins = calibration.evaluate_calibration(
                self.plain_logits(prefix, run), self.labels, self.options.calibration_bins)
            self.results.update({prefix + key: value for key, value in results.items()})
            panels.append((run.name, results, bins))
        # The paper's Figure 4 puts the baseline first.
        self.figures["reliability_diagram"] = calibration.reliability_figure(
            self._figure("reliability_diagram.png"), panels[::-1])

    def ood(self):
        available = []
        for name in self.options.ood_sets:
            images = self.ood_images(name)
            if isinstance(images, str):
                self.results[f"ood/{common.key_name(name)}"] = common.unavailable(images)
            else:
                available.append(name)
        if not available:
            # Nothing to compare against: no point scoring the in-distribution data either.
            raise common.Unavailable(
                f"none of the requested OOD sets ({', '.join(self.options.ood_sets)}) is available here; "
                "see the ood/<set> entries")
        for prefix, run in self._runs():
            in_scores = self.in_scores(prefix, run)
            for name in ood.SCORE_NAMES:
                self.results[f"{prefix}ood/in_distribution/{name}/mean"] = float(np.nanmean(in_scores[name]))
            self.results[f"{prefix}ood/in_distribution/num_examples"] = len(self.images)
        for name in available:
            key = common.key_name(name)
            for prefix, run in self._runs():
                self.results.update(ood.ood_metrics(self.in_scores(prefix, run), self.ood_scores(prefix, run, name),
                                                    f"{prefix}ood/{key}"))
                self.results[f"{prefix}ood/{key}/num_examples"] = len(self.ood_images(name))
            self.figures[f"ood_histograms_{key}"] = plots.score_histograms(
                self._figure(f"ood_histograms_{key}.png"), name, self.run.dataset, self.in_scores("", self.run),
                self.ood_scores("", self.run, name))

    def logp_hist(self):
        log_px = {self.run.dataset: self.in_scores("", self.run)["log_px"]}
        for name in self.options.ood_sets:
            if not isinstance(self.ood_images(name), str):
                log_px[name] = self.ood_scores("", self.run, name)["log_px"]
        for name, values in log_px.items():
            key = "in_distribution" if name == self.run.dataset else common.key_name(name)
            self.results[f"logp_hist/{key}/mean"] = float(np.nanmean(values))
            self.results[f"logp_hist/{key}/std"] = float(np.nanstd(values))
        self.figures["logp_hist"] = plots.logp_histogram(self._figure("logp_hist.png"), log_px, self.run.dataset)

    def _class_rows(self):
        return list(range(min(self.run.num_classes, self.options.max_grid_classes)))

    def samples(self):
        run, options = self.run, self.options
        sets = {}
        chain_settings = dict(steps=options.sample_steps, step_size=run.sgld_step_size, noise_std=run.sgld_noise,
                              batch_size=options.batch_size, progress=options.progress)
        fresh = samples.fresh_chains(run.model, options.num_samples, run.image_shape, seed=options.seed,
                                     **chain_settings)
        sets["fresh"] = fresh
        columns = int(np.ceil(np.sqrt(len(fresh))))
        self.figures["samples_fresh_unconditional"] = plots.image_grid(
            self._figure("samples_fresh_unconditional.png"), fresh, columns,
            f"Unconditional samples: {options.sample_steps} SGLD steps from U(-1, 1)")
        self._sample_metrics("samples/fresh", fresh)

        classes = self._class_rows()
        targets = np.repeat(classes, options.samples_per_class)
        conditional = samples.fresh_chains(run.model, len(targets), run.image_shape, seed=options.seed + 1,
                                           labels=targets, **chain_settings)
        sets["fresh_conditional"] = conditional
        logits = self._logits(conditional)
        probabilities = energy.class_probabilities(logits).numpy()
        self.results["samples/fresh_conditional/class_agreement"] = float(np.mean(logits.argmax(-1) == targets))
        # Within each class row, the most confident first (appendix B's ranking by p(y|x)).
        rows = []
        for row, label in enumerate(classes):
            indices = np.arange(row * options.samples_per_class, (row + 1) * options.samples_per_class)
            rows.append(indices[np.argsort(-probabilities[indices, label], kind="stable")])
        self.figures["samples_fresh_conditional"] = plots.image_grid(
            self._figure("samples_fresh_conditional.png"), conditional[np.concatenate(rows)],
            options.samples_per_class, f"Class-conditional samples: {options.sample_steps} SGLD steps on "
            "log p(x, y), sorted by p(y|x)", row_labels=[run.class_name(c) for c in classes])
        self._sample_metrics("samples/fresh_conditional", conditional)

        try:
            buffer = samples.buffer_images(run.model, run.model.replay_buffer.size if run.has_replay_buffer else 0,
                                           options.seed)
        except common.Unavailable as reason:
            self.results["samples/buffer"] = common.unavailable(reason)
        else:
            shown = buffer[: options.num_samples]
            self.figures["samples_buffer_unconditional"] = plots.image_grid(
                self._figure("samples_buffer_unconditional.png"), shown, int(np.ceil(np.sqrt(len(shown)))),
                f"Replay buffer (persistent chains), {len(shown)} of {len(buffer)}")
            buffer_logits = self._logits(buffer, f"Classifying the {len(buffer)} replay-buffer chains")
            self._sample_metrics("samples/buffer", buffer, buffer_logits)
            counts = np.bincount(buffer_logits.argmax(-1), minlength=run.num_classes)
            self.results["samples/buffer/predicted_class_counts"] = [int(c) for c in counts]
            selections = samples.top_by_class(buffer_logits, run.num_classes, options.samples_per_class)
            self.figures["samples_buffer_conditional"] = plots.image_grid(
                self._figure("samples_buffer_conditional.png"),
                samples.conditional_grid(buffer, [selections[c] for c in classes], options.samples_per_class,
                                         run.image_shape),
                options.samples_per_class, "Conditional samples from the replay buffer: per class, the chains with "
                "the highest p(y|x) (appendix B)", row_labels=[run.class_name(c) for c in classes])
            sets["buffer"] = buffer[: options.num_examples]
            sets["buffer_top10"] = buffer[samples.top_fraction(buffer_logits, options.quality_top_fraction)]
        self._sample_sets = sets

    def _logits(self, images, description="Classifying samples"):
        logits, _ = accuracy.predict_logits(self.run.model, images, self.options.batch_size,
                                            progress=self.options.progress, predictor=self.predictor("", self.run),
                                            description=description)
        return logits

    def _sample_metrics(self, prefix, images, logits=None):
        logits = self._logits(images) if logits is None else logits
        self.results[f"{prefix}/mean_log_px"] = float(np.mean(energy.log_marginal(logits).numpy()))
        self.results[f"{prefix}/mean_max_prob"] = float(np.mean(energy.class_probabilities(logits).numpy().max(-1)))
        self.results[f"{prefix}/num_images"] = len(images)

    def sample_quality(self):
        weights = self.options.inception_weights
        if not weights:
            raise common.Unavailable(
                "no --inception_weights=PATH given. Keras cannot download the ImageNet InceptionV3 weights on "
                "this offline machine; copy inception_v3_weights_tf_dim_ordering_tf_kernels.h5 here and pass "
                "its path")
        inception = sample_quality.InceptionModel(
            None if weights == sample_quality.RANDOM_WEIGHTS else weights, self.options.inception_size)
        if self._sample_sets is None:
            self.samples()
        self.results.update(sample_quality.evaluate_sample_quality(
            inception, self._sample_sets, self.images, batch_size=self.options.batch_size,
            num_splits=self.options.quality_splits, progress=self.options.progress))

    def robustness(self):
        options = self.options
        count = min(options.attack_examples, len(self.images))
        if count == 0:
            raise common.Unavailable("--attack_examples=0")
        images, labels = self.images[:count], self.labels[:count]
        norms = {"linf": options.linf_epsilons, "l2": options.l2_epsilons}
        curves = {norm: {} for norm in norms}
        self.results.update({"robustness/num_examples": count, "robustness/pgd_steps": options.pgd_steps,
                             "robustness/pgd_restarts": options.pgd_restarts,
                             "robustness/refine_noise_std": options.attack_refine_noise})
        attacked = [("", self.run, options.attack_refine_steps)]
        if self.compare is not None:
            attacked.append(("compare/", self.compare, (0,)))
        for prefix, run, step_counts in attacked:
            for steps in step_counts:
                defended = robustness.RefineThenClassify(run.model, run.image_shape, int(steps), run.sgld_step_size,
                                                         options.attack_refine_noise, options.seed)
                classifier = robustness.art_classifier(defended, run.image_shape, run.num_classes)
                label = f"{run.name}, {steps} refinement steps"
                l2_flags = None
                for norm, epsilons in norms.items():
                    flags = robustness.pgd_robustness(
                        classifier, defended, images, labels, norm=norm, epsilons=epsilons, steps=options.pgd_steps,
                        restarts=options.pgd_restarts, batch_size=options.batch_size, seed=options.seed,
                        progress=options.progress, description=f"PGD on {label}")
                    for epsilon, robust in flags.items():
                        key = f"{prefix}robustness/{norm}/refine_{steps}/eps_{common.format_float_key(epsilon)}"
                        self.results[f"{key}/accuracy"] = float(robust.mean())
                    ordered = sorted(flags)
                    style = "--" if prefix else "-"
                    curves[norm][label] = (ordered, [flags[e].mean() for e in ordered], style)
                    if norm == "l2":
                        l2_flags = flags
                if options.boundary_examples > 0:
                    self._boundary(prefix, run, steps, classifier, defended, images, labels, l2_flags)
        self.figures["robustness"] = plots.robustness_curves(
            self._figure("robustness.png"), curves, "images in [-1, 1]")

    def _boundary(self, prefix, run, steps, classifier, defended, images, labels, l2_flags):
        """Gradient-free check on the first `boundary_examples` attacked images (appendix F)."""
        options = self.options
        count = min(options.boundary_examples, len(images))
        distances = robustness.boundary_distances(
            classifier, defended, images[:count], labels[:count], steps=options.boundary_steps,
            pool_images=self.images, pool_labels=self.labels, batch_size=options.batch_size, seed=options.seed,
            progress=options.progress)
        base = f"{prefix}robustness/boundary/refine_{steps}"
        # Misclassified images need no attack (distance 0); the rest were attacked.
        attacked = distances["l2"] > 0
        self.results[f"{base}/num_examples"] = count
        self.results[f"{base}/num_attacked"] = int(attacked.sum())
        if attacked.any():
            self.results[f"{base}/success_rate"] = float(np.mean(np.isfinite(distances["l2"][attacked])))
            # Medians over attacked images; a failed attack counts as an infinite distance.
            self.results[f"{base}/median_l2"] = float(np.median(distances["l2"][attacked]))
            self.results[f"{base}/median_linf"] = float(np.median(distances["linf"][attacked]))
        else:
            for name in ("success_rate", "median_l2", "median_linf"):
                self.results[f"{base}/{name}"] = common.unavailable("no correctly classified image to attack")
        missed = 0
        for epsilon, robust in sorted(l2_flags.items()):
            boundary_robust = distances["l2"] > epsilon
            pgd_robust = robust[:count]
            eps_key = common.format_float_key(epsilon)
            self.results[f"{base}/l2/eps_{eps_key}/accuracy"] = float(boundary_robust.mean())
            self.results[f"{base}/pgd_l2/eps_{eps_key}/accuracy"] = float(pgd_robust.mean())
            # Examples PGD called robust but the gradient-free attack broke within epsilon.
            missed += int(np.sum(pgd_robust & ~boundary_robust))
        self.results[f"{base}/pgd_missed"] = missed
        self.results[f"{base}/gradient_masking_suspected"] = int(missed > 0)
        if missed:
            logging.warning("Boundary attack found %d (example, epsilon) adversarials PGD missed on %s with %d "
                            "refinement steps: PGD may be hampered by masked gradients.", missed, run.name, steps)

    def distal(self):
        options = self.options
        classes = self._class_rows()
        for prefix, run in self._runs():
            images, targets, confidences = robustness.distal_adversarials(
                run.model, run.image_shape, classes, options.distal_per_class, steps=options.distal_steps,
                step_size=options.distal_step_size, seed=options.seed, progress=options.progress,
                description=f"Distal adversarials ({run.name})")
            self.results[f"{prefix}distal/mean_confidence"] = float(confidences.mean())
            self.results[f"{prefix}distal/fraction_above_{DISTAL_CONFIDENT}"] = float(
                np.mean(confidences > DISTAL_CONFIDENT))
            self.results[f"{prefix}distal/num_images"] = len(targets)
            captions = [f"{run.class_name(t)}: p={c:.2f}" for t, c in zip(targets, confidences, strict=True)]
            name = "distal_adversarials" if not prefix else "compare_distal_adversarials"
            self.figures[name] = plots.captioned_grid(
                self._figure(f"{name}.png"), images, captions, options.distal_per_class,
                f"Distal adversarials of {run.name}: {options.distal_steps} signed-gradient steps from noise "
                "maximising p(y=c|x)")


def run_suite(run: EvaluatedRun, test_images, test_labels, evaluations, options: EvalOptions, output_dir: str,
              compare: EvaluatedRun | None = None, data_dir=None) -> dict:
    """Runs `evaluations` and writes results.json, the figures, report.md and TensorBoard summaries.

    An evaluation that cannot run here is recorded as "unavailable: why"; one that fails with an
    unexpected error is logged with its traceback, recorded under `errors/<name>`, and the others
    still run.
    """
    options.validate()
    evaluations = parse_evaluations(evaluations)
    os.makedirs(output_dir, exist_ok=True)
    suite = _Suite(run, test_images, test_labels, options, output_dir, compare=compare, data_dir=data_dir)
    suite.results.update({
        "meta/run": run.name, "meta/dataset": run.dataset, "meta/workdir": run.workdir or "",
        "meta/checkpoint": run.checkpoint or "", "meta/global_step": int(run.global_step),
        "meta/precision": jem_precision.precision_of(run.model),
        "meta/num_examples": len(suite.images), "meta/evaluations": evaluations,
        "meta/options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()},
        # The settings that make these numbers comparable (or not) with the paper's.
        "meta/eval_input_noise": suite.input_noise,
        "meta/eval_input_noise_source": ("--eval_input_noise" if options.eval_input_noise is not None
                                         else "the run's data_noise"),
        "meta/validation_split": run.validation_split,
    })
    if compare is not None:
        suite.results.update({"meta/compare_run": compare.name, "meta/compare_workdir": compare.workdir or ""})
    for name in evaluations:
        logging.info("=== Evaluation '%s' ===", name)
        start = time.time()
        try:
            getattr(suite, name)()
        except common.Unavailable as reason:
            logging.warning("Evaluation %s unavailable: %s", name, reason)
            suite.results[name] = common.unavailable(reason)
        except Exception as error:  # noqa: BLE001 - one broken evaluation must not lose the others
            logging.exception("Evaluation %s failed.", name)
            suite.results[f"errors/{name}"] = f"{type(error).__name__}: {error}"
        suite.results[f"timing/{name}_seconds"] = round(time.time() - start, 2)
    report.write_outputs(output_dir, suite.results, suite.figures, run, compare)
    return suite.results


def load_test_split(dataset: str, data_dir, num_examples: int, batch_size: int, validation_fraction: float = 0.1,
                    validation_size: int | None = None, **folder_options):
    """The first `num_examples` test images (float32 [-1, 1], clean) and labels of a dataset;
    `folder_options` (skip_bad_files, drop_empty_classes) go to `jem_tf.data.load` as the run was
    trained with them."""
    from jem_tf import data as data_lib

    image_data = data_lib.load(dataset, data_dir=data_dir, validation_fraction=validation_fraction,
                               validation_size=validation_size, **folder_options)
    images, labels = [], []
    for batch_images, batch_labels in data_lib.make_batches(image_data.test.take(num_examples), batch_size,
                                                            training=False):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    if not images:
        raise common.Unavailable(f"the {dataset!r} test split is empty")
    return np.concatenate(images), np.concatenate(labels), image_data


def restore_run(workdir: str, checkpoint=None, precision=None):
    """Restores a training workdir's network and replay buffer (jem_tf.workdir.restore_run, read-only):
    (EvaluatedRun, TrainConfig). `precision` (jem_tf.precision.PRECISIONS) overrides the precision
    the run was trained in."""
    from jem_tf import workdir as workdir_lib

    model, config, run_info = workdir_lib.restore_run(workdir, checkpoint, precision=precision)
    return EvaluatedRun(
        model=model,
        name=f"{config.objective} ({os.path.basename(os.path.normpath(workdir))})",
        image_shape=tuple(int(d) for d in run_info["image_shape"]),
        num_classes=int(run_info["num_classes"]),
        class_names=tuple(run_info.get("class_names", ())),
        dataset=run_info.get("dataset", config.dataset),
        sgld_step_size=float(config.sgld_step_size),
        sgld_noise=float(config.sgld_noise),
        seed=int(config.seed),
        global_step=int(run_info.get("global_step", 0)),
        workdir=workdir,
        checkpoint=run_info.get("checkpoint"),
        data_noise=float(config.data_noise),
        validation_split=validation_split_description(config),
    ), config


def validation_split_description(config) -> str:
    """How a run's validation images were chosen, in words (recorded with the results)."""
    if config.validation_size is not None:
        return f"random {config.validation_size} training images (seed 1234, as the reference code)"
    return f"a fixed {config.validation_fraction:g} of the training split (deterministic hold-out)"


def evaluate_workdir(workdir: str, evaluations, options: EvalOptions, *, output_dir: str | None = None,
                     compare_workdir: str | None = None, checkpoint=None, data_dir=None,
                     download: bool = False, precision: str | None = None) -> dict:
    """Evaluates a training workdir (and optionally a comparison run on the same dataset).

    With `download`, the run's dataset and (when `ood` or `logp_hist` is asked for) the tfds OOD
    sets that are not prepared in the data directory are downloaded and prepared first, before
    anything is written.

    Raises:
      FileNotFoundError: not a workdir, or no checkpoint.
      ValueError: bad options, or a comparison run on other data.
      jem_tf.data.DatasetUnavailableError: the in-distribution test data is not on this machine,
        or (DatasetDownloadError) `download` failed.
    """
    options.validate()
    evaluations = parse_evaluations(evaluations)
    run, config = restore_run(workdir, checkpoint, precision)
    compare = None
    if compare_workdir:
        compare, _ = restore_run(compare_workdir, precision=precision)
        if (compare.dataset, compare.image_shape, compare.num_classes) != (run.dataset, run.image_shape,
                                                                          run.num_classes):
            raise ValueError(
                f"--compare_workdir={compare_workdir!r} was trained on {compare.dataset} {compare.image_shape} with "
                f"{compare.num_classes} classes; {workdir!r} on {run.dataset} {run.image_shape} with "
                f"{run.num_classes}. Compare runs on the same data.")
    if download:
        from jem_tf import data as data_lib

        ood_sets = options.ood_sets if {"ood", "logp_hist"} & set(evaluations) else ()
        for name in dict.fromkeys([run.dataset, *ood_sets]):
            data_lib.prepare(name, data_dir or config.data_dir)
    images, labels, _ = load_test_split(run.dataset, data_dir or config.data_dir, options.num_examples,
                                        options.batch_size, config.validation_fraction, config.validation_size,
                                        skip_bad_files=config.skip_bad_files,
                                        drop_empty_classes=config.drop_empty_classes)
    output_dir = output_dir or os.path.join(workdir, "eval")
    logging.info("Evaluating %s (step %d) on %d %s test images; outputs in %s.", run.name, run.global_step,
                 len(images), run.dataset, output_dir)
    return run_suite(run, images, labels, evaluations, options, output_dir, compare=compare,
                     data_dir=data_dir or config.data_dir)
