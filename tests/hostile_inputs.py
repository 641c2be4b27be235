"""The hostile-input sweep of the serving contract: every malformed or hostile request we know of,
sent to a fresh export through both serving paths, and counted.

    python -m tests.hostile_inputs --output=docs/results/hostile_serving.json

exports a small random WideResNet with the default serving limits, then sends each request
  * to a TensorFlow-only Python process (`tf.saved_model.load`, Keras blocked), and
  * to the C++ SavedModel loader (`export/serving_check`, TF Serving's path; skipped without a
    C++ compiler),
each under an address-space limit and a time limit, so that a regression fails the sweep instead of
the machine. A request is "refused cleanly" if it fails with INVALID_ARGUMENT and the message part
the contract promises (naming the input and what was expected), "answered" if it is one of the
hostile-but-valid requests (e.g. refinement at every bound) and its answer passes its check, and
"failed" otherwise (another error, a crash, a timeout, a wrong answer). The JSON records the counts
per path, each case's outcome, the commit, the date and the machine.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from absl import app, flags, logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (16, 16, 3)
NUM_CLASSES = 10
# A TensorFlow-only process serving this model peaks near 2 GB of address space; the WebP bomb
# alone would need 6.9 GB.
DEFAULT_MEMORY_LIMIT_BYTES = 4 << 30
DEFAULT_TIMEOUT_S = 600
PYTHON_PATH = "tensorflow_only_python"
CPP_PATH = "cpp_loader"

# Runs every request in one TensorFlow-only process and reports each outcome as JSON lines.
_PYTHON_SERVER = textwrap.dedent("""
    import json, sys, time

    for name in ("keras", "tf_keras"):
        sys.modules[name] = None

    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    export_dir, jobs_path, results_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    with open(jobs_path) as f:
        jobs = json.load(f)
    with open(results_path, "w") as results:
        for job in jobs:
            with open(job["request"], "rb") as f:
                request = predict_pb2.PredictRequest.FromString(f.read())
            function = loaded.signatures[request.model_spec.signature_name or "serving_default"]
            start = time.monotonic()
            try:
                inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
                outputs = {key: value.numpy() for key, value in function(**inputs).items()}
                outcome = {"answered": True}
                if "refined_images" in outputs:
                    outcome["refined_range"] = [float(outputs["refined_images"].min()),
                                                float(outputs["refined_images"].max())]
            except Exception as error:  # noqa: BLE001 (reported, whatever it is)
                outcome = {"error_type": type(error).__name__, "message": getattr(error, "message", str(error))}
            outcome.update(id=job["id"], seconds=round(time.monotonic() - start, 3))
            # One line per request, flushed: a crash still leaves the earlier outcomes.
            results.write(json.dumps(outcome) + "\\n")
            results.flush()
""")


def hostile_cases(export_dir: str) -> list:
    """export.serving_check.request_cases.Case list: every bad input of the contract (with the export's limits), the
    decoding bombs of issue 15, and the hostile-but-valid refinement at every bound."""
    from export import client  # noqa: PLC0415 (heavy: TensorFlow)
    from export import signatures as sig  # noqa: PLC0415
    from export.serving_check import request_cases  # noqa: PLC0415 (heavy: TensorFlow)

    height, width, _ = IMAGE_SHAPE
    cases = request_cases.bad_input_cases_for_export(export_dir)
    not_a_format = "image_bytes: every image must be PNG, JPEG, BMP, GIF (recognised by its first bytes"
    bombs = {
        "webp_16000x16000_x4": ([request_cases.WEBP_BOMB_16000] * 4, not_a_format),
        "lying_png_400mb": ([request_cases.lying_png(height, width, 400 << 20)],
                            f"image_bytes: every image must be at most {sig.DEFAULT_MAX_IMAGE_BYTES} bytes"),
    }
    for name, (data, message) in bombs.items():
        cases.append(request_cases.Case(f"bomb_{name}", client.build_request(sig.CLASSIFY_IMAGE_BYTES,
                                                                             {sig.IMAGE_BYTES: data}),
                                        ("INVALID_ARGUMENT", message)))
    images = request_cases.valid_inputs(sig.CLASSIFY, IMAGE_SHAPE, 2, seed=9)[sig.IMAGES]
    at_bounds = {sig.IMAGES: images, sig.STEPS: sig.DEFAULT_MAX_REFINE_STEPS, sig.STEP_SIZE: sig.DEFAULT_MAX_STEP_SIZE,
                 sig.NOISE_STD: sig.DEFAULT_MAX_NOISE_STD, sig.SEED: [5, 6]}
    cases.append(request_cases.Case("valid_refine_at_every_bound",
                                    client.build_request(sig.REFINE_THEN_CLASSIFY, at_bounds)))
    return cases


def _python_sendable(case) -> bool:
    """A loaded signature refuses a wrong dtype in Python before the graph runs, so such a case
    cannot reach the Python path's graph (the C++ path sends it)."""
    import tensorflow as tf  # noqa: PLC0415

    from export import signatures as sig  # noqa: PLC0415

    contract = sig.contract_for(case.request.model_spec.signature_name or sig.DEFAULT_SIGNATURE)
    return all(proto.dtype == tf.dtypes.as_dtype(contract.input(key).dtype).as_datatype_enum
               for key, proto in case.request.inputs.items())


def _judge(case, error_type, message, refined_range):
    """'refused' / 'answered' / 'failed: <why>' for one outcome."""
    if case.expected_error:
        if error_type is None:
            return "failed: answered instead of refused"
        if error_type in ("InvalidArgumentError", "INVALID_ARGUMENT") and case.expected_error[1] in message:
            return "refused"
        return f"failed: {error_type}: {message[:300]}"
    if error_type is not None:
        return f"failed: {error_type}: {message[:300]}"
    if refined_range is not None and not (-1.0 <= refined_range[0] and refined_range[1] <= 1.0):
        return f"failed: refined images outside [-1, 1]: {refined_range}"
    return "answered"


def run_python_path(export_dir, cases, paths, work_dir, memory_limit_bytes, timeout_s, warm=False) -> dict:
    """{case name: outcome} through a TensorFlow-only process: a new interpreter, or with `warm` (the
    tests) one forked by tests/warm_python.py's TensorFlow-only server under the same limits."""
    from export.serving_check import runner  # noqa: PLC0415

    jobs = [{"id": case.name, "request": path} for case, path in zip(cases, paths, strict=True)
            if _python_sendable(case)]
    jobs_path, results_path = os.path.join(work_dir, "jobs.json"), os.path.join(work_dir, "python_results.jsonl")
    with open(jobs_path, "w") as f:
        json.dump(jobs, f)
    script = os.path.join(work_dir, "serve.py")
    with open(script, "w") as f:
        f.write(_PYTHON_SERVER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    try:
        if warm:
            import warm_python  # noqa: PLC0415

            result = warm_python.run([script, export_dir, jobs_path, results_path], capture_output=True, text=True,
                                     env=env, timeout=timeout_s, kind=warm_python.TENSORFLOW_ONLY,
                                     memory_limit_bytes=memory_limit_bytes)
        else:
            result = subprocess.run(
                runner.memory_limited([sys.executable, script, export_dir, jobs_path, results_path],
                                      memory_limit_bytes), capture_output=True, text=True, env=env, timeout=timeout_s)
        died = None if result.returncode == 0 else f"the process exited with {result.returncode}"
    except subprocess.TimeoutExpired:
        died = f"the process ran past {timeout_s} s"
    seen = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            seen = {line["id"]: line for line in map(json.loads, f)}
    outcomes = {}
    for case in cases:
        if not _python_sendable(case):
            outcomes[case.name] = "skipped: wrong dtype, refused by the Python function before the graph runs"
        elif case.name in seen:
            line = seen[case.name]
            outcomes[case.name] = _judge(case, line.get("error_type"), line.get("message", ""),
                                         line.get("refined_range"))
        else:
            outcomes[case.name] = f"failed: no outcome ({died or 'not reached'})"
    return outcomes


def run_cpp_path(export_dir, cases, paths, memory_limit_bytes, timeout_s) -> dict | None:
    """{case name: outcome} through the C++ loader; None without a C++ compiler."""
    from export import signatures as sig  # noqa: PLC0415
    from export.serving_check import builder, runner  # noqa: PLC0415

    if builder.find_compiler() is None:
        logging.warning("No C++ compiler: the C++ loader path of the sweep is skipped.")
        return None
    try:
        result = runner.run(builder.build(), export_dir, paths, timeout_s=timeout_s,
                                   memory_limit_bytes=memory_limit_bytes)
        stdout, died = result.stdout, (None if result.returncode in (0, 1) else f"exit status {result.returncode}")
    except subprocess.TimeoutExpired as error:
        stdout, died = error.stdout or "", f"ran past {timeout_s} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    lines = stdout.splitlines()
    outcomes = {}
    for case, path in zip(cases, paths, strict=True):
        line = next((text for text in lines if text.startswith((f"PASS {path} ", f"FAIL {path}:"))), None)
        if line is None:
            outcomes[case.name] = f"failed: no outcome ({died or 'not reached'})"
        elif line.startswith(f"PASS {path} refused as expected"):
            outcomes[case.name] = "refused"
        elif line.startswith("PASS"):
            response = runner.read_response(path)
            refined = response.get(sig.REFINED_IMAGES)
            refined_range = None if refined is None else [float(np.min(refined)), float(np.max(refined))]
            outcomes[case.name] = _judge(case, None, "", refined_range)
        else:
            outcomes[case.name] = f"failed: {line[len(f'FAIL {path}: '):][:300]}"
    return outcomes


def _counts(outcomes: dict) -> dict:
    values = list(outcomes.values())
    return {
        "tried": sum(not value.startswith("skipped") for value in values),
        "refused_cleanly": values.count("refused"),
        "answered": values.count("answered"),
        "failed": sum(value.startswith("failed") for value in values),
        "not_sendable": sum(value.startswith("skipped") for value in values),
    }


def sweep(work_dir: str, memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
          timeout_s: float = DEFAULT_TIMEOUT_S, warm: bool = False) -> dict:
    """Exports a small model to `work_dir`, sends every hostile case through both paths and returns
    the report (see the module docstring). `warm`: see `run_python_path`."""
    import keras  # noqa: PLC0415 (heavy)

    from export import archive  # noqa: PLC0415
    from export.serving_check import request_cases  # noqa: PLC0415
    from jem_tf.models import WideResNet  # noqa: PLC0415

    keras.utils.set_random_seed(15)
    network = WideResNet(10, 1, NUM_CLASSES)
    network.build((None, *IMAGE_SHAPE))
    export_dir = archive.export_model(network, os.path.join(work_dir, "export"), 1, overwrite=True)
    cases = hostile_cases(export_dir)
    paths = request_cases.write_cases(cases, os.path.join(work_dir, "requests"))
    logging.info("Sending %d hostile requests to %s.", len(cases), export_dir)
    per_path = {PYTHON_PATH: run_python_path(export_dir, cases, paths, work_dir, memory_limit_bytes, timeout_s, warm)}
    cpp = run_cpp_path(export_dir, cases, paths, memory_limit_bytes, timeout_s)
    if cpp is not None:
        per_path[CPP_PATH] = cpp
    return {
        "limits": {"memory_limit_bytes": memory_limit_bytes, "timeout_s": timeout_s},
        "export": {"image_shape": list(IMAGE_SHAPE), "input_rules": archive.read_metadata(export_dir)["input_rules"]},
        "counts": {path: _counts(outcomes) for path, outcomes in per_path.items()},
        "cases": [
            {"name": case.name, "signature": case.request.model_spec.signature_name,
             "expected": "refused: " + case.expected_error[1] if case.expected_error else "answered",
             **{path: outcomes[case.name] for path, outcomes in per_path.items()}}
            for case in cases
        ],
    }


def provenance() -> dict:
    """The commit, date and machine a report was made on."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import tensorflow as tf  # noqa: PLC0415

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "tensorflow": tf.__version__},
    }


PATH_TITLES = {"cpp_loader": "C++ SavedModel loader (TF Serving's)", "tensorflow_only_python": "TensorFlow-only Python"}


def table_of(report: dict) -> dict:
    """The counts as a docs table (tools/results_tables.py renders it in docs/serving.md)."""
    keys = ("tried", "refused_cleanly", "answered", "failed", "not_sendable")
    return dict(columns=["path", "tried", "refused cleanly", "answered", "failed", "not sendable"],
                align=["l", "r", "r", "r", "r", "r"],
                rows=[[PATH_TITLES.get(path, path), *(counts[key] for key in keys)]
                      for path, counts in sorted(report["counts"].items())])


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with tempfile.TemporaryDirectory(prefix="hostile_serving_") as work_dir:
        report = sweep(work_dir, FLAGS.memory_limit_gb << 30, FLAGS.timeout_s)
    report = {"command": "python -m tests.hostile_inputs --output=" + (FLAGS.output or "-"), **provenance(),
              **report}
    report.update(table_of(report))
    text = json.dumps(report, indent=2) + "\n"
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as f:
            f.write(text)
        logging.info("Wrote %s.", FLAGS.output)
    else:
        sys.stdout.write(text)
    for path, counts in report["counts"].items():
        logging.info("%s: %s", path, counts)
    failed = sum(counts["failed"] for counts in report["counts"].values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    flags.DEFINE_string("output", None, "Where to write the JSON report (default: standard output).")
    flags.DEFINE_integer("memory_limit_gb", DEFAULT_MEMORY_LIMIT_BYTES >> 30,
                         "Address-space limit of each serving process, in GiB.")
    flags.DEFINE_integer("timeout_s", DEFAULT_TIMEOUT_S, "Time limit of each serving process, in seconds.")
    app.run(main)
