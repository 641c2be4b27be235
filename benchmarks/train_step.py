"""Times JEM's SGLD step and training iteration, and the GFLOP/s they reach beside a matmul ceiling.

    python -m benchmarks.train_step                      # WRN-16-2, batch 64, 20 SGLD steps, 32x32x3
    python -m benchmarks.train_step --depth=28 --compare_jit --output_json=/tmp/wrn28.json
    python -m benchmarks.train_step --precision=float32,mixed_bfloat16 --profile_dir=/tmp/jem_profile
    python -m benchmarks.train_step --results_json=train_step_wrn16   # also docs/results/train_step_wrn16.json

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
import os
import platform
from typing import Optional

from absl import app, flags, logging

from benchmarks import flop_count, machine_load, op_profile, results_json, step_cases, train_step_report

ROW_NAMES = ("matmul", "forward", "SGLD step", "JEM iteration", "classifier iteration")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


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
    flags.DEFINE_string("results_json", None, "Also write the docs table docs/results/NAME.json (the SGLD step "
                        "and JEM iteration rows, with commit, machine, date and this command line; rows of other "
                        "models and precisions already there are kept) and re-render the docs from it.",
                        flag_values=flag_values)


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


def run_benchmark(settings: Settings, profile_dir: Optional[str] = None, top_op_types: int = 15) -> dict:
    """Builds, warms up and times every row; returns a JSON-serialisable dict (printed by
    `train_step_report.format_table`).

    With `profile_dir`, one JEM iteration per (precision, XLA) is then traced there, and the
    result has an op-type breakdown of each trace under "profiles".
    """
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    load_before = os.getloadavg()
    cpu = machine_load.cpu_description()
    compute_dtypes = ["float32"] + [step_cases.COMPUTE_DTYPES[p] for p in settings.precisions if p != "float32"]
    cases = [step_cases.matmul_case(settings.matmul_size, settings.repeats, dtype)
             for dtype in dict.fromkeys(compute_dtypes)]
    for precision in settings.precisions:
        for jit in settings.jit_settings:
            rows, (flops_per_image, profiled_per_image) = step_cases.jem_cases(settings, jit, precision)
            cases.extend(rows)
        if settings.classifier_rows:
            cases.append(step_cases.classifier_case(settings, flops_per_image, precision))

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
                    op_types=op_profile.profile_op_types(case.fn, directory, top_op_types),
                ))
    return dict(
        settings={**dataclasses.asdict(settings), "image_shape": list(settings.image_shape)},
        flop_convention=dict(flop_count.FLOP_CONVENTION),
        forward_gflop_per_image=flops_per_image / 1e9,
        profiler_forward_gflop_per_image=None if profiled_per_image is None else profiled_per_image / 1e9,
        matmul_ceiling_gflops=ceilings["float32"],
        matmul_ceilings_gflops=ceilings,
        environment=dict(
            tensorflow=tf.__version__, keras=keras.__version__, python=platform.python_version(),
            cpu_count=os.cpu_count(), processor=cpu["model"], cpu_flags=cpu["isa_flags"],
            devices=[device.name for device in tf.config.list_logical_devices()],
            intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads() or "default",
            inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads() or "default",
            onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            load_average_before=list(load_before), load_average_after=list(os.getloadavg()),
        ),
        rows=[case.to_dict(ceilings) for case in cases],
        profiles=profiles,
    )


def write_results(name, results, flag_values, results_dir=results_json.results_tables.RESULTS):
    """docs/results/NAME.json from `results` (`train_step_report.results_table`), provenance from here."""
    env = results["environment"]
    load = f"load average {env['load_average_before'][0]:.2f} before, {env['load_average_after'][0]:.2f} after"
    provenance = results_json.provenance(results_json.command_line("benchmarks.train_step", flag_values),
                                         results_json.machine(detail=f"{load}; TensorFlow {env['tensorflow']}"))
    table = train_step_report.results_table(results, provenance)
    return results_json.write(name, table, key_columns=2, results=results_dir)


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
    if flag_values.results_json:
        write_results(flag_values.results_json, results, flag_values)
    print(train_step_report.format_table(results), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    define_flags()
    app.run(main)
