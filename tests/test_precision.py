"""Mixed precision: what computes in 16 bits and what stays float32, loss scaling, the float16
SGLD score, resume of a float16 run, and a mixed-precision export that serves float32."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import archive, savedmodel
from export import signatures as sig
from jem_tf import energy, precision
from jem_tf.configs.base import TrainConfig, incompatible_fields
from jem_tf.models import WideResNet
from jem_tf.workdir import restore
from trainers import distribution, loop
from trainers.jem import JEM

SHAPE = (8, 8, 1)
IMAGES = np.random.default_rng(0).uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
LABELS = (np.arange(8) % 4).astype(np.int32)
COMPUTE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def _network(policy, shape=SHAPE, depth=10, width=1, classes=4):
    network = WideResNet(depth, width, classes, dtype=policy)
    network.build((None,) + shape)
    return network


def _jem(policy, **kwargs):
    settings = dict(buffer_size=32, sgld_steps=2, seed=3)
    settings.update(kwargs)
    model = JEM(10, 1, 4, dtype=policy, **settings)
    model.build((None,) + SHAPE)
    model.compile(optimizer=precision.make_optimizer(keras.optimizers.Adam(1e-3), policy))
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("policy", precision.PRECISIONS)
def test_blocks_compute_in_the_policy_and_the_energy_stays_float32(policy):
    network = _network(policy)
    sixteen_bit = [network.stem, network.stage1_block1.conv1, network.stage3_block1.conv2, network.final_act]
    assert {layer.compute_dtype for layer in sixteen_bit} == {COMPUTE_DTYPE[policy]}
    assert network.pool.compute_dtype == "float32" and network.classifier.compute_dtype == "float32"
    assert {weight.dtype for weight in network.weights} == {"float32"}
    logits = network(IMAGES, training=False)
    assert logits.dtype == tf.float32
    log_px, score = energy.log_density_and_score(
        energy.marginal_log_density(lambda x: network(x, training=False)), tf.constant(IMAGES),
        precision.input_gradient_scale(network))
    assert log_px.dtype == tf.float32 and score.dtype == tf.float32
    assert precision.precision_of(network) == policy


def test_16_bit_logits_are_close_to_float32_with_the_same_weights():
    networks = {policy: _network(policy) for policy in precision.PRECISIONS}
    weights = networks["float32"].get_weights()
    for network in networks.values():
        network.set_weights(weights)
    reference = networks["float32"](IMAGES).numpy()
    for policy in ("mixed_bfloat16", "mixed_float16"):
        got = networks[policy](IMAGES).numpy()
        assert not np.array_equal(got, reference), f"{policy} did not compute in 16 bits"
        np.testing.assert_allclose(got, reference, atol=0.05 * np.abs(reference).max())


def test_unknown_precision_is_refused_naming_it():
    with pytest.raises(ValueError, match="--precision='float64'"):
        precision.dtype_policy("float64")
    with pytest.raises(ValueError, match="--precision='half'"):
        TrainConfig(precision="half").validate()


def test_precision_is_resume_invariant():
    assert incompatible_fields(TrainConfig(), TrainConfig(precision="mixed_bfloat16")) == [
        "precision: 'float32' -> 'mixed_bfloat16'"]


def _scores(network, images, scale):
    log_density = energy.marginal_log_density(lambda x: network(x, training=False))
    return energy.log_density_and_score(log_density, tf.constant(images), scale)[1].numpy()


def test_float16_sgld_score_needs_and_gets_scaling():
    """d log p~(x)/dx through a float16 network, w.r.t. float32 images, against float32.

    A small-output head makes the true score small (as it is for a flat energy landscape): then
    float16's backward pass underflows without scaling, and with the scaling it matches float32.
    """
    images = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    half, full = _network("mixed_float16", (16, 16, 3), width=2), _network("float32", (16, 16, 3), width=2)
    weights = full.get_weights()
    kernel_index = next(i for i, w in enumerate(full.weights) if w.path == full.classifier.kernel.path)
    weights[kernel_index] = weights[kernel_index] * 1e-3
    for network in (half, full):
        network.set_weights(weights)
    reference = _scores(full, images, 1.0)
    assert np.all(reference != 0)
    # Power-of-two scaling leaves a float32 score bit-identical.
    np.testing.assert_array_equal(_scores(full, images, precision.FLOAT16_INPUT_GRADIENT_SCALE), reference)

    def relative_error(score):
        return np.linalg.norm(score - reference) / np.linalg.norm(reference)

    unscaled = _scores(half, images, 1.0)
    assert relative_error(unscaled) > 0.2, "expected float16 underflow without scaling"
    scaled = _scores(half, images, precision.input_gradient_scale(half))
    assert precision.input_gradient_scale(half) == precision.FLOAT16_INPUT_GRADIENT_SCALE
    assert np.mean(scaled == 0) < 0.01
    assert relative_error(scaled) < 0.05


def test_float16_score_scale_does_not_overflow_a_large_gradient():
    images = np.random.default_rng(2).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    half, full = _network("mixed_float16", (16, 16, 3), width=2), _network("float32", (16, 16, 3), width=2)
    weights = [w * 3.0 for w in full.get_weights()]  # logits and gradients far above a fresh network's
    for network in (half, full):
        network.set_weights(weights)
    reference = _scores(full, images, 1.0)
    scaled = _scores(half, images, precision.input_gradient_scale(half))
    assert np.all(np.isfinite(scaled))
    assert np.linalg.norm(scaled - reference) / np.linalg.norm(reference) < 0.05


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_jem_step_trains_and_keeps_float32_state(policy):
    model = _jem(policy)
    before = [w.numpy().copy() for w in model.trainable_weights]
    buffer_before = model.replay_buffer.images.numpy().copy()
    step = tf.function(model.train_step)
    for _ in range(3):
        logs = step((IMAGES, LABELS))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert logs["log_px_samples"].dtype == tf.float32
    assert model.replay_buffer.images.dtype == tf.float32
    assert not np.array_equal(model.replay_buffer.images.numpy(), buffer_before)
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights))
    assert int(model.optimizer.iterations) == 3
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_skipped_float16_step_still_counts_as_a_step():
    model = _jem("mixed_float16")
    # A loss scale this large overflows float16 gradients: the update must be skipped, the scale
    # halved, and the step counted (the loop's global step is `iterations`).
    model.optimizer.dynamic_scale.assign(2.0**120)
    before = [w.numpy().copy() for w in model.trainable_weights]
    tf.function(model.train_step)((IMAGES, LABELS))
    assert int(model.optimizer.iterations) == 1
    assert float(model.optimizer.dynamic_scale) == 2.0**119
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights))


def test_skipped_float16_step_counts_once_under_two_replicas(two_logical_cpus):
    strategy = tf.distribute.MirroredStrategy(two_logical_cpus)
    with strategy.scope():
        model = _jem("mixed_float16")
    model.optimizer.dynamic_scale.assign(2.0**120)
    step = distribution.distributed_train_step(model, strategy)
    dataset = tf.data.Dataset.from_tensors((IMAGES, LABELS))
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**119
    # Every further step counts once as well, whether or not its update is applied.
    for batch in strategy.experimental_distribute_dataset(dataset):
        logs = step(batch)
    assert int(model.optimizer.iterations.numpy()) == 2 and np.isfinite(float(logs["loss"]))


def _tiny_config(workdir, policy, max_steps):
    return TrainConfig(
        preset="quick", dataset="digits", workdir=str(workdir), depth=10, width=1, batch_size=16, buffer_size=64,
        sgld_steps=2, max_steps=max_steps, precision=policy, export=False, checkpoint_every_steps=2,
        summary_every_steps=2, sample_every_steps=100, warmup_steps=2,
    )


def test_float16_run_resumes_bit_identically(tmp_path):
    """The loss scale is checkpointed: stopping at step 2 and resuming ends where one run ends."""
    loop.train(_tiny_config(tmp_path / "straight", "mixed_float16", 4))
    loop.train(_tiny_config(tmp_path / "resumed", "mixed_float16", 2))
    metrics = loop.train(_tiny_config(tmp_path / "resumed", "mixed_float16", 4))
    assert metrics["global_step"] == 4 and metrics["steps_this_session"] == 2
    straight = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "straight" / "checkpoints")))
    resumed = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "resumed" / "checkpoints")))
    graph = "_CHECKPOINTABLE_OBJECT_GRAPH"
    names = sorted(name for name in straight.get_variable_to_shape_map() if name != graph)
    assert any("dynamic_scale" in name for name in names)
    assert names == sorted(name for name in resumed.get_variable_to_shape_map() if name != graph)
    for name in names:
        np.testing.assert_array_equal(straight.get_tensor(name), resumed.get_tensor(name), err_msg=name)


def _conv_dtypes(export_dir):
    """The dtypes (DataType enums) of every Conv2D in a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    graph = saved_model.meta_graphs[0].graph_def
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    return {node.attr["T"].type for node in nodes if node.op == "Conv2D"}


def test_bfloat16_run_exports_a_float32_servable_model(tmp_path):
    workdir = tmp_path / "run"
    loop.train(_tiny_config(workdir, "mixed_bfloat16", 2))
    path = savedmodel.export_run(str(workdir), str(tmp_path / "export"))
    metadata = archive.read_metadata(path)
    assert metadata["precision"]["policy"] == "mixed_bfloat16"
    assert metadata["precision"]["compute_dtype"] == "bfloat16"
    loaded = tf.saved_model.load(path)
    images = tf.constant(IMAGES)
    for name, inputs in (
        (sig.CLASSIFY, {sig.IMAGES: images}),
        (sig.ENERGY, {sig.IMAGES: images}),
        (sig.REFINE_THEN_CLASSIFY, {sig.IMAGES: images, sig.STEPS: tf.constant(2), sig.STEP_SIZE: tf.constant(1.0),
                                    sig.NOISE_STD: tf.constant(0.01), sig.SEED: tf.constant([1, 2], tf.int64)}),
    ):
        signature = loaded.signatures[name]
        assert {spec.dtype for spec in signature.structured_input_signature[1].values()} <= {
            tf.float32, tf.int32, tf.int64}
        outputs = signature(**inputs)
        for key, value in outputs.items():
            if value.dtype.is_floating:
                assert value.dtype == tf.float32, (name, key)
                assert np.all(np.isfinite(value.numpy())), (name, key)
    # The export computes in bfloat16 (its convolutions), not in a float32 copy of the network...
    assert _conv_dtypes(path) == {tf.bfloat16.as_datatype_enum}
    model, _, _ = restore.restore_run(str(workdir))
    reference = model(images, training=False).numpy()
    np.testing.assert_allclose(loaded.signatures[sig.CLASSIFY](images=images)[sig.LOGITS].numpy(), reference,
                               atol=0.05 * np.abs(reference).max())
    # ...and a float32 export of the same run is recorded as such.
    path32 = savedmodel.export_run(str(workdir), str(tmp_path / "export32"), precision="float32")
    assert archive.read_metadata(path32)["precision"]["policy"] == "float32"
    assert _conv_dtypes(path32) == {tf.float32.as_datatype_enum}
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["precision"] == "mixed_bfloat16"
