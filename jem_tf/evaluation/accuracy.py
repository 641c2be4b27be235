"""Classification accuracy, plain and after K steps of SGLD refinement (the paper's JEM-0/1/10).

Refinement is `jem_tf.sampling.sgld.refine`: SGLD on log p~(x) seeded at the input, with the
training run's step size and noise (section 5.4).
"""

import numpy as np
import tensorflow as tf

from jem_tf import energy, precision
from jem_tf.evaluation import common
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
        )
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
