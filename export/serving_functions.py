"""The graph functions behind every exported signature, with their input checks.

TF Serving checks only that a request names an existing signature and sends the right number of
inputs; it passes shapes and values through unchecked (a wrong image size would even run, since
the network ends in global pooling). So every function here validates its inputs *inside the
graph* (`export.graph_checks.require`): a refused input fails the request with INVALID_ARGUMENT and
a message saying what was expected, and nothing is computed from it. Encoded images are sized from
their headers before decoding (`export.encoded_images`). Everything is plain TensorFlow ops, traced
without autograph (ExportArchive disables it): loops are explicit `tf.while_loop` / `tf.map_fn`.
"""

import numpy as np
import tensorflow as tf

from export import signatures as sig
from export.encoded_images import UNKNOWN, decode_image, first_bytes, header_size
from export.graph_checks import dynamic_shape, format_shape, require, require_scalar, runtime_view, shape_matches
from jem_tf import energy, precision
from jem_tf.data import to_model_range
from jem_tf.sampling import sgld


class ServingFunctions:
    """The signature functions of one exported network.

    Args:
      network: a built Keras model mapping float32 images [b, H, W, C] in [-1, 1] to logits
        [b, K]; called with training=False only.
      max_refine_steps: the largest `steps` `refine_then_classify` accepts.
      ood_threshold: if set, the classify family also returns `is_out_of_distribution`
        (= log_px < ood_threshold).
      max_step_size, max_noise_std: the largest `step_size` / `noise_std` `refine_then_classify`
        accepts (finite, representable as float32).
      max_batch_size: the most images (or encoded images) one request may carry.
      max_image_bytes, max_request_bytes: the most bytes one encoded image, and all the encoded
        images of one request together, may have (`classify_image_bytes`).
    """

    def __init__(
        self,
        network,
        max_refine_steps: int = sig.DEFAULT_MAX_REFINE_STEPS,
        ood_threshold=None,
        *,
        max_step_size: float = sig.DEFAULT_MAX_STEP_SIZE,
        max_noise_std: float = sig.DEFAULT_MAX_NOISE_STD,
        max_batch_size: int = sig.DEFAULT_MAX_BATCH_SIZE,
        max_image_bytes: int = sig.DEFAULT_MAX_IMAGE_BYTES,
        max_request_bytes: int = sig.DEFAULT_MAX_REQUEST_BYTES,
    ):
        image_shape = getattr(network, "input_image_shape", None)
        if image_shape is None or any(size is None for size in image_shape):
            raise ValueError(
                "The network must be built with a fully known image shape, e.g. "
                "network.build((None, H, W, C)); it has none."
            )
        if isinstance(max_refine_steps, bool) or not isinstance(max_refine_steps, int) or max_refine_steps < 0:
            raise ValueError(f"max_refine_steps must be a non-negative integer; received {max_refine_steps!r}.")
        for name, bound in (("max_batch_size", max_batch_size), ("max_image_bytes", max_image_bytes),
                            ("max_request_bytes", max_request_bytes)):
            if isinstance(bound, bool) or not isinstance(bound, int) or not 1 <= bound < 2**31:
                raise ValueError(f"{name} must be a positive integer below 2**31; received {bound!r}.")
        for name, bound in (("max_step_size", max_step_size), ("max_noise_std", max_noise_std)):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (
                0.0 <= bound <= float(np.finfo(np.float32).max)
            ):
                raise ValueError(
                    f"{name} must be a finite number >= 0 that float32 can hold (at most "
                    f"{float(np.finfo(np.float32).max):.4g}); received {bound!r}."
                )
        self.network = network
        self.image_shape = tuple(int(size) for size in image_shape)
        self.num_classes = int(network.num_classes)
        self.max_refine_steps = max_refine_steps
        self.ood_threshold = None if ood_threshold is None else float(ood_threshold)
        self.max_step_size = float(max_step_size)
        self.max_noise_std = float(max_noise_std)
        self.max_batch_size = max_batch_size
        self.max_image_bytes = max_image_bytes
        self.max_request_bytes = max_request_bytes
        # >1 only for a float16 network, whose input-gradient backward pass would underflow.
        self.score_scale = precision.input_gradient_scale(network)

    def input_rules(self) -> dict:
        """The limits baked into the signatures, for the export's metadata."""
        height, width, channels = self.image_shape
        return {
            "max_refine_steps": self.max_refine_steps,
            "max_step_size": self.max_step_size,
            "max_noise_std": self.max_noise_std,
            "max_batch_size": self.max_batch_size,
            "max_image_bytes": self.max_image_bytes,
            "max_request_bytes": self.max_request_bytes,
            "image_bytes_formats": list(sig.IMAGE_BYTES_FORMATS),
            "image_bytes_format_check": "recognised by the first bytes (magic numbers); any other format (e.g. "
                                        "WebP) is refused before decoding",
            "image_bytes_size": [height, width],
            "image_bytes_size_check": "the height and width in each image's header must be the model's; checked "
                                      "on the header bytes before decoding",
            "image_bytes_decoded_size": [height, width, channels],
            "refined_images": "clipped to [-1, 1] after every SGLD step (as JEM++'s sampler)",
            "non_finite_results": "refused (INVALID_ARGUMENT) instead of answered: refined images, logits, energies",
        }

    # -- input signatures ------------------------------------------------------------------

    def input_signature(self, signature_name: str) -> list:
        """The `tf.TensorSpec`s of a signature's inputs, in argument order."""
        contract = sig.SIGNATURES[signature_name]
        return [
            tf.TensorSpec(
                sig.concrete_shape(item.shape, self.image_shape, self.num_classes),
                tf.dtypes.as_dtype(item.dtype),
                name=item.key,
            )
            for item in contract.inputs
        ]

    def function(self, signature_name: str):
        """The Python function behind `signature_name` (its argument names are the input keys)."""
        return {
            sig.CLASSIFY: self.classify,
            sig.ENERGY: self.energy,
            sig.REFINE_THEN_CLASSIFY: self.refine_then_classify,
            sig.CLASSIFY_IMAGE_BYTES: self.classify_image_bytes,
        }[signature_name]

    # -- signatures ------------------------------------------------------------------------

    def classify(self, images):
        """images -> logits, probabilities, class_id, log_px [, is_out_of_distribution]."""
        return self._classify_outputs(self._validated_images(images))

    def energy(self, images):
        """images -> energy, class_energies, score_grad_norm."""
        images = self._validated_images(images)
        logits_seen = []

        def log_density(inputs):
            # Keep the logits of the forward pass the gradient is taken through, instead of
            # running the network a second time for class_energies.
            logits_seen.append(self._logits(inputs))
            return energy.log_marginal(logits_seen[-1])

        log_px, score = energy.log_density_and_score(log_density, images, gradient_scale=self.score_scale)
        outputs = {
            sig.ENERGY_OUTPUT: -log_px,
            sig.CLASS_ENERGIES: energy.class_energies(logits_seen[-1]),
            sig.SCORE_GRAD_NORM: energy.score_norm(score),
        }
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(value)) for value in outputs.values()])
        return {
            key: require(
                value, finite, "energy: the outputs are not finite (NaN or Inf) for these images; the export is "
                "broken (e.g. NaN weights), not the request", fallback=tf.zeros_like(value),
            )
            for key, value in outputs.items()
        }

    def refine_then_classify(self, images, steps, step_size, noise_std, seed):
        """SGLD refinement seeded at the input (paper section 5.4), then classify.

        The classify outputs describe the refined images; with steps=0 the refined images are the
        (validated) input and the outputs equal `classify`'s.
        """
        images = self._validated_images(images)
        steps, step_size, noise_std, seed = (runtime_view(value) for value in (steps, step_size, noise_std, seed))
        steps = require_scalar(steps, sig.STEPS, "an int32 scalar", fallback=tf.constant(0, tf.int32))
        steps = require(
            steps, tf.logical_and(steps >= 0, steps <= self.max_refine_steps),
            f"steps must be in [0, {self.max_refine_steps}] (max_refine_steps, fixed at export); received",
            [steps], fallback=tf.constant(0, tf.int32),
        )
        step_size = self._validated_bounded(step_size, sig.STEP_SIZE, self.max_step_size, "max_step_size")
        noise_std = self._validated_bounded(noise_std, sig.NOISE_STD, self.max_noise_std, "max_noise_std")
        seed = require(
            seed, shape_matches(seed, [2]), "seed must be int64 of shape [2]; received shape",
            [dynamic_shape(seed)[0]], fallback=tf.zeros([2], tf.int64),
        )
        # Clamped to the image domain after every step (as JEM++'s sampler): unclamped, steps=100,
        # step_size=10, noise_std=1 (all within the default bounds) left pixels at -7.2..5.7, which
        # `classify` itself refuses as out of range.
        refined = sgld.refine(self._logits, images, steps, step_size, noise_std, seed,
                               score_scale=self.score_scale, clamp=True)
        # A broken model (NaN weights) still gives NaN scores, which the clamp keeps: refuse rather
        # than answer NaN with a class id and an OOD flag that mean nothing.
        finite = tf.math.is_finite(refined)
        refined = require(
            refined, tf.reduce_all(finite),
            "refine_then_classify: the refined images are not finite (NaN or Inf) after SGLD; lower step_size or "
            "noise_std. Non-finite values, steps, step_size, noise_std:",
            [tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int32)), steps, step_size, noise_std],
            fallback=tf.zeros_like(refined),
        )
        outputs = self._classify_outputs(
            refined, "refine_then_classify: the logits of the refined images are not finite (NaN or Inf); lower "
            "step_size or noise_std"
        )
        return {sig.REFINED_IMAGES: refined, **outputs}

    def classify_image_bytes(self, image_bytes):
        """Encoded PNG/JPEG/BMP/GIF images -> classify outputs, with the training preprocessing.

        Before anything is decoded: the request's total bytes, each image's bytes (a small lying
        PNG can still inflate to hundreds of MB), its format by its magic bytes (only the formats
        whose header size is checked reach the decoder; a 16000x16000 WebP decoded to 6.9 GB) and
        the H x W in its header; so the decoded size is at most H x W x C per image.
        """
        height, width, channels = self.image_shape
        image_bytes = runtime_view(image_bytes)
        blank = tf.zeros([height, width, channels], tf.uint8)
        # Stands in for a refused batch; a valid encoded image, so decoding it cannot fail.
        blank_png = tf.io.encode_png(blank)
        blank_batch = tf.reshape(blank_png, [1])
        image_bytes = require(
            image_bytes, shape_matches(image_bytes, [None]),
            "image_bytes must be a string vector [batch] of encoded images; received shape",
            [dynamic_shape(image_bytes)[0]], fallback=blank_batch,
        )
        batch_size = dynamic_shape(image_bytes)[0][0]
        image_bytes = require(
            image_bytes, batch_size > 0, "image_bytes must hold at least one image; received an empty batch",
            fallback=blank_batch,
        )
        image_bytes = require(
            image_bytes, batch_size <= self.max_batch_size,
            f"image_bytes must hold at most {self.max_batch_size} images (max_batch_size, fixed at export); "
            "received", [batch_size], fallback=blank_batch,
        )
        # int64: 1024 lengths of up to 2 GB each overflow int32.
        total_bytes = tf.reduce_sum(tf.cast(tf.strings.length(image_bytes), tf.int64))
        image_bytes = require(
            image_bytes, total_bytes <= self.max_request_bytes,
            f"image_bytes must total at most {self.max_request_bytes} bytes (max_request_bytes, fixed at export); "
            "received", [total_bytes], fallback=blank_batch,
        )
        formats = ", ".join(sig.IMAGE_BYTES_FORMATS)

        def decode(encoded):
            length = tf.strings.length(encoded)
            encoded = require(
                encoded, length <= self.max_image_bytes,
                f"image_bytes: every image must be at most {self.max_image_bytes} bytes (max_image_bytes, fixed at "
                "export); received an image of", [length], fallback=blank_png,
            )
            kind, header_height, header_width = header_size(encoded)
            encoded = require(
                encoded, tf.not_equal(kind, UNKNOWN),
                f"image_bytes: every image must be {formats} (recognised by its first bytes; other formats, "
                "e.g. WebP, are not decoded); received an image whose first bytes are",
                [first_bytes(encoded)], fallback=blank_png,
            )
            encoded = require(
                encoded, tf.logical_and(tf.equal(header_height, height), tf.equal(header_width, width)),
                f"image_bytes: every image must be {height}x{width} pixels (the input size of the model; resize "
                "before sending); checked before decoding, the image header says height, width",
                [header_height, header_width], fallback=blank_png,
            )
            image = decode_image(encoded, channels)
            # The header was checked, but a file may still decode to another size (e.g. a GIF frame).
            image = require(
                image, shape_matches(image, [height, width, channels]),
                f"image_bytes: every image must decode to {height}x{width} pixels (the input size of "
                "the model; resize before sending); decoded shape",
                [dynamic_shape(image)[0]], fallback=blank,
            )
            return tf.ensure_shape(image, [height, width, channels])

        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8)
        )
        return self._classify_outputs(to_model_range(images))

    # -- pieces ----------------------------------------------------------------------------

    def _logits(self, images):
        return tf.cast(self.network(images, training=False), tf.float32)

    def _classify_outputs(self, images, non_finite_message=None):
        logits = self._logits(images)
        # log_px too: finite logits near float32's largest value still overflow logsumexp.
        finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(logits)), tf.reduce_all(tf.math.is_finite(energy.log_marginal(logits)))
        )
        logits = require(
            logits, finite,
            non_finite_message or "the logits are not finite (NaN or Inf) for these images; the export is broken "
            "(e.g. NaN weights), not the request", fallback=tf.zeros_like(logits),
        )
        log_px = energy.log_marginal(logits)
        outputs = {
            sig.LOGITS: logits,
            sig.PROBABILITIES: energy.class_probabilities(logits),
            sig.CLASS_ID: tf.argmax(logits, axis=-1, output_type=tf.int32),
            sig.LOG_PX: log_px,
        }
        if self.ood_threshold is not None:
            outputs[sig.IS_OUT_OF_DISTRIBUTION] = log_px < self.ood_threshold
        return outputs

    def _validated_images(self, images):
        """Refuses a wrong shape, an empty batch, NaN/Inf and values outside [-1, 1] (beyond the
        rounding tolerance), in that order; returns the images clipped to [-1, 1]."""
        images = runtime_view(images)
        expected = [None, *self.image_shape]
        blank = tf.zeros([1, *self.image_shape], tf.float32)
        images = require(
            images, shape_matches(images, expected), f"images must be float32 {format_shape(expected)}; "
            "received shape", [dynamic_shape(images)[0]], fallback=blank,
        )
        batch_size = dynamic_shape(images)[0][0]
        images = require(
            images, batch_size > 0, "images must hold at least one image; received an empty batch", fallback=blank,
        )
        images = require(
            images, batch_size <= self.max_batch_size,
            f"images must hold at most {self.max_batch_size} images (max_batch_size, fixed at export); received",
            [batch_size], fallback=blank,
        )
        finite = tf.math.is_finite(images)
        images = require(
            images, tf.reduce_all(finite), "images must be finite; received NaN or Inf values, count:",
            [tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int32))], fallback=blank,
        )
        low = sig.IMAGE_MIN - sig.IMAGE_RANGE_TOLERANCE
        high = sig.IMAGE_MAX + sig.IMAGE_RANGE_TOLERANCE
        smallest, largest = tf.reduce_min(images), tf.reduce_max(images)
        images = require(
            images, tf.logical_and(smallest >= low, largest <= high),
            f"images must be in [{sig.IMAGE_MIN:g}, {sig.IMAGE_MAX:g}] (uint8 pixels as x / 127.5 - 1; "
            f"tolerance {sig.IMAGE_RANGE_TOLERANCE:g}); received min and max",
            [smallest, largest], fallback=blank,
        )
        return tf.clip_by_value(tf.ensure_shape(images, expected), sig.IMAGE_MIN, sig.IMAGE_MAX)

    @staticmethod
    def _validated_bounded(value, key, bound, bound_name):
        value = require_scalar(value, key, "a float32 scalar", fallback=tf.constant(0.0))
        # NaN fails both comparisons, so it is refused too.
        return require(
            value, tf.logical_and(value >= 0.0, value <= bound),
            f"{key} must be a finite number in [0, {bound:g}] ({bound_name}, fixed at export); received", [value],
            fallback=tf.constant(0.0),
        )
