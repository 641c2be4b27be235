"""Sharpness-aware minimisation: SAM (Foret et al., ICLR 2021) and its adaptive form ASAM (Kwon et
al., ICML 2021), as SADA-JEM (Yang, Su & Ji, CVPR 2023) trains JEM.

One SAM step: g = dL/dw at the weights w; e = rho * T^2 g / ||T g|| with T = 1 (SAM) or |w|
(ASAM, elementwise); the update uses dL/dw at w + e instead of g; w itself is never moved to w + e
(the loss at w + e is evaluated with `keras.StatelessScope`, see `Classifier.train_step`).
"""

import tensorflow as tf

# SADA-JEM's (and the SAM authors') guard against a zero gradient norm.
NORM_EPSILON = 1e-12


def perturbations(gradients, weights, rho: float, adaptive: bool):
    """The ascent step e for each weight (None where the gradient is None).

    `gradients` must be the full (all-replica) gradient: the norm is over every weight of the
    model, so a per-replica gradient would give each replica another e.
    """
    scaled = [None if g is None else (tf.abs(w) * g if adaptive else g) for g, w in zip(gradients, weights)]
    scale = rho / (tf.linalg.global_norm([t for t in scaled if t is not None]) + NORM_EPSILON)
    return [None if t is None else (tf.abs(w) * t if adaptive else t) * scale for t, w in zip(scaled, weights)]
