"""Inception Score and FID (appendix B) with Keras InceptionV3.

ImageNet weights cannot be downloaded on an offline machine, so the network is built from a local
weights file (`keras.applications.InceptionV3(weights=PATH)`, the with-top file
`inception_v3_weights_tf_dim_ordering_tf_kernels.h5`). Without one the evaluation is reported
unavailable. `weights=None` builds random weights: the scores are then meaningless, which is only
useful to test the plumbing.

Numbers from Keras' InceptionV3 are not comparable with the paper's (which used the TF1 graph of
Heusel et al. for FID and Du & Mordatch's code for IS; appendix B discusses how much those differ).
"""

import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from jem_tf import metrics
from jem_tf.evaluation import common, registry, report, samples

INCEPTION_SIZE = 299
# InceptionV3's smallest accepted input.
MIN_INCEPTION_SIZE = 75
RANDOM_WEIGHTS = "random"


class InceptionModel:
    """InceptionV3 returning (2048-d pool features for FID, 1000-way probabilities for IS).

    Args:
      weights: a local .h5 weights path, or None for random weights (plumbing tests only).
      image_size: network input size; images are resized to it (299 for real evaluations; tests
        use the minimum, 75, to stay fast).
    """

    def __init__(self, weights=None, image_size: int = INCEPTION_SIZE):
        if image_size < MIN_INCEPTION_SIZE:
            raise ValueError(
                f"InceptionV3 needs inputs of at least {MIN_INCEPTION_SIZE} pixels; received {image_size}.")
        if weights is not None and not os.path.exists(weights):
            raise common.Unavailable(f"InceptionV3 weights file {weights!r} does not exist")
        self.image_size = int(image_size)
        self.random_weights = weights is None
        network = keras.applications.InceptionV3(
            include_top=True, weights=weights, input_shape=(self.image_size, self.image_size, 3)
        )
        self._model = keras.Model(network.input, [network.get_layer("avg_pool").output, network.output])
        self._calls = {}  # image shape -> the model traced once for every batch size

    def _prepare(self, images):
        if images.shape[-1] == 1:
            images = tf.tile(images, [1, 1, 1, 3])
        # Keras' InceptionV3 preprocessing maps [0, 255] to [-1, 1], the model range already; chains
        # can drift outside it, so clip.
        images = tf.clip_by_value(images, -1.0, 1.0)
        return tf.image.resize(images, (self.image_size, self.image_size), method="bilinear")

    def features_and_probabilities(self, images, batch_size: int, description: str, progress: bool = True):
        image_shape = tuple(np.shape(images)[1:])
        if image_shape not in self._calls:
            self._calls[image_shape] = tf.function(lambda batch: self._model(self._prepare(batch), training=False),
                                                   input_signature=(common.image_spec(image_shape),), autograph=False)
        call = self._calls[image_shape]
        outputs = common.map_batches(
            lambda batch, _: dict(zip(("features", "probabilities"), call(batch), strict=True)),
            images, batch_size, description, progress,
        )
        return outputs["features"], outputs["probabilities"]


def evaluate_sample_quality(inception: InceptionModel, sample_sets: dict, reference_images, *, batch_size: int = 50,
                            num_splits: int = 10, progress: bool = True) -> dict:
    """IS of every sample set and of the reference (real) images; FID of every set to the reference.

    Args:
      sample_sets: name -> images in [-1, 1].
      reference_images: real in-distribution images in [-1, 1] (the test subset).

    Returns:
      `sample_quality/<set>/inception_score`, `.../inception_score_std`, `.../fid`,
      `.../num_images`, and the same IS keys for `reference`.
    """
    results = {"sample_quality/weights": "random (plumbing check only; the numbers are meaningless)"
               if inception.random_weights else "keras InceptionV3 (ImageNet)"}
    reference_features, reference_probabilities = inception.features_and_probabilities(
        reference_images, batch_size, "InceptionV3 on real test images", progress)
    mean_is, std_is = metrics.inception_score(reference_probabilities, num_splits)
    results.update({"sample_quality/reference/inception_score": mean_is,
                    "sample_quality/reference/inception_score_std": std_is,
                    "sample_quality/reference/num_images": len(reference_features)})
    for name, images in sample_sets.items():
        if len(images) < 2:
            results[f"sample_quality/{name}"] = common.unavailable("fewer than 2 samples")
            continue
        features, probabilities = inception.features_and_probabilities(
            images, batch_size, f"InceptionV3 on samples '{name}'", progress)
        mean_is, std_is = metrics.inception_score(probabilities, num_splits)
        fid = metrics.frechet_distance_from_features(features, reference_features)
        results.update({f"sample_quality/{name}/inception_score": mean_is,
                        f"sample_quality/{name}/inception_score_std": std_is,
                        f"sample_quality/{name}/fid": fid,
                        f"sample_quality/{name}/num_images": len(features)})
        logging.info("Sample quality of %s: IS %.3f +- %.3f, FID %.2f.", name, mean_is, std_is, fid)
    return results


@registry.register("sample_quality")
class SampleQualityEvaluation(registry.Evaluation):
    """Inception Score and FID of the samples evaluation's image sets (run first when it has not)."""

    title = "Sample quality: Inception Score and FID (appendix B)"

    def run(self, context):
        weights = context.options.inception_weights
        if not weights:
            raise common.Unavailable(
                "no --inception_weights=PATH given. Keras cannot download the ImageNet InceptionV3 weights on "
                "this offline machine; copy inception_v3_weights_tf_dim_ordering_tf_kernels.h5 here and pass "
                "its path")
        inception = InceptionModel(
            None if weights == RANDOM_WEIGHTS else weights, context.options.inception_size)
        if context.sample_sets is None:
            samples.SamplesEvaluation().run(context)
        context.results.update(evaluate_sample_quality(
            inception, context.sample_sets, context.images, batch_size=context.options.batch_size,
            num_splits=context.options.quality_splits, progress=context.options.progress))

    def report_section(self, results, figures, run, compare):
        lines = ["## " + self.heading(), ""]
        sets = [k.split("/")[1] for k in results if k.startswith("sample_quality/") and k.endswith("/inception_score")]
        if sets:
            lines += [f"InceptionV3 weights: {results.get('sample_quality/weights')}. FID is measured against the "
                      "real test images; Keras-InceptionV3 numbers are not comparable with the paper's "
                      "(appendix B).", ""]
            rows = [[s, results.get(f"sample_quality/{s}/num_images"),
                     f"{report.fmt(results.get(f'sample_quality/{s}/inception_score'))} ± "
                     f"{report.fmt(results.get(f'sample_quality/{s}/inception_score_std'), digits=2)}",
                     report.fmt(results.get(f"sample_quality/{s}/fid"))] for s in sets]
            lines += report.table(["images", "count", "Inception Score", "FID"], rows)
        return lines
