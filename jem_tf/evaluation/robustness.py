"""Adversarial robustness (section 5.4, appendix F) with the Adversarial Robustness Toolbox.

The defended classifier is "refine K SGLD steps on log p~(x), then classify" (section 5.4). ART
attacks it white-box: `RefineThenClassify` is one differentiable TensorFlow function, so PGD's
input gradients flow back through all K steps of `jem_tf.sampling.sgld.refine` (the sampler
training uses), including the second-order terms of each step's score.

Refinement noise during attacks defaults to 0: the defense is then deterministic, the attacker's
gradient is the exact gradient of what is evaluated (no expectation over noise needed), and the
clean accuracy in the robustness table is that same deterministic defense. A nonzero noise uses a
fixed seed, so the defense is still a deterministic function the attacker sees exactly.

A gradient-free boundary attack (Brendel et al.) on a small subset checks that the PGD numbers are
not inflated by masked gradients: where it finds adversarials PGD missed, that is reported.
"""

import warnings

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import energy, precision
from jem_tf.evaluation import common, plots, registry, report
from jem_tf.sampling import sgld

NORMS = ("linf", "l2")
# Madry et al.'s PGD step: 2.5 * epsilon / iterations, enough to reach the ball's far side.
PGD_STEP_FACTOR = 2.5


class RefineThenClassify:
    """images -> logits of `refine_steps` SGLD steps on log p~(x) from the images.

    A plain callable with the `model(x, training=...)` signature ART's TensorFlowV2Classifier uses.
    """

    def __init__(self, model, image_shape, refine_steps: int, step_size: float, noise_std: float, seed: int = 0):
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0; received {refine_steps!r}.")
        self.refine_steps = int(refine_steps)
        logits_fn = common.logits_function(model)
        refine_seed = tf.constant([int(seed), 0], tf.int64)

        @tf.function(input_signature=(common.image_spec(image_shape),), autograph=False)
        def call(images):
            if self.refine_steps > 0:
                images = sgld.refine(logits_fn, images, self.refine_steps, step_size, noise_std, refine_seed,
                                     score_scale=precision.input_gradient_scale(model))
            return logits_fn(images)

        self._call = call

    def __call__(self, images, training=False):
        if training:
            raise ValueError("RefineThenClassify is for evaluation only (training=False).")
        return self._call(tf.convert_to_tensor(images, tf.float32))


def art_classifier(defended: RefineThenClassify, image_shape, num_classes: int):
    """ART's TensorFlowV2Classifier around a defended model, clipped to the model range [-1, 1]."""
    with warnings.catch_warnings():
        # ART announces at import that PyTorch-only certification tools are missing; irrelevant here.
        warnings.filterwarnings("ignore", message="PyTorch not found", category=UserWarning)
        from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model=defended,
        nb_classes=int(num_classes),
        input_shape=tuple(int(d) for d in image_shape),
        # ART recognises the sparse loss and feeds it integer labels.
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(-1.0, 1.0),
    )


def predict_labels(defended, images, batch_size: int) -> np.ndarray:
    """argmax class of the defended model, in batches (ART's own predict runs all at once)."""
    predictions = []
    for start, stop in common.batch_slices(len(images), batch_size):
        predictions.append(np.argmax(defended(images[start:stop]).numpy(), axis=-1))
    return np.concatenate(predictions) if predictions else np.zeros(0, np.int64)


def pgd_robustness(classifier, defended, images, labels, *, norm: str, epsilons, steps: int, restarts: int,
                   batch_size: int, seed: int, progress: bool = True, description: str = "PGD") -> dict:
    """Robust accuracy under untargeted PGD at each epsilon.

    An example broken at a smaller epsilon is broken at every larger one (the smaller ball is
    inside the larger), so each epsilon only attacks the examples that survived the previous one.

    Returns:
      epsilon -> bool [n] "still correctly classified"; epsilon 0 is the clean accuracy.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; received {norm!r}.")
    if steps < 1:
        raise ValueError(f"PGD needs at least one step; received {steps!r}.")
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    robust = predict_labels(defended, images, batch_size) == labels
    flags = {0.0: robust.copy()}
    for epsilon in sorted(float(e) for e in epsilons if float(e) > 0):
        survivors = np.flatnonzero(robust)
        bar = common.Progress(f"{description}, {norm} epsilon {epsilon:.4g}", len(survivors), enabled=progress)
        attack = ProjectedGradientDescent(
            classifier, norm=np.inf if norm == "linf" else 2, eps=epsilon,
            eps_step=PGD_STEP_FACTOR * epsilon / steps, max_iter=int(steps), targeted=False,
            num_random_init=int(restarts), batch_size=int(batch_size), verbose=False,
        )
        # ART draws its random starts from numpy's global generator.
        np.random.seed(int(seed))
        for start, stop in common.batch_slices(len(survivors), batch_size):
            chunk = survivors[start:stop]
            adversarial = attack.generate(images[chunk], y=labels[chunk])
            robust[chunk] &= predict_labels(defended, adversarial, batch_size) == labels[chunk]
            bar.update(len(chunk))
        bar.finish()
        flags[epsilon] = robust.copy()
        logging.info("%s %s epsilon %.4g: robust accuracy %.4f.", description, norm, epsilon, robust.mean())
    return flags


def _boundary_starts(defended, images, labels, pool_images, pool_labels, batch_size: int) -> np.ndarray:
    """Appendix F's starting points: a correctly classified image of the attacked image's
    second most likely class; otherwise any image classified differently; otherwise the image
    itself (ART then searches a random start)."""
    logits = np.concatenate([defended(images[a:b]).numpy() for a, b in common.batch_slices(len(images), batch_size)])
    predicted = logits.argmax(axis=-1)
    runner_up = np.argsort(logits, axis=-1)[:, -2]
    pool_predicted = predict_labels(defended, pool_images, batch_size)
    starts = images.copy()
    for index in range(len(images)):
        same_class = np.flatnonzero((pool_labels == runner_up[index]) & (pool_predicted == runner_up[index]))
        other = np.flatnonzero(pool_predicted != predicted[index])
        if same_class.size:
            starts[index] = pool_images[same_class[0]]
        elif other.size:
            starts[index] = pool_images[other[0]]
    return starts


def boundary_distances(classifier, defended, images, labels, *, steps: int, pool_images, pool_labels,
                       batch_size: int, seed: int, progress: bool = True) -> dict:
    """Minimal-perturbation search with ART's (gradient-free) boundary attack.

    Returns:
      dict with `l2` and `linf` [n]: distance to the adversarial found; 0 for an example that is
      already misclassified, inf where the attack found none.
    """
    from art.attacks.evasion import BoundaryAttack

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    l2 = np.zeros(len(images))
    linf = np.zeros(len(images))
    correct = np.flatnonzero(predict_labels(defended, images, batch_size) == labels)
    if correct.size:
        starts = _boundary_starts(defended, images[correct], labels[correct], np.asarray(pool_images, np.float32),
                                  np.asarray(pool_labels).astype(np.int64), batch_size)
        attack = BoundaryAttack(classifier, targeted=False, max_iter=int(steps), batch_size=int(batch_size),
                                verbose=False)
        np.random.seed(int(seed))
        bar = common.Progress(f"Boundary attack ({steps} iterations)", len(correct), enabled=progress)
        adversarial = np.empty_like(images[correct])
        for position, index in enumerate(correct):
            adversarial[position] = attack.generate(
                images[index : index + 1], y=labels[index : index + 1], x_adv_init=starts[position : position + 1]
            )[0]
            bar.update(1)
        bar.finish()
        fooled = predict_labels(defended, adversarial, batch_size) != labels[correct]
        difference = (adversarial - images[correct]).reshape(len(correct), -1)
        l2[correct] = np.where(fooled, np.linalg.norm(difference, axis=1), np.inf)
        linf[correct] = np.where(fooled, np.abs(difference).max(axis=1), np.inf)
    return {"l2": l2, "linf": linf}


def distal_adversarials(model, image_shape, classes, per_class: int, *, steps: int, step_size: float, seed: int,
                        progress: bool = False, description: str = "Distal adversarials"):
    """Images optimised from U(-1, 1) noise to maximise log p(y=c|x) (section 5.4, Figure 6).

    Signed-gradient ascent (steepest ascent under L-infinity) with clipping to [-1, 1], as in
    Schott et al.'s distal adversarials: a robust model should not become confident on noise.

    Returns:
      (images [len(classes) * per_class, ...], targets, confidences p(y=target|x)).
    """
    logits_fn = common.logits_function(model)
    targets = np.repeat(np.asarray(classes, np.int32), per_class)
    rng = np.random.default_rng([int(seed), 0xD157])
    images = tf.Variable(rng.uniform(-1.0, 1.0, (len(targets),) + tuple(image_shape)).astype(np.float32))
    target_tensor = tf.constant(targets)

    @tf.function(autograph=False)
    def ascend():
        with tf.GradientTape() as tape:
            # log p(y=c|x) = -cross-entropy of the target class.
            objective = -tf.reduce_sum(energy.cross_entropy(logits_fn(images), target_tensor))
        gradient = tape.gradient(objective, images)
        images.assign(tf.clip_by_value(images + step_size * tf.sign(gradient), -1.0, 1.0))

    bar = common.Progress(description, int(steps), enabled=progress, unit="step")
    for _ in range(int(steps)):
        ascend()
        bar.update(1)
    bar.finish()
    probabilities = energy.class_probabilities(logits_fn(images)).numpy()
    return images.numpy(), targets, probabilities[np.arange(len(targets)), targets]


@registry.register("robustness")
class RobustnessEvaluation(registry.Evaluation):
    """PGD robust accuracy through K refinement steps (Figure 5) and the gradient-free boundary check."""

    title = "Adversarial robustness (section 5.4, appendix F, Figure 5)"

    def run(self, context):
        options = context.options
        count = min(options.attack_examples, len(context.images))
        if count == 0:
            raise common.Unavailable("--attack_examples=0")
        images, labels = context.images[:count], context.labels[:count]
        norms = {"linf": options.linf_epsilons, "l2": options.l2_epsilons}
        curves = {norm: {} for norm in norms}
        context.results.update({"robustness/num_examples": count, "robustness/pgd_steps": options.pgd_steps,
                                "robustness/pgd_restarts": options.pgd_restarts,
                                "robustness/refine_noise_std": options.attack_refine_noise})
        attacked = [("", context.run, options.attack_refine_steps)]
        if context.compare is not None:
            attacked.append(("compare/", context.compare, (0,)))
        for prefix, run, step_counts in attacked:
            for steps in step_counts:
                defended = RefineThenClassify(run.model, run.image_shape, int(steps), run.sgld_step_size,
                                              options.attack_refine_noise, options.seed)
                classifier = art_classifier(defended, run.image_shape, run.num_classes)
                label = f"{run.name}, {steps} refinement steps"
                l2_flags = None
                for norm, epsilons in norms.items():
                    flags = pgd_robustness(
                        classifier, defended, images, labels, norm=norm, epsilons=epsilons, steps=options.pgd_steps,
                        restarts=options.pgd_restarts, batch_size=options.batch_size, seed=options.seed,
                        progress=options.progress, description=f"PGD on {label}")
                    for epsilon, robust in flags.items():
                        key = f"{prefix}robustness/{norm}/refine_{steps}/eps_{common.format_float_key(epsilon)}"
                        context.results[f"{key}/accuracy"] = float(robust.mean())
                    ordered = sorted(flags)
                    style = "--" if prefix else "-"
                    curves[norm][label] = (ordered, [flags[e].mean() for e in ordered], style)
                    if norm == "l2":
                        l2_flags = flags
                if options.boundary_examples > 0:
                    self._boundary(context, prefix, run, steps, classifier, defended, images, labels, l2_flags)
        context.figures["robustness"] = plots.robustness_curves(
            context.figure_path("robustness.png"), curves, "images in [-1, 1]")

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        if "robustness/num_examples" not in results:
            return lines
        lines += [f"White-box PGD (ART) through the refinement: {results['robustness/pgd_steps']} iteration(s), "
                  f"{results['robustness/pgd_restarts']} random start(s), step 2.5·ε/iterations, on the first "
                  f"{results['robustness/num_examples']} test images. Refinement noise during attacks: "
                  f"{report.fmt(results['robustness/refine_noise_std'])} (deterministic defense). ε is in the model's "
                  "[-1, 1] pixel scale; the 0–255 column is the same ε in grey levels.", ""]
        for norm in ("linf", "l2"):
            columns = []
            for prefix, name in report.models(results, run, compare):
                head = f"{prefix}robustness/{norm}/refine_"
                steps = sorted({int(k[len(head):].split("/")[0]) for k in results if k.startswith(head)})
                columns += [(prefix, name, k) for k in steps]
            epsilons = sorted({float(k.split("/")[3][len("eps_"):]) for k in results
                               if k.startswith(f"robustness/{norm}/refine_") and k.endswith("/accuracy")})
            if not columns:
                continue
            rows = []
            for eps in epsilons:
                key = common.format_float_key(eps)
                rows.append([report.fmt(eps), report.fmt(eps * 127.5, digits=3)] + [
                    report.fmt(results.get(f"{prefix}robustness/{norm}/refine_{k}/eps_{key}/accuracy"), percent=True)
                    for prefix, _, k in columns])
            header = ["ε ([-1, 1])", "ε (0–255)"] + [f"{name}, K={k}" for _, name, k in columns]
            lines += [f"**PGD, {'L∞' if norm == 'linf' else 'L2'}: robust accuracy**", ""] + report.table(header, rows)
        lines += report.image(figures, "robustness", "Robust accuracy against epsilon")
        rows = []
        for prefix, name in report.models(results, run, compare):
            head = f"{prefix}robustness/boundary/refine_"
            for steps in sorted({int(k[len(head):].split("/")[0]) for k in results if k.startswith(head)}):
                base = f"{head}{steps}"
                rows.append([name, steps, results[f"{base}/num_examples"], results[f"{base}/num_attacked"],
                             report.fmt(results[f"{base}/success_rate"], percent=True),
                             report.fmt(results[f"{base}/median_l2"]),
                             report.fmt(results[f"{base}/median_linf"]), results[f"{base}/pgd_missed"],
                             "yes" if results[f"{base}/gradient_masking_suspected"] else "no"])
        if rows:
            lines += ["**Gradient-free check (boundary attack, L2)**: adversarials it finds within an ε at which PGD "
                      "found none would mean PGD's gradients are masked. Distances are in the [-1, 1] scale; "
                      "\"attacked\" counts the correctly classified images.", ""]
            lines += report.table(["model", "refinement steps", "images", "attacked", "success", "median L2",
                                   "median L∞", "(image, ε) PGD missed", "masking suspected"], rows)
        return lines

    def _boundary(self, context, prefix, run, steps, classifier, defended, images, labels, l2_flags):
        """Gradient-free check on the first `boundary_examples` attacked images (appendix F)."""
        options = context.options
        count = min(options.boundary_examples, len(images))
        distances = boundary_distances(
            classifier, defended, images[:count], labels[:count], steps=options.boundary_steps,
            pool_images=context.images, pool_labels=context.labels, batch_size=options.batch_size, seed=options.seed,
            progress=options.progress)
        base = f"{prefix}robustness/boundary/refine_{steps}"
        # Misclassified images need no attack (distance 0); the rest were attacked.
        attacked = distances["l2"] > 0
        context.results[f"{base}/num_examples"] = count
        context.results[f"{base}/num_attacked"] = int(attacked.sum())
        if attacked.any():
            context.results[f"{base}/success_rate"] = float(np.mean(np.isfinite(distances["l2"][attacked])))
            # Medians over attacked images; a failed attack counts as an infinite distance.
            context.results[f"{base}/median_l2"] = float(np.median(distances["l2"][attacked]))
            context.results[f"{base}/median_linf"] = float(np.median(distances["linf"][attacked]))
        else:
            for name in ("success_rate", "median_l2", "median_linf"):
                context.results[f"{base}/{name}"] = common.unavailable("no correctly classified image to attack")
        missed = 0
        for epsilon, robust in sorted(l2_flags.items()):
            boundary_robust = distances["l2"] > epsilon
            pgd_robust = robust[:count]
            eps_key = common.format_float_key(epsilon)
            context.results[f"{base}/l2/eps_{eps_key}/accuracy"] = float(boundary_robust.mean())
            context.results[f"{base}/pgd_l2/eps_{eps_key}/accuracy"] = float(pgd_robust.mean())
            # Examples PGD called robust but the gradient-free attack broke within epsilon.
            missed += int(np.sum(pgd_robust & ~boundary_robust))
        context.results[f"{base}/pgd_missed"] = missed
        context.results[f"{base}/gradient_masking_suspected"] = int(missed > 0)
        if missed:
            logging.warning("Boundary attack found %d (example, epsilon) adversarials PGD missed on %s with %d "
                            "refinement steps: PGD may be hampered by masked gradients.", missed, run.name, steps)
