"""Encoded images in a serving graph: their format and size read from the header bytes before
anything is decoded (a small lying file can still inflate to gigabytes), and the one decoder of
`classify_image_bytes` (also what `export.client` decodes with, so both agree on every pixel)."""

import tensorflow as tf

# Format ids of `header_size`, and the magic bytes TensorFlow's DecodeImage recognises.
UNKNOWN, PNG, JPEG, GIF, BMP = 0, 1, 2, 3, 4
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_BMP_MAGIC = b"BM"
# Header bytes read: enough for every size field below (the BMP height ends at byte 26).
_HEADER_BYTES = 26


def first_bytes(encoded, count=8):
    """The first `count` bytes of `encoded` as numbers (zero-padded): printable in any message."""
    padded = tf.strings.join([encoded, tf.constant(b"\0" * count)])
    return tf.io.decode_raw(tf.strings.substr(padded, 0, count), tf.uint8)


def header_size(encoded):
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
    kind = tf.where(is_png, PNG, tf.where(is_jpeg, JPEG, tf.where(is_gif, GIF, tf.where(is_bmp, BMP, UNKNOWN))))
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
