"""Classification accuracy, plain and after K steps of SGLD refinement (the paper's JEM-0/1/10).

Refinement is `jem_tf.sampling.sgld.refine`: SGLD on log p~(x) seeded at the input, with the
training run's step size and noise (section 5.4).
"""

import numpy as np
import tensorflow as tf

from jem_tf import energy, precision
from jem_tf.evaluation import common, registry, report
from jem_tf.sampling import sgld


def make_refined_predictor(model, image_shape, step_size: float, noise_std: float):
    """A compiled (images, steps, seed) -> (logits, log p~(x)) of the refined images.

    `steps` and `seed` are tensors, so every refinement length shares one trace.
    """
    logits_fn = common.logits_function(model)

    @tf.function(
        input_signature=(
            common.image_spec(image_shape),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((2,), tf.int64),
        ),
        autograph=False,
    )
    def predict(images, steps, seed):
        refined = sgld.refine(logits_fn, images, steps, step_size, noise_std, seed,
                              score_scale=precision.input_gradient_scale(model))
        logits = logits_fn(refined)
        return logits, energy.log_marginal(logits)

    return predict


def predict_logits(model, images, batch_size: int, *, refine_steps: int = 0, step_size: float = 1.0,
                   noise_std: float = 0.01, seed: int = 0, progress: bool = True, predictor=None,
                   description: str | None = None):
    """Logits [n, K] and log p~(x) [n] of `images` after `refine_steps` refinement steps.

    Batch b's refinement noise uses the stateless seed (seed, b), so results are reproducible.
    """
    images = np.asarray(images, np.float32)
    predictor = predictor or make_refined_predictor(model, images.shape[1:], step_size, noise_std)

    def run(batch, index):
        logits, log_px = predictor(batch, tf.constant(refine_steps, tf.int32), common.batch_seed(seed, index))
        return {"logits": logits, "log_px": log_px}

    outputs = common.map_batches(
        run, images, batch_size, description or f"Predicting ({refine_steps} refinement steps)", progress
    )
    return outputs["logits"], outputs["log_px"]


def classification_metrics(logits, labels) -> dict:
    """accuracy, cross_entropy (mean -log p(y|x)) and mean log p~(x) of logits [n, K]."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    labels = np.asarray(labels).astype(np.int64)
    predicted = np.argmax(logits.numpy(), axis=-1)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "cross_entropy": float(tf.reduce_mean(energy.cross_entropy(logits, labels))),
        "mean_log_px": float(tf.reduce_mean(energy.log_marginal(logits))),
    }


def evaluate_accuracy(model, images, labels, *, refine_steps=(1, 10), step_size: float = 1.0,
                      noise_std: float = 0.01, seed: int = 0, batch_size: int = 100, progress: bool = True,
                      predictor=None):
    """Plain and refined accuracy.

    Returns:
      (results, plain_logits): results has `accuracy`, `cross_entropy`, `mean_log_px`,
      `num_examples` and, for each K in `refine_steps` (K > 0), `refinement/steps_K/accuracy`,
      `.../cross_entropy`, `.../mean_log_px` (the density after refinement: refinement should
      raise it). `plain_logits` [n, K] are reused by calibration.
      predictor: a `make_refined_predictor` function to reuse (it fixes step size and noise).
    """
    images = np.asarray(images, np.float32)
    predictor = predictor or make_refined_predictor(model, images.shape[1:], step_size, noise_std)
    plain_logits, _ = predict_logits(model, images, batch_size, progress=progress, predictor=predictor,
                                     description="Accuracy (no refinement)")
    results = dict(classification_metrics(plain_logits, labels), num_examples=len(images))
    for steps in sorted({int(k) for k in refine_steps if int(k) > 0}):
        logits, _ = predict_logits(
            model, images, batch_size, refine_steps=steps, seed=seed, progress=progress, predictor=predictor,
            description=f"Accuracy after {steps} refinement steps",
        )
        for name, value in classification_metrics(logits, labels).items():
            results[f"refinement/steps_{steps}/{name}"] = value
    return results, plain_logits


@registry.register("accuracy")
class AccuracyEvaluation(registry.Evaluation):
    """Plain test accuracy of the run (and the comparison run), and after each --refine_steps."""

    title = "Accuracy (JEM-K: K refinement steps before classifying)"

    def run(self, context):
        for prefix, run in context.runs():
            steps = context.options.refine_steps if not prefix else ()
            results, logits = evaluate_accuracy(
                run.model, context.images, context.labels, refine_steps=steps, step_size=run.sgld_step_size,
                noise_std=run.sgld_noise, seed=context.options.seed, batch_size=context.options.batch_size,
                progress=context.options.progress, predictor=context.predictor(prefix, run))
            context.keep_plain_logits(prefix, logits)
            context.results.update({prefix + key: value for key, value in results.items()})
            if not prefix:
                context.results["refinement/step_size"] = run.sgld_step_size
                context.results["refinement/noise_std"] = run.sgld_noise

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        steps = sorted(int(k.split("/")[1][len("steps_"):]) for k in results
                       if k.startswith("refinement/steps_") and k.endswith("/accuracy"))
        fmt = report.fmt
        rows = []
        for prefix, name in report.models(results, run, compare):
            rows.append([name, 0, fmt(results.get(prefix + "accuracy"), percent=True),
                         fmt(results.get(prefix + "cross_entropy")), fmt(results.get(prefix + "mean_log_px"))])
            if not prefix:
                for k in steps:
                    base = f"refinement/steps_{k}/"
                    rows.append([name, k, fmt(results.get(base + "accuracy"), percent=True),
                                 fmt(results.get(base + "cross_entropy")), fmt(results.get(base + "mean_log_px"))])
        lines += report.table(["model", "refinement steps", "accuracy", "cross-entropy", "mean log p~(x)"], rows)
        if steps:
            lines += [f"Refinement: SGLD on log p~(x) with step size {fmt(results.get('refinement/step_size'))} and "
                      f"noise {fmt(results.get('refinement/noise_std'))} (the training run's settings).", ""]
        return lines
