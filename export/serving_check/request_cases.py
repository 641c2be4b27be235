"""The requests the serving check sends: valid ones for every signature and batch size, every
advertised image format, and every bad input the signatures must refuse with INVALID_ARGUMENT
(with the limits of the export's metadata), among them decoding bombs and lying headers."""

import dataclasses
import functools
import io
import os
import struct
import zlib

import numpy as np
import tensorflow as tf

from export import client
from export import signatures as sig

# Valid refinement settings of the generated requests: few steps keep the check fast.
CHECK_REFINE = {sig.STEPS: 2, sig.STEP_SIZE: 1.0, sig.NOISE_STD: 0.01, sig.SEED: [3, 4]}


@dataclasses.dataclass
class Case:
    """A request and, for a bad input, the (status code, message part) it must be refused with."""

    name: str
    request: object
    expected_error: tuple | None = None


def _encoded_png(image_uint8) -> bytes:
    return tf.io.encode_png(image_uint8).numpy()


def encode_image(pixels, image_format: str) -> bytes:
    """uint8 [H, W, 1 or 3] pixels encoded as PNG, JPEG, BMP or GIF (with Pillow)."""
    from PIL import Image  # noqa: PLC0415

    pixels = np.asarray(pixels, np.uint8)
    image = Image.fromarray(pixels[..., 0], "L") if pixels.shape[-1] == 1 else Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


# A lossless WebP of 16000x16000 black pixels in 34 bytes (Pillow 12 / libwebp 1.6:
# Image.new("L", (16000, 16000)).save(b, "WEBP", lossless=True, quality=0, method=0)); stored, as
# encoding it takes seconds. TensorFlow's decoder decodes it to 16000*16000*4 bytes (6.9 GB of
# decoding memory counting its conversions); Pillow refuses to open it as a decompression bomb.
WEBP_BOMB_16000 = bytes.fromhex("524946461a000000574542505650384c0e0000002f7ffe9f0f071011fd0f4444ff03")


def lying_png(height: int, width: int, inflated_bytes: int) -> bytes:
    """A grey PNG whose IHDR says height x width but whose zlib stream inflates to
    `inflated_bytes` (zeros, compressed about 1000x), valid in every other respect."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", _deflated_zeros(inflated_bytes))
            + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=8)
def _deflated_zeros(count: int) -> bytes:
    """A zlib stream of `count` zero bytes. Cached: compressing the hundreds of MB a decoding bomb
    inflates to takes seconds, and the bad-input cases are built again for every export checked."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(count >> 20)]
    parts += [compressor.compress(bytes(count & ((1 << 20) - 1))), compressor.flush()]
    return b"".join(parts)


def gif_with_frame_size(pixels, frame_height: int, frame_width: int) -> bytes:
    """`pixels` as a GIF whose logical screen is their size but whose first frame descriptor says
    frame_height x frame_width (giflib allocates the frame from the descriptor)."""
    data = bytearray(encode_image(pixels, "GIF"))
    position = 13
    if data[10] & 0x80:  # a global colour table follows the screen descriptor
        position += 3 * 2 ** ((data[10] & 7) + 1)
    while data[position] == 0x21:  # extension blocks: label, then sub-blocks up to a 0 length
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    if data[position] != 0x2C:
        raise ValueError("No image descriptor found in the GIF Pillow wrote.")
    data[position + 5:position + 9] = struct.pack("<HH", frame_width, frame_height)
    return bytes(data)


def format_inputs(image_shape) -> dict:
    """{case name: classify_image_bytes inputs}: every advertised format, encoded from grayscale and
    from colour pixels (decoded to the model's channel count either way). The JPEG images are one
    flat grey so that any two JPEG decoders agree exactly on them."""
    height, width, _ = image_shape
    rng = np.random.default_rng(17)
    sources = {
        "gray": rng.integers(0, 256, (height, width, 1), dtype=np.uint8),
        "rgb": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
    }
    inputs = {}
    for source, pixels in sources.items():
        for image_format in sig.IMAGE_BYTES_FORMATS:
            encoded = encode_image(np.full_like(pixels, 128) if image_format == "JPEG" else pixels, image_format)
            inputs[f"bytes_{image_format.lower()}_{source}"] = {sig.IMAGE_BYTES: [encoded]}
    return inputs


def format_cases(image_shape) -> list:
    """Valid classify_image_bytes requests in every advertised format."""
    return [Case(name, client.build_request(sig.CLASSIFY_IMAGE_BYTES, inputs))
            for name, inputs in format_inputs(image_shape).items()]


def valid_inputs(signature_name: str, image_shape, batch_size: int, seed: int = 0) -> dict:
    """Deterministic valid inputs for one signature: images uniform in [-1, 1] (or PNGs)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch_size, *image_shape), dtype=np.uint8)
    images = (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    contract = sig.contract_for(signature_name)
    if contract.name == sig.CLASSIFY_IMAGE_BYTES:
        return {sig.IMAGE_BYTES: [_encoded_png(image) for image in pixels]}
    if contract.name == sig.REFINE_THEN_CLASSIFY:
        return {sig.IMAGES: images, **CHECK_REFINE}
    return {sig.IMAGES: images}


def valid_cases(signature_defs: dict, image_shape, batch_sizes=(1, 3)) -> list:
    """One request per signature (serving_default included) and batch size."""
    return [
        Case(f"{name}_batch{batch_size}", client.build_request(name, valid_inputs(name, image_shape, batch_size, seed)))
        for seed, batch_size in enumerate(batch_sizes)
        for name in sorted(signature_defs)
        if name in sig.ALL_SIGNATURE_NAMES
    ]


def bad_input_cases(image_shape, max_refine_steps: int, *, max_step_size: float = sig.DEFAULT_MAX_STEP_SIZE,
                    max_noise_std: float = sig.DEFAULT_MAX_NOISE_STD,
                    max_batch_size: int = sig.DEFAULT_MAX_BATCH_SIZE,
                    max_image_bytes: int = sig.DEFAULT_MAX_IMAGE_BYTES,
                    max_request_bytes: int = sig.DEFAULT_MAX_REQUEST_BYTES) -> list:
    """Requests every signature must refuse with INVALID_ARGUMENT, and the message part each
    refusal must contain (the messages say what was expected). The limits are the export's
    (`input_rules` in its metadata)."""
    height, width, channels = image_shape
    good = np.zeros((2, height, width, channels), np.float32)
    refine_ok = dict(CHECK_REFINE)

    def images_with(value):
        images = good.copy()
        images[0, 0, 0, 0] = value
        return images

    too_many = f"must hold at most {max_batch_size} images"
    image_cases = {
        "wrong_size": (np.zeros((2, height + 1, width, channels), np.float32), "images must be float32"),
        "wrong_channels": (np.zeros((2, height, width, channels + 2), np.float32), "images must be float32"),
        "wrong_rank": (np.zeros((2, height, width), np.float32), "images must be float32"),
        "rank_5": (np.zeros((2, height, width, channels, 1), np.float32), "images must be float32"),
        "single_image_rank_3": (np.zeros((height, width, channels), np.float32), "images must be float32"),
        "empty_batch": (np.zeros((0, height, width, channels), np.float32), "at least one image"),
        "batch_too_large": (np.zeros((max_batch_size + 1, height, width, channels), np.float32), too_many),
        "nan": (images_with(np.nan), "images must be finite"),
        "inf": (images_with(np.inf), "images must be finite"),
        "above_range": (images_with(2.0), "images must be in [-1, 1]"),
        "uint8_scale": (np.full_like(good, 255.0), "images must be in [-1, 1]"),
    }
    cases = []
    for name in (sig.CLASSIFY, sig.ENERGY, sig.REFINE_THEN_CLASSIFY):
        extra = refine_ok if name == sig.REFINE_THEN_CLASSIFY else {}
        for case, (images, message) in image_cases.items():
            cases.append(Case(f"bad_{name}_{case}", client.build_request(name, {sig.IMAGES: images, **extra}),
                              ("INVALID_ARGUMENT", message)))
    step_size_rule = f"step_size must be a finite number in [0, {max_step_size:g}]"
    noise_rule = f"noise_std must be a finite number in [0, {max_noise_std:g}]"
    float32_max = float(np.finfo(np.float32).max)
    refine_cases = {
        "steps_negative": ({sig.STEPS: -1}, f"steps must be in [0, {max_refine_steps}]"),
        "steps_too_many": ({sig.STEPS: max_refine_steps + 1}, f"steps must be in [0, {max_refine_steps}]"),
        "steps_not_scalar": ({sig.STEPS: [1, 2]}, "steps must be an int32 scalar (shape []); received shape"),
        "steps_vector_of_one": ({sig.STEPS: [5]}, "steps must be an int32 scalar (shape []); received shape"),
        "step_size_not_scalar": ({sig.STEP_SIZE: [1.0]}, "step_size must be a float32 scalar (shape [])"),
        "noise_not_scalar": ({sig.NOISE_STD: [0.01, 0.01]}, "noise_std must be a float32 scalar (shape [])"),
        "seed_scalar": ({sig.SEED: 3}, "seed must be int64 of shape [2]"),
        "noise_negative": ({sig.NOISE_STD: -0.01}, noise_rule),
        "noise_nan": ({sig.NOISE_STD: np.nan}, noise_rule),
        "step_size_negative": ({sig.STEP_SIZE: -1.0}, step_size_rule),
        "step_size_inf": ({sig.STEP_SIZE: np.inf}, step_size_rule),
        "seed_wrong_shape": ({sig.SEED: [1, 2, 3]}, "seed must be int64 of shape [2]"),
    }
    # Finite but huge: the values that answered NaN logits (float32's largest) or images of +-8e28.
    if max_step_size < float32_max:
        refine_cases["step_size_float32_max"] = ({sig.STEP_SIZE: float32_max}, step_size_rule)
    if max_step_size < 1e30:
        refine_cases["step_size_1e30"] = ({sig.STEP_SIZE: 1e30}, step_size_rule)
    if max_noise_std < 3e38:
        refine_cases["noise_3e38"] = ({sig.NOISE_STD: 3e38}, noise_rule)
    # Just above each bound (at float32's largest value, Inf is the next and is covered above).
    if max_step_size < float32_max:
        refine_cases["step_size_above_bound"] = ({sig.STEP_SIZE: np.nextafter(np.float32(max_step_size), np.inf)},
                                                 step_size_rule)
    if max_noise_std < float32_max:
        refine_cases["noise_above_bound"] = ({sig.NOISE_STD: np.nextafter(np.float32(max_noise_std), np.inf)},
                                             noise_rule)
    for case, (override, message) in refine_cases.items():
        inputs = {sig.IMAGES: good, **refine_ok, **override}
        cases.append(Case(f"bad_refine_{case}", client.build_request(sig.REFINE_THEN_CLASSIFY, inputs),
                          ("INVALID_ARGUMENT", message)))
    # A wrong dtype is refused by TensorFlow itself, before the graph runs (REST requests cannot
    # hit this: TF Serving types JSON values by the signature).
    wrong_dtype = client.build_request(sig.CLASSIFY, {sig.IMAGES: good})
    wrong_dtype.inputs[sig.IMAGES].CopyFrom(tf.make_tensor_proto(good.astype(np.float64)))
    cases.append(Case("bad_classify_wrong_dtype", wrong_dtype,
                      ("INVALID_ARGUMENT", "to be float but double is provided")))
    # Checked on the header, before decoding: the message says so.
    wrong_size = f"every image must be {height}x{width} pixels"
    not_a_format = "image_bytes: every image must be PNG, JPEG, BMP, GIF (recognised by its first bytes"
    too_many_bytes = f"image_bytes: every image must be at most {max_image_bytes} bytes"
    too_many_request_bytes = f"image_bytes must total at most {max_request_bytes} bytes"
    oversized_header = bytearray(_encoded_png(np.zeros((height, width, channels), np.uint8)))
    oversized_header[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width, height: a 20000x20000 PNG
    bytes_cases = {
        "wrong_size": ([_encoded_png(np.zeros((height + 2, width, channels), np.uint8))], wrong_size),
        "header_20000x20000_png": ([bytes(oversized_header)], wrong_size),
        "empty_batch": ([], "at least one image"),
        "batch_too_large": ([_encoded_png(np.zeros((height, width, channels), np.uint8))] * (max_batch_size + 1),
                            too_many),
        "not_an_image": ([b"definitely not an image"], not_a_format),
        "empty_string": ([b""], not_a_format),
        # 16000x16000 black pixels in a few KB; TensorFlow's decoder would allocate 6.9 GB.
        "webp_16000x16000": ([WEBP_BOMB_16000], not_a_format),
        # A GIF signature TensorFlow's decoder takes ("GIF8") but no GIF version: not a GIF here.
        "gif_unknown_version": ([b"GIF8Xa" + struct.pack("<HH", 20000, 20000) + bytes(20)], not_a_format),
        "truncated_png": ([_encoded_png(np.zeros((height, width, channels), np.uint8))[:12]], wrong_size),
        # The screen is H x W, the first frame says 65535x65535: giflib's own refusal (its 4 GB frame
        # buffer is never filled: the LZW data runs out first, or the allocation fails).
        "gif_frame_65535x65535": ([gif_with_frame_size(np.zeros((height, width, 3), np.uint8), 65535, 65535)],
                                  "Invalid GIF data"),
        # Cut before its SOF marker: tf.io.extract_jpeg_shape's own refusal, which names no input.
        "truncated_jpeg": ([encode_image(np.zeros((height, width, 3), np.uint8), "JPEG")[:40]],
                           "Invalid JPEG data"),
        # IHDR says H x W, but the zlib stream inflates to about 1000x the compressed bytes.
        "lying_png_over_max_image_bytes": ([lying_png(height, width, (max_image_bytes + 1) * 1100)],
                                           too_many_bytes),
        "request_over_max_request_bytes": ([b"\x89PNG" + bytes(max_request_bytes // 2)] * 2, too_many_request_bytes),
    }
    for image_format in sig.IMAGE_BYTES_FORMATS:
        wrong = encode_image(np.zeros((height + 1, width + 3, 3), np.uint8), image_format)
        bytes_cases[f"wrong_size_{image_format.lower()}"] = ([wrong], wrong_size)
    for case, (encoded, message) in bytes_cases.items():
        cases.append(Case(f"bad_bytes_{case}", client.build_request(sig.CLASSIFY_IMAGE_BYTES,
                                                                    {sig.IMAGE_BYTES: encoded}),
                          ("INVALID_ARGUMENT", message)))
    # One image sent as a scalar string instead of a batch of one.
    scalar = client.build_request(sig.CLASSIFY_IMAGE_BYTES, {sig.IMAGE_BYTES: [b"x"]})
    scalar.inputs[sig.IMAGE_BYTES].CopyFrom(tf.make_tensor_proto(_encoded_png(np.zeros(image_shape, np.uint8))))
    cases.append(Case("bad_bytes_scalar_string", scalar,
                      ("INVALID_ARGUMENT", "image_bytes must be a string vector [batch] of encoded images; received "
                                           "shape")))
    return cases


def bad_input_cases_for_export(export_dir: str) -> list:
    """`bad_input_cases` with the limits recorded in an export's metadata."""
    from export import archive  # noqa: PLC0415 (archive imports Keras; this module need not)

    metadata = archive.read_metadata(export_dir)
    rules = metadata["input_rules"]
    return bad_input_cases(
        tuple(metadata["image_shape"]), rules["max_refine_steps"],
        max_step_size=rules.get("max_step_size", sig.DEFAULT_MAX_STEP_SIZE),
        max_noise_std=rules.get("max_noise_std", sig.DEFAULT_MAX_NOISE_STD),
        max_batch_size=rules.get("max_batch_size", sig.DEFAULT_MAX_BATCH_SIZE),
        max_image_bytes=rules.get("max_image_bytes", sig.DEFAULT_MAX_IMAGE_BYTES),
        max_request_bytes=rules.get("max_request_bytes", sig.DEFAULT_MAX_REQUEST_BYTES),
    )


def write_cases(cases, directory: str) -> list:
    """Writes each case as NAME.request (+ NAME.request.expect); returns the request paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for case in cases:
        path = os.path.join(directory, f"{case.name}.request")
        with open(path, "wb") as f:
            f.write(case.request.SerializeToString())
        if case.expected_error:
            with open(path + ".expect", "w") as f:
                f.write(" ".join(case.expected_error) + "\n")
        paths.append(path)
    return paths
