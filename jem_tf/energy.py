"""The energy core: a classifier's logits read as an energy-based model.

Every other module derives densities, energies and scores from these functions; none re-derives
them. With logits f(x) of shape [batch, K]:

    log p~(x, y) = f(x)[y]                 (unnormalised joint, eq. 5)
    log p~(x)    = logsumexp_y f(x)[y]     (unnormalised marginal, eq. 6)
    E(x)         = -log p~(x)              (eq. 7)
    p(y | x)     = softmax(f(x))           (eq. 4)
"""

from typing import Callable

import tensorflow as tf

# A function from images [batch, H, W, C] to a per-example log density [batch].
LogDensityFn = Callable[[tf.Tensor], tf.Tensor]


def log_joint(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Unnormalised log p~(x, y) = f(x)[y], shape [batch]."""
    labels = tf.cast(labels, tf.int32)
    return tf.gather(logits, labels, axis=-1, batch_dims=1)


def log_marginal(logits: tf.Tensor) -> tf.Tensor:
    """Unnormalised log p~(x) = logsumexp_y f(x)[y], shape [batch]."""
    return tf.reduce_logsumexp(logits, axis=-1)


def energy(logits: tf.Tensor) -> tf.Tensor:
    """E(x) = -log p~(x), shape [batch]."""
    return -log_marginal(logits)


def class_energies(logits: tf.Tensor) -> tf.Tensor:
    """E(x, y) = -f(x)[y] for every class, shape [batch, K]."""
    return -logits


def class_probabilities(logits: tf.Tensor) -> tf.Tensor:
    """p(y | x) = softmax(f(x)), shape [batch, K]."""
    return tf.nn.softmax(logits, axis=-1)


def log_class_probabilities(logits: tf.Tensor) -> tf.Tensor:
    """log p(y | x), shape [batch, K]; numerically stable."""
    return tf.nn.log_softmax(logits, axis=-1)


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """-log p(y | x) per example, shape [batch]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=logits)


def marginal_log_density(logits_fn: Callable[[tf.Tensor], tf.Tensor]) -> LogDensityFn:
    """log p~(x) as a function of images, for a classifier `logits_fn`."""
    return lambda images: log_marginal(logits_fn(images))


def joint_log_density(logits_fn: Callable[[tf.Tensor], tf.Tensor],
                                            labels: tf.Tensor) -> LogDensityFn:
    """log p~(x, y) for fixed labels, as a function of images (class-conditional sampling)."""
    return lambda images: log_joint(logits_fn(images), labels)


def log_density_and_score(log_density_fn: LogDensityFn, images: tf.Tensor,
                          gradient_scale: float = 1.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns (log density [batch], its gradient d log p~(x) / dx [batch, H, W, C]).

    Examples are independent, so the gradient of the summed log density is each example's own
    gradient. `gradient_scale` (a power of two; `jem_tf.precision.input_gradient_scale`) multiplies
    the log density before differentiating and divides the gradient after, so that a float16
    network's backward pass does not underflow; the float32 result is unchanged by it.
    """
    with tf.GradientTape() as tape:
        tape.watch(images)
        log_density = log_density_fn(images)
        total = tf.reduce_sum(log_density)
        if gradient_scale != 1.0:
            total = total * gradient_scale
    # A density that ignores its input has a zero score, not None.
    score = tape.gradient(total, images, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if gradient_scale != 1.0:
        score = score / gradient_scale
    return log_density, score


def score_norm(score: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norm of d log p~(x)/dx; the paper's eq. 9 OOD score is its negative."""
    flat = tf.reshape(score, [tf.shape(score)[0], -1])
    return tf.norm(flat, axis=-1)
