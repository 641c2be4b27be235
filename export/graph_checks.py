"""Input checks inside a serving graph: a refused input fails the request with INVALID_ARGUMENT
and a message saying what was expected, and nothing is computed from it (`require`), on shapes
seen only at run time (`dynamic_shape`, `runtime_view`), never folded away from the declared ones.
"""

import tensorflow as tf

# How many values an assertion message prints (shapes have at most a handful).
_SUMMARIZE = 8


def require(value, condition, message: str, data=(), *, fallback):
    """`value` if `condition` holds; otherwise the request fails with INVALID_ARGUMENT: `message`
    followed by `data` (e.g. the received shape).

    The check is a data dependency, not a control dependency: `tf.cond` yields `value` only when
    the condition is true, and otherwise runs the assertion and yields `fallback`, a small input of
    the valid shape. Nothing downstream can therefore ever see a refused input, so the request
    fails with this message and never with a confusing error from a later op. (Control
    dependencies alone proved unreliable here: the serving session's graph optimisations let a
    while loop start on an unchecked seed before its assertion ran.) Chaining `require` calls on
    the returned value reports the first rule broken.
    """

    def accepted():
        return tf.identity(value)

    def refused():
        assertion = tf.raw_ops.Assert(condition=False, data=[message, *data], summarize=_SUMMARIZE)
        with tf.control_dependencies([assertion]):
            return tf.identity(fallback)

    return tf.cond(condition, accepted, refused)


def runtime_view(tensor):
    """`tensor` itself, through ops whose output shape nothing can infer before run time.

    The signature's declared input shapes are a promise the caller need not keep. A Python caller
    of `tf.saved_model.load` is not checked against them, and its function runtime then optimises
    the graph as if they held: shape checks on the input were folded to "true", so a scalar
    `image_bytes` failed with "slice index 0 of dimension 0 out of bounds" and a vector `steps`
    with "The second input must be a scalar". A serialize/parse round trip (one copy of the input,
    small next to the network) has an unknown output shape that no optimiser can fold.
    """
    return tf.raw_ops.ParseTensor(serialized=tf.raw_ops.SerializeTensor(tensor=tensor), out_type=tensor.dtype)


def dynamic_shape(tensor):
    """(shape, rank) of `tensor` as computed at run time, never from its declared static shape.

    A C++ client (TF Serving) can feed any shape whatever the signature declares. A check that can
    see the declared shape may be folded to "true" before it runs -- in Python, tf.shape and
    tf.rank return constants for known shapes, and graph optimisers may do the same -- and the
    request would then fail later with a confusing error, or not at all. PlaceholderWithDefault
    with an unknown shape is an identity at run time whose output shape is unknown to inference.
    """
    opaque = tf.raw_ops.PlaceholderWithDefault(input=tensor, shape=tf.TensorShape(None))
    return tf.raw_ops.Shape(input=opaque, out_type=tf.int32), tf.raw_ops.Rank(input=opaque)


def shape_matches(tensor, expected):
    """True iff `tensor` has rank len(expected) and each dim equals `expected` (None: any)."""
    shape, rank = dynamic_shape(tensor)
    # Pad so that the comparison is well defined whatever rank was sent.
    padded = tf.concat([shape, tf.fill([len(expected)], -1)], axis=0)[: len(expected)]
    matches = tf.equal(rank, len(expected))
    for index, size in enumerate(expected):
        if size is not None:
            matches = tf.logical_and(matches, tf.equal(padded[index], size))
    return matches


def format_shape(shape) -> str:
    return "[" + ", ".join("batch" if size is None else str(size) for size in shape) + "]"


def require_scalar(value, key, expected, *, fallback):
    return require(
        value, shape_matches(value, []), f"{key} must be {expected} (shape []); received shape",
        [dynamic_shape(value)[0]], fallback=fallback,
    )
