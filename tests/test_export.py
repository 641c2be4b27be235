"""SavedModel export: the contract, the semantics of every signature, input checks, determinism,
what is (not) exported, the op audit and the OOD threshold. In-process; the out-of-process proofs
(keras-free reload, saved_model_cli, the C++ loader, the client) are in test_export_serving.py.
"""

import collections
import functools
import json
import os
import re

import keras
import numpy as np
import pytest
import serving_oracle
import tensorflow as tf

from export import archive, client, graph_audit, ood_threshold
from export import signatures as sig
from export.serving_check import builder, request_cases, runner
from export.serving_functions import ServingFunctions
from jem_tf import energy
from jem_tf.models import WideResNet

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
OOD_THRESHOLD = 2.3
REFINE = {sig.STEPS: 3, sig.STEP_SIZE: 0.5, sig.NOISE_STD: 0.01, sig.SEED: [5, 6]}


def make_network(image_shape=IMAGE_SHAPE, seed=0, **kwargs):
    """A tiny random WRN-10-1; seeded so that every test sees the same weights."""
    keras.utils.set_random_seed(seed)
    network = WideResNet(10, 1, NUM_CLASSES, **kwargs)
    network.build((None, *image_shape))
    return network


def random_images(batch, image_shape=IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *image_shape)).astype(np.float32)


@pytest.fixture(scope="module")
def network():
    return make_network()


@pytest.fixture(scope="module")
def export_dir(network, tmp_path_factory):
    return archive.export_model(network, tmp_path_factory.mktemp("export"), 1, max_refine_steps=20,
                                   ood_threshold=OOD_THRESHOLD)


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(export_dir)


def call(loaded, name, inputs):
    """Calls a reloaded signature with numpy inputs converted to the contract's dtypes."""
    contract = sig.contract_for(name)
    tensors = {}
    for item in contract.inputs:
        value = inputs[item.key]
        tensors[item.key] = tf.constant(value, tf.string) if item.dtype == "string" else tf.constant(
            np.asarray(value, item.dtype))
    return {key: value.numpy() for key, value in loaded.signatures[name](**tensors).items()}


# -- the contract -----------------------------------------------------------------------------


def test_signature_defs_are_the_contract(export_dir):
    defs = client.signature_defs_from_export(export_dir)
    assert set(defs) - {"__saved_model_init_op"} == set(sig.ALL_SIGNATURE_NAMES)
    for name in sig.ALL_SIGNATURE_NAMES:
        contract = sig.contract_for(name)
        definition = defs[name]
        assert definition.method_name == "tensorflow/serving/predict"
        assert set(definition.inputs) == {item.key for item in contract.inputs}
        for item in contract.inputs:
            info = definition.inputs[item.key]
            assert info.dtype == tf.dtypes.as_dtype(item.dtype).as_datatype_enum, (name, item.key)
            wanted = [-1 if d is None else d for d in sig.concrete_shape(item.shape, IMAGE_SHAPE, NUM_CLASSES)]
            assert [d.size for d in info.tensor_shape.dim] == wanted, (name, item.key)
        assert set(definition.outputs) == set(contract.output_keys(with_ood=True))
        for item in contract.outputs:
            assert definition.outputs[item.key].dtype == tf.dtypes.as_dtype(item.dtype).as_datatype_enum
            # The batch dimension is dynamic in every output.
            assert definition.outputs[item.key].tensor_shape.dim[0].size == -1
    # serving_default is classify under TF Serving's default name (its tensor names differ).
    for field in ("inputs", "outputs"):
        default, classify = getattr(defs[sig.DEFAULT_SIGNATURE], field), getattr(defs[sig.CLASSIFY], field)
        assert {key: (info.dtype, info.tensor_shape) for key, info in default.items()} == {
            key: (info.dtype, info.tensor_shape) for key, info in classify.items()}


def test_metadata_records_contract_rules_and_threshold(export_dir):
    metadata = archive.read_metadata(export_dir)
    assert metadata["image_shape"] == list(IMAGE_SHAPE)
    assert metadata["num_classes"] == NUM_CLASSES
    assert metadata["contract_version"] == sig.CONTRACT_VERSION
    assert metadata["input_rules"]["max_refine_steps"] == 20
    assert metadata["input_rules"]["max_step_size"] == sig.DEFAULT_MAX_STEP_SIZE
    assert metadata["input_rules"]["max_noise_std"] == sig.DEFAULT_MAX_NOISE_STD
    assert metadata["input_rules"]["max_batch_size"] == sig.DEFAULT_MAX_BATCH_SIZE
    assert metadata["input_rules"]["image_bytes_formats"] == ["PNG", "JPEG", "BMP", "GIF"]
    assert metadata["input_rules"]["image_bytes_size"] == list(IMAGE_SHAPE[:2])
    assert metadata["ood"]["threshold"] == OOD_THRESHOLD
    assert metadata["ood"]["rule"] == "is_out_of_distribution = log_px < threshold"
    assert metadata["network"] == dict(depth=10, width=1, num_classes=10, norm="none", activation="leaky_relu",
                                       dropout_rate=0.0)
    assert set(metadata["signatures"]) == set(sig.ALL_SIGNATURE_NAMES)
    steps = metadata["signatures"][sig.REFINE_THEN_CLASSIFY]["inputs"][sig.STEPS]
    assert (steps["dtype"], steps["shape"]) == ("int32", [])


# -- semantics --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [sig.CLASSIFY, sig.ENERGY, sig.REFINE_THEN_CLASSIFY, sig.CLASSIFY_IMAGE_BYTES])
def test_reloaded_signature_matches_in_memory_model(network, loaded, name):
    inputs = request_cases.valid_inputs(name, IMAGE_SHAPE, batch_size=3, seed=1)
    if name == sig.REFINE_THEN_CLASSIFY:
        inputs.update(REFINE)
    got = call(loaded, name, inputs)
    want = serving_oracle.expected_outputs(network, name, inputs, OOD_THRESHOLD)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=f"{name}.{key}")


def test_classify_outputs_are_consistent(loaded):
    out = call(loaded, sig.CLASSIFY, {sig.IMAGES: random_images(6)})
    np.testing.assert_allclose(out[sig.PROBABILITIES].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[sig.CLASS_ID], out[sig.LOGITS].argmax(-1))
    np.testing.assert_allclose(out[sig.LOG_PX], np.log(np.exp(out[sig.LOGITS].astype(np.float64)).sum(-1)), rtol=1e-5)
    np.testing.assert_array_equal(out[sig.IS_OUT_OF_DISTRIBUTION], out[sig.LOG_PX] < OOD_THRESHOLD)


def test_energy_is_negative_log_px_and_class_energies_negative_logits(loaded):
    images = {sig.IMAGES: random_images(4, seed=2)}
    classified = call(loaded, sig.CLASSIFY, images)
    energies = call(loaded, sig.ENERGY, images)
    np.testing.assert_allclose(energies[sig.ENERGY_OUTPUT], -classified[sig.LOG_PX], rtol=1e-6)
    np.testing.assert_allclose(energies[sig.CLASS_ENERGIES], -classified[sig.LOGITS], rtol=1e-6)
    assert np.all(energies[sig.SCORE_GRAD_NORM] > 0)


def test_refine_with_zero_steps_is_classify_exactly(loaded):
    images = random_images(3, seed=3)
    classified = call(loaded, sig.CLASSIFY, {sig.IMAGES: images})
    refined = call(loaded, sig.REFINE_THEN_CLASSIFY, {sig.IMAGES: images, **REFINE, sig.STEPS: 0})
    np.testing.assert_array_equal(refined[sig.REFINED_IMAGES], images)
    for key, value in classified.items():
        np.testing.assert_array_equal(refined[key], value, err_msg=key)


def test_refine_without_noise_is_deterministic_and_seed_free(loaded):
    inputs = {sig.IMAGES: random_images(2, seed=4), **REFINE, sig.NOISE_STD: 0.0}
    first = call(loaded, sig.REFINE_THEN_CLASSIFY, inputs)
    again = call(loaded, sig.REFINE_THEN_CLASSIFY, {**inputs, sig.SEED: [99, 100]})
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.array_equal(first[sig.REFINED_IMAGES], inputs[sig.IMAGES])


def test_refine_noise_is_a_function_of_the_seed(loaded):
    inputs = {sig.IMAGES: random_images(2, seed=5), **REFINE, sig.NOISE_STD: 0.1}
    first = call(loaded, sig.REFINE_THEN_CLASSIFY, inputs)[sig.REFINED_IMAGES]
    np.testing.assert_array_equal(first, call(loaded, sig.REFINE_THEN_CLASSIFY, inputs)[sig.REFINED_IMAGES])
    other = call(loaded, sig.REFINE_THEN_CLASSIFY, {**inputs, sig.SEED: [7, 8]})[sig.REFINED_IMAGES]
    assert not np.allclose(first, other)


def test_image_bytes_apply_the_training_preprocessing(loaded):
    pixels = np.random.default_rng(6).integers(0, 256, (2, *IMAGE_SHAPE), dtype=np.uint8)
    encoded = [tf.io.encode_png(image).numpy() for image in pixels]
    from_bytes = call(loaded, sig.CLASSIFY_IMAGE_BYTES, {sig.IMAGE_BYTES: encoded})
    from_floats = call(loaded, sig.CLASSIFY, {sig.IMAGES: pixels.astype(np.float32) / 127.5 - 1.0})
    for key in from_floats:
        np.testing.assert_allclose(from_bytes[key], from_floats[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_colour_jpeg_is_converted_to_the_model_channels(loaded):
    rgb = np.full((*IMAGE_SHAPE[:2], 3), 128, np.uint8)
    out = call(loaded, sig.CLASSIFY_IMAGE_BYTES, {sig.IMAGE_BYTES: [tf.io.encode_jpeg(rgb).numpy()]})
    assert out[sig.LOGITS].shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("case", sorted(request_cases.format_inputs(IMAGE_SHAPE)))
def test_every_advertised_format_is_decoded_on_a_one_channel_model(network, loaded, case):
    inputs = request_cases.format_inputs(IMAGE_SHAPE)[case]
    got = call(loaded, sig.CLASSIFY_IMAGE_BYTES, inputs)
    want = serving_oracle.expected_outputs(network, sig.CLASSIFY_IMAGE_BYTES, inputs, OOD_THRESHOLD)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_limits_are_baked_in_at_export(network, tmp_path):
    export_dir = archive.export_model(network, tmp_path, 1, max_step_size=2.0, max_noise_std=0.5, max_batch_size=3)
    rules = archive.read_metadata(export_dir)["input_rules"]
    assert (rules["max_step_size"], rules["max_noise_std"], rules["max_batch_size"]) == (2.0, 0.5, 3)
    reloaded = tf.saved_model.load(export_dir)
    inputs = {sig.IMAGES: random_images(3), **REFINE}
    call(reloaded, sig.REFINE_THEN_CLASSIFY, {**inputs, sig.STEP_SIZE: 2.0, sig.NOISE_STD: 0.5})
    for override, message in (({sig.STEP_SIZE: 2.01}, "step_size must be a finite number in [0, 2]"),
                              ({sig.NOISE_STD: 0.51}, "noise_std must be a finite number in [0, 0.5]"),
                              ({sig.IMAGES: random_images(4)}, "must hold at most 3 images")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            call(reloaded, sig.REFINE_THEN_CLASSIFY, {**inputs, **override})


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_step_size=float("inf")), "max_step_size must be a finite number"),
    (dict(max_step_size=1e39), "max_step_size must be a finite number"),
    (dict(max_noise_std=-1.0), "max_noise_std must be a finite number"),
    (dict(max_noise_std=float("nan")), "max_noise_std must be a finite number"),
    (dict(max_batch_size=0), "max_batch_size must be a positive integer"),
    (dict(max_batch_size=2.5), "max_batch_size must be a positive integer"),
])
def test_bad_limits_are_refused_at_export(network, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        archive.export_model(network, tmp_path, 1, **kwargs)
    assert not os.listdir(tmp_path)


def test_values_within_rounding_tolerance_are_clipped(loaded):
    images = random_images(2, seed=7)
    images[0, 0, 0, 0] = 1.0 + sig.IMAGE_RANGE_TOLERANCE / 2
    images[1, 0, 0, 0] = -1.0 - sig.IMAGE_RANGE_TOLERANCE / 2
    clipped = np.clip(images, -1, 1)
    got = call(loaded, sig.CLASSIFY, {sig.IMAGES: images})
    want = call(loaded, sig.CLASSIFY, {sig.IMAGES: clipped})
    np.testing.assert_array_equal(got[sig.LOGITS], want[sig.LOGITS])


# -- bad inputs -------------------------------------------------------------------------------


def _python_callable_bad_cases():
    """The bad-input cases whose dtypes fit the declared signature (Python's loader refuses other
    dtypes itself, before the graph runs; the C++ test covers those). Wrong shapes are sent: a
    loaded signature does not check them in Python, so the graph must. The WebP bomb is sent only
    to memory-limited processes (test_export_serving, tests/hostile_inputs.py): if its refusal
    regressed, it would decode to 6.9 GB in this one."""
    cases = []
    for case in request_cases.bad_input_cases(IMAGE_SHAPE, max_refine_steps=20):
        name = case.request.model_spec.signature_name
        if "webp" in case.name:
            continue
        if all(proto.dtype == tf.dtypes.as_dtype(sig.contract_for(name).input(key).dtype).as_datatype_enum
               for key, proto in case.request.inputs.items()):
            cases.append(case)
    return cases


@pytest.mark.parametrize("case", _python_callable_bad_cases(), ids=lambda case: case.name)
def test_bad_input_is_refused_with_a_clear_message(loaded, case):
    name = case.request.model_spec.signature_name
    inputs = {key: tf.make_ndarray(proto) for key, proto in case.request.inputs.items()}
    if sig.IMAGE_BYTES in inputs:
        # A list of bytes (a numpy object array is not a string tensor); a scalar stays a scalar.
        encoded = inputs[sig.IMAGE_BYTES]
        inputs[sig.IMAGE_BYTES] = list(encoded) if encoded.ndim else encoded.item()
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(case.expected_error[1])):
        call(loaded, name, inputs)


def test_bad_input_cases_cover_the_issue_list():
    names = {case.name for case in request_cases.bad_input_cases(IMAGE_SHAPE, 20)}
    for required in ("bad_classify_wrong_size", "bad_classify_wrong_channels", "bad_classify_nan", "bad_classify_inf",
                     "bad_refine_steps_negative", "bad_refine_steps_too_many", "bad_refine_noise_negative",
                     "bad_classify_empty_batch", "bad_classify_above_range", "bad_bytes_wrong_size",
                     "bad_refine_step_size_float32_max", "bad_refine_step_size_1e30", "bad_refine_noise_3e38",
                     "bad_classify_batch_too_large", "bad_energy_batch_too_large",
                     "bad_refine_then_classify_batch_too_large",
                     "bad_bytes_batch_too_large", "bad_bytes_header_20000x20000_png", "bad_bytes_wrong_size_bmp",
                     "bad_bytes_wrong_size_gif", "bad_bytes_wrong_size_jpeg", "bad_bytes_webp_16000x16000",
                     "bad_bytes_lying_png_over_max_image_bytes", "bad_bytes_request_over_max_request_bytes",
                     "bad_bytes_scalar_string", "bad_refine_steps_vector_of_one", "bad_classify_rank_5"):
        assert required in names


@pytest.mark.parametrize("inflated_bytes", [(3 << 20) + 5, 1 << 20, 7])
def test_a_lying_png_is_a_valid_png_whose_data_inflates_to_the_given_size(inflated_bytes):
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    for _ in range(2):  # the second one from the cached stream: the same image
        data = request_cases.lying_png(5, 9, inflated_bytes)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        chunks, position = {}, 8
        while position < len(data):
            (length,), kind = struct.unpack(">I", data[position:position + 4]), data[position + 4:position + 8]
            payload = data[position + 8:position + 8 + length]
            assert struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0] == zlib.crc32(
                kind + payload)
            chunks[kind], position = payload, position + 12 + length
        assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
        assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (9, 5, 8, 0, 0, 0, 0)
        assert zlib.decompress(chunks[b"IDAT"]) == bytes(inflated_bytes)


# -- the export directory ---------------------------------------------------------------------


def test_existing_version_is_refused_unless_overwrite(network, tmp_path):
    first = archive.export_model(network, tmp_path, 3)
    assert first == os.path.join(tmp_path, "3")
    with pytest.raises(FileExistsError, match="overwrite"):
        archive.export_model(network, tmp_path, 3)
    marker = os.path.join(first, "marker")
    open(marker, "w").close()
    assert archive.export_model(network, tmp_path, 3, overwrite=True) == first
    assert not os.path.exists(marker)
    # No staging or retired directories are left for TF Serving to trip over.
    assert sorted(os.listdir(tmp_path)) == ["3"]


@pytest.mark.parametrize("version", [-1, 1.5, "2", True])
def test_bad_version_is_refused(network, tmp_path, version):
    with pytest.raises(ValueError, match="version"):
        archive.export_model(network, tmp_path, version)


def test_export_traces_each_signature_once(network, tmp_path, monkeypatch):
    # Tracing is most of an export's time; a SavedModel save used to trace every signature again.
    traces = collections.Counter()
    function = ServingFunctions.function

    def counted(self, name):
        serving_function = function(self, name)

        @functools.wraps(serving_function)  # keeps the argument names, the signature's input keys
        def traced(*args, **kwargs):
            traces[name] += 1
            return serving_function(*args, **kwargs)

        return traced

    monkeypatch.setattr(ServingFunctions, "function", counted)
    archive.export_model(network, tmp_path, 1, max_refine_steps=20)
    assert traces == {name: 1 for name in sig.SIGNATURE_ORDER}


def test_export_is_deterministic(network, export_dir, tmp_path):
    again = archive.export_model(network, tmp_path, 1, max_refine_steps=20, ood_threshold=OOD_THRESHOLD)
    assert client.signature_defs_from_export(again) == client.signature_defs_from_export(export_dir)
    with open(os.path.join(export_dir, sig.METADATA_DIR, sig.METADATA_FILE)) as a, \
            open(os.path.join(again, sig.METADATA_DIR, sig.METADATA_FILE)) as b:
        assert a.read() == b.read()
    first = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    second = tf.train.load_checkpoint(os.path.join(again, "variables", "variables"))
    names = sorted(first.get_variable_to_shape_map())
    assert names == sorted(second.get_variable_to_shape_map())
    for name in names:
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            np.testing.assert_array_equal(first.get_tensor(name), second.get_tensor(name), err_msg=name)


def exported_arrays(export_dir):
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    return [reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def _multiset(arrays):
    return sorted((array.shape, array.tobytes()) for array in arrays)


def test_export_holds_each_network_weight_once(network, export_dir):
    assert _multiset(exported_arrays(export_dir)) == _multiset([w.numpy() for w in network.weights])


def test_trainer_model_is_exported_without_its_training_state(tmp_path):
    from trainers.jem import JEM  # noqa: PLC0415

    keras.utils.set_random_seed(1)
    model = JEM(depth=10, width=1, num_classes=NUM_CLASSES, buffer_size=64, sgld_steps=1)
    model.build((None, *IMAGE_SHAPE))
    assert model.replay_buffer is not None
    path = archive.export_model(model, tmp_path, 1)
    network_weights = [w.numpy() for w in model.to_wide_resnet().weights]
    assert _multiset(exported_arrays(path)) == _multiset(network_weights)


def test_batch_norm_network_exports_its_moving_statistics(tmp_path):
    network = make_network(norm="batch", dropout_rate=0.1, seed=2)
    # Non-trivial moving statistics, so that inference mode is observable.
    for weight in network.non_trainable_weights:
        weight.assign(tf.random.stateless_uniform(weight.shape, [1, 2], 0.5, 1.5))
    path = archive.export_model(network, tmp_path, 1)
    images = random_images(2, seed=8)
    got = call(tf.saved_model.load(path), sig.CLASSIFY, {sig.IMAGES: images})
    want = serving_oracle.expected_outputs(network, sig.CLASSIFY, {sig.IMAGES: images})
    np.testing.assert_allclose(got[sig.LOGITS], want[sig.LOGITS], rtol=1e-5, atol=1e-5)


def test_export_without_threshold_has_no_ood_output(network, tmp_path):
    path = archive.export_model(network, tmp_path, 1)
    defs = client.signature_defs_from_export(path)
    for name in sig.ALL_SIGNATURE_NAMES:
        assert sig.IS_OUT_OF_DISTRIBUTION not in defs[name].outputs
    assert archive.read_metadata(path)["ood"]["threshold"] is None


# -- servability: every op is a registered C++ op ----------------------------------------------


def test_every_op_is_registered_and_none_is_python_backed(export_dir):
    ops = graph_audit.op_locations(graph_audit.read_saved_model(export_dir))
    assert "While" in ops or "StatelessWhile" in ops  # refinement runs inside the graph
    assert not set(ops) & graph_audit.PYTHON_BACKED_OPS
    assert graph_audit.find_unservable_ops(export_dir) == []


def test_audit_catches_python_ops(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: tf.py_function(lambda v: v * 2, [x], tf.float32),
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f.get_concrete_function()})
    problems = graph_audit.find_unservable_ops(str(tmp_path))
    assert any("EagerPyFunc" in problem for problem in problems), problems


# -- OOD threshold ----------------------------------------------------------------------------


def test_threshold_keeps_at_least_the_requested_fraction():
    log_px = np.random.default_rng(0).normal(size=1000)
    info = ood_threshold.ood_threshold_from_log_px(log_px, 0.05)
    flagged = np.mean(log_px < info["threshold"])
    assert 0.04 <= flagged <= 0.05
    assert info["kept_fraction"] == pytest.approx(1 - flagged)
    assert info["threshold"] in log_px
    assert info["num_images"] == 1000 and info["quantile"] == 0.05


@pytest.mark.parametrize("values", [[], [1.0, np.nan], [[1.0]]])
def test_threshold_refuses_bad_statistics(values):
    with pytest.raises(ValueError):
        ood_threshold.ood_threshold_from_log_px(np.asarray(values, np.float64))


def test_log_px_of_images_traces_once_for_every_batch_size(network):
    traces = []

    def counting_network(images, training):
        traces.append(images.shape)
        return network(images, training=training)

    images = np.random.default_rng(0).uniform(-1, 1, [10, *network.input_image_shape]).astype(np.float32)
    log_px = ood_threshold.log_px_of_images(counting_network, [images[:4], (images[4:8], None), images[8:]])
    np.testing.assert_allclose(log_px, energy.log_marginal(network(images, training=False)).numpy(), rtol=1e-5)
    assert len(traces) == 1  # the last batch of 2 reuses the trace of the batches of 4


def test_validation_threshold_from_the_digits_data(network):
    from jem_tf.configs.quick import get_config  # noqa: PLC0415

    threshold, info = ood_threshold.validation_ood_threshold(network, get_config(), max_images=100)
    assert info["split"] == "validation" and info["num_images"] == 100
    assert threshold == info["threshold"] and np.isfinite(threshold)


def test_unavailable_data_gives_no_threshold_and_says_why(network):
    from jem_tf.configs.quick import get_config  # noqa: PLC0415

    config = get_config()
    config.dataset = "folder:/nonexistent/jem_tf_export_test"
    threshold, info = ood_threshold.validation_ood_threshold(network, config)
    assert threshold is None and info["threshold"] is None and "not available" in info["reason"]


def test_metadata_is_json_with_sorted_keys(export_dir):
    with open(os.path.join(export_dir, sig.METADATA_DIR, sig.METADATA_FILE)) as f:
        text = f.read()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


# -- the deployment kit's REST examples (written for the 8x8x1 quick model) ---------------------

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export", "serving",
                            "requests")


def example_requests():
    requests = {}
    for file in sorted(os.listdir(EXAMPLES_DIR)):
        if file.endswith(".json"):
            with open(os.path.join(EXAMPLES_DIR, file)) as f:
                requests[file] = client.request_from_rest_body(json.load(f))
    return requests


def test_rest_examples_cover_every_signature_and_fit_the_signature_defs(export_dir):
    requests = example_requests()
    served = {request.model_spec.signature_name for request in requests.values()}
    assert served == set(sig.ALL_SIGNATURE_NAMES)
    defs = client.signature_defs_from_export(export_dir)
    for request in requests.values():
        client.check_request(request, defs)


def test_rest_examples_answer_like_the_in_memory_model(network, loaded):
    for file, request in example_requests().items():
        name = request.model_spec.signature_name
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        if sig.IMAGE_BYTES in inputs:
            inputs[sig.IMAGE_BYTES] = list(inputs[sig.IMAGE_BYTES])
        got = call(loaded, name, inputs)
        want = serving_oracle.expected_outputs(network, name, inputs, OOD_THRESHOLD)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=f"{file}: {key}")


@pytest.mark.slow
def test_rest_examples_are_served_by_the_cpp_loader(export_dir, tmp_path):
    if builder.find_compiler() is None:
        pytest.skip("No C++ compiler ($CXX, c++, g++ or clang++) to build export/serving_check.")
    cases = [request_cases.Case(file[:-5], request) for file, request in example_requests().items()]
    result = runner.run(builder.build(), export_dir, request_cases.write_cases(cases, str(tmp_path)))
    assert result.returncode == 0, result.stdout[-4000:]
