"""The graph functions behind every exported signature, with their input checks.

TF Serving checks only that a request names an existing signature and sends the right number of
inputs; it passes shapes and values through unchecked (a wrong image size would even run, since
the network ends in global pooling). So every function here validates its inputs *inside the
graph* (`_require`): a refused input fails the request with INVALID_ARGUMENT and a message saying
what was expected, and nothing is computed from it. Everything is plain TensorFlow ops, traced
without autograph (ExportArchive disables it): loops are explicit `tf.while_loop` / `tf.map_fn`.
"""

import numpy as np
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


def _runtime_view(tensor):
    """`tensor` itself, through ops whose output shape nothing can infer before run time.

    The signature's declared input shapes are a promise the caller need not keep. A Python caller
    of `tf.saved_model.load` is not checked against them, and its function runtime then optimises
    the graph as if they held: shape checks on the input were folded to "true", so a scalar
    `image_bytes` failed with "slice index 0 of dimension 0 out of bounds" and a vector `steps`
    with "The second input must be a scalar". A serialize/parse round trip (one copy of the input,
    small next to the network) has an unknown output shape that no optimiser can fold.
    """
    return tf.raw_ops.ParseTensor(serialized=tf.raw_ops.SerializeTensor(tensor=tensor), out_type=tensor.dtype)


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
            key: _require(
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
        steps, step_size, noise_std, seed = (_runtime_view(value) for value in (steps, step_size, noise_std, seed))
        steps = _require_scalar(steps, sig.STEPS, "an int32 scalar", fallback=tf.constant(0, tf.int32))
        steps = _require(
            steps, tf.logical_and(steps >= 0, steps <= self.max_refine_steps),
            f"steps must be in [0, {self.max_refine_steps}] (max_refine_steps, fixed at export); received",
            [steps], fallback=tf.constant(0, tf.int32),
        )
        step_size = self._validated_bounded(step_size, sig.STEP_SIZE, self.max_step_size, "max_step_size")
        noise_std = self._validated_bounded(noise_std, sig.NOISE_STD, self.max_noise_std, "max_noise_std")
        seed = _require(
            seed, _shape_matches(seed, [2]), "seed must be int64 of shape [2]; received shape",
            [_dynamic_shape(seed)[0]], fallback=tf.zeros([2], tf.int64),
        )
        # Clamped to the image domain after every step (as JEM++'s sampler): unclamped, steps=100,
        # step_size=10, noise_std=1 (all within the default bounds) left pixels at -7.2..5.7, which
        # `classify` itself refuses as out of range.
        refined = sgld.refine(self._logits, images, steps, step_size, noise_std, seed,
                               score_scale=self.score_scale, clamp=True)
        # A broken model (NaN weights) still gives NaN scores, which the clamp keeps: refuse rather
        # than answer NaN with a class id and an OOD flag that mean nothing.
        finite = tf.math.is_finite(refined)
        refined = _require(
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
        image_bytes = _runtime_view(image_bytes)
        blank = tf.zeros([height, width, channels], tf.uint8)
        # Stands in for a refused batch; a valid encoded image, so decoding it cannot fail.
        blank_png = tf.io.encode_png(blank)
        blank_batch = tf.reshape(blank_png, [1])
        image_bytes = _require(
            image_bytes, _shape_matches(image_bytes, [None]),
            "image_bytes must be a string vector [batch] of encoded images; received shape",
            [_dynamic_shape(image_bytes)[0]], fallback=blank_batch,
        )
        batch_size = _dynamic_shape(image_bytes)[0][0]
        image_bytes = _require(
            image_bytes, batch_size > 0, "image_bytes must hold at least one image; received an empty batch",
            fallback=blank_batch,
        )
        image_bytes = _require(
            image_bytes, batch_size <= self.max_batch_size,
            f"image_bytes must hold at most {self.max_batch_size} images (max_batch_size, fixed at export); "
            "received", [batch_size], fallback=blank_batch,
        )
        # int64: 1024 lengths of up to 2 GB each overflow int32.
        total_bytes = tf.reduce_sum(tf.cast(tf.strings.length(image_bytes), tf.int64))
        image_bytes = _require(
            image_bytes, total_bytes <= self.max_request_bytes,
            f"image_bytes must total at most {self.max_request_bytes} bytes (max_request_bytes, fixed at export); "
            "received", [total_bytes], fallback=blank_batch,
        )
        formats = ", ".join(sig.IMAGE_BYTES_FORMATS)

        def decode(encoded):
            length = tf.strings.length(encoded)
            encoded = _require(
                encoded, length <= self.max_image_bytes,
                f"image_bytes: every image must be at most {self.max_image_bytes} bytes (max_image_bytes, fixed at "
                "export); received an image of", [length], fallback=blank_png,
            )
            kind, header_height, header_width = _header_size(encoded)
            encoded = _require(
                encoded, tf.not_equal(kind, _UNKNOWN),
                f"image_bytes: every image must be {formats} (recognised by its first bytes; other formats, "
                "e.g. WebP, are not decoded); received an image whose first bytes are",
                [_first_bytes(encoded)], fallback=blank_png,
            )
            encoded = _require(
                encoded, tf.logical_and(tf.equal(header_height, height), tf.equal(header_width, width)),
                f"image_bytes: every image must be {height}x{width} pixels (the input size of the model; resize "
                "before sending); checked before decoding, the image header says height, width",
                [header_height, header_width], fallback=blank_png,
            )
            image = decode_image(encoded, channels)
            # The header was checked, but a file may still decode to another size (e.g. a GIF frame).
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

    def _classify_outputs(self, images, non_finite_message=None):
        logits = self._logits(images)
        # log_px too: finite logits near float32's largest value still overflow logsumexp.
        finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(logits)), tf.reduce_all(tf.math.is_finite(energy.log_marginal(logits)))
        )
        logits = _require(
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
        images = _runtime_view(images)
        expected = [None, *self.image_shape]
        blank = tf.zeros([1, *self.image_shape], tf.float32)
        images = _require(
            images, _shape_matches(images, expected), f"images must be float32 {_format_shape(expected)}; "
            "received shape", [_dynamic_shape(images)[0]], fallback=blank,
        )
        batch_size = _dynamic_shape(images)[0][0]
        images = _require(
            images, batch_size > 0, "images must hold at least one image; received an empty batch", fallback=blank,
        )
        images = _require(
            images, batch_size <= self.max_batch_size,
            f"images must hold at most {self.max_batch_size} images (max_batch_size, fixed at export); received",
            [batch_size], fallback=blank,
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
    def _validated_bounded(value, key, bound, bound_name):
        value = _require_scalar(value, key, "a float32 scalar", fallback=tf.constant(0.0))
        # NaN fails both comparisons, so it is refused too.
        return _require(
            value, tf.logical_and(value >= 0.0, value <= bound),
            f"{key} must be a finite number in [0, {bound:g}] ({bound_name}, fixed at export); received", [value],
            fallback=tf.constant(0.0),
        )


def _require_scalar(value, key, expected, *, fallback):
    return _require(
        value, _shape_matches(value, []), f"{key} must be {expected} (shape []); received shape",
        [_dynamic_shape(value)[0]], fallback=fallback,
    )


# -- encoded images ---------------------------------------------------------------------------

# Format ids of `_header_size`, and the magic bytes TensorFlow's DecodeImage recognises.
_UNKNOWN, _PNG, _JPEG, _GIF, _BMP = 0, 1, 2, 3, 4
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_BMP_MAGIC = b"BM"
# Header bytes read: enough for every size field below (the BMP height ends at byte 26).
_HEADER_BYTES = 26


def _first_bytes(encoded, count=8):
    """The first `count` bytes of `encoded` as numbers (zero-padded): printable in any message."""
    padded = tf.strings.join([encoded, tf.constant(b"\0" * count)])
    return tf.io.decode_raw(tf.strings.substr(padded, 0, count), tf.uint8)


def _header_size(encoded):
    """(format id, height, width) from an encoded image's header bytes, without decoding it.

    PNG: IHDR width, height (big-endian uint32 at bytes 16, 20). GIF: logical screen width,
    height (little-endian uint16 at 6, 8), the size TensorFlow's GIF decoder allocates per frame.
    BMP: width, height (little-endian int32 at 18, 22, as TensorFlow's BMP decoder reads them; a
    negative height is a top-down image). JPEG: the SOF marker, via tf.io.extract_jpeg_shape.
    Unknown formats give (0, 0, 0); a truncated header reads as zeros (so its size is wrong).
    """
    # Padding keeps every slice below in range whatever the length.
    padded = tf.strings.join([encoded, tf.constant(b"\0" * _HEADER_BYTES)])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8), tf.int64)

    def unsigned(start, count, big_endian):
        value = tf.constant(0, tf.int64)
        for index in range(count):
            shift = 8 * (count - 1 - index if big_endian else index)
            value += tf.bitwise.left_shift(head[start + index], shift)
        return value

    def signed32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    def starts_with(magic):
        return tf.equal(tf.strings.substr(encoded, 0, len(magic)), magic)

    is_png = starts_with(_PNG_MAGIC)
    is_jpeg = starts_with(_JPEG_MAGIC)
    is_gif = tf.logical_or(starts_with(_GIF_MAGICS[0]), starts_with(_GIF_MAGICS[1]))
    is_bmp = starts_with(_BMP_MAGIC)
    kind = tf.where(is_png, _PNG, tf.where(is_jpeg, _JPEG, tf.where(is_gif, _GIF, tf.where(is_bmp, _BMP, _UNKNOWN))))
    jpeg_height, jpeg_width = tf.unstack(tf.cond(
        is_jpeg,
        lambda: tf.cast(tf.io.extract_jpeg_shape(encoded, output_type=tf.int32)[:2], tf.int64),
        lambda: tf.zeros([2], tf.int64),
    ))
    candidates = [  # (condition, height, width)
        (is_png, unsigned(20, 4, True), unsigned(16, 4, True)),
        (is_jpeg, jpeg_height, jpeg_width),
        (is_gif, unsigned(8, 2, False), unsigned(6, 2, False)),
        (is_bmp, tf.abs(signed32(unsigned(22, 4, False))), tf.abs(signed32(unsigned(18, 4, False)))),
    ]
    height = width = tf.constant(0, tf.int64)
    for condition, candidate_height, candidate_width in reversed(candidates):
        height = tf.where(condition, candidate_height, height)
        width = tf.where(condition, candidate_width, width)
    return kind, height, width


def decode_image(encoded, channels):
    """uint8 [H, W, channels]. For a 1-channel model every format is decoded to RGB and reduced to
    ITU-R 601-2 luma, rounded as Pillow's convert("L") does: L = (19595 R + 38470 G + 7471 B +
    2^15) >> 16, exact for grey images. (TensorFlow decodes BMP and GIF only to 3 or 4 channels,
    and its PNG decoder's own grey conversion differs from Pillow's by one level; one rule for
    every format keeps the answer independent of the format.)"""

    def decode_to(count):
        return tf.io.decode_image(encoded, channels=count, dtype=tf.uint8, expand_animations=False)

    if channels != 1:
        return decode_to(channels)
    rgb = tf.cast(decode_to(3), tf.int32)
    weighted = 19595 * rgb[..., 0:1] + 38470 * rgb[..., 1:2] + 7471 * rgb[..., 2:3] + 2**15
    return tf.cast(tf.bitwise.right_shift(weighted, 16), tf.uint8)
