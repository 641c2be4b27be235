"""Samples (section 5.1, appendices B and C): unconditional and class-conditional, from fresh
SGLD chains started at U(-1, 1) and from the trained replay buffer (the persistent chains).

Conditional samples follow appendix B: images are assigned to their argmax class and, per class,
the ones with the highest p(y|x) are kept.
"""

import numpy as np
import tensorflow as tf

from jem_tf import energy, precision
from jem_tf.evaluation import common, plots, registry, report
from jem_tf.sampling import sgld


def fresh_chains(model, count: int, image_shape, *, steps: int, step_size: float, noise_std: float, seed: int,
                 labels=None, batch_size: int = 100, progress: bool = True) -> np.ndarray:
    """`count` SGLD chains from U(-1, 1): on log p~(x), or on log p~(x, y) when `labels` [count] is given."""
    logits_fn = common.logits_function(model)
    spec = common.image_spec(image_shape)

    @tf.function(input_signature=(spec, tf.TensorSpec((None,), tf.int32), tf.TensorSpec((2,), tf.int64)),
                 autograph=False)
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
        raise common.Unavailable("the run has no replay buffer: its checkpoint holds no persistent chains (a run "
                                 "without a buffer, e.g. a classifier or --buffer_size=0, has fresh chains only)")
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


@registry.register("samples")
class SamplesEvaluation(registry.Evaluation):
    """Fresh unconditional and class-conditional chains and, when the run has one, its replay buffer:
    grids and mean log p~(x) / max p(y|x); the image sets are kept for sample_quality."""

    title = "Samples (appendices B and C)"

    def run(self, context):
        run, options = context.run, context.options
        sets = {}
        chain_settings = dict(steps=options.sample_steps, step_size=run.sgld_step_size, noise_std=run.sgld_noise,
                              batch_size=options.batch_size, progress=options.progress)
        fresh = fresh_chains(run.model, options.num_samples, run.image_shape, seed=options.seed,
                                     **chain_settings)
        sets["fresh"] = fresh
        columns = int(np.ceil(np.sqrt(len(fresh))))
        context.figures["samples_fresh_unconditional"] = plots.image_grid_figure(
            context.figure_path("samples_fresh_unconditional.png"), fresh, columns,
            f"Unconditional samples: {options.sample_steps} SGLD steps from U(-1, 1)")
        _sample_metrics(context, "samples/fresh", fresh)

        classes = context.class_rows()
        targets = np.repeat(classes, options.samples_per_class)
        conditional = fresh_chains(run.model, len(targets), run.image_shape, seed=options.seed + 1,
                                           labels=targets, **chain_settings)
        sets["fresh_conditional"] = conditional
        logits = context.logits(conditional)
        probabilities = energy.class_probabilities(logits).numpy()
        context.results["samples/fresh_conditional/class_agreement"] = float(np.mean(logits.argmax(-1) == targets))
        # Within each class row, the most confident first (appendix B's ranking by p(y|x)).
        rows = []
        for row, label in enumerate(classes):
            indices = np.arange(row * options.samples_per_class, (row + 1) * options.samples_per_class)
            rows.append(indices[np.argsort(-probabilities[indices, label], kind="stable")])
        context.figures["samples_fresh_conditional"] = plots.image_grid_figure(
            context.figure_path("samples_fresh_conditional.png"), conditional[np.concatenate(rows)],
            options.samples_per_class, f"Class-conditional samples: {options.sample_steps} SGLD steps on "
            "log p(x, y), sorted by p(y|x)", row_labels=[run.class_name(c) for c in classes])
        _sample_metrics(context, "samples/fresh_conditional", conditional)

        try:
            buffer = buffer_images(run.model, run.model.replay_buffer.size if run.has_replay_buffer else 0,
                                           options.seed)
        except common.Unavailable as reason:
            context.results["samples/buffer"] = common.unavailable(reason)
        else:
            shown = buffer[: options.num_samples]
            context.figures["samples_buffer_unconditional"] = plots.image_grid_figure(
                context.figure_path("samples_buffer_unconditional.png"), shown, int(np.ceil(np.sqrt(len(shown)))),
                f"Replay buffer (persistent chains), {len(shown)} of {len(buffer)}")
            buffer_logits = context.logits(buffer, f"Classifying the {len(buffer)} replay-buffer chains")
            _sample_metrics(context, "samples/buffer", buffer, buffer_logits)
            counts = np.bincount(buffer_logits.argmax(-1), minlength=run.num_classes)
            context.results["samples/buffer/predicted_class_counts"] = [int(c) for c in counts]
            selections = top_by_class(buffer_logits, run.num_classes, options.samples_per_class)
            context.figures["samples_buffer_conditional"] = plots.image_grid_figure(
                context.figure_path("samples_buffer_conditional.png"),
                conditional_grid(buffer, [selections[c] for c in classes], options.samples_per_class,
                                         run.image_shape),
                options.samples_per_class, "Conditional samples from the replay buffer: per class, the chains with "
                "the highest p(y|x) (appendix B)", row_labels=[run.class_name(c) for c in classes])
            sets["buffer"] = buffer[: options.num_examples]
            sets["buffer_top10"] = buffer[top_fraction(buffer_logits, options.quality_top_fraction)]
        context.sample_sets = sets

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        rows = []
        for name in ("fresh", "fresh_conditional", "buffer"):
            base = f"samples/{name}"
            if f"{base}/num_images" in results:
                rows.append([name, results[f"{base}/num_images"], report.fmt(results.get(f"{base}/mean_log_px")),
                             report.fmt(results.get(f"{base}/mean_max_prob"), percent=True)])
        lines += report.table(["samples", "images", "mean log p~(x)", "mean max p(y|x)"], rows)
        if "samples/fresh_conditional/class_agreement" in results:
            lines += [f"Class-conditional chains classified as their target class: "
                      f"{report.fmt(results['samples/fresh_conditional/class_agreement'], percent=True)}.", ""]
        lines += report.unavailable_line(results, "samples/buffer")
        for name, caption in (("samples_fresh_unconditional", "Fresh unconditional samples"),
                              ("samples_fresh_conditional", "Fresh class-conditional samples"),
                              ("samples_buffer_unconditional", "Replay buffer"),
                              ("samples_buffer_conditional", "Conditional samples from the replay buffer")):
            lines += report.image(figures, name, caption)
        return lines


def _sample_metrics(context, prefix, images, logits=None):
    """`<prefix>/{mean_log_px,mean_max_prob,num_images}` of a set of samples."""
    logits = context.logits(images) if logits is None else logits
    context.results[f"{prefix}/mean_log_px"] = float(np.mean(energy.log_marginal(logits).numpy()))
    context.results[f"{prefix}/mean_max_prob"] = float(np.mean(energy.class_probabilities(logits).numpy().max(-1)))
    context.results[f"{prefix}/num_images"] = len(images)
