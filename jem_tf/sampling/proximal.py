"""JEM++'s proximal update ("PYLD", Yang & Ji, ICCV 2021), an option of `sgld.sgld_sample`.

One sampler step with `ProximalBounds(max_grad, inner_steps)`:

  g = clip(d log p~(x) / dx, -max_grad, max_grad)        # bounded per-pixel gradient
  repeat inner_steps times:
      x <- clip(x + step_size * g, -1, 1)                 # bounded image update, kept in [-1, 1]
  x <- x + noise_std * N(0, I)                            # optional noise (JEM++: none)

So one inner update moves a pixel by at most `step_size * max_grad`, and a sampler step by at most
`inner_steps * step_size * max_grad`. JEM++ takes its inner steps on the network's first layer
alone with that layer's output gradient held fixed (YOPO); the first layer being a convolution
(linear in x), that gradient is the outer step's input gradient, so the inner steps reuse `g` and
cost no network evaluation. JEM++'s CIFAR-10 setting: 10 outer steps, 5 inner steps of 0.2, gradient
bound 1, no noise.
"""

import dataclasses

import tensorflow as tf

IMAGE_MIN, IMAGE_MAX = -1.0, 1.0


@dataclasses.dataclass(frozen=True)
class ProximalBounds:
    """The proximal update's settings (hashable: a Python constant of the compiled sampler).

    Attributes:
      max_grad: each pixel's gradient is clipped to [-max_grad, max_grad] (JEM++'s `--eps`).
      inner_steps: clipped updates per sampler step with the step's gradient (JEM++'s `--in_steps`).
    """

    max_grad: float = 1.0
    inner_steps: int = 5

    def __post_init__(self):
        if not (isinstance(self.max_grad, (int, float)) and self.max_grad > 0):
            raise ValueError(f"max_grad must be a positive number; received {self.max_grad!r}.")
        if not (isinstance(self.inner_steps, int) and not isinstance(self.inner_steps, bool)
                and self.inner_steps >= 1):
            raise ValueError(f"inner_steps must be a positive integer; received {self.inner_steps!r}.")


def proximal_update(images: tf.Tensor, score: tf.Tensor, step_size, bounds: ProximalBounds) -> tf.Tensor:
    """One proximal sampler step without noise: see the module docstring. float32 in and out."""
    images = tf.convert_to_tensor(images, tf.float32)
    step = tf.cast(step_size, tf.float32) * tf.clip_by_value(
        tf.cast(score, tf.float32), -float(bounds.max_grad), float(bounds.max_grad))
    # A Python loop: inner_steps is a small constant and each update is one add and one clip.
    for _ in range(bounds.inner_steps):
        images = tf.clip_by_value(images + step, IMAGE_MIN, IMAGE_MAX)
    return images


__all__ = ["IMAGE_MAX", "IMAGE_MIN", "ProximalBounds", "proximal_update"]
