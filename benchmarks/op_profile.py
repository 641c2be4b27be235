"""An op-type breakdown of one traced call: the TensorFlow profiler's XPlane trace, grouped by op type."""

import os

from absl import logging

# Ops that call functions or run loops: their time is the time of the ops inside them.
CONTAINER_OP_TYPES = frozenset({
    "While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "Case",
    "StatelessCase", "__inference", "RemoteCall",
})


def profile_op_types(fn, trace_dir: str, top: int = 15) -> list:
    """Traces one call of `fn` into `trace_dir` and returns its op-type breakdown (`op_type_breakdown`)."""
    import glob  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    os.makedirs(trace_dir, exist_ok=True)
    before = set(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb")))
    tf.profiler.experimental.start(trace_dir)
    try:
        tf.nest.map_structure(lambda t: t.numpy(), fn())
    finally:
        tf.profiler.experimental.stop()
    written = sorted(set(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))) - before)
    if not written:
        raise RuntimeError(f"The TensorFlow profiler wrote no trace under {trace_dir!r}.")
    logging.info("Profiler trace: %s", written[-1])
    return op_type_breakdown(written[-1], top)


def op_type_breakdown(xplane_path: str, top: int = 15) -> list:
    """[{op_type, count, milliseconds, fraction}] of the TensorFlow ops in an XPlane trace, largest first.

    TensorFlow's executor records each op as an event named "op_name:op_type" on the thread that
    ran it; that is the time summed here (on a CPU, the wall time of the op on its thread; ops on
    different threads overlap, so the total can exceed the wall time). Container ops (function
    calls, loops) are left out: their time is the time of the ops they ran. Op types beyond `top`
    are summed into one "other" row.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    totals, counts = {}, {}
    for plane in space.planes:
        if not plane.name.startswith("/host:") and not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op_type = _op_type(name)
                if op_type is None or op_type in CONTAINER_OP_TYPES:
                    continue
                totals[op_type] = totals.get(op_type, 0) + event.duration_ps
                counts[op_type] = counts.get(op_type, 0) + 1
    everything = sum(totals.values()) or 1
    ranked = sorted(totals, key=totals.get, reverse=True)
    rows = [dict(op_type=t, count=counts[t], milliseconds=totals[t] / 1e9, fraction=totals[t] / everything)
            for t in ranked[:top]]
    rest = ranked[top:]
    if rest:
        other = sum(totals[t] for t in rest)
        rows.append(dict(op_type=f"other ({len(rest)} types)", count=sum(counts[t] for t in rest),
                         milliseconds=other / 1e9, fraction=other / everything))
    return rows


def _op_type(event_name: str):
    """'model/conv/Conv2D:_MklConv2D' -> '_MklConv2D'; None for events that are not ops
    (runtime annotations such as 'ExecutorState::Process' or 'EagerExecute')."""
    if "::" in event_name or event_name.count(":") != 1:
        return None
    op_name, op_type = event_name.split(":")
    if not op_name or not op_type or " " in op_type:
        return None
    return op_type
