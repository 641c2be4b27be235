"""FLOPs of the benchmarked network: an analytic Conv2D/MatMul count of its traced graph, TensorFlow's
profiler count beside it as a check, and the multipliers that turn a forward into a training pass or
an SGLD step (the convention is spelled out in `benchmarks.train_step`'s docstring)."""

from absl import logging

# forward + backward = 3 x forward: the yardstick convention for a training pass and an SGLD step.
PASS_MULTIPLIER = 3
# forward + gradient w.r.t. the input only: the work an SGLD step strictly needs.
INPUT_GRADIENT_MULTIPLIER = 2

FLOP_CONVENTION = dict(
    forward="2 * MACs of Conv2D and MatMul ops in the traced inference graph",
    forward_backward_multiplier=PASS_MULTIPLIER, strict_sgld_multiplier=INPUT_GRADIENT_MULTIPLIER,
    sgld_step=f"{PASS_MULTIPLIER} * forward(B)",
    strict_sgld_step=f"{INPUT_GRADIENT_MULTIPLIER} * forward(B)",
    jem_iteration=f"sgld_steps * {PASS_MULTIPLIER} * forward(B) + {PASS_MULTIPLIER} * forward(2B)",
    classifier_iteration=f"{PASS_MULTIPLIER} * forward(B)",
    not_counted="optimizer update, replay buffer, elementwise ops",
)


def count_graph_flops(graph):
    """2 * multiply-accumulates of the Conv2D and MatMul ops in a graph with static shapes."""
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kernel_h, kernel_w, in_channels, _ = op.inputs[1].shape.as_list()
            total += 2 * op.outputs[0].shape.num_elements() * kernel_h * kernel_w * in_channels
        elif op.type == "MatMul":
            a_shape = op.inputs[0].shape.as_list()
            inner = a_shape[0] if op.get_attr("transpose_a") else a_shape[1]
            total += 2 * op.outputs[0].shape.num_elements() * inner
    return total


def forward_flops_per_image(model, image_shape):
    """(analytic Conv2D/MatMul count, tf.profiler float_ops or None) of one image's inference forward."""
    import tensorflow as tf  # noqa: PLC0415

    graph = (
        tf.function(lambda images: model(images, training=False))
        .get_concrete_function(tf.TensorSpec((1,) + tuple(image_shape), tf.float32))
        .graph
    )
    analytic = count_graph_flops(graph)
    profiler = tf.compat.v1.profiler
    options = profiler.ProfileOptionBuilder(profiler.ProfileOptionBuilder.float_operation()).with_empty_output()
    try:
        profiled = profiler.profile(graph, options=options.build()).total_float_ops
    except Exception as error:  # noqa: BLE001 (a cross-check only; the analytic count is the one used)
        logging.warning("tf.profiler float_ops count failed: %s", error)
        profiled = None
    return analytic, profiled
