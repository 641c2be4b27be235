"""Out-of-distribution detection (section 5.3, appendix E; Tables 2, 3 and 7).

Three scores, all from the energy core, higher meaning "more in-distribution":
  log_px    = log p~(x) = logsumexp_y f(x)[y]                  (section 5.3.1)
  max_prob  = max_y p(y|x)                                    (section 5.3.2)
  grad_norm = -|| d log p~(x) / dx ||_2                        (section 5.3.3, eq. 9)

OOD sets are brought to the in-distribution image shape (central crop to the aspect ratio,
antialiased resize, gray <-> RGB) and to the model range [-1, 1].
"""

import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import energy, metrics, precision
from jem_tf.evaluation import common, plots, registry, report

SCORE_NAMES = ("log_px", "max_prob", "grad_norm")
SYNTHETIC_SETS = ("uniform", "constant", "interp")
# tfds names read directly here because the data layer does not train on them.
DIRECT_TFDS_SETS = {"celeb_a": "celeb_a"}
DEFAULT_OOD_SETS = ("svhn", "cifar10", "cifar100", "celeb_a", "digits", "uniform", "constant", "interp")
TPR_LEVEL = 0.95


def make_score_function(model, image_shape):
    """Compiled images -> {log_px, max_prob, grad_norm}, one forward and one backward pass."""
    score_scale = precision.input_gradient_scale(model)

    @tf.function(input_signature=(common.image_spec(image_shape),), autograph=False)
    def scores(images):
        captured = {}

        def log_density(x):
            # The logits of the same forward pass give max p(y|x): no second model call.
            captured["logits"] = model(x, training=False)
            return energy.log_marginal(captured["logits"])

        log_px, score = energy.log_density_and_score(log_density, images, gradient_scale=score_scale)
        return {
            "log_px": log_px,
            "max_prob": tf.reduce_max(energy.class_probabilities(captured["logits"]), axis=-1),
            "grad_norm": -energy.score_norm(score),
        }

    return scores


def compute_scores(model, images, batch_size: int, description: str, progress: bool = True, score_fn=None) -> dict:
    """The three OOD scores of every image: dict score name -> [n] numpy array."""
    images = np.asarray(images, np.float32)
    score_fn = score_fn or make_score_function(model, images.shape[1:])
    return common.map_batches(lambda batch, _: score_fn(batch), images, batch_size, description, progress)


def synthetic_ood(name: str, reference_images, count: int, seed: int) -> np.ndarray:
    """Synthetic OOD images shaped like `reference_images` (in-distribution test images, [-1, 1]).

      uniform:  every pixel U(-1, 1).
      constant: one colour per image, each channel U(-1, 1) (the paper's "Constant" set is a single
                grey value; a colour per image gives a set whose AUROC does not hinge on one point).
      interp:   (a + b) / 2 for random pairs of distinct in-distribution test images, as in the
                reference code's CIFAR-interp set.
    """
    reference_images = np.asarray(reference_images, np.float32)
    shape = reference_images.shape[1:]
    rng = np.random.default_rng([int(seed), SYNTHETIC_SETS.index(name)])
    if name == "uniform":
        return rng.uniform(-1.0, 1.0, (count,) + shape).astype(np.float32)
    if name == "constant":
        colours = rng.uniform(-1.0, 1.0, (count, 1, 1, shape[-1])).astype(np.float32)
        return np.broadcast_to(colours, (count,) + shape).copy()
    if name == "interp":
        if len(reference_images) < 2:
            raise common.Unavailable("interp needs at least two in-distribution test images")
        first = rng.integers(0, len(reference_images), count)
        # An offset in [1, n) makes every pair two different images.
        second = (first + rng.integers(1, len(reference_images), count)) % len(reference_images)
        return (reference_images[first] + reference_images[second]) / 2.0
    raise ValueError(f"Unknown synthetic OOD set {name!r}; choose from {SYNTHETIC_SETS}.")


def conform_images(images, image_shape) -> tf.Tensor:
    """[b, h, w, c] images in [-1, 1] -> [b, H, W, C] = `image_shape`, still in [-1, 1]."""
    images = tf.convert_to_tensor(images, tf.float32)
    height, width, channels = (int(d) for d in image_shape)
    have = int(images.shape[-1])
    if have != channels:
        if channels == 1 and have == 3:
            # The luma weights sum to (almost) one, so [-1, 1] stays [-1, 1].
            images = tf.image.rgb_to_grayscale(images)
        elif have == 1:
            images = tf.tile(images, [1, 1, 1, channels])
        else:
            raise ValueError(f"Cannot convert {have}-channel images to {channels} channels.")
    source_height, source_width = int(images.shape[1]), int(images.shape[2])
    if (source_height, source_width) != (height, width):
        # Crop centrally to the target aspect ratio first, so faces (CelebA, 218x178) are not squashed.
        target_ratio = width / height
        if source_width / source_height > target_ratio:
            crop_width = max(1, int(round(source_height * target_ratio)))
            offset = (source_width - crop_width) // 2
            images = images[:, :, offset : offset + crop_width]
        elif source_width / source_height < target_ratio:
            crop_height = max(1, int(round(source_width / target_ratio)))
            offset = (source_height - crop_height) // 2
            images = images[:, offset : offset + crop_height]
        images = tf.image.resize(images, (height, width), method="bilinear", antialias=True)
    return tf.clip_by_value(images, -1.0, 1.0)


def _read_dataset_images(name: str, data_dir, count: int):
    """Unbatched uint8 test images of a named dataset (data layer, or tfds for CelebA)."""
    if name in DIRECT_TFDS_SETS:
        import tensorflow_datasets as tfds

        builder = tfds.builder(DIRECT_TFDS_SETS[name], data_dir=data_dir)
        try:
            dataset = builder.as_dataset(split="test", shuffle_files=False)
        except AssertionError as error:
            # tfds' "not prepared in data_dir" signal; nothing is ever downloaded here (only
            # --download does, before the evaluation starts).
            raise common.Unavailable(
                f"tfds {DIRECT_TFDS_SETS[name]!r} is not prepared in {data_dir or builder.data_dir!r} "
                "(add --download to fetch it, or prepare it with internet access and pass --data_dir)"
            ) from error
        return dataset.map(lambda example: example["image"]).take(count)

    from jem_tf import data as data_lib

    try:
        image_data = data_lib.load(name, data_dir=data_dir, validation_fraction=0.0)
    except data_lib.DatasetUnavailableError as error:
        # One line: results.json and the report table hold it as a single string.
        raise common.Unavailable(" ".join(str(error).split())) from error
    return image_data.test.map(lambda image, label: image).take(count)


def load_ood_images(name: str, image_shape, count: int, *, reference_images, data_dir=None, seed: int = 0,
                    batch_size: int = 100) -> np.ndarray:
    """Up to `count` images of OOD set `name`, float32 [n, *image_shape] in [-1, 1].

    Raises:
      common.Unavailable: the set is not on this machine (the message says what to do).
      ValueError: an unknown set name.
    """
    if name in SYNTHETIC_SETS:
        return synthetic_ood(name, reference_images, count, seed)
    from jem_tf import data as data_lib

    dataset = _read_dataset_images(name, data_dir, count)
    batches = []
    for images in dataset.batch(batch_size):
        batches.append(conform_images(data_lib.to_model_range(images), image_shape).numpy())
    if not batches:
        raise common.Unavailable(f"OOD set {name!r} has no test images")
    images = np.concatenate(batches)
    logging.info("OOD set %s: %d images, converted to %s.", name, len(images), tuple(image_shape))
    return images


def ood_metrics(in_scores: dict, out_scores: dict, prefix: str) -> dict:
    """AUROC, FPR at 95% TPR and mean score for every score present in both dicts."""
    results = {}
    for name in SCORE_NAMES:
        if name not in in_scores or name not in out_scores:
            continue
        results[f"{prefix}/{name}/auroc"] = metrics.auroc(in_scores[name], out_scores[name])
        results[f"{prefix}/{name}/fpr_at_95_tpr"] = metrics.fpr_at_tpr(in_scores[name], out_scores[name], TPR_LEVEL)
        results[f"{prefix}/{name}/mean"] = float(np.nanmean(out_scores[name]))
    return results


SCORE_TITLES = {"log_px": "log p(x)", "max_prob": "max_y p(y|x)", "grad_norm": "-‖∂ log p(x)/∂x‖"}


@registry.register("ood")
class OodEvaluation(registry.Evaluation):
    """AUROC and FPR at 95 % TPR of the three scores on every available --ood_sets set (Tables 3 and 7)."""

    title = "Out-of-distribution detection (section 5.3, Tables 3 and 7)"
    uses_ood_sets = True

    def run(self, context):
        available = []
        for name in context.options.ood_sets:
            images = context.ood_images(name)
            if isinstance(images, str):
                context.results[f"ood/{common.key_name(name)}"] = common.unavailable(images)
            else:
                available.append(name)
        if not available:
            # Nothing to compare against: no point scoring the in-distribution data either.
            raise common.Unavailable(
                f"none of the requested OOD sets ({', '.join(context.options.ood_sets)}) is available here; "
                "see the ood/<set> entries")
        for prefix, run in context.runs():
            in_scores = context.in_scores(prefix, run)
            for name in SCORE_NAMES:
                context.results[f"{prefix}ood/in_distribution/{name}/mean"] = float(np.nanmean(in_scores[name]))
            context.results[f"{prefix}ood/in_distribution/num_examples"] = len(context.images)
        for name in available:
            key = common.key_name(name)
            for prefix, run in context.runs():
                context.results.update(ood_metrics(context.in_scores(prefix, run),
                                                   context.ood_scores(prefix, run, name), f"{prefix}ood/{key}"))
                context.results[f"{prefix}ood/{key}/num_examples"] = len(context.ood_images(name))
            context.figures[f"ood_histograms_{key}"] = plots.score_histograms(
                context.figure_path(f"ood_histograms_{key}.png"), name, context.run.dataset,
                context.in_scores("", context.run), context.ood_scores("", context.run, name))

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        sets = []
        for key in results:
            parts = key.split("/")
            if key.startswith("ood/") and len(parts) == 4 and parts[3] == "auroc" and parts[1] != "in_distribution":
                if parts[1] not in sets:
                    sets.append(parts[1])
        if sets:
            for metric, title in (("auroc", "AUROC"), ("fpr_at_95_tpr", "FPR at 95% TPR (lower is better)")):
                count = results.get("ood/in_distribution/num_examples")
                lines += [f"**{title}** — in-distribution: {run.dataset} test ({count} images)", ""]
                rows = []
                for score, score_title in SCORE_TITLES.items():
                    for prefix, name in report.models(results, run, compare):
                        rows.append([score_title, name] + [
                            report.fmt(results.get(f"{prefix}ood/{s}/{score}/{metric}"), digits=3) for s in sets])
                lines += report.table(["score", "model"] + sets, rows)
        lines += unavailable_set_lines(results)
        for s in sets:
            lines += report.image(figures, f"ood_histograms_{s}", f"Score histograms, {s}")
        return lines

    def unavailable_details(self, results):
        return unavailable_set_lines(results)


def unavailable_set_lines(results) -> list:
    """One line per requested OOD set that was unavailable, saying why."""
    lines = [f"- **{k.split('/', 1)[1]}**: {v}" for k, v in results.items()
             if k.startswith("ood/") and k.count("/") == 1 and common.is_unavailable(v)]
    return lines + [""] if lines else []
