"""Client for a jem_tf model served by TensorFlow Serving, built on tensorflow-serving-api.

    # gRPC (port 8500), images decoded and scaled here, then the float `classify` signature:
    python -m export.client --server=localhost:8500 --model_name=jem --signature=classify --images=a.png,b.png
    # the server decodes the PNG/JPEG/BMP/GIF bytes itself:
    python -m export.client --server=localhost:8500 --signature=classify_image_bytes --images=a.png
    # REST (port 8501) instead of gRPC:
    python -m export.client --rest=http://localhost:8501 --signature=refine_then_classify --images=a.png --steps=10

Every request is built from the contract in `export.signatures` and, before it is sent, checked
against the SignatureDefs the server reports (GetModelMetadata), so a client/model mismatch is a
clear local error rather than a remote INVALID_ARGUMENT. The same request builder writes the
requests `export.serving_check` answers with TF Serving's C++ predict path.
"""

import base64
import json
import sys
import urllib.request

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from export import graph_audit
from export import signatures as sig

DEFAULT_MODEL_NAME = "jem"
DEFAULT_TIMEOUT_S = 60.0


class RequestMismatchError(ValueError):
    """A request does not fit the SignatureDef it is sent to."""


# -- requests and responses -------------------------------------------------------------------


def build_request(signature_name: str, inputs: dict, model_name: str = DEFAULT_MODEL_NAME,
                  version: int | None = None, output_filter=None) -> predict_pb2.PredictRequest:
    """A PredictRequest for `signature_name` with `inputs` converted to the contract's dtypes.

    Args:
      signature_name: one of `export.signatures.ALL_SIGNATURE_NAMES`.
      inputs: {input key: array-like}; exactly the signature's input keys. `image_bytes` takes a
        list of encoded images (bytes).
      model_name: the model's name in TF Serving's config.
      version: a specific model version; None lets the server pick its latest.
      output_filter: output keys to return; None for all.
    """
    contract = sig.contract_for(signature_name)
    expected = {item.key for item in contract.inputs}
    if set(inputs) != expected:
        raise RequestMismatchError(
            f"Signature {signature_name!r} takes inputs {sorted(expected)}; received {sorted(inputs)}."
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for item in contract.inputs:
        value = inputs[item.key]
        if item.dtype == "string":
            array = np.array([bytes(v) for v in value], dtype=object)
        else:
            array = np.asarray(value, dtype=item.dtype)
        request.inputs[item.key].CopyFrom(tf.make_tensor_proto(array, dtype=tf.dtypes.as_dtype(item.dtype)))
    if output_filter:
        request.output_filter.extend(output_filter)
    return request


def check_request(request: predict_pb2.PredictRequest, signature_defs: dict) -> None:
    """Raises RequestMismatchError unless `request` fits the served SignatureDef exactly: the
    signature exists, the input keys are the same, and each input's dtype and shape match (a
    SignatureDef dimension of -1 matches any size)."""
    name = request.model_spec.signature_name or sig.DEFAULT_SIGNATURE
    if name not in signature_defs:
        raise RequestMismatchError(f"The model has no signature {name!r}; it has {sorted(signature_defs)}.")
    signature_def = signature_defs[name]
    if set(request.inputs) != set(signature_def.inputs):
        raise RequestMismatchError(
            f"Signature {name!r} takes inputs {sorted(signature_def.inputs)}; "
            f"the request sends {sorted(request.inputs)}."
        )
    for key, tensor in request.inputs.items():
        info = signature_def.inputs[key]
        if tensor.dtype != info.dtype:
            raise RequestMismatchError(
                f"Input {key!r} of {name!r} must be {tf.dtypes.as_dtype(info.dtype).name}; "
                f"the request sends {tf.dtypes.as_dtype(tensor.dtype).name}."
            )
        sent = [dim.size for dim in tensor.tensor_shape.dim]
        if not info.tensor_shape.unknown_rank:
            wanted = [dim.size for dim in info.tensor_shape.dim]
            if len(sent) != len(wanted) or any(w != -1 and w != s for w, s in zip(wanted, sent, strict=True)):
                raise RequestMismatchError(
                    f"Input {key!r} of {name!r} must have shape {wanted} (-1: any size); the request sends {sent}."
                )
    unknown_outputs = set(request.output_filter) - set(signature_def.outputs)
    if unknown_outputs:
        raise RequestMismatchError(f"Signature {name!r} has no outputs {sorted(unknown_outputs)}.")


def response_to_numpy(response: predict_pb2.PredictResponse) -> dict:
    """{output key: numpy array} of a PredictResponse."""
    return {key: tf.make_ndarray(tensor) for key, tensor in response.outputs.items()}


def rest_body(signature_name: str, inputs: dict) -> dict:
    """The JSON body of a REST `:predict` call, in the columnar "inputs" format.

    The row ("instances") format cannot carry `refine_then_classify`: its scalar inputs have no
    batch dimension. Encoded images are sent as {"b64": ...}, as TF Serving's REST API requires.
    """
    contract = sig.contract_for(signature_name)
    body = {}
    for item in contract.inputs:
        value = inputs[item.key]
        if item.dtype == "string":
            body[item.key] = [{"b64": base64.b64encode(bytes(v)).decode("ascii")} for v in value]
        elif item.dtype.startswith("float"):
            # JSON numbers are typed by the server (from the signature); float64 keeps 0.01 as 0.01.
            body[item.key] = np.asarray(value, dtype=np.float64).tolist()
        else:
            body[item.key] = np.asarray(value, dtype=item.dtype).tolist()
    return {"signature_name": signature_name, "inputs": body}


def request_from_rest_body(body: dict, model_name: str = DEFAULT_MODEL_NAME) -> predict_pb2.PredictRequest:
    """The PredictRequest a REST `:predict` body in the columnar "inputs" format stands for,
    typed as TF Serving types it (by the signature's input dtypes); a body without
    "signature_name" goes to serving_default, as in TF Serving."""
    if "inputs" not in body:
        raise RequestMismatchError('Only the columnar {"inputs": {...}} REST format is supported here.')
    name = body.get("signature_name", sig.DEFAULT_SIGNATURE)
    inputs = {}
    for key, value in body["inputs"].items():
        is_bytes = key in {item.key for item in sig.contract_for(name).inputs if item.dtype == "string"}
        inputs[key] = [base64.b64decode(v["b64"]) for v in value] if is_bytes else value
    return build_request(name, inputs, model_name)


# -- SignatureDefs ----------------------------------------------------------------------------


def signature_defs_from_export(export_dir: str) -> dict:
    """{name: SignatureDef} of the `serve` MetaGraph of an export directory."""
    for meta_graph in graph_audit.read_saved_model(export_dir).meta_graphs:
        if sig.SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{export_dir!r} has no MetaGraph tagged {sig.SERVE_TAG!r}.")


def signature_defs_from_metadata_response(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """{name: SignatureDef} from TF Serving's GetModelMetadata answer."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return {name: meta_graph_pb2.SignatureDef.FromString(definition.SerializeToString())
            for name, definition in signature_map.signature_def.items()}


# -- transports -------------------------------------------------------------------------------


class GrpcClient:
    """Predicts over TF Serving's gRPC API (default port 8500)."""

    def __init__(self, target: str, model_name: str = DEFAULT_MODEL_NAME, version: int | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, channel=None):
        import grpc  # noqa: PLC0415 (only the gRPC transport needs it)
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: PLC0415

        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._signature_defs = None

    def signature_defs(self) -> dict:
        """The served SignatureDefs (fetched once)."""
        if self._signature_defs is None:
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            request.model_spec.name = self.model_name
            if self.version is not None:
                request.model_spec.version.value = int(self.version)
            request.metadata_field.append("signature_def")
            response = self._stub.GetModelMetadata(request, timeout=self.timeout_s)
            self._signature_defs = signature_defs_from_metadata_response(response)
        return self._signature_defs

    def predict(self, signature_name: str, inputs: dict, output_filter=None) -> dict:
        """Checks the request against the served signature, sends it, returns numpy outputs."""
        request = build_request(signature_name, inputs, self.model_name, self.version, output_filter)
        check_request(request, self.signature_defs())
        return response_to_numpy(self._stub.Predict(request, timeout=self.timeout_s))

    def classify(self, images) -> dict:
        return self.predict(sig.CLASSIFY, {sig.IMAGES: images})

    def energy(self, images) -> dict:
        return self.predict(sig.ENERGY, {sig.IMAGES: images})

    def refine_then_classify(self, images, steps, step_size, noise_std, seed=(0, 0)) -> dict:
        return self.predict(sig.REFINE_THEN_CLASSIFY, {
            sig.IMAGES: images, sig.STEPS: steps, sig.STEP_SIZE: step_size, sig.NOISE_STD: noise_std, sig.SEED: seed,
        })

    def classify_image_bytes(self, encoded_images) -> dict:
        return self.predict(sig.CLASSIFY_IMAGE_BYTES, {sig.IMAGE_BYTES: encoded_images})

    def close(self):
        self._channel.close()


def rest_predict(base_url: str, signature_name: str, inputs: dict, model_name: str = DEFAULT_MODEL_NAME,
                 version: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Predicts over TF Serving's REST API (default port 8501); returns {output key: numpy}."""
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "") + ":predict"
    request = urllib.request.Request(
        base_url.rstrip("/") + path,
        data=json.dumps(rest_body(signature_name, inputs)).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        outputs = json.load(reply)["outputs"]
    if not isinstance(outputs, dict):
        # TF Serving returns a bare list when a signature has a single output.
        outputs = {sig.contract_for(signature_name).outputs[0].key: outputs}
    return {key: np.asarray(value) for key, value in outputs.items()}


# -- command line -----------------------------------------------------------------------------


def load_images(paths, image_shape) -> tuple[list, np.ndarray]:
    """(encoded bytes, float32 [n, H, W, C] in [-1, 1]) of image files, decoded like the
    `classify_image_bytes` signature does (no resizing: files must already be H x W)."""
    from export.encoded_images import decode_image  # noqa: PLC0415 (the signature's own decoder)

    height, width, channels = image_shape
    encoded, scaled = [], []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        image = decode_image(tf.constant(data), channels)
        if tuple(image.shape[:2]) != (height, width):
            raise ValueError(f"{path}: the model takes {height}x{width} images; this one is "
                             f"{image.shape[0]}x{image.shape[1]}.")
        encoded.append(data)
        scaled.append(tf.cast(image, tf.float32).numpy() / 127.5 - 1.0)
    return encoded, np.stack(scaled)


def _image_shape(signature_defs: dict) -> tuple:
    dims = signature_defs[sig.CLASSIFY].inputs[sig.IMAGES].tensor_shape.dim
    return tuple(dim.size for dim in dims[1:])


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("server", None, "TF Serving gRPC address host:port (e.g. localhost:8500).")
    flags.DEFINE_string("rest", None, "TF Serving REST base URL (e.g. http://localhost:8501); instead of --server.")
    flags.DEFINE_string("export_dir", None, "With --rest: an export version directory to read the "
                        "SignatureDefs from (REST has no metadata call this client uses).")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "Model name in TF Serving's config.")
    flags.DEFINE_integer("version", None, "Model version (default: the server's latest).")
    flags.DEFINE_enum("signature", sig.CLASSIFY, list(sig.SIGNATURE_ORDER), "Signature to call.")
    flags.DEFINE_list("images", None, "Image files (PNG/JPEG/BMP/GIF) of the model's size.")
    flags.DEFINE_integer("steps", 10, "refine_then_classify: SGLD steps.")
    flags.DEFINE_float("step_size", 1.0, "refine_then_classify: SGLD step size.")
    flags.DEFINE_float("noise_std", 0.01, "refine_then_classify: SGLD noise std.")
    flags.DEFINE_list("seed", ["0", "0"], "refine_then_classify: two integers.")
    flags.mark_flag_as_required("images")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if bool(FLAGS.server) == bool(FLAGS.rest):
        raise app.UsageError("Pass exactly one of --server (gRPC) or --rest.")
    if FLAGS.rest and not FLAGS.export_dir:
        raise app.UsageError("--rest needs --export_dir to know the image shape and signatures.")
    client = GrpcClient(FLAGS.server, FLAGS.model_name, FLAGS.version) if FLAGS.server else None
    signature_defs = client.signature_defs() if client else signature_defs_from_export(FLAGS.export_dir)
    encoded, images = load_images(FLAGS.images, _image_shape(signature_defs))
    inputs = {
        sig.CLASSIFY: {sig.IMAGES: images},
        sig.ENERGY: {sig.IMAGES: images},
        sig.REFINE_THEN_CLASSIFY: {
            sig.IMAGES: images, sig.STEPS: FLAGS.steps, sig.STEP_SIZE: FLAGS.step_size,
            sig.NOISE_STD: FLAGS.noise_std, sig.SEED: [int(s) for s in FLAGS.seed],
        },
        sig.CLASSIFY_IMAGE_BYTES: {sig.IMAGE_BYTES: encoded},
    }[FLAGS.signature]
    try:
        if client:
            outputs = client.predict(FLAGS.signature, inputs)
        else:
            check_request(build_request(FLAGS.signature, inputs, FLAGS.model_name, FLAGS.version), signature_defs)
            outputs = rest_predict(FLAGS.rest, FLAGS.signature, inputs, FLAGS.model_name, FLAGS.version)
    except RequestMismatchError as error:
        logging.error("%s", error)
        sys.exit(2)
    # Refined images are large and rarely wanted on a terminal.
    outputs.pop(sig.REFINED_IMAGES, None)
    print(json.dumps({key: np.asarray(value).tolist() for key, value in outputs.items()}, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
