"""The timed rows of `benchmarks.train_step`: a `Case` (a callable, the FLOPs of one unit of it, its
timings) and the builders of the matmul ceiling, forward, SGLD step, JEM and classifier iteration rows."""

import dataclasses
import math
import statistics
import time
from typing import Callable, Optional

from benchmarks.flop_count import INPUT_GRADIENT_MULTIPLIER, PASS_MULTIPLIER, forward_flops_per_image

# The matmul ceiling is the best of at least this many calls.
MIN_MATMUL_CALLS = 5


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
