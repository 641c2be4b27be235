"""The graph functions behind every exported signature, with their input checks.

TF Serving checks only that a request names an existing signature and sends the right number of
inputs; it passes shapes and values through unchecked (a wrong image size would even run, since
the network ends in global pooling). So every function here validates its inputs *inside the
graph* (`_require`): a refused input fails the request with INVALID_ARGUMENT and a message saying
what was expected, and nothing is computed from it. Everything is plain TensorFlow ops, traced
without autograph (ExportArchive disables it): loops are explicit `tf.while_loop` / `tf.map_fn`.
"""

import tensorflow as tf

from export import signatures as sig
from jem_tf import energy, precision
from jem_tf.data import to_model_range
from jem_tf.sampling import sgld

# How many values an assertion message prints (shapes have at most a handful).
_SUMMARIZE = 8


def _require(value, condition, message: str, data=(), *, fallback):
    """`value` if `condition` holds; otherwise the request fails with INVALID_ARGUMENT: `message`
    followed by `data` (e.g. the received shape).

    The check is a data dependency, not a control dependency: `tf.cond` yields `value` only when
    the condition is true, and otherwise runs the assertion and yields `fallback`, a small input of
    the valid shape. Nothing downstream can therefore ever see a refused input, so the request
    fails with this message and never with a confusing error from a later op. (Control
    dependencies alone proved unreliable here: the serving session's graph optimisations let a
    while loop start on an unchecked seed before its assertion ran.) Chaining `_require` calls on
    the returned value reports the first rule broken.
    """

    def accepted():
        return tf.identity(value)

    def refused():
        assertion = tf.raw_ops.Assert(condition=False, data=[message, *data], summarize=_SUMMARIZE)
        with tf.control_dependencies([assertion]):
            return tf.identity(fallback)

    return tf.cond(condition, accepted, refused)


def _dynamic_shape(tensor):
    """(shape, rank) of `tensor` as computed at run time, never from its declared static shape.

    A C++ client (TF Serving) can feed any shape whatever the signature declares. A check that can
    see the declared shape may be folded to "true" before it runs -- in Python, tf.shape and
    tf.rank return constants for known shapes, and graph optimisers may do the same -- and the
    request would then fail later with a confusing error, or not at all. PlaceholderWithDefault
    with an unknown shape is an identity at run time whose output shape is unknown to inference.
    """
    opaque = tf.raw_ops.PlaceholderWithDefault(input=tensor, shape=tf.TensorShape(None))
    return tf.raw_ops.Shape(input=opaque, out_type=tf.int32), tf.raw_ops.Rank(input=opaque)


def _shape_matches(tensor, expected):
    """True iff `tensor` has rank len(expected) and each dim equals `expected` (None: any)."""
    shape, rank = _dynamic_shape(tensor)
    # Pad so that the comparison is well defined whatever rank was sent.
    padded = tf.concat([shape, tf.fill([len(expected)], -1)], axis=0)[: len(expected)]
    matches = tf.equal(rank, len(expected))
    for index, size in enumerate(expected):
        if size is not None:
            matches = tf.logical_and(matches, tf.equal(padded[index], size))
    return matches


def _format_shape(shape) -> str:
    return "[" + ", ".join("batch" if size is None else str(size) for size in shape) + "]"


class ServingFunctions:
    """The signature functions of one exported network.

    Args:
      network: a built Keras model mapping float32 images [b, H, W, C] in [-1, 1] to logits
        [b, K]; called with training=False only.
      max_refine_steps: the largest `steps` `refine_then_classify` accepts.
      ood_threshold: if set, the classify family also returns `is_out_of_distribution`
        (= log_px < ood_threshold).
    """

    def __init__(self, network, max_refine_steps: int = sig.DEFAULT_MAX_REFINE_STEPS, ood_threshold=None):
        image_shape = getattr(network, "input_image_shape", None)
        if image_shape is None or any(size is None for size in image_shape):
            raise ValueError(
                "The network must be built with a fully known image shape, e.g. "
                "network.build((None, H, W, C)); it has none."
            )
        if not isinstance(max_refine_steps, int) or max_refine_steps < 0:
            raise ValueError(f"max_refine_steps must be a non-negative integer; received {max_refine_steps!r}.")
        self.network = network
        self.image_shape = tuple(int(size) for size in image_shape)
        self.num_classes = int(network.num_classes)
        self.max_refine_steps = max_refine_steps
        self.ood_threshold = None if ood_threshold is None else float(ood_threshold)
        # >1 only for a float16 network, whose input-gradient backward pass would underflow.
        self.score_scale = precision.input_gradient_scale(network)

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
        return {
            sig.ENERGY_OUTPUT: -log_px,
            sig.CLASS_ENERGIES: energy.class_energies(logits_seen[-1]),
            sig.SCORE_GRAD_NORM: energy.score_norm(score),
        }

    def refine_then_classify(self, images, steps, step_size, noise_std, seed):
        """SGLD refinement seeded at the input (paper section 5.4), then classify.

        The classify outputs describe the refined images; with steps=0 the refined images are the
        (validated) input and the outputs equal `classify`'s.
        """
        images = self._validated_images(images)
        steps = _require_scalar(steps, sig.STEPS, "an int32 scalar", fallback=tf.constant(0, tf.int32))
        steps = _require(
            steps, tf.logical_and(steps >= 0, steps <= self.max_refine_steps),
            f"steps must be in [0, {self.max_refine_steps}] (max_refine_steps, fixed at export); received",
            [steps], fallback=tf.constant(0, tf.int32),
        )
        step_size = self._validated_non_negative(step_size, sig.STEP_SIZE)
        noise_std = self._validated_non_negative(noise_std, sig.NOISE_STD)
        seed = _require(
            seed, _shape_matches(seed, [2]), "seed must be int64 of shape [2]; received shape",
            [_dynamic_shape(seed)[0]], fallback=tf.zeros([2], tf.int64),
        )
        refined = sgld.refine(self._logits, images, steps, step_size, noise_std, seed, score_scale=self.score_scale)
        return {sig.REFINED_IMAGES: refined, **self._classify_outputs(refined)}

    def classify_image_bytes(self, image_bytes):
        """Encoded PNG/JPEG/BMP images -> classify outputs, with the training preprocessing."""
        height, width, channels = self.image_shape
        blank = tf.zeros([height, width, channels], tf.uint8)
        # Stands in for a refused batch; a valid encoded image, so decoding it cannot fail.
        blank_batch = tf.reshape(tf.io.encode_png(blank), [1])
        image_bytes = _require(
            image_bytes, _shape_matches(image_bytes, [None]),
            "image_bytes must be a string vector [batch] of encoded images; received shape",
            [_dynamic_shape(image_bytes)[0]], fallback=blank_batch,
        )
        image_bytes = _require(
            image_bytes, _dynamic_shape(image_bytes)[0][0] > 0,
            "image_bytes must hold at least one image; received an empty batch", fallback=blank_batch,
        )

        def decode(encoded):
            # Grayscale and colour sources are converted to the model's channel count, as the
            # data loaders do; the size is not changed (training never resized).
            image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8, expand_animations=False)
            image = _require(
                image, _shape_matches(image, [height, width, channels]),
                f"image_bytes: every image must decode to {height}x{width} pixels (the input size of "
                "the model; resize before sending); decoded shape",
                [_dynamic_shape(image)[0]], fallback=blank,
            )
            return tf.ensure_shape(image, [height, width, channels])

        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8)
        )
        return self._classify_outputs(to_model_range(images))

    # -- pieces ----------------------------------------------------------------------------

    def _logits(self, images):
        return tf.cast(self.network(images, training=False), tf.float32)

    def _classify_outputs(self, images):
        logits = self._logits(images)
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
        expected = [None, *self.image_shape]
        blank = tf.zeros([1, *self.image_shape], tf.float32)
        images = _require(
            images, _shape_matches(images, expected), f"images must be float32 {_format_shape(expected)}; "
            "received shape", [_dynamic_shape(images)[0]], fallback=blank,
        )
        images = _require(
            images, _dynamic_shape(images)[0][0] > 0, "images must hold at least one image; received an empty batch",
            fallback=blank,
        )
        finite = tf.math.is_finite(images)
        images = _require(
            images, tf.reduce_all(finite), "images must be finite; received NaN or Inf values, count:",
            [tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int32))], fallback=blank,
        )
        low = sig.IMAGE_MIN - sig.IMAGE_RANGE_TOLERANCE
        high = sig.IMAGE_MAX + sig.IMAGE_RANGE_TOLERANCE
        smallest, largest = tf.reduce_min(images), tf.reduce_max(images)
        images = _require(
            images, tf.logical_and(smallest >= low, largest <= high),
            f"images must be in [{sig.IMAGE_MIN:g}, {sig.IMAGE_MAX:g}] (uint8 pixels as x / 127.5 - 1; "
            f"tolerance {sig.IMAGE_RANGE_TOLERANCE:g}); received min and max",
            [smallest, largest], fallback=blank,
        )
        return tf.clip_by_value(tf.ensure_shape(images, expected), sig.IMAGE_MIN, sig.IMAGE_MAX)

    @staticmethod
    def _validated_non_negative(value, key):
        value = _require_scalar(value, key, "a float32 scalar", fallback=tf.constant(0.0))
        return _require(
            value, tf.logical_and(tf.math.is_finite(value), value >= 0.0),
            f"{key} must be a finite number >= 0; received", [value], fallback=tf.constant(0.0),
        )


def _require_scalar(value, key, expected, *, fallback):
    return _require(
        value, _shape_matches(value, []), f"{key} must be {expected} (shape []); received shape",
        [_dynamic_shape(value)[0]], fallback=fallback,
    )
