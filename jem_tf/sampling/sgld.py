"""Stochastic gradient Langevin dynamics on a log density, as JEM uses it.

  x <- x + step_size * d log p~(x) / dx + noise_std * N(0, I)

This is the paper's "relaxed" SGLD (appendix G.1): step size and noise are set independently. The
same function serves training (persistent chains), evaluation (fresh chains, refinement, attacks
through refinement) and the exported `refine_then_classify` signature.
"""

import tensorflow as tf

from jem_tf import energy
from jem_tf.sampling.proximal import ProximalBounds, proximal_update


def sgld_sample(
    log_density_fn: energy.LogDensityFn,
    initial_images: tf.Tensor,
    steps,
    step_size,
    noise_std,
    seed: tf.Tensor,
    *,
    noise_batch_size=None,
    noise_batch_offset=0,
    score_scale: float = 1.0,
    proximal: ProximalBounds | None = None,
    clamp: bool = False,
) -> tf.Tensor:
    """Runs `steps` SGLD updates from `initial_images` and returns the final images.

    Args:
      log_density_fn: images [b, H, W, C] -> log p~ [b]. It must call the model in inference mode
        (training=False) so that sampling changes no weights, statistics or mode.
      initial_images: float32 [b, H, W, C], the chain starts.
      steps: int or int32 scalar tensor; a `tf.while_loop` runs them, so the graph holds one step.
      step_size: SGLD step size alpha (the paper: 1).
      noise_std: standard deviation sigma of the Gaussian noise (the paper: 0.01).
      seed: int32/int64 tensor of shape [2]; the noise is a stateless function of (seed, step).
      noise_batch_size: when the batch is one replica's slice of a larger global batch, the global
        size. Noise is drawn for the whole global batch and sliced at `noise_batch_offset`, so a
        chain gets the same noise however the batch is split over replicas.
      noise_batch_offset: this slice's first row in the global batch.
      score_scale: a Python float; the score is computed as d (score_scale * log p~) / dx divided
        by score_scale (`jem_tf.precision.input_gradient_scale`: >1 only for float16 networks,
        whose backward pass would otherwise underflow).
      proximal: None for the SGLD update above; `ProximalBounds` for JEM++'s proximal update
        (`jem_tf.sampling.proximal`: bounded gradient, bounded image updates clipped to [-1, 1],
        then the noise). A Python constant: the compiled sampler is traced once per value.
      clamp: a Python bool; clip the images to [-1, 1] (the data range) after every step. A
        stabiliser (`--sgld_clamp`): chains cannot drift into pixel values no data has, where the
        energy is unconstrained by training. With `proximal` it also clips the noise added after
        the (already clipped) proximal update.

    Returns:
      The images after `steps` updates, same shape and dtype as `initial_images`.
    """
    initial_images = tf.convert_to_tensor(initial_images, tf.float32)
    seed = tf.cast(seed, tf.int64)
    steps = tf.cast(steps, tf.int32)
    step_size = tf.cast(step_size, tf.float32)
    noise_std = tf.cast(noise_std, tf.float32)
    local_batch = tf.shape(initial_images)[0]
    if noise_batch_size is None:
        noise_batch_size = local_batch
    noise_shape = tf.concat([[noise_batch_size], tf.shape(initial_images)[1:]], axis=0)

    def body(step, images):
        _, score = energy.log_density_and_score(log_density_fn, images, gradient_scale=score_scale)
        # Deterministic given (seed, step); XLA-compiled and plain kernels draw different streams.
        noise = tf.random.stateless_normal(noise_shape, seed=tf.random.experimental.stateless_fold_in(seed, step))
        noise = noise[noise_batch_offset : noise_batch_offset + local_batch]
        if proximal is None:
            images = images + step_size * score + noise_std * noise
        else:
            images = proximal_update(images, score, step_size, proximal) + noise_std * noise
        if clamp:
            images = tf.clip_by_value(images, -1.0, 1.0)
        return step + 1, tf.ensure_shape(images, initial_images.shape)

    _, images = tf.while_loop(
        lambda step, _: step < steps,
        body,
        (tf.constant(0, tf.int32), initial_images),
    )
    return images


def compiled_sgld(jit_compile: bool = False):
    """`sgld_sample` wrapped in a new `tf.function`, optionally XLA-compiled; keep it to reuse its
    traces. Not one shared function: a trace is kept for each log-density function it is called
    with, and the training step passes a new one (of its own model) each time it is traced, so a
    shared function would keep every model it ever sampled from alive until the process exits."""
    return tf.function(sgld_sample, jit_compile=jit_compile, autograph=False)


def refine(logits_fn, images, steps, step_size, noise_std, seed, score_scale=1.0, clamp=False):
    """SGLD on log p~(x) seeded at the input: the paper's section 5.4 refinement (`clamp`: keep
    the chain in [-1, 1], see `sgld_sample`)."""
    return sgld_sample(
        energy.marginal_log_density(logits_fn), images, steps, step_size, noise_std, seed,
        score_scale=score_scale, clamp=clamp,
    )


__all__ = ["sgld_sample", "compiled_sgld", "refine"]
