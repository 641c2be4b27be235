"""Builds and runs `serving_check.cc`: an export served by TensorFlow Serving's C++ path.

    python -m export.serving_check --export_dir=EXPORT/1 [--bad_inputs]

compiles the checker against the TensorFlow pip wheel (once; cached by source and toolchain
under /tmp/jem_tf_serving_check/), writes PredictRequests for every signature at two batch sizes
with `export.client`, and has the C++ program load the export with `tensorflow::LoadSavedModel`
and answer them as TF Serving's Predict handler would. With --bad_inputs it also sends every
malformed request the signatures must refuse and checks each is refused with INVALID_ARGUMENT
and the expected message. Exits with the checker's status (0: everything served).
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

from export import client
from export import signatures as sig

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_check.cc")
CACHE_ENV = "JEM_TF_SERVING_CHECK_CACHE"
DEFAULT_CACHE_DIR = os.path.join(tempfile.gettempdir(), "jem_tf_serving_check")
# Valid refinement settings of the generated requests: few steps keep the check fast.
CHECK_REFINE = {sig.STEPS: 2, sig.STEP_SIZE: 1.0, sig.NOISE_STD: 0.01, sig.SEED: [3, 4]}


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler on this machine."""


def find_compiler() -> str | None:
    """$CXX, else the first of c++, g++, clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def compile_command(compiler: str, output: str) -> list:
    """The build line: TensorFlow's own compile flags, and both TF libraries linked with
    --no-as-needed. Without it the linker drops libtensorflow_cc's reference-free registrations
    and loading fails with "No session factory registered"."""
    lib_dir = tf.sysconfig.get_lib()
    return [
        compiler, "-O1", "-w", *tf.sysconfig.get_compile_flags(), SOURCE, "-o", output,
        f"-L{lib_dir}", "-Wl,--no-as-needed", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2",
        f"-Wl,-rpath,{lib_dir}",
    ]


def build(cache_dir: str | None = None) -> str:
    """Compiles the checker if no cached binary matches the source and toolchain; returns its path.

    Safe to call from concurrent processes: each compiles to a private name, then renames.
    """
    compiler = find_compiler()
    if compiler is None:
        raise CompilerNotFoundError("No C++ compiler found (tried $CXX, c++, g++, clang++); install g++ to build "
                                    "the TF Serving check.")
    cache_dir = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        key.update(f.read())
    for part in (compiler, version, tf.__version__, tf.sysconfig.get_lib(), *tf.sysconfig.get_compile_flags()):
        key.update(part.encode())
    directory = os.path.join(cache_dir, key.hexdigest()[:16])
    binary = os.path.join(directory, "serving_check")
    if os.access(binary, os.X_OK):
        return binary
    os.makedirs(directory, exist_ok=True)
    private = f"{binary}.tmp-{os.getpid()}"
    logging.info("Compiling %s against TensorFlow %s (once; about 15 s on 2 cores).", SOURCE, tf.__version__)
    result = subprocess.run(compile_command(compiler, private), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Compiling the serving check failed:\n{result.stderr[-6000:]}")
    os.replace(private, binary)
    return binary


@dataclasses.dataclass
class Case:
    """A request and, for a bad input, the (status code, message part) it must be refused with."""

    name: str
    request: object
    expected_error: tuple | None = None


def _encoded_png(image_uint8) -> bytes:
    return tf.io.encode_png(image_uint8).numpy()


def valid_inputs(signature_name: str, image_shape, batch_size: int, seed: int = 0) -> dict:
    """Deterministic valid inputs for one signature: images uniform in [-1, 1] (or PNGs)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch_size, *image_shape), dtype=np.uint8)
    images = (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    contract = sig.contract_for(signature_name)
    if contract.name == sig.CLASSIFY_IMAGE_BYTES:
        return {sig.IMAGE_BYTES: [_encoded_png(image) for image in pixels]}
    if contract.name == sig.REFINE_THEN_CLASSIFY:
        return {sig.IMAGES: images, **CHECK_REFINE}
    return {sig.IMAGES: images}


def valid_cases(signature_defs: dict, image_shape, batch_sizes=(1, 3)) -> list:
    """One request per signature (serving_default included) and batch size."""
    return [
        Case(f"{name}_batch{batch_size}", client.build_request(name, valid_inputs(name, image_shape, batch_size, seed)))
        for seed, batch_size in enumerate(batch_sizes)
        for name in sorted(signature_defs)
        if name in sig.ALL_SIGNATURE_NAMES
    ]


def bad_input_cases(image_shape, max_refine_steps: int) -> list:
    """Requests every signature must refuse with INVALID_ARGUMENT, and the message part each
    refusal must contain (the messages say what was expected)."""
    height, width, channels = image_shape
    good = np.zeros((2, height, width, channels), np.float32)
    refine_ok = dict(CHECK_REFINE)

    def images_with(value):
        images = good.copy()
        images[0, 0, 0, 0] = value
        return images

    image_cases = {
        "wrong_size": (np.zeros((2, height + 1, width, channels), np.float32), "images must be float32"),
        "wrong_channels": (np.zeros((2, height, width, channels + 2), np.float32), "images must be float32"),
        "wrong_rank": (np.zeros((2, height, width), np.float32), "images must be float32"),
        "empty_batch": (np.zeros((0, height, width, channels), np.float32), "at least one image"),
        "nan": (images_with(np.nan), "images must be finite"),
        "inf": (images_with(np.inf), "images must be finite"),
        "above_range": (images_with(2.0), "images must be in [-1, 1]"),
        "uint8_scale": (np.full_like(good, 255.0), "images must be in [-1, 1]"),
    }
    cases = []
    for name in (sig.CLASSIFY, sig.ENERGY, sig.REFINE_THEN_CLASSIFY):
        extra = refine_ok if name == sig.REFINE_THEN_CLASSIFY else {}
        for case, (images, message) in image_cases.items():
            cases.append(Case(f"bad_{name}_{case}", client.build_request(name, {sig.IMAGES: images, **extra}),
                              ("INVALID_ARGUMENT", message)))
    refine_cases = {
        "steps_negative": ({sig.STEPS: -1}, f"steps must be in [0, {max_refine_steps}]"),
        "steps_too_many": ({sig.STEPS: max_refine_steps + 1}, f"steps must be in [0, {max_refine_steps}]"),
        "steps_not_scalar": ({sig.STEPS: [1, 2]}, "steps must be an int32 scalar"),
        "noise_negative": ({sig.NOISE_STD: -0.01}, "noise_std must be a finite number >= 0"),
        "noise_nan": ({sig.NOISE_STD: np.nan}, "noise_std must be a finite number >= 0"),
        "step_size_negative": ({sig.STEP_SIZE: -1.0}, "step_size must be a finite number >= 0"),
        "step_size_inf": ({sig.STEP_SIZE: np.inf}, "step_size must be a finite number >= 0"),
        "seed_wrong_shape": ({sig.SEED: [1, 2, 3]}, "seed must be int64 of shape [2]"),
    }
    for case, (override, message) in refine_cases.items():
        inputs = {sig.IMAGES: good, **refine_ok, **override}
        cases.append(Case(f"bad_refine_{case}", client.build_request(sig.REFINE_THEN_CLASSIFY, inputs),
                          ("INVALID_ARGUMENT", message)))
    # A wrong dtype is refused by TensorFlow itself, before the graph runs (REST requests cannot
    # hit this: TF Serving types JSON values by the signature).
    wrong_dtype = client.build_request(sig.CLASSIFY, {sig.IMAGES: good})
    wrong_dtype.inputs[sig.IMAGES].CopyFrom(tf.make_tensor_proto(good.astype(np.float64)))
    cases.append(Case("bad_classify_wrong_dtype", wrong_dtype,
                      ("INVALID_ARGUMENT", "to be float but double is provided")))
    wrong_size_png = _encoded_png(np.zeros((height + 2, width, channels), np.uint8))
    bytes_cases = {
        "wrong_size": ([wrong_size_png], f"every image must decode to {height}x{width}"),
        "empty_batch": ([], "at least one image"),
        "not_an_image": ([b"definitely not an image"], "Unknown image file format"),
    }
    for case, (encoded, message) in bytes_cases.items():
        cases.append(Case(f"bad_bytes_{case}", client.build_request(sig.CLASSIFY_IMAGE_BYTES,
                                                                    {sig.IMAGE_BYTES: encoded}),
                          ("INVALID_ARGUMENT", message)))
    return cases


def write_cases(cases, directory: str) -> list:
    """Writes each case as NAME.request (+ NAME.request.expect); returns the request paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for case in cases:
        path = os.path.join(directory, f"{case.name}.request")
        with open(path, "wb") as f:
            f.write(case.request.SerializeToString())
        if case.expected_error:
            with open(path + ".expect", "w") as f:
                f.write(" ".join(case.expected_error) + "\n")
        paths.append(path)
    return paths


def read_response(request_path: str):
    """The PredictResponse the checker wrote for a request, as {output key: numpy array}."""
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

    with open(request_path + ".response", "rb") as f:
        return client.response_to_numpy(predict_pb2.PredictResponse.FromString(f.read()))


def run(binary: str, export_dir: str, request_paths, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Runs the checker; TensorFlow's C++ logging is quietened to warnings."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"))
    return subprocess.run([binary, export_dir, *request_paths], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def check_export(export_dir: str, work_dir: str, bad_inputs: bool = True, batch_sizes=(1, 3)):
    """Builds the checker and runs every signature (and the bad inputs) against `export_dir`.

    Returns (completed process, cases, request paths).
    """
    from export import savedmodel  # noqa: PLC0415 (savedmodel imports Keras; this module need not)

    signature_defs = client.signature_defs_from_export(export_dir)
    metadata = savedmodel.read_metadata(export_dir)
    image_shape = tuple(metadata["image_shape"])
    cases = valid_cases(signature_defs, image_shape, batch_sizes)
    for case in cases:
        client.check_request(case.request, signature_defs)
    if bad_inputs:
        cases += bad_input_cases(image_shape, metadata["input_rules"]["max_refine_steps"])
    paths = write_cases(cases, work_dir)
    return run(build(), export_dir, paths), cases, paths


def main(argv):
    from absl import flags  # noqa: PLC0415

    flag_values = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments: {argv[1:]}")
    with tempfile.TemporaryDirectory(prefix="serving_check_") as work_dir:
        result, _, _ = check_export(flag_values.export_dir, work_dir, bad_inputs=flag_values.bad_inputs)
    sys.stderr.write(result.stderr[-4000:] if result.returncode else "")
    print(result.stdout, end="")
    sys.exit(result.returncode)
