"""Proof of servability, out of process: the export is loaded and served by

  * a fresh Python process that imports only TensorFlow (importing Keras fails in it),
  * `saved_model_cli show --all` and `saved_model_cli run` on every signature,
  * the C++ SavedModel loader and Session::Run, driven like TF Serving's Predict handler
    (export/serving_check), including every malformed request the signatures must refuse,
  * the tensorflow-serving-api client, against the SignatureDefs and a local gRPC server,

and everything it returns matches the in-memory model (`tests/serving_oracle.py`).
"""

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from concurrent import futures

import keras
import numpy as np
import pytest
import serving_oracle
import tensorflow as tf
import warm_python

from export import archive, client
from export import signatures as sig
from export.serving_check import builder, request_cases, runner
from jem_tf.models import WideResNet

# A colour model, so the byte path's RGB decoding is exercised too.
IMAGE_SHAPE = (16, 16, 3)
NUM_CLASSES = 10
OOD_THRESHOLD = 2.3
BATCH_SIZES = (1, 4)
REFINE = {sig.STEPS: 3, sig.STEP_SIZE: 1.0, sig.NOISE_STD: 0.01, sig.SEED: [11, 12]}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Loading and running are compared with the in-memory model at these tolerances: the graphs are
# the same ops, but grappler may fuse them differently from eager execution.
RTOL = ATOL = 1e-4
# The address-space cap of the serving processes sent hostile inputs (the bad inputs include
# decoding bombs): a TensorFlow-only process peaks near 2 GB serving these models; the WebP bomb
# alone would need 6.9 GB on a 1-channel model.
MEMORY_LIMIT_BYTES = 4 << 30
HOSTILE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def network():
    keras.utils.set_random_seed(3)
    network = WideResNet(10, 1, NUM_CLASSES)
    network.build((None, *IMAGE_SHAPE))
    return network


@pytest.fixture(scope="module")
def export_dir(network, tmp_path_factory):
    # The default bounds (max_refine_steps 100, max_step_size 10, max_noise_std 1): the refinement
    # test runs at all of them.
    return archive.export_model(network, tmp_path_factory.mktemp("serving"), 1, ood_threshold=OOD_THRESHOLD)


def inputs_for(name, batch_size, seed=0):
    inputs = request_cases.valid_inputs(name, IMAGE_SHAPE, batch_size, seed)
    if sig.contract_for(name).name == sig.REFINE_THEN_CLASSIFY:
        inputs.update(REFINE)
    return inputs


def assert_matches_reference(network, name, inputs, outputs, where):
    want = serving_oracle.expected_outputs(network, name, inputs, OOD_THRESHOLD)
    assert set(outputs) == set(want), where
    for key, value in want.items():
        np.testing.assert_allclose(outputs[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{where}: {name}.{key}")


def subprocess_env():
    python_path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=python_path)
    return env


# -- a fresh process with TensorFlow only ------------------------------------------------------

KERAS_FREE_SCRIPT = textwrap.dedent("""
    import json, sys

    # Keras must not be needed to serve: make every import of it fail.
    for name in ("keras", "tf_keras"):
        sys.modules[name] = None
    try:
        import keras  # noqa: F401
        raise SystemExit("keras imported although blocked")
    except ImportError:
        pass

    import numpy as np
    import tensorflow as tf

    export_dir, work_dir = sys.argv[1], sys.argv[2]
    with open(f"{work_dir}/requests.json") as f:
        requests = json.load(f)
    arrays = np.load(f"{work_dir}/inputs.npz")
    loaded = tf.saved_model.load(export_dir)
    results = {}
    for request in requests:
        inputs = {}
        for key, spec in request["inputs"].items():
            if spec["kind"] == "files":
                inputs[key] = tf.constant([open(path, "rb").read() for path in spec["paths"]])
            else:
                inputs[key] = tf.constant(arrays[spec["array"]])
        outputs = loaded.signatures[request["signature"]](**inputs)
        for key, value in outputs.items():
            results[request["id"] + "/" + key] = value.numpy()
    np.savez(f"{work_dir}/outputs.npz", **results)
    loaded_keras = sorted(
        m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("keras", "tf_keras"))
    print(json.dumps({"keras_modules": loaded_keras}))
""")


@pytest.mark.slow
def test_tensorflow_only_process_serves_every_signature_like_the_in_memory_model(network, export_dir, tmp_path):
    requests, arrays, expected = [], {}, {}
    for batch_size in BATCH_SIZES:
        for name in sig.ALL_SIGNATURE_NAMES:
            request_id = f"{name}_{batch_size}"
            inputs = inputs_for(name, batch_size, seed=batch_size)
            specs = {}
            for key, value in inputs.items():
                if key == sig.IMAGE_BYTES:
                    paths = []
                    for index, data in enumerate(value):
                        paths.append(str(tmp_path / f"{request_id}_{index}.png"))
                        with open(paths[-1], "wb") as f:
                            f.write(data)
                    specs[key] = {"kind": "files", "paths": paths}
                else:
                    dtype = sig.contract_for(name).input(key).dtype
                    arrays[f"{request_id}_{key}"] = np.asarray(value, dtype)
                    specs[key] = {"kind": "array", "array": f"{request_id}_{key}"}
            requests.append({"id": request_id, "signature": name, "inputs": specs})
            expected[request_id] = (name, inputs)
    with open(tmp_path / "requests.json", "w") as f:
        json.dump(requests, f)
    np.savez(tmp_path / "inputs.npz", **arrays)
    script = tmp_path / "serve.py"
    script.write_text(KERAS_FREE_SCRIPT)

    # Forked by the suite's TensorFlow-only warm server, which blocked Keras before importing TensorFlow.
    result = warm_python.run([str(script), export_dir, str(tmp_path)], capture_output=True, text=True,
                             env=subprocess_env(), timeout=300, cwd=str(tmp_path), kind=warm_python.TENSORFLOW_ONLY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"keras_modules": []}
    outputs = np.load(tmp_path / "outputs.npz")
    for request_id, (name, inputs) in expected.items():
        got = {key.split("/", 1)[1]: outputs[key] for key in outputs.files if key.startswith(request_id + "/")}
        assert_matches_reference(network, name, inputs, got, f"tensorflow-only process, {request_id}")


# -- saved_model_cli ----------------------------------------------------------------------------


@pytest.mark.slow
def test_saved_model_cli_shows_every_signature(export_dir):
    result = subprocess.run(["saved_model_cli", "show", "--dir", export_dir, "--all"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in sig.ALL_SIGNATURE_NAMES:
        assert f"signature_def['{name}']" in result.stdout
    assert "shape: (-1, 16, 16, 3)" in result.stdout
    assert "Method name is: tensorflow/serving/predict" in result.stdout


@pytest.mark.slow
def test_saved_model_cli_runs_every_signature(network, export_dir, tmp_path):
    runs = {}
    for name in sig.ALL_SIGNATURE_NAMES:
        inputs = inputs_for(name, 2, seed=7)
        files, literals = [], []
        for key, value in inputs.items():
            if key in (sig.IMAGES, sig.IMAGE_BYTES):
                path = tmp_path / f"{name}_{key}.npy"
                array = np.array(value, dtype=object) if key == sig.IMAGE_BYTES else np.asarray(value, np.float32)
                np.save(path, array, allow_pickle=True)
                files.append(f"{key}={path}")
            else:
                literals.append(f"{key}={json.dumps(value)}")
        outdir = tmp_path / f"out_{name}"
        # The installed `saved_model_cli` script's own entry point, in a warm process (the `show` test
        # above runs the script itself).
        command = ["-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir", export_dir, "--tag_set", "serve",
                   "--signature_def", name, "--inputs", ";".join(files), "--outdir", str(outdir)]
        if literals:
            command += ["--input_exprs", ";".join(literals)]
        runs[name] = (warm_python.start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=subprocess_env()), inputs, outdir)
    for name, (process, inputs, outdir) in runs.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"saved_model_cli run {name}: {stderr[-3000:]}"
        outputs = {file[:-4]: np.load(outdir / file) for file in os.listdir(outdir)}
        assert_matches_reference(network, name, inputs, outputs, "saved_model_cli run")


# -- the C++ loader, as TF Serving runs it ------------------------------------------------------


@pytest.fixture(scope="module")
def checker_binary():
    if builder.find_compiler() is None:
        pytest.skip("No C++ compiler ($CXX, c++, g++ or clang++) to build export/serving_check; the C++ "
                    "serving proof cannot run on this machine.")
    return builder.build()


@pytest.mark.slow
def test_cpp_loader_serves_every_signature_and_refuses_every_bad_input(network, export_dir, checker_binary,
                                                                       tmp_path):
    del checker_binary  # built (and cached) by the fixture; check_export finds it
    result, cases, paths = runner.check_export(export_dir, str(tmp_path), bad_inputs=True,
                                                      batch_sizes=BATCH_SIZES, memory_limit_bytes=MEMORY_LIMIT_BYTES)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "ALL PASSED" in result.stdout
    bad = [case for case in cases if case.expected_error]
    assert len(bad) >= 20 and all(case.expected_error[0] == "INVALID_ARGUMENT" for case in bad)
    for required in ("bad_refine_step_size_float32_max", "bad_refine_step_size_1e30", "bad_refine_noise_3e38",
                     "bad_classify_batch_too_large", "bad_energy_batch_too_large", "bad_bytes_batch_too_large",
                     "bad_bytes_header_20000x20000_png", "bad_bytes_wrong_size_gif", "bad_bytes_wrong_size_bmp",
                     "bad_bytes_wrong_size_jpeg"):
        assert required in {case.name for case in bad}
    # What the C++ session returned equals the in-memory model.
    checked = 0
    for case, path in zip(cases, paths, strict=True):
        if case.expected_error:
            continue
        name = case.request.model_spec.signature_name
        inputs = {key: tf.make_ndarray(proto) for key, proto in case.request.inputs.items()}
        if sig.IMAGE_BYTES in inputs:
            inputs[sig.IMAGE_BYTES] = list(inputs[sig.IMAGE_BYTES])
        assert_matches_reference(network, name, inputs, runner.read_response(path), f"C++ {case.name}")
        checked += 1
    assert checked == len(sig.ALL_SIGNATURE_NAMES) * len(BATCH_SIZES) + len(request_cases.format_inputs(IMAGE_SHAPE))


@pytest.mark.slow
def test_cpp_check_fails_when_a_signature_is_not_served(export_dir, checker_binary, tmp_path):
    cases = request_cases.valid_cases({sig.CLASSIFY: None}, IMAGE_SHAPE, batch_sizes=(1,))
    result = runner.run(checker_binary, export_dir, request_cases.write_cases(cases, str(tmp_path)))
    assert result.returncode == 1
    assert f"FAIL signature {sig.ENERGY} answered no request" in result.stdout


@pytest.mark.slow
def test_cpp_check_fails_on_an_unexpected_refusal_and_a_missing_export(export_dir, checker_binary, tmp_path):
    bad = request_cases.bad_input_cases(IMAGE_SHAPE, 20)[0]
    bad.expected_error = None  # now it is expected to succeed, and must be reported as a failure
    result = runner.run(checker_binary, export_dir, request_cases.write_cases([bad], str(tmp_path)))
    assert result.returncode == 1 and f"FAIL {tmp_path}/{bad.name}.request: INVALID_ARGUMENT" in result.stdout
    result = runner.run(checker_binary, str(tmp_path / "missing"), [])
    assert result.returncode == 2  # usage: no request files
    result = runner.run(checker_binary, str(tmp_path / "missing"), ["x.request"])
    assert result.returncode == 1 and "FAIL load" in result.stdout


# -- the client ---------------------------------------------------------------------------------


def test_client_requests_fit_the_exported_signature_defs(export_dir):
    defs = client.signature_defs_from_export(export_dir)
    for name in sig.ALL_SIGNATURE_NAMES:
        for batch_size in BATCH_SIZES:
            client.check_request(client.build_request(name, inputs_for(name, batch_size)), defs)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.inputs.pop(sig.STEPS), "takes inputs"),
    (lambda r: r.inputs[sig.IMAGES].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32))), "shape"),
    (lambda r: r.inputs[sig.STEPS].CopyFrom(tf.make_tensor_proto(np.float32(2))), "must be int32"),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"), "no signature"),
    (lambda r: r.output_filter.append("nope"), "no outputs"),
])
def test_client_refuses_requests_that_do_not_fit(export_dir, change, message):
    defs = client.signature_defs_from_export(export_dir)
    request = client.build_request(sig.REFINE_THEN_CLASSIFY, inputs_for(sig.REFINE_THEN_CLASSIFY, 1))
    change(request)
    with pytest.raises(client.RequestMismatchError, match=message):
        client.check_request(request, defs)


def test_build_request_refuses_wrong_keys():
    with pytest.raises(client.RequestMismatchError, match="takes inputs"):
        client.build_request(sig.CLASSIFY, {"image": np.zeros((1, *IMAGE_SHAPE))})


def test_rest_body_is_the_columnar_format_with_base64_bytes():
    body = client.rest_body(sig.CLASSIFY_IMAGE_BYTES, {sig.IMAGE_BYTES: [b"\x89PNG"]})
    assert body == {"signature_name": sig.CLASSIFY_IMAGE_BYTES, "inputs": {sig.IMAGE_BYTES: [{"b64": "iVBORw=="}]}}
    body = client.rest_body(sig.REFINE_THEN_CLASSIFY, inputs_for(sig.REFINE_THEN_CLASSIFY, 1))
    assert body["inputs"][sig.STEPS] == 3 and body["inputs"][sig.SEED] == [11, 12]
    assert np.asarray(body["inputs"][sig.IMAGES]).shape == (1, *IMAGE_SHAPE)
    json.dumps(body)


class _InProcessServer:
    """A stand-in for TF Serving's gRPC API (Predict, GetModelMetadata) over the reloaded export,
    to test the client's transport; the C++ test above is the proof of TF Serving's own path."""

    def __init__(self, export_dir):
        import grpc  # noqa: PLC0415
        from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2  # noqa: PLC0415
        from tensorflow_serving.apis import prediction_service_pb2_grpc as service  # noqa: PLC0415

        loaded = tf.saved_model.load(export_dir)
        defs = client.signature_defs_from_export(export_dir)

        class Servicer(service.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (gRPC method name)
                function = loaded.signatures[request.model_spec.signature_name or sig.DEFAULT_SIGNATURE]
                outputs = function(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(request.model_spec)
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
                return response

            def GetModelMetadata(self, request, context):  # noqa: N802
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                for name, definition in defs.items():
                    signature_map.signature_def[name].CopyFrom(definition)
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.CopyFrom(request.model_spec)
                response.metadata["signature_def"].Pack(signature_map)
                return response

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("localhost:0")
        self.server.start()


@pytest.fixture(scope="module")
def grpc_server(export_dir):
    server = _InProcessServer(export_dir)
    yield server
    server.server.stop(None)


def test_grpc_client_round_trip(network, grpc_server):
    jem = client.GrpcClient(f"localhost:{grpc_server.port}", model_name="jem")
    try:
        assert set(jem.signature_defs()) >= set(sig.ALL_SIGNATURE_NAMES)
        images = inputs_for(sig.CLASSIFY, 2)[sig.IMAGES]
        assert_matches_reference(network, sig.CLASSIFY, {sig.IMAGES: images}, jem.classify(images), "gRPC")
        assert_matches_reference(network, sig.ENERGY, {sig.IMAGES: images}, jem.energy(images), "gRPC")
        refine = inputs_for(sig.REFINE_THEN_CLASSIFY, 2)
        got = jem.refine_then_classify(refine[sig.IMAGES], refine[sig.STEPS], refine[sig.STEP_SIZE],
                                       refine[sig.NOISE_STD], refine[sig.SEED])
        assert_matches_reference(network, sig.REFINE_THEN_CLASSIFY, refine, got, "gRPC")
        encoded = inputs_for(sig.CLASSIFY_IMAGE_BYTES, 2)
        assert_matches_reference(network, sig.CLASSIFY_IMAGE_BYTES, encoded,
                                 jem.classify_image_bytes(encoded[sig.IMAGE_BYTES]), "gRPC")
        with pytest.raises(client.RequestMismatchError):
            jem.classify(np.zeros((1, 8, 8, 3), np.float32))  # refused locally, never sent
    finally:
        jem.close()


@pytest.mark.slow
def test_client_command_line(grpc_server, tmp_path):
    path = tmp_path / "a.png"
    pixels = np.random.default_rng(0).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
    path.write_bytes(tf.io.encode_png(pixels).numpy())
    result = warm_python.run(
        ["-m", "export.client", f"--server=localhost:{grpc_server.port}", "--signature=classify_image_bytes",
         f"--images={path}"],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout)
    assert set(outputs) == set(sig.SIGNATURES[sig.CLASSIFY].output_keys(with_ood=True))
    assert np.asarray(outputs[sig.PROBABILITIES]).shape == (1, NUM_CLASSES)


def test_rest_predict_posts_the_columnar_body_to_the_predict_url():
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server method name)
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"outputs": {sig.CLASS_ID: [3], sig.LOG_PX: [1.5]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("localhost", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        inputs = inputs_for(sig.REFINE_THEN_CLASSIFY, 1)
        outputs = client.rest_predict(f"http://localhost:{server.server_port}", sig.REFINE_THEN_CLASSIFY, inputs,
                                      model_name="jem", version=3)
    finally:
        server.shutdown()
    assert seen["path"] == "/v1/models/jem/versions/3:predict"
    assert seen["body"] == client.rest_body(sig.REFINE_THEN_CLASSIFY, inputs)
    np.testing.assert_array_equal(outputs[sig.CLASS_ID], [3])


# -- limits and non-finite results, through both the keras-free load and the C++ loader ---------

GRAY_SHAPE = (8, 8, 1)
FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def gray_network():
    keras.utils.set_random_seed(5)
    network = WideResNet(10, 1, NUM_CLASSES)
    network.build((None, *GRAY_SHAPE))
    return network


@pytest.fixture(scope="module")
def permissive_export(gray_network, tmp_path_factory):
    """A 1-channel export whose step_size and noise_std bounds are float32's largest value, so that
    only the finiteness checks stand between a huge request and a NaN answer."""
    return archive.export_model(gray_network, tmp_path_factory.mktemp("permissive"), 1, max_refine_steps=20,
                                   max_step_size=FLOAT32_MAX, max_noise_std=FLOAT32_MAX, max_batch_size=4)


@pytest.fixture(scope="module")
def broken_export(tmp_path_factory):
    """A network whose logits bias is NaN: every answer would be NaN."""
    keras.utils.set_random_seed(6)
    network = WideResNet(10, 1, NUM_CLASSES)
    network.build((None, *GRAY_SHAPE))
    bias = network.weights[-1]
    assert bias.path.endswith("logits/bias")
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    return archive.export_model(network, tmp_path_factory.mktemp("broken"), 1, max_refine_steps=20)


def gray_refine(**override):
    images = request_cases.valid_inputs(sig.CLASSIFY, GRAY_SHAPE, 2, seed=4)[sig.IMAGES]
    return {sig.IMAGES: images, **request_cases.CHECK_REFINE, **override}


def permissive_extra_cases():
    """Within the permissive bounds, noise_std=3e38 overflows each SGLD step to Inf; the clamp to
    [-1, 1] after every step keeps the chain finite, so it is answered (it was refused as non-finite
    before the clamp)."""
    return [request_cases.Case(
        "clamped_refine_noise_3e38",
        client.build_request(sig.REFINE_THEN_CLASSIFY, gray_refine(**{sig.NOISE_STD: 3e38})),
    )]


def broken_cases():
    images = request_cases.valid_inputs(sig.CLASSIFY, GRAY_SHAPE, 2, seed=4)[sig.IMAGES]
    encoded = request_cases.valid_inputs(sig.CLASSIFY_IMAGE_BYTES, GRAY_SHAPE, 2, seed=4)
    logits = "the logits are not finite (NaN or Inf) for these images"
    specs = {
        "classify": (sig.CLASSIFY, {sig.IMAGES: images}, logits),
        "default": (sig.DEFAULT_SIGNATURE, {sig.IMAGES: images}, logits),
        "bytes": (sig.CLASSIFY_IMAGE_BYTES, encoded, logits),
        "energy": (sig.ENERGY, {sig.IMAGES: images}, "energy: the outputs are not finite"),
        # steps=0: the images are the input, finite; the logits are not.
        "refine_0_steps": (sig.REFINE_THEN_CLASSIFY, gray_refine(**{sig.STEPS: 0}),
                           "refine_then_classify: the logits of the refined images are not finite"),
        # NaN logits give a NaN score, so the chain itself leaves the finite numbers.
        "refine_2_steps": (sig.REFINE_THEN_CLASSIFY, gray_refine(),
                           "refine_then_classify: the refined images are not finite"),
    }
    return [request_cases.Case(f"broken_{name}", client.build_request(signature, inputs), ("INVALID_ARGUMENT", text))
            for name, (signature, inputs, text) in specs.items()]


KERAS_FREE_REQUESTS_SCRIPT = textwrap.dedent("""
    import json, sys

    for name in ("keras", "tf_keras"):
        sys.modules[name] = None

    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    jobs_path, outputs_path = sys.argv[1], sys.argv[2]
    with open(jobs_path) as f:
        jobs = json.load(f)
    loaded, results, errors = {}, {}, {}
    for job in jobs:
        if job["export"] not in loaded:
            loaded[job["export"]] = tf.saved_model.load(job["export"])
        with open(job["request"], "rb") as f:
            request = predict_pb2.PredictRequest.FromString(f.read())
        function = loaded[job["export"]].signatures[request.model_spec.signature_name or "serving_default"]
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        try:
            outputs = function(**inputs)
        except Exception as error:  # noqa: BLE001 (reported, whatever it is)
            errors[job["id"]] = [type(error).__name__, getattr(error, "message", str(error))]
            continue
        for key, value in outputs.items():
            results[job["id"] + "/" + key] = value.numpy()
    np.savez(outputs_path, **results)
    loaded_keras = sorted(
        m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("keras", "tf_keras"))
    print(json.dumps({"keras_modules": loaded_keras, "errors": errors}))
""")


def test_a_memory_limited_command_runs_capped_with_its_arguments_and_exit_status():
    script = ("import resource, sys; print(resource.getrlimit(resource.RLIMIT_AS)[0], sys.argv[1:], flush=True); "
              "bytearray(1 << 30)")
    limit = 512 << 20
    result = subprocess.run(runner.memory_limited([sys.executable, "-c", script, "a b", "c"], limit),
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"{limit} ['a b', 'c']"
    assert result.returncode == 1 and "MemoryError" in result.stderr  # the 1 GiB allocation hit the cap
    assert runner.memory_limited(["program", "--flag"], None) == ["program", "--flag"]


def run_keras_free(jobs, tmp_path, memory_limit_bytes=None, timeout_s=600):
    """Runs [(export_dir, Case)] in one TensorFlow-only process: ({id: outputs}, {id: (error type, message)}),
    its address space capped at `memory_limit_bytes` (None: no cap)."""
    spec = []
    for index, (export_dir, case) in enumerate(jobs):
        request_path = tmp_path / f"{index}_{case.name}.request"
        request_path.write_bytes(case.request.SerializeToString())
        spec.append({"id": f"{index}_{case.name}", "export": str(export_dir), "request": str(request_path)})
    (tmp_path / "jobs.json").write_text(json.dumps(spec))
    script = tmp_path / "serve_requests.py"
    script.write_text(KERAS_FREE_REQUESTS_SCRIPT)
    command = [str(script), str(tmp_path / "jobs.json"), str(tmp_path / "out.npz")]
    result = warm_python.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=timeout_s,
                             cwd=str(tmp_path), kind=warm_python.TENSORFLOW_ONLY, memory_limit_bytes=memory_limit_bytes)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["keras_modules"] == []
    arrays = np.load(tmp_path / "out.npz")
    outputs = {}
    for key in arrays.files:
        job_id, output = key.split("/", 1)
        outputs.setdefault(job_id, {})[output] = arrays[key]
    return [(outputs.get(item["id"]), report["errors"].get(item["id"])) for item in spec]


def _fits_python_signature(case, export_dir):
    """Whether the keras-free caller can send the case at all: a loaded signature refuses dtypes
    that do not fit its declaration in Python, before the graph runs (the C++ path sends those;
    see the C++ tests). Shapes it does not check: the graph must refuse them."""
    del export_dir  # the dtypes are the contract's
    name = case.request.model_spec.signature_name or sig.DEFAULT_SIGNATURE
    contract = sig.contract_for(name)
    return all(proto.dtype == tf.dtypes.as_dtype(contract.input(key).dtype).as_datatype_enum
               for key, proto in case.request.inputs.items())


@pytest.mark.slow
def test_tensorflow_only_process_enforces_every_limit_and_serves_every_format(
        network, gray_network, export_dir, permissive_export, broken_export, tmp_path):
    jobs, expected_values = [], []
    plans = [
        (export_dir, network, request_cases.format_cases(IMAGE_SHAPE) + request_cases.bad_input_cases_for_export(
            export_dir)),
        (permissive_export, gray_network, request_cases.format_cases(GRAY_SHAPE)
         + request_cases.bad_input_cases_for_export(permissive_export) + permissive_extra_cases()),
        (broken_export, None, broken_cases()),
    ]
    for directory, model, cases in plans:
        for case in cases:
            if _fits_python_signature(case, directory):
                jobs.append((directory, case))
                expected_values.append(model)
    names = {case.name for _, case in jobs}
    for required in ("bad_refine_step_size_float32_max", "bad_refine_step_size_1e30", "bad_refine_noise_3e38",
                     "bad_classify_batch_too_large", "bad_bytes_batch_too_large", "bad_bytes_header_20000x20000_png",
                     "bytes_bmp_gray", "bytes_gif_rgb", "clamped_refine_noise_3e38", "broken_refine_0_steps",
                     # Wrong shapes reach the graph from Python too; each refusal names the input.
                     "bad_bytes_scalar_string", "bad_refine_steps_vector_of_one", "bad_classify_rank_5",
                     "bad_refine_seed_scalar", "bad_bytes_webp_16000x16000", "bad_bytes_lying_png_over_max_image_bytes",
                     "bad_bytes_request_over_max_request_bytes"):
        assert required in names
    results = run_keras_free(jobs, tmp_path, memory_limit_bytes=MEMORY_LIMIT_BYTES)
    for (directory, case), model, (outputs, error) in zip(jobs, expected_values, results, strict=True):
        where = f"tensorflow-only process, {os.path.basename(os.path.dirname(directory))}: {case.name}"
        if case.expected_error:
            assert outputs is None and error is not None, f"{where}: answered instead of refused"
            assert error[0] == "InvalidArgumentError", f"{where}: {error}"
            assert case.expected_error[1] in error[1], f"{where}: {error[1][:500]}"
        else:
            assert error is None, f"{where}: {error}"
            name = case.request.model_spec.signature_name
            inputs = {key: tf.make_ndarray(proto) for key, proto in case.request.inputs.items()}
            if sig.IMAGE_BYTES in inputs:
                inputs[sig.IMAGE_BYTES] = list(inputs[sig.IMAGE_BYTES])
            if sig.REFINED_IMAGES in outputs:
                assert np.all(np.abs(outputs[sig.REFINED_IMAGES]) <= 1.0), where
            want = serving_oracle.expected_outputs(model, name, inputs, None)
            for key, value in want.items():
                np.testing.assert_allclose(outputs[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{where}: {key}")


@pytest.mark.slow
def test_cpp_loader_refuses_out_of_bound_and_non_finite_answers(gray_network, permissive_export, broken_export,
                                                               checker_binary, tmp_path):
    # The permissive export: every signature, every format, its bad inputs and the overflow.
    result, cases, paths = runner.check_export(permissive_export, str(tmp_path / "permissive"),
                                                      batch_sizes=(1,), extra_cases=permissive_extra_cases(),
                                                      memory_limit_bytes=MEMORY_LIMIT_BYTES)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    for case, path in zip(cases, paths, strict=True):
        if case.name.startswith("bytes_"):
            inputs = {sig.IMAGE_BYTES: list(tf.make_ndarray(case.request.inputs[sig.IMAGE_BYTES]))}
            want = serving_oracle.expected_outputs(gray_network, sig.CLASSIFY_IMAGE_BYTES, inputs, None)
            got = runner.read_response(path)
            for key, value in want.items():
                np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=ATOL, err_msg=f"C++ {case.name}: {key}")
    assert f"PASS {tmp_path}/permissive/clamped_refine_noise_3e38.request (refine_then_classify)" in result.stdout
    refined = runner.read_response(f"{tmp_path}/permissive/clamped_refine_noise_3e38.request")
    assert np.all(np.abs(refined[sig.REFINED_IMAGES]) <= 1.0)
    # The broken export answers nothing (so the checker reports unserved signatures and exits 1),
    # but refuses every request the expected way.
    broken = broken_cases()
    paths = request_cases.write_cases(broken, str(tmp_path / "broken"))
    result = runner.run(checker_binary, broken_export, paths)
    for path in paths:
        assert f"PASS {path} refused as expected: INVALID_ARGUMENT" in result.stdout, result.stdout[-6000:]
    unexpected = [line for line in result.stdout.splitlines()
                  if line.startswith("FAIL") and not line.endswith("answered no request")]
    assert not unexpected, unexpected


# -- hostile inputs under a memory and time limit (issue 15) -----------------------------------



def decoding_bomb_cases(image_shape):
    """The issue's two images, as sent: the 34-byte 16000x16000 WebP (also 4 of them in one
    request) and a PNG whose IHDR says H x W but whose zlib stream inflates to 400 MB. Before the
    format check the WebP was decoded in full (768 MB for a colour model; on a 1-channel model, via
    RGB and int32, 6.9 GB) and only then refused for its size."""
    height, width, _ = image_shape
    not_a_format = "image_bytes: every image must be PNG, JPEG, BMP, GIF (recognised by its first bytes"
    specs = {
        "webp_16000x16000": ([request_cases.WEBP_BOMB_16000], not_a_format),
        "webp_16000x16000_x4": ([request_cases.WEBP_BOMB_16000] * 4, not_a_format),
        "lying_png_400mb": ([request_cases.lying_png(height, width, 400 << 20)],
                            f"image_bytes: every image must be at most {sig.DEFAULT_MAX_IMAGE_BYTES} bytes"),
    }
    return [request_cases.Case(f"bomb_{name}", client.build_request(sig.CLASSIFY_IMAGE_BYTES, {sig.IMAGE_BYTES: data}),
                               ("INVALID_ARGUMENT", message))
            for name, (data, message) in specs.items()]


def refine_at_every_bound_case():
    """refine_then_classify at every default bound at once (steps 100, step_size 10, noise_std 1):
    unclamped, it returned pixels from -7.2 to 5.7, which classify refuses."""
    images = request_cases.valid_inputs(sig.CLASSIFY, IMAGE_SHAPE, 2, seed=9)[sig.IMAGES]
    inputs = {sig.IMAGES: images, sig.STEPS: sig.DEFAULT_MAX_REFINE_STEPS, sig.STEP_SIZE: sig.DEFAULT_MAX_STEP_SIZE,
              sig.NOISE_STD: sig.DEFAULT_MAX_NOISE_STD, sig.SEED: [5, 6]}
    return request_cases.Case("refine_at_every_bound", client.build_request(sig.REFINE_THEN_CLASSIFY, inputs))


def assert_refined_within_the_image_domain(network, outputs, where):
    refined = outputs[sig.REFINED_IMAGES]
    assert refined.min() >= sig.IMAGE_MIN and refined.max() <= sig.IMAGE_MAX, (where, refined.min(), refined.max())
    # The outputs classify the refined images; and what they are, classify accepts.
    want = serving_oracle.expected_outputs(network, sig.CLASSIFY, {sig.IMAGES: refined}, OOD_THRESHOLD)
    for key, value in want.items():
        np.testing.assert_allclose(outputs[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{where}: {key}")


def hostile_jobs(export_dir, permissive_export):
    """[(export, case)]: the bombs for the colour and the 1-channel export, and refinement at every
    default bound (the colour export has the default bounds)."""
    return ([(export_dir, case) for case in decoding_bomb_cases(IMAGE_SHAPE)]
            + [(permissive_export, case) for case in decoding_bomb_cases(GRAY_SHAPE)]
            + [(export_dir, refine_at_every_bound_case())])


@pytest.mark.slow
def test_tensorflow_only_process_refuses_decoding_bombs_and_keeps_refinement_in_range(network, export_dir,
                                                                                       permissive_export, tmp_path):
    jobs = hostile_jobs(export_dir, permissive_export)
    results = run_keras_free(jobs, tmp_path, memory_limit_bytes=MEMORY_LIMIT_BYTES, timeout_s=HOSTILE_TIMEOUT_S)
    for (directory, case), (outputs, error) in zip(jobs, results, strict=True):
        where = (f"tensorflow-only process under a {MEMORY_LIMIT_BYTES >> 30} GiB limit, "
                 f"{os.path.basename(os.path.dirname(directory))}: {case.name}")
        if case.expected_error:
            assert outputs is None and error is not None, f"{where}: answered instead of refused"
            assert error[0] == "InvalidArgumentError" and case.expected_error[1] in error[1], f"{where}: {error}"
        else:
            assert error is None, f"{where}: {error}"
            assert_refined_within_the_image_domain(network, outputs, where)


@pytest.mark.slow
def test_cpp_loader_refuses_decoding_bombs_and_keeps_refinement_in_range(network, export_dir, permissive_export,
                                                                         checker_binary, tmp_path):
    jobs = hostile_jobs(export_dir, permissive_export)
    for directory in (export_dir, permissive_export):
        cases = [case for export, case in jobs if export == directory]
        paths = request_cases.write_cases(cases, str(tmp_path / os.path.basename(os.path.dirname(directory))))
        result = runner.run(checker_binary, directory, paths, timeout_s=HOSTILE_TIMEOUT_S,
                                   memory_limit_bytes=MEMORY_LIMIT_BYTES)
        for case, path in zip(cases, paths, strict=True):
            if case.expected_error:
                assert f"PASS {path} refused as expected: INVALID_ARGUMENT" in result.stdout, result.stdout[-6000:]
            else:
                assert f"PASS {path} ({sig.REFINE_THEN_CLASSIFY})" in result.stdout, result.stdout[-6000:]
                assert_refined_within_the_image_domain(network, runner.read_response(path), f"C++ {case.name}")


# -- the checker binary is never one someone else planted --------------------------------------


def test_default_build_cache_is_per_user_not_the_shared_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert builder.default_cache_dir() == str(tmp_path / "xdg" / "jem_tf" / "serving_check")
    monkeypatch.delenv("XDG_CACHE_HOME")
    default = builder.default_cache_dir()
    assert default.startswith(os.path.expanduser("~"))
    assert not default.startswith(tempfile.gettempdir() + os.sep)


@pytest.mark.slow
def test_build_cache_folders_are_private(checker_binary):
    folder = os.path.dirname(checker_binary)
    for path in (folder, os.path.dirname(folder)):
        info = os.stat(path)
        assert info.st_uid == os.geteuid()
        assert stat.S_IMODE(info.st_mode) & 0o077 == 0, f"{path}: {stat.S_IMODE(info.st_mode):04o}"


def _plant(cache_dir):
    """A program at the exact path `build` would use in `cache_dir`; running it leaves a marker."""
    binary = builder.binary_path(str(cache_dir))
    os.makedirs(os.path.dirname(binary), mode=0o700)
    os.chmod(cache_dir, 0o700)
    marker = cache_dir / "planted_program_ran"
    with open(binary, "w") as f:
        f.write(f"#!/bin/sh\ntouch '{marker}'\necho ALL PASSED\n")
    os.chmod(binary, 0o755)
    return binary, marker


@pytest.mark.slow
@pytest.mark.parametrize("tamper, reason", [
    (lambda binary: os.chmod(binary, 0o757), "writable by its group or by others"),
    (lambda binary: os.chmod(binary, 0o775), "writable by its group or by others"),
    (lambda binary: os.chmod(os.path.dirname(binary), 0o777), "writable by its group or by others"),
    (lambda binary: os.chmod(os.path.dirname(os.path.dirname(binary)), 0o733), "writable by its group or by others"),
    (lambda binary: os.chown(binary, 65534, 65534), "not to the current user"),
    (lambda binary: os.chown(os.path.dirname(binary), 65534, 65534), "not to the current user"),
], ids=["world_writable", "group_writable", "folder_world_writable", "cache_writable", "owned_by_nobody",
        "folder_owned_by_nobody"])
def test_a_planted_or_writable_binary_is_never_run(checker_binary, tmp_path, tamper, reason):
    del checker_binary  # needs a compiler, for the path
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    binary, marker = _plant(cache_dir)
    try:
        tamper(binary)
    except PermissionError:
        pytest.skip("Changing a file's owner needs root; the permission cases still run.")
    with pytest.raises(builder.UnsafeBinaryError, match=reason) as refused:
        builder.build(str(cache_dir))
    assert f"Refusing to run the serving check from {str(cache_dir)!r}"[:-1] in str(refused.value)
    with pytest.raises(builder.UnsafeBinaryError, match=reason):
        runner.run(binary, str(tmp_path), ["x.request"])
    assert not marker.exists()


@pytest.mark.slow
def test_a_private_planted_binary_is_run_which_shows_the_refusals_are_the_checks(checker_binary, tmp_path):
    """The control for the test above: the same planted program, untampered, does run."""
    del checker_binary
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    binary, marker = _plant(cache_dir)
    assert builder.build(str(cache_dir)) == binary
    runner.run(binary, str(tmp_path), ["x.request"])
    assert marker.exists()


@pytest.mark.slow
def test_a_symlinked_binary_is_refused(checker_binary, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    binary, marker = _plant(cache_dir)
    os.rename(binary, binary + ".real")
    os.symlink(binary + ".real", binary)
    with pytest.raises(builder.UnsafeBinaryError, match="symbolic link"):
        builder.build(str(cache_dir))
    assert not marker.exists()
