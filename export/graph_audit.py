"""Checks that a SavedModel uses only ops stock TensorFlow Serving can run.

TF Serving runs the graph in C++: an op backed by Python (`tf.py_function`, `tf.numpy_function`)
or a custom op absent from the serving binary makes the model load or the request fail there,
although the same SavedModel works in Python. This walks every node of every MetaGraph and of
every function in its library.
"""

import collections
import os

from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

# Ops that call back into a Python interpreter; TF Serving has none.
PYTHON_BACKED_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def read_saved_model(export_dir: str) -> saved_model_pb2.SavedModel:
    """Parses `export_dir/saved_model.pb`."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


def op_locations(saved_model: saved_model_pb2.SavedModel) -> dict:
    """{op type: sorted list of 'graph' or 'function <name>' where it occurs}, for every op that
    is not a call of a library function."""
    locations = collections.defaultdict(set)
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        function_names = {function.signature.name for function in library.function}
        for node in meta_graph.graph_def.node:
            if node.op not in function_names:
                locations[node.op].add("graph")
        for function in library.function:
            for node in function.node_def:
                if node.op not in function_names:
                    locations[node.op].add(f"function {function.signature.name}")
    return {op: sorted(places) for op, places in locations.items()}


def find_unservable_ops(export_dir: str) -> list:
    """Human-readable problems: Python-backed ops and ops this TensorFlow does not register.

    Returns an empty list for a servable graph.
    """
    problems = []
    for op, places in sorted(op_locations(read_saved_model(export_dir)).items()):
        where = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
        if op in PYTHON_BACKED_OPS:
            problems.append(f"Python-backed op {op} (in {where}) cannot run in TF Serving.")
        elif op_def_registry.get(op) is None:
            problems.append(f"Op {op} (in {where}) is not registered in TensorFlow; a custom op?")
    return problems
