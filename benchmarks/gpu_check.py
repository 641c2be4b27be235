"""The GPU check behind `benchmarks/gpu_check.sh`: one command, a JSON and a markdown table.

    benchmarks/gpu_check.sh [--output_dir=runs/gpu_check]    # on a GPU machine; < 8 min on one H200
    benchmarks/gpu_check.sh --smoke                          # tiny sizes on a CPU: the same code paths

Steps, each recorded as a check (passed, seconds, detail):
  devices      the physical devices TensorFlow sees (and `nvidia-smi -L` when present).
  timings      `benchmarks.train_step` on GPU 0: forward, SGLD step and JEM iteration of WRN-28-10
               at batch 64, 32x32x3, 20 SGLD steps, in float32, mixed_bfloat16 and mixed_float16,
               XLA off and on, beside each dtype's matmul ceiling; from the JEM iteration, the
               seconds per CIFAR-10 epoch (703 iterations of batch 64; the aim is <= 90 s on one H200).
  train        200 steps of the paper setup (`python -m jem_tf.train --dataset=svhn`, every Table 4
               default) on `tfds.testing.mock_data` under MirroredStrategy over all visible GPUs,
               ending with the SavedModel export; checks the step count, the replica count and
               that the loss stayed finite (the run would exit 3 otherwise).
  serving      `python -m export.serving_check` on that export (TF Serving's C++ loader).
Writes OUTPUT/gpu_check.json and OUTPUT/gpu_check.md. Exit codes: 0 every check passed; 1 a check
failed (see the files) or a bad flag; 2 no GPU visible (without --smoke).

--smoke shrinks everything (WRN-10-1, 8x8 images, batch 4, 1 SGLD step, 2 training steps at
batch 8, no malformed serving requests) so that the whole command runs on a CPU in about a minute
of CPU time; CI runs it (tests/test_gpu_check.py). Its timings mean nothing, so it also compiles XLA
without LLVM's optimisations (`--xla_backend_optimization_level=0` in XLA_FLAGS): the same XLA paths,
compiled faster (the smoke test took 43 s instead of 46-50 s, alternated on a 2-core CPU).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_ITERATIONS_PER_EPOCH = 703  # ceil(45000 / 64): CIFAR-10's training split less 10 % validation
TARGET_EPOCH_SECONDS = 90.0
TIME_BUDGET_SECONDS = 8 * 60
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
EXIT_FAILED, EXIT_USAGE = 1, 2


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of every step; `plan(smoke)` picks the real or the CPU-sized one."""

    depth: int
    width: int
    batch_size: int
    sgld_steps: int
    image_size: int
    channels: int
    num_classes: int
    repeats: int
    warmup: int
    matmul_size: int
    train_steps: int
    train_flags: tuple  # extra `jem_tf.train` flags on top of the paper preset
    mock_examples: int
    serving_bad_inputs: bool = True  # also send the malformed requests (tested elsewhere; slow)


def plan(smoke: bool, train_steps=None) -> Plan:
    if smoke:
        return Plan(depth=10, width=1, batch_size=4, sgld_steps=1, image_size=8, channels=1, num_classes=4,
                    repeats=1, warmup=1, matmul_size=128, train_steps=train_steps or 2,
                    train_flags=("--depth=10", "--width=1", "--batch_size=8", "--buffer_size=64", "--sgld_steps=2",
                                 "--validation_fraction=0.25", "--checkpoint_every_steps=2"),
                    mock_examples=32, serving_bad_inputs=False)
    return Plan(depth=28, width=10, batch_size=64, sgld_steps=20, image_size=32, channels=3, num_classes=10,
                repeats=3, warmup=2, matmul_size=8192, train_steps=train_steps or 200, train_flags=(),
                mock_examples=1024)


XLA_BACKEND_UNOPTIMISED = "--xla_backend_optimization_level=0"


def unoptimised_xla_backend():
    """Has XLA compile without LLVM's optimisations in this process (and the processes it starts),
    unless XLA_FLAGS already sets the level. XLA reads XLA_FLAGS once, at its first compile."""
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} {XLA_BACKEND_UNOPTIMISED}".strip()


class Checks:
    """Runs named checks, records each (passed, seconds, detail) and keeps going after a failure."""

    def __init__(self):
        self.records = []

    def run(self, name, fn):
        started = time.time()
        logging.info("gpu_check: %s...", name)
        try:
            detail = fn()
            passed = True
        except Exception as error:  # noqa: BLE001 (every failure is recorded and fails the command)
            logging.exception("gpu_check: %s failed", name)
            detail, passed = f"{type(error).__name__}: {error}", False
        self.records.append(dict(name=name, passed=passed, seconds=round(time.time() - started, 1), detail=detail))
        return detail if passed else None

    @property
    def passed(self):
        return all(record["passed"] for record in self.records)


def list_devices() -> dict:
    import tensorflow as tf  # noqa: PLC0415

    devices = [dict(name=d.name, type=d.device_type) for d in tf.config.list_physical_devices()]
    details = {}
    for gpu in tf.config.list_physical_devices("GPU"):
        details[gpu.name] = tf.config.experimental.get_device_details(gpu)
    nvidia_smi = None
    if shutil.which("nvidia-smi"):
        nvidia_smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout.strip()
    return dict(devices=devices, gpu_details=details, nvidia_smi=nvidia_smi,
                tensorflow=tf.__version__, built_with_cuda=tf.test.is_built_with_cuda(),
                tensor_float_32=tf.config.experimental.tensor_float_32_execution_enabled())


def run_timings(sizes: Plan) -> dict:
    from benchmarks import train_step, train_step_report  # noqa: PLC0415

    settings = train_step.Settings(
        depth=sizes.depth, width=sizes.width, batch_size=sizes.batch_size, sgld_steps=sizes.sgld_steps,
        image_size=sizes.image_size, channels=sizes.channels, num_classes=sizes.num_classes,
        repeats=sizes.repeats, warmup=sizes.warmup, jit_settings=(False, True), matmul_size=sizes.matmul_size,
        precisions=PRECISIONS, classifier_rows=False,
    )
    results = train_step.run_benchmark(settings)
    results["table"] = train_step_report.format_table(results)
    return results


def epoch_estimates(timings: dict) -> list:
    """Seconds per CIFAR-10 epoch from each JEM iteration row's median."""
    rows = {(r["name"], r["precision"], r["xla"]): r for r in timings["rows"]}
    estimates = []
    for (name, precision, xla), row in rows.items():
        if name != "JEM iteration":
            continue
        sgld = rows[("SGLD step", precision, xla)]
        forward = rows[("forward", precision, xla)]
        estimates.append(dict(
            precision=precision, xla=xla, forward_ms=forward["median_ms"], sgld_step_ms=sgld["median_ms"],
            jem_iteration_ms=row["median_ms"], sgld_strict_of_ceiling=sgld["strict_fraction_of_matmul_ceiling"],
            cifar10_epoch_seconds=row["median_ms"] / 1e3 * CIFAR10_ITERATIONS_PER_EPOCH,
        ))
    return estimates


# Runs `jem_tf.train` with tfds replaced by mock data (random images of the real shapes and classes).
_MOCK_TRAIN = (
    "import sys, tensorflow_datasets as tfds\n"
    "from absl import app\n"
    "from jem_tf import train\n"
    "train.define_flags()\n"
    "with tfds.testing.mock_data(num_examples=int(sys.argv[1])):\n"
    "    app.run(train.main, argv=['jem_tf.train'] + sys.argv[2:])\n"
)


def _subprocess(command, log_path, timeout_s):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                timeout=timeout_s)
    with open(log_path) as f:
        return result.returncode, f.read()


def run_training(sizes: Plan, workdir: str, num_gpus: int, log_path: str) -> dict:
    """The paper setup on mock SVHN under MirroredStrategy; returns what it measured."""
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-c", _MOCK_TRAIN, str(sizes.mock_examples), "--dataset=svhn", f"--workdir={workdir}",
               f"--max_steps={sizes.train_steps}", "--strategy=mirrored", *sizes.train_flags]
    code, log = _subprocess(command, log_path, timeout_s=TIME_BUDGET_SECONDS)
    if code != 0:
        raise RuntimeError(f"`jem_tf.train` exited {code}; log: {log_path}\n{log[-2000:]}")
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    if metrics["global_step"] != sizes.train_steps:
        raise RuntimeError(f"trained {metrics['global_step']} steps, expected {sizes.train_steps}")
    expected_replicas = max(num_gpus, 1)
    if f"on {expected_replicas} replica(s)" not in log:
        raise RuntimeError(f"expected MirroredStrategy over {expected_replicas} replica(s); log: {log_path}")
    if not metrics.get("export"):
        raise RuntimeError("the run wrote no export")
    seconds = metrics["seconds_this_session"]
    return dict(global_step=metrics["global_step"], replicas=expected_replicas, seconds=seconds,
                seconds_per_step=seconds / max(metrics["steps_this_session"], 1),
                test_accuracy_on_mock_data=metrics["test_accuracy"], export=metrics["export"], log=log_path)


def run_serving_check(export_dir: str, log_path: str, bad_inputs: bool = True) -> dict:
    code, log = _subprocess([sys.executable, "-m", "export.serving_check", f"--export_dir={export_dir}",
                             f"--{'' if bad_inputs else 'no'}bad_inputs"], log_path, timeout_s=TIME_BUDGET_SECONDS)
    if code != 0:
        raise RuntimeError(f"export.serving_check exited {code}; log: {log_path}\n{log[-2000:]}")
    return dict(export_dir=export_dir, log=log_path)


def markdown(report: dict) -> str:
    lines = [f"## GPU check ({'smoke run: tiny sizes, timings meaningless' if report['smoke'] else 'full'})", ""]
    devices = report.get("devices") or {}
    if devices:
        lines += [f"Devices: {', '.join(d['name'] for d in devices['devices'])}; TensorFlow {devices['tensorflow']}, "
                  f"TF32 {'on' if devices['tensor_float_32'] else 'off'}."
                  + (f" nvidia-smi: {devices['nvidia_smi']}" if devices.get("nvidia_smi") else ""), ""]
    sizes = report["plan"]
    if report.get("epochs"):
        lines += [
            f"WRN-{sizes['depth']}-{sizes['width']}, batch {sizes['batch_size']}, {sizes['sgld_steps']} SGLD steps, "
            f"{sizes['image_size']}x{sizes['image_size']}x{sizes['channels']}, one device:",
            "",
            "| precision | XLA | forward ms | SGLD step ms | JEM iteration ms "
            "| SGLD step, strict 2F, of matmul ceiling "
            f"| s per CIFAR-10 epoch ({CIFAR10_ITERATIONS_PER_EPOCH} it.) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for e in report["epochs"]:
            lines.append(f"| {e['precision']} | {e['xla']} | {e['forward_ms']:.1f} | {e['sgld_step_ms']:.1f} | "
                         f"{e['jem_iteration_ms']:.1f} | {100 * e['sgld_strict_of_ceiling']:.0f}% | "
                         f"{e['cifar10_epoch_seconds']:.1f} |")
        ceilings = report["timings"]["matmul_ceilings_gflops"]
        lines += ["", "Matmul ceilings: " + "; ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items())
                  + f". Aim: <= {TARGET_EPOCH_SECONDS:.0f} s per CIFAR-10 epoch on one H200.", ""]
    if report.get("training"):
        t = report["training"]
        lines += [f"Paper setup on mock SVHN: {t['global_step']} steps on {t['replicas']} replica(s) in "
                  f"{t['seconds']:.1f} s ({t['seconds_per_step']:.3f} s/step incl. summaries and checkpoints); "
                  f"export {t['export']}.", ""]
    lines += ["| check | passed | seconds | detail |", "|---|---|---:|---|"]
    for record in report["checks"]:
        detail = record["detail"] if not record["passed"] else ""
        detail = str(detail).replace("\n", " ").replace("|", "/")[:300]
        lines.append(f"| {record['name']} | {'yes' if record['passed'] else 'NO'} | {record['seconds']} | {detail} |")
    lines += ["", f"Total {report['seconds']:.0f} s"
              + (f" (over the {TIME_BUDGET_SECONDS // 60} minute budget)" if report["over_budget"] else "") + "."]
    return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("output_dir", "runs/gpu_check", "Where gpu_check.json, gpu_check.md, logs and the "
                        "training run go.")
    flags.DEFINE_bool("smoke", False, "CPU-sized dry run of every step (CI); its timings mean nothing.")
    flags.DEFINE_integer("train_steps", None, "Steps of the paper-setup run (default 200; --smoke: 2).",
                         lower_bound=1)


def run(output_dir: str, smoke: bool, train_steps=None) -> int:
    """Runs every check; returns the exit code."""
    import tensorflow as tf  # noqa: PLC0415

    started = time.time()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not smoke:
        logging.error("No GPU visible to TensorFlow (tf.config.list_physical_devices('GPU') is empty): the GPU check "
                      "needs one. Check the CUDA install (`nvidia-smi`, `pip install tensorflow[and-cuda]`), or run "
                      "`benchmarks/gpu_check.sh --smoke` for the CPU-sized dry run.")
        return EXIT_USAGE
    sizes = plan(smoke, train_steps)
    if smoke:
        unoptimised_xla_backend()
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    checks = Checks()
    report = dict(smoke=smoke, plan=dataclasses.asdict(sizes), output_dir=output_dir,
                  xla_flags=os.environ.get("XLA_FLAGS", ""))
    report["devices"] = checks.run("devices", list_devices)
    report["timings"] = checks.run("timings", lambda: run_timings(sizes))
    if report["timings"]:
        report["epochs"] = epoch_estimates(report["timings"])
        print(report["timings"]["table"], flush=True)
    workdir = os.path.join(output_dir, "paper_setup_mock_svhn")
    report["training"] = checks.run(
        "train", lambda: run_training(sizes, workdir, len(gpus), os.path.join(output_dir, "train.log")))
    if report["training"]:
        report["serving"] = checks.run(
            "serving", lambda: run_serving_check(report["training"]["export"],
                                                 os.path.join(output_dir, "serving_check.log"),
                                                 sizes.serving_bad_inputs))
    report["checks"] = checks.records
    report["seconds"] = time.time() - started
    report["over_budget"] = not smoke and report["seconds"] > TIME_BUDGET_SECONDS
    report["passed"] = checks.passed
    from jem_tf.configs.base import write_json_atomically  # noqa: PLC0415

    write_json_atomically(os.path.join(output_dir, "gpu_check.json"), json.dumps(report, indent=2, default=str))
    text = markdown(report)
    write_json_atomically(os.path.join(output_dir, "gpu_check.md"), text)
    print(text, flush=True)
    failed = [r["name"] for r in checks.records if not r["passed"]]
    if failed:
        logging.error("gpu_check failed: %s (details in %s).", ", ".join(failed),
                      os.path.join(output_dir, "gpu_check.md"))
        return EXIT_FAILED
    logging.info("gpu_check passed in %.0f s; %s", report["seconds"], os.path.join(output_dir, "gpu_check.json"))
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    sys.exit(run(FLAGS.output_dir, FLAGS.smoke, FLAGS.train_steps))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
