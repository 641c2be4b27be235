"""Times JEM's SGLD step and training iteration, and the GFLOP/s they reach beside a matmul ceiling.

    python -m benchmarks.train_step                      # WRN-16-2, batch 64, 20 SGLD steps, 32x32x3
    python -m benchmarks.train_step --depth=28 --compare_jit --output_json=/tmp/wrn28.json
    python -m benchmarks.train_step --precision=float32,mixed_bfloat16 --profile_dir=/tmp/jem_profile

Not a test: it prints a markdown table of wall-clock times measured on this machine, in this
process, right now. Every row is warmed up with `--warmup` untimed calls (the first traces and
compiles), then timed in `--repeats` rounds; each round times one call of every row in turn, so a
burst of other work on the machine lands on all rows alike instead of on whichever row ran during
it. The table gives the median, min and max wall time, GFLOP/s from the median and from the min,
CPU/wall: the process's CPU time over wall time for the median call, i.e. how many cores it
actually had (about --threads on an idle machine; less when other processes compete for the cores),
and GFLOP per CPU-second: FLOPs over the median CPU time, the number least disturbed by other load
(threads spinning while they wait inflate CPU time, so it errs low).

Rows (B = --batch_size, F = forward FLOPs of one image), for each --precision and XLA setting:
  matmul            one n x n x n `tf.linalg.matmul` in float32, and in each 16-bit compute dtype
                    a --precision needs: 2 n^3 FLOPs, timed in every round. Its best call is the
                    ceiling of the "of matmul ceiling" columns of the rows computing in that dtype.
  forward           the network at batch B, training=False, in one tf.function: F * B.
  SGLD step         `jem_tf.sampling.compiled_sgld` (what JEM trains with) running --sgld_steps
                    steps on log p~(x) at batch B; times are per step (chain time / steps): 3 F B.
  JEM iteration     `trainers.distribution.distributed_train_step` on the default strategy for the JEM
                    built by `build_model`: buffer draw, --sgld_steps SGLD steps, one training
                    forward/backward over [data; samples] (2B images), Adam update, buffer write:
                    steps * 3 F B + 3 F (2B).
  classifier iter.  the same loop step for the cross-entropy baseline: 3 F B.

FLOP convention: F is counted analytically as 2 * multiply-accumulates of every Conv2D and MatMul
op in the traced inference graph (shapes from the built model, batch 1); TensorFlow's own
`tf.compat.v1.profiler` float_ops count of the same graph is shown beside it as a check (it also
counts bias and residual adds, so it is slightly higher). A forward+backward pass counts as 3 F,
the usual "backward = 2 x forward" yardstick and the convention the PyTorch reference's GFLOP/s
most plausibly use. An SGLD step also counts 3 F although it needs only the gradient with respect
to the input, not the weight gradients (TensorFlow prunes those), so only ~2 F of work is
strictly necessary; the footer gives the SGLD and JEM rows under that stricter count as well.
Optimizer, replay-buffer and elementwise work is not counted (< 1% of the FLOPs).

--profile_dir traces one JEM iteration per (precision, XLA) row with the TensorFlow profiler after
the timing (open it in TensorBoard's profile plugin) and prints an op-type breakdown of it, read
from the trace's XPlane: the host time of every executed TensorFlow op, grouped by op type, with
function-call and loop ops (whose time is their body's) left out.
"""

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from typing import Callable, Optional

from absl import app, flags, logging

# forward + backward = 3 x forward: the yardstick convention for a training pass and an SGLD step.
PASS_MULTIPLIER = 3
# forward + gradient w.r.t. the input only: the work an SGLD step strictly needs.
INPUT_GRADIENT_MULTIPLIER = 2
# The matmul ceiling is the best of at least this many calls.
MIN_MATMUL_CALLS = 5

ROW_NAMES = ("matmul", "forward", "SGLD step", "JEM iteration", "classifier iteration")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Ops that call functions or run loops: their time is the time of the ops inside them.
CONTAINER_OP_TYPES = frozenset({
    "While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "Case",
    "StatelessCase", "__inference", "RemoteCall",
})


def define_flags(flag_values=flags.FLAGS):
    """Defines the benchmark's flags on `flag_values` (a separate FlagValues in tests)."""
    flags.DEFINE_integer("depth", 16, "WideResNet depth 6n+4.", lower_bound=10, flag_values=flag_values)
    flags.DEFINE_integer("width", 2, "WideResNet widening factor.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 64, "Batch B: data images per iteration (and SGLD chains).",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("sgld_steps", 20, "SGLD steps per JEM iteration.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("image_size", 32, "Image height and width.", lower_bound=8, flag_values=flag_values)
    flags.DEFINE_integer("channels", 3, "Image channels.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("num_classes", 10, "Number of classes (logits).", lower_bound=2, flag_values=flag_values)
    flags.DEFINE_integer("repeats", 5, "Timed rounds; each times one call of every row.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("warmup", 2, "Untimed calls of each row first; the first traces and compiles.",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the SGLD sampler (TrainConfig.jit_compile) and the "
                      "forward row.", flag_values=flag_values)
    flags.DEFINE_bool("compare_jit", False, "Measure with XLA off and on (overrides --jit_compile).",
                      flag_values=flag_values)
    flags.DEFINE_integer("threads", None, "TensorFlow intra-op threads (default: TensorFlow's, one per core).",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("inter_op_threads", None, "TensorFlow inter-op threads (default: TensorFlow's).",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n float32 matmul ceiling.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_string("output_json", None, "Also write every measurement to this JSON file.",
                        flag_values=flag_values)
    flags.DEFINE_list("precision", ["float32"], f"Precisions to measure, any of {', '.join(PRECISIONS)} "
                      "(jem_tf.precision); each gets its own forward, SGLD, JEM and classifier rows.",
                      flag_values=flag_values)
    flags.DEFINE_string("profile_dir", None, "Trace one JEM iteration per precision and XLA setting with the "
                        "TensorFlow profiler into this directory and print an op-type breakdown.",
                        flag_values=flag_values)
    flags.DEFINE_integer("top_op_types", 15, "Op types listed in each breakdown (the rest are summed).",
                         lower_bound=1, flag_values=flag_values)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure; `settings_from_flags` fills it from the command line."""

    depth: int = 16
    width: int = 2
    batch_size: int = 64
    sgld_steps: int = 20
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    repeats: int = 5
    warmup: int = 2
    jit_settings: tuple = (False,)
    matmul_size: int = 2048
    precisions: tuple = ("float32",)
    classifier_rows: bool = True

    @property
    def image_shape(self):
        return (self.image_size, self.image_size, self.channels)


def settings_from_flags(flag_values) -> Settings:
    jit_settings = (False, True) if flag_values.compare_jit else (bool(flag_values.jit_compile),)
    unknown = [p for p in flag_values.precision if p not in PRECISIONS]
    if unknown or not flag_values.precision:
        raise app.UsageError(f"--precision={','.join(flag_values.precision)!r} is invalid: expected a "
                             f"comma-separated list of {', '.join(PRECISIONS)}.")
    return Settings(
        depth=flag_values.depth, width=flag_values.width, batch_size=flag_values.batch_size,
        sgld_steps=flag_values.sgld_steps, image_size=flag_values.image_size, channels=flag_values.channels,
        num_classes=flag_values.num_classes, repeats=flag_values.repeats, warmup=flag_values.warmup,
        jit_settings=jit_settings, matmul_size=flag_values.matmul_size,
        precisions=tuple(dict.fromkeys(flag_values.precision)),
    )


@dataclasses.dataclass
class Case:
    """One row: a callable returning tensors, the FLOPs of one unit of it, and its timings.

    A call may run several units (an SGLD chain runs `units` steps); times are stored per unit.
    """

    name: str
    xla: str  # "on", "off", or "-" where XLA does not apply
    flops: float
    fn: Callable
    precision: str = "float32"  # the row's --precision (for matmul rows: the dtype it multiplies in)
    compute_dtype: str = "float32"  # whose matmul ceiling the row is compared with
    units: int = 1
    calls_per_round: int = 1
    strict_flops: Optional[float] = None  # the same unit under the input-gradient-only SGLD count
    seconds: list = dataclasses.field(default_factory=list)
    cpu_seconds: list = dataclasses.field(default_factory=list)

    def call(self):
        """Runs `fn` to completion (fetching its outputs); returns (wall, CPU) seconds per unit."""
        import tensorflow as tf  # noqa: PLC0415

        wall, cpu = time.perf_counter(), time.process_time()
        tf.nest.map_structure(lambda t: t.numpy(), self.fn())
        return (time.perf_counter() - wall) / self.units, (time.process_time() - cpu) / self.units

    def record(self):
        wall, cpu = self.call()
        self.seconds.append(wall)
        self.cpu_seconds.append(cpu)

    def to_dict(self, ceilings_gflops):
        ceiling_gflops = ceilings_gflops[self.compute_dtype]
        median = statistics.median(self.seconds)
        # CPU/wall of the calls at the median, so one odd call does not skew it.
        order = sorted(range(len(self.seconds)), key=self.seconds.__getitem__)
        middle = order[len(order) // 2]
        result = dict(
            name=self.name, xla=self.xla, precision=self.precision, compute_dtype=self.compute_dtype,
            matmul_ceiling_gflops=ceiling_gflops, gflop_per_call=self.flops / 1e9, seconds=list(self.seconds),
            cpu_seconds=list(self.cpu_seconds), median_ms=median * 1e3, min_ms=min(self.seconds) * 1e3,
            max_ms=max(self.seconds) * 1e3, cpu_per_wall=self.cpu_seconds[middle] / self.seconds[middle],
            gflop_per_cpu_s=self.flops / statistics.median(self.cpu_seconds) / 1e9,
            gflops_per_s=self.flops / median / 1e9, best_gflops_per_s=self.flops / min(self.seconds) / 1e9,
            fraction_of_matmul_ceiling=self.flops / median / 1e9 / ceiling_gflops,
        )
        if self.strict_flops is not None:
            result["strict_gflop_per_call"] = self.strict_flops / 1e9
            result["strict_gflops_per_s"] = self.strict_flops / median / 1e9
            result["strict_fraction_of_matmul_ceiling"] = self.strict_flops / median / 1e9 / ceiling_gflops
        return result


def set_threads(intra_op=None, inter_op=None):
    """Applies thread counts; must run before TensorFlow executes anything in this process."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as error:
        logging.warning("Thread settings not applied (TensorFlow already started): %s", error)


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


COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def matmul_case(size, repeats, dtype="float32"):
    """The ceiling row in `dtype`. The inputs are function arguments, so nothing is constant-folded."""
    import tensorflow as tf  # noqa: PLC0415

    a = tf.cast(tf.random.stateless_normal([size, size], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], seed=[3, 4]), dtype)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y), tf.float32)))
    return Case("matmul", "-", 2.0 * size**3, lambda: matmul(a, b), precision=dtype, compute_dtype=dtype,
                calls_per_round=math.ceil(MIN_MATMUL_CALLS / repeats))


def train_config(settings, objective, jit, precision="float32"):
    """The TrainConfig of a run with these settings (the paper's defaults for everything else)."""
    from jem_tf.configs.base import TrainConfig  # noqa: PLC0415

    config = TrainConfig(
        objective=objective, depth=settings.depth, width=settings.width, batch_size=settings.batch_size,
        sgld_steps=settings.sgld_steps, jit_compile=jit, strategy="default", precision=precision,
    )
    config.buffer_size = max(config.buffer_size, settings.batch_size)
    return config.validate()


def build_for_timing(config, settings):
    """The model `trainers.loop` trains, with its optimizer, and its compiled loop step."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from jem_tf import precision  # noqa: PLC0415
    from trainers.distribution import distributed_train_step  # noqa: PLC0415
    from trainers.objectives import build_model  # noqa: PLC0415

    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config, settings.image_shape, settings.num_classes)
        model.compile(optimizer=precision.make_optimizer(keras.optimizers.Adam(config.learning_rate),
                                                         config.precision))
        model.optimizer.build(model.trainable_variables)
    return model, distributed_train_step(model, strategy)


def _batch(settings):
    import tensorflow as tf  # noqa: PLC0415

    images = tf.random.stateless_uniform((settings.batch_size,) + settings.image_shape, seed=[5, 6],
                                         minval=-1.0, maxval=1.0)
    labels = tf.range(settings.batch_size, dtype=tf.int32) % settings.num_classes
    return images, labels


def jem_cases(settings, jit, precision="float32"):
    """Rows forward, SGLD step and JEM iteration for one XLA setting and precision, and the forward
    FLOP counts (analytic, profiler) of one image of the JEM model they time."""
    import tensorflow as tf  # noqa: PLC0415

    from jem_tf import energy  # noqa: PLC0415
    from jem_tf import precision as jem_precision  # noqa: PLC0415
    from jem_tf.sampling import compiled_sgld  # noqa: PLC0415

    xla = "on" if jit else "off"
    batch, steps = settings.batch_size, settings.sgld_steps
    config = train_config(settings, "jem", jit, precision)
    model, train_step = build_for_timing(config, settings)
    flops_per_image, profiled_per_image = forward_flops_per_image(model, settings.image_shape)
    images, labels = _batch(settings)
    forward_flops = flops_per_image * batch
    training_pass = PASS_MULTIPLIER * forward_flops * 2
    compute_dtype = COMPUTE_DTYPES[precision]

    forward = tf.function(lambda x: model(x, training=False), jit_compile=jit)
    # The log density, sampler and arguments JEM.sample_chains uses; built once, so the compiled
    # sampler traces once.
    log_density = energy.marginal_log_density(lambda x: model(x, training=False))
    sampler = compiled_sgld(jit)
    seed = tf.constant([7, 8], tf.int64)
    score_scale = jem_precision.input_gradient_scale(model)
    row = dict(precision=precision, compute_dtype=compute_dtype)
    cases = [
        Case("forward", xla, forward_flops, lambda: forward(images), **row),
        Case("SGLD step", xla, PASS_MULTIPLIER * forward_flops,
             lambda: sampler(log_density, images, steps, config.sgld_step_size, config.sgld_noise, seed,
                             score_scale=score_scale),
             units=steps, strict_flops=INPUT_GRADIENT_MULTIPLIER * forward_flops, **row),
        Case("JEM iteration", xla, steps * PASS_MULTIPLIER * forward_flops + training_pass,
             lambda: train_step((images, labels)),
             strict_flops=steps * INPUT_GRADIENT_MULTIPLIER * forward_flops + training_pass, **row),
    ]
    return cases, (flops_per_image, profiled_per_image)


def classifier_case(settings, flops_per_image, precision="float32"):
    """The cross-entropy baseline's loop step (the library has no XLA path for it)."""
    config = train_config(settings, "classifier", False, precision)
    _, train_step = build_for_timing(config, settings)
    images, labels = _batch(settings)
    return Case("classifier iteration", "-", PASS_MULTIPLIER * flops_per_image * settings.batch_size,
                lambda: train_step((images, labels)), precision=precision, compute_dtype=COMPUTE_DTYPES[precision])


def run_benchmark(settings: Settings, profile_dir: Optional[str] = None, top_op_types: int = 15) -> dict:
    """Builds, warms up and times every row; returns a JSON-serialisable dict (see `format_table`).

    With `profile_dir`, one JEM iteration per (precision, XLA) is then traced there, and the
    result has an op-type breakdown of each trace under "profiles".
    """
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    load_before = os.getloadavg()
    compute_dtypes = ["float32"] + [COMPUTE_DTYPES[p] for p in settings.precisions if p != "float32"]
    cases = [matmul_case(settings.matmul_size, settings.repeats, dtype) for dtype in dict.fromkeys(compute_dtypes)]
    for precision in settings.precisions:
        for jit in settings.jit_settings:
            rows, (flops_per_image, profiled_per_image) = jem_cases(settings, jit, precision)
            cases.extend(rows)
        if settings.classifier_rows:
            cases.append(classifier_case(settings, flops_per_image, precision))

    for case in cases:
        logging.info("Warming up %s (%s, XLA %s)...", case.name, case.precision, case.xla)
        for _ in range(settings.warmup):
            case.call()
    for round_index in range(settings.repeats):
        logging.info("Round %d of %d...", round_index + 1, settings.repeats)
        for case in cases:
            for _ in range(case.calls_per_round):
                case.record()

    ceilings = {
        case.compute_dtype: case.flops / min(case.seconds) / 1e9 for case in cases if case.name == "matmul"
    }
    profiles = []
    if profile_dir:
        for case in cases:
            if case.name == "JEM iteration":
                directory = os.path.join(profile_dir, f"{case.precision}_xla_{case.xla}")
                profiles.append(dict(
                    precision=case.precision, xla=case.xla, trace_dir=directory,
                    op_types=profile_op_types(case.fn, directory, top_op_types),
                ))
    return dict(
        settings={**dataclasses.asdict(settings), "image_shape": list(settings.image_shape)},
        flop_convention=dict(
            forward="2 * MACs of Conv2D and MatMul ops in the traced inference graph",
            forward_backward_multiplier=PASS_MULTIPLIER, strict_sgld_multiplier=INPUT_GRADIENT_MULTIPLIER,
            sgld_step=f"{PASS_MULTIPLIER} * forward(B)",
            strict_sgld_step=f"{INPUT_GRADIENT_MULTIPLIER} * forward(B)",
            jem_iteration=f"sgld_steps * {PASS_MULTIPLIER} * forward(B) + {PASS_MULTIPLIER} * forward(2B)",
            classifier_iteration=f"{PASS_MULTIPLIER} * forward(B)",
            not_counted="optimizer update, replay buffer, elementwise ops",
        ),
        forward_gflop_per_image=flops_per_image / 1e9,
        profiler_forward_gflop_per_image=None if profiled_per_image is None else profiled_per_image / 1e9,
        matmul_ceiling_gflops=ceilings["float32"],
        matmul_ceilings_gflops=ceilings,
        environment=dict(
            tensorflow=tf.__version__, keras=keras.__version__, python=platform.python_version(),
            cpu_count=os.cpu_count(), processor=_cpu_name(), cpu_flags=_cpu_flags(),
            devices=[device.name for device in tf.config.list_logical_devices()],
            intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads() or "default",
            inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads() or "default",
            onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            load_average_before=list(load_before), load_average_after=list(os.getloadavg()),
        ),
        rows=[case.to_dict(ceilings) for case in cases],
        profiles=profiles,
    )


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


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags():
    """The ISA flags that decide matmul speed (AVX-512, bfloat16, AMX), from /proc/cpuinfo."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_fp16")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def _number(value):
    """One decimal from 1 up, three significant digits below (tiny settings stay non-zero)."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def format_table(results: dict) -> str:
    """The markdown report: a settings header, the table, the FLOP convention, the SGLD step
    against the matmul ceilings, and the op-type breakdowns when profiled."""
    s = results["settings"]
    env = results["environment"]
    height, width, channels = s["image_shape"]
    profiled = results["profiler_forward_gflop_per_image"]
    ceilings = results["matmul_ceilings_gflops"]
    lines = [
        f"### WRN-{s['depth']}-{s['width']}, batch {s['batch_size']}, {s['sgld_steps']} SGLD steps, "
        f"{height}x{width}x{channels}, {s['num_classes']} classes",
        "",
        f"TensorFlow {env['tensorflow']}, Keras {env['keras']}; {env['cpu_count']} CPU(s) ({env['processor']}; "
        f"{' '.join(env['cpu_flags']) or 'no AVX-512/AMX flags'}); "
        f"intra-op threads {env['intra_op_threads']}, inter-op {env['inter_op_threads']}; "
        f"load average {env['load_average_before'][0]:.2f} before, {env['load_average_after'][0]:.2f} after; "
        f"{s['repeats']} timed rounds after {s['warmup']} warm-up call(s) per row.",
        "",
        f"Forward FLOPs per image: {results['forward_gflop_per_image']:.4f} GFLOP (analytic: 2 x MACs of the "
        "Conv2D/MatMul ops of the traced graph"
        + (f"; tf.profiler float_ops: {profiled:.4f}, incl. bias/residual adds)." if profiled else ")."),
        "Matmul ceilings: " + "; ".join(f"{dtype} {value:.1f} GFLOP/s" for dtype, value in ceilings.items())
        + f" (best {s['matmul_size']}^3 matmul of the run in each dtype).",
        "",
        "| measurement | precision | XLA | GFLOP/call | median ms | min ms | max ms | CPU/wall | GFLOP/s (median) "
        "| GFLOP/s (min ms) | of matmul ceiling | strict GFLOP/s | strict, of ceiling | GFLOP per CPU-s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        strict = "strict_gflops_per_s" in row
        strict_rate = _number(row["strict_gflops_per_s"]) if strict else "-"
        strict_share = f"{100 * row['strict_fraction_of_matmul_ceiling']:.0f}%" if strict else "-"
        lines.append(
            f"| {row['name']} | {row['precision']} | {row['xla']} | {_number(row['gflop_per_call'])} | "
            f"{_number(row['median_ms'])} | {_number(row['min_ms'])} | {_number(row['max_ms'])} | "
            f"{row['cpu_per_wall']:.2f} | {_number(row['gflops_per_s'])} | {_number(row['best_gflops_per_s'])} | "
            f"{100 * row['fraction_of_matmul_ceiling']:.0f}% | "
            f"{strict_rate} | {strict_share} | "
            f"{_number(row['gflop_per_cpu_s'])} |"
        )
    lines += [
        "",
        f"FLOP convention: forward+backward = {PASS_MULTIPLIER} x forward for a training pass and for an SGLD "
        f"step; JEM iteration = steps x {PASS_MULTIPLIER}F(B) + {PASS_MULTIPLIER}F(2B); optimizer, buffer "
        "and elementwise work not counted. Strict count: an SGLD step needs only the forward pass and the "
        f"gradient with respect to the input, {INPUT_GRADIENT_MULTIPLIER}F(B). SGLD step = (time of a chain) / "
        "steps. 'of matmul ceiling' = GFLOP/s (median) / the matmul ceiling of the row's compute dtype "
        "(float32 for float32, bfloat16 for mixed_bfloat16, float16 for mixed_float16). CPU/wall = cores the "
        "process had (TensorFlow's default: one thread per core); GFLOP per CPU-s = FLOPs / median process CPU "
        "time, which other load on the machine inflates much less than wall time.",
        "",
    ]
    for row in results["rows"]:
        if row["name"] == "SGLD step":
            lines.append(
                f"SGLD step, {row['precision']}, XLA {row['xla']}: {row['strict_gflops_per_s']:.1f} GFLOP/s under the "
                f"strict {INPUT_GRADIENT_MULTIPLIER}F count = {100 * row['strict_fraction_of_matmul_ceiling']:.0f}% of "
                f"the same-run {row['compute_dtype']} matmul ceiling ({row['matmul_ceiling_gflops']:.1f} GFLOP/s)."
            )
    for profile in results.get("profiles", []):
        lines += [
            "",
            f"#### Op types of one JEM iteration ({profile['precision']}, XLA {profile['xla']}); "
            f"trace in {profile['trace_dir']}",
            "",
            "| op type | ops run | ms (summed over threads) | share |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {op['op_type']} | {op['count']} | {_number(op['milliseconds'])} | {100 * op['fraction']:.1f}% |"
                  for op in profile["op_types"]]
    return "\n".join(lines)


def main(argv, flag_values=None):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    flag_values = flags.FLAGS if flag_values is None else flag_values
    set_threads(flag_values.threads, flag_values.inter_op_threads)
    results = run_benchmark(settings_from_flags(flag_values), profile_dir=flag_values.profile_dir,
                            top_op_types=flag_values.top_op_types)
    if flag_values.output_json:
        with open(flag_values.output_json, "w") as f:
            json.dump(results, f, indent=2)
        logging.info("Wrote %s", flag_values.output_json)
    print(format_table(results), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    define_flags()
    app.run(main)
