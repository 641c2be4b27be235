"""Samples (section 5.1, appendices B and C): unconditional and class-conditional, from fresh
SGLD chains started at U(-1, 1) and from the trained replay buffer (the persistent chains).

Conditional samples follow appendix B: images are assigned to their argmax class and, per class,
the ones with the highest p(y|x) are kept.
"""

import numpy as np
import tensorflow as tf

from jem_tf import energy, precision
from jem_tf.evaluation import common
from jem_tf.sampling import sgld


def fresh_chains(model, count: int, image_shape, *, steps: int, step_size: float, noise_std: float, seed: int,
                 labels=None, batch_size: int = 100, progress: bool = True) -> np.ndarray:
    """`count` SGLD chains from U(-1, 1): on log p~(x), or on log p~(x, y) when `labels` [count] is given."""
    logits_fn = common.logits_function(model)
    spec = common.image_spec(image_shape)

    @tf.function(input_signature=(spec, tf.TensorSpec((None,), tf.int32), tf.TensorSpec((2,), tf.int64)))
    def run(initial, batch_labels, batch_seed):
        if labels is None:
            log_density = energy.marginal_log_density(logits_fn)
        else:
            log_density = energy.joint_log_density(logits_fn, batch_labels)
        return sgld.sgld_sample(log_density, initial, steps, step_size, noise_std, batch_seed,
                                score_scale=precision.input_gradient_scale(model))

    rng = np.random.default_rng([int(seed), 0x5A])
    initial = rng.uniform(-1.0, 1.0, (count,) + tuple(image_shape)).astype(np.float32)
    all_labels = np.zeros(count, np.int32) if labels is None else np.asarray(labels, np.int32)
    kind = "unconditional" if labels is None else "class-conditional"

    def step(batch, index):
        start = index * batch_size
        batch_labels = tf.constant(all_labels[start : start + int(batch.shape[0])])
        return {"images": run(batch, batch_labels, common.batch_seed(seed, index))}

    return common.map_batches(step, initial, batch_size, f"Fresh {kind} SGLD chains ({steps} steps)", progress)[
        "images"
    ]


def buffer_images(model, limit: int, seed: int = 0) -> np.ndarray:
    """Up to `limit` chains of the trained replay buffer, a random subset when it holds more."""
    replay_buffer = getattr(model, "replay_buffer", None)
    if replay_buffer is None:
        raise common.Unavailable("the model has no replay buffer (a classifier-objective run has no chains)")
    images = replay_buffer.images.numpy()
    if len(images) > limit:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))]
    return images


def top_by_class(logits, num_classes: int, per_class: int):
    """Appendix B's selection: per class c, the indices of the images predicted c, highest p(c|x) first.

    Returns:
      list of `num_classes` index arrays, each with at most `per_class` entries.
    """
    probabilities = energy.class_probabilities(tf.convert_to_tensor(logits, tf.float32)).numpy()
    predicted = probabilities.argmax(axis=-1)
    selections = []
    for label in range(num_classes):
        members = np.flatnonzero(predicted == label)
        order = np.argsort(-probabilities[members, label], kind="stable")
        selections.append(members[order][:per_class])
    return selections


def top_fraction(logits, fraction: float) -> np.ndarray:
    """Indices of the `fraction` of images with the highest max_y p(y|x) (Table 5's top 10 %)."""
    confidence = energy.class_probabilities(tf.convert_to_tensor(logits, tf.float32)).numpy().max(axis=-1)
    keep = max(1, int(round(fraction * len(confidence))))
    return np.argsort(-confidence, kind="stable")[:keep]


def conditional_grid(images, selections, per_class: int, image_shape):
    """Rows = classes, `per_class` columns; a class with fewer images is padded with blank (white) cells."""
    rows = []
    for indices in selections:
        row = np.ones((per_class,) + tuple(image_shape), np.float32)
        row[: len(indices)] = images[indices]
        rows.append(row)
    return np.concatenate(rows)
