"""JEM and classifier train steps: the loss is Algorithm 1's, the buffer persists chains, and two
replicas compute what one device computes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from jem_tf import energy
from jem_tf.configs import get_preset
from trainers.classifier import Classifier
from trainers.distribution import distributed_train_step
from trainers.jem import JEM
from trainers.objectives import build_model

SHAPE = (8, 8, 1)
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
LABELS = (np.arange(8) % 4).astype(np.int32)


def _jem(**kwargs):
    settings = dict(buffer_size=32, sgld_steps=3, seed=7)
    settings.update(kwargs)
    model = JEM(10, 1, 4, **settings)
    model.build((None,) + SHAPE)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def test_generative_loss_is_samples_minus_data_log_px():
    model = _jem(sgld_steps=0, reinit_freq=0.0)
    # With no SGLD steps and no re-initialisation the samples are the drawn buffer slots, so the
    # loss can be recomputed by hand from the model before the update.
    weights = [w.numpy() for w in model.trainable_weights]
    buffer_before = model.replay_buffer.images.numpy().copy()
    logs = tf.function(model.train_step)((IMAGES, LABELS))
    changed = np.where(np.any(model.replay_buffer.images.numpy() != buffer_before, axis=(1, 2, 3)))[0]
    reference = _jem(sgld_steps=0, reinit_freq=0.0)
    for variable, value in zip(reference.trainable_weights, weights):
        variable.assign(value)
    assert len(changed) <= 8
    logits = reference(IMAGES, training=True)
    np.testing.assert_allclose(logs["xent"], np.mean(energy.cross_entropy(logits, LABELS)), rtol=1e-5)
    np.testing.assert_allclose(logs["log_px_data"], np.mean(energy.log_marginal(logits)), rtol=1e-5)
    np.testing.assert_allclose(logs["generative_loss"], logs["log_px_samples"] - logs["log_px_data"], rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], logs["xent"] + logs["generative_loss"], rtol=1e-5)


def test_p_xy_term_adds_class_conditional_chains():
    model = _jem(p_x_weight=0.0, p_xy_weight=1.0)
    logs = tf.function(model.train_step)((IMAGES, LABELS))
    assert "log_pxy_samples" in logs and "log_px_samples" not in logs
    np.testing.assert_allclose(logs["loss"], logs["xent"] + logs["generative_loss"], rtol=1e-5)


def test_train_step_updates_weights_and_writes_chains_back():
    model = _jem()
    before_weights = [w.numpy().copy() for w in model.trainable_weights]
    before_buffer = model.replay_buffer.images.numpy().copy()
    tf.function(model.train_step)((IMAGES, LABELS))
    assert int(model.optimizer.iterations) == 1
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before_weights, model.trainable_weights))
    changed = np.any(model.replay_buffer.images.numpy() != before_buffer, axis=(1, 2, 3)).sum()
    assert changed == len(IMAGES)  # one distinct slot per chain


def test_classifier_objective_has_no_energy_term_and_no_buffer():
    model = build_model(get_preset("quick").__class__(objective="classifier", depth=10, width=1), SHAPE, 4)
    assert isinstance(model, Classifier) and not isinstance(model, JEM)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = tf.function(model.train_step)((IMAGES, LABELS))
    assert set(logs) == {"loss", "xent", "accuracy"}
    np.testing.assert_allclose(logs["loss"], logs["xent"], rtol=1e-6)


def test_jem_without_any_generative_weight_is_refused():
    with pytest.raises(ValueError, match="classifier objective"):
        JEM(10, 1, 4, p_x_weight=0.0, p_xy_weight=0.0)


def test_jem_learns_to_classify_a_separable_toy_problem():
    model = _jem(sgld_steps=2)
    images = np.concatenate([np.full((8,) + SHAPE, -0.5), np.full((8,) + SHAPE, 0.5)]).astype(np.float32)
    images += RNG.normal(scale=0.05, size=images.shape).astype(np.float32)
    labels = np.array([0] * 8 + [1] * 8, np.int32)
    step = tf.function(model.train_step)
    xents = [float(step((images, labels))["xent"]) for _ in range(60)]
    # The energy term makes the path noisy (chains from a 32-slot buffer), but the classifier learns.
    assert min(xents[-10:]) < 0.5 * xents[0]
    predicted = np.argmax(model(images, training=False), axis=-1)
    assert np.mean(predicted == labels) >= 0.9


def _run_steps(strategy, initial_weights, steps=3):
    config = get_preset("quick")
    config.depth, config.width, config.buffer_size, config.sgld_steps, config.seed = 10, 1, 64, 2, 3
    # A small SGLD step keeps float summation-order differences from being amplified by the
    # chains over several steps; the arithmetic under test is the same at any step size.
    config.sgld_step_size = 0.1
    with strategy.scope():
        model = build_model(config, SHAPE, 4)
        # SGD, not Adam: Adam's first updates are ~lr * sign(gradient), which turns rounding-level
        # differences in near-zero gradients into full-size steps and hides what is compared here.
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        model.optimizer.build(model.trainable_variables)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(8).repeat(steps)
    train_step = distributed_train_step(model, strategy)
    losses = [float(train_step(batch)["loss"]) for batch in strategy.experimental_distribute_dataset(dataset)]
    buffer = np.stack([v.numpy() for v in strategy.experimental_local_results(model.replay_buffer.images)])
    return model, losses, buffer


def test_two_replicas_match_one_device(two_logical_cpus):
    initial = _run_steps(tf.distribute.OneDeviceStrategy("/cpu:0"), None, steps=0)[0].get_weights()
    one, one_losses, one_buffer = _run_steps(tf.distribute.OneDeviceStrategy("/cpu:0"), initial)
    two, two_losses, two_buffers = _run_steps(
        tf.distribute.MirroredStrategy(two_logical_cpus), initial
    )
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-4)
    movement = max(np.abs(a - b).max() for a, b in zip(one.get_weights(), initial))
    assert movement > 1e-3  # the comparison below is far tighter than what training changed
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    # Both replicas hold the same buffer, equal to the single device's: no update lost or drifted.
    np.testing.assert_array_equal(two_buffers[0], two_buffers[1])
    np.testing.assert_allclose(two_buffers[0], one_buffer[0], rtol=1e-4, atol=1e-5)


def test_xla_compiled_sampler_trains():
    model = _jem(sgld_jit_compile=True)
    assert model.sgld_jit_compile  # survives compile(), unlike Keras' own jit_compile attribute
    train_step = tf.function(model.train_step)
    graph = train_step.get_concrete_function((tf.TensorSpec(IMAGES.shape), tf.TensorSpec(LABELS.shape, tf.int32))).graph
    # The sampler is called as an XLA-compiled function inside the training step.
    assert any(function.definition.attr["_XlaMustCompile"].b for function in graph._functions.values())
    logs = train_step((IMAGES, LABELS))
    assert np.isfinite(float(logs["loss"])) and "log_px_samples" in logs


def test_auto_strategy_is_the_default_strategy_without_gpus():
    from trainers.distribution import make_strategy

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has GPUs")
    assert make_strategy("auto") is tf.distribute.get_strategy()
    assert make_strategy("default") is tf.distribute.get_strategy()
    assert isinstance(make_strategy("mirrored"), tf.distribute.MirroredStrategy)
