"""Sharpness-aware minimisation (--sam_rho, --sam_adaptive; issue #8 variant 6, SADA-JEM): the update
is the one SAM / ASAM prescribes, computed here independently by moving real weights; rho = 0 is
the plain step bit for bit; two replicas agree with one device; loss scaling is undone."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from jem_tf import energy, precision
from jem_tf.configs import get_preset
from trainers import objectives
from trainers.classifier import Classifier
from trainers.distribution import distributed_train_step
from trainers.jem import JEM

SHAPE = (8, 8, 1)
RNG = np.random.default_rng(5)
IMAGES = RNG.uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
# A second view of the images (as --generative_augmentation=none gives the log p(x) term).
GENERATIVE_IMAGES = np.clip(IMAGES + RNG.normal(scale=0.2, size=IMAGES.shape), -1, 1).astype(np.float32)
LABELS = (np.arange(8) % 4).astype(np.int32)
LEARNING_RATE = 0.1


def _compiled(model, optimizer=None):
    model.build((None,) + SHAPE)
    # SGD: the update is -lr * gradient, so the weights show the gradient the step used.
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE))
    model.optimizer.build(model.trainable_variables)
    return model


def _classifier(**kwargs):
    return _compiled(Classifier(10, 1, 4, seed=1, **kwargs))


def _jem(**kwargs):
    # No SGLD steps, no re-initialisation and a buffer of one batch: the step's negatives are the
    # whole buffer (in some order), so the loss can be written down here.
    settings = dict(buffer_size=8, sgld_steps=0, reinit_freq=0.0, seed=1)
    settings.update(kwargs)
    return _compiled(JEM(10, 1, 4, **settings))


def _classifier_loss(model):
    return tf.reduce_mean(energy.cross_entropy(model(IMAGES, training=True), LABELS))


def _jem_loss(model, buffer):
    # The model's objective with data = IMAGES (cross-entropy), log p(x) data = GENERATIVE_IMAGES.
    xent = tf.reduce_mean(energy.cross_entropy(model(IMAGES, training=True), LABELS))
    log_px_data = tf.reduce_mean(energy.log_marginal(model(GENERATIVE_IMAGES, training=True)))
    log_px_samples = tf.reduce_mean(energy.log_marginal(model(buffer, training=True)))
    return xent + log_px_samples - log_px_data


def _gradient(model, loss_fn):
    with tf.GradientTape() as tape:
        loss = loss_fn(model)
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def independent_sam_update(model, loss_fn, rho, adaptive):
    """The weights after one SAM (ASAM) SGD step, computed by moving the weights of `model` to
    w + e for real and back (numpy for e); `model` ends at the updated weights."""
    weights = [v.numpy() for v in model.trainable_variables]
    gradient = _gradient(model, loss_fn)
    scales = [np.abs(w) if adaptive else np.ones_like(w) for w in weights]
    norm = np.sqrt(sum(np.sum((t * g).astype(np.float64) ** 2) for t, g in zip(scales, gradient)))
    for variable, w, t, g in zip(model.trainable_variables, weights, scales, gradient):
        variable.assign(w + rho * t * t * g / (norm + 1e-12))
    sharp_gradient = _gradient(model, loss_fn)
    plain = [w - LEARNING_RATE * g for w, g in zip(weights, gradient)]
    updated = [w - LEARNING_RATE * g for w, g in zip(weights, sharp_gradient)]
    return updated, plain


@pytest.mark.parametrize("adaptive", [False, True])
def test_classifier_update_is_the_sam_update(adaptive):
    rho = 2.0 if adaptive else 0.2
    model = _classifier(sam_rho=rho, sam_adaptive=adaptive)
    reference = _classifier()
    reference.set_weights(model.get_weights())
    tf.function(model.train_step)((IMAGES, LABELS))
    expected, plain = independent_sam_update(reference, _classifier_loss, rho, adaptive)
    got = [v.numpy() for v in model.trainable_variables]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    # ... and that is not the plain update (the comparison above could tell them apart).
    assert max(np.max(np.abs(g - p)) for g, p in zip(got, plain)) > 1e-3


@pytest.mark.parametrize("adaptive", [False, True])
def test_jem_update_is_the_sam_update_of_the_whole_loss_with_the_same_negatives(adaptive):
    rho = 2.0 if adaptive else 0.2
    model = _jem(sam_rho=rho, sam_adaptive=adaptive)
    buffer = model.replay_buffer.images.numpy().copy()
    reference = _jem()
    reference.set_weights(model.get_weights())
    tf.function(model.train_step)((IMAGES, LABELS, GENERATIVE_IMAGES))
    expected, plain = independent_sam_update(reference, lambda m: _jem_loss(m, buffer), rho, adaptive)
    got = [v.numpy() for v in model.trainable_variables]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert max(np.max(np.abs(g - p)) for g, p in zip(got, plain)) > 1e-3


def _assert_plain_step_bit_for_bit(model, data, loss_fn):
    reference = type(model)(**{**model.get_config(), "sam_rho": 0.0, "sam_adaptive": False})
    _compiled(reference).set_weights(model.get_weights())

    @tf.function
    def plain_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(reference)
        reference.optimizer.apply(tape.gradient(loss, reference.trainable_variables), reference.trainable_variables)

    tf.function(model.train_step)(data)
    plain_step()
    for got, want in zip(model.trainable_variables, reference.trainable_variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_sam_rho_zero_classifier_is_the_plain_step_bit_for_bit():
    _assert_plain_step_bit_for_bit(_classifier(sam_rho=0.0, sam_adaptive=True), (IMAGES, LABELS), _classifier_loss)


def test_sam_rho_zero_jem_is_the_plain_step_bit_for_bit():
    model = _jem(sam_rho=0.0, sam_adaptive=True)
    # Every chain the same image: the negatives are then the buffer whatever slots are drawn.
    model.replay_buffer.images.assign(tf.repeat(model.replay_buffer.images[:1], 8, axis=0))
    buffer = tf.constant(model.replay_buffer.images)

    def fused_jem_loss(network):
        # One forward pass over data, generative view and samples, as JEM runs it without batch norm.
        logits, generative_logits, sample_logits = tf.split(
            network(tf.concat([IMAGES, GENERATIVE_IMAGES, buffer], axis=0), training=True), 3)
        xent = tf.reduce_mean(energy.cross_entropy(logits, LABELS))
        log_px_data = tf.reduce_mean(energy.log_marginal(generative_logits))
        return xent + (tf.reduce_mean(energy.log_marginal(sample_logits)) - log_px_data)

    _assert_plain_step_bit_for_bit(model, (IMAGES, LABELS, GENERATIVE_IMAGES), fused_jem_loss)


def test_the_perturbed_pass_leaves_moving_statistics_and_metrics_alone():
    model = _jem(norm="batch", sam_rho=0.5)
    data_only = _jem(norm="batch")
    data_only.set_weights(model.get_weights())
    logs = tf.function(model.train_step)((IMAGES, LABELS, GENERATIVE_IMAGES))
    data_only(np.concatenate([IMAGES, GENERATIVE_IMAGES]), training=True)
    moving = {v.path.split("/", 1)[1]: v.numpy() for v in data_only.non_trainable_variables if "moving_" in v.path}
    assert moving
    for variable in model.non_trainable_variables:
        name = variable.path.split("/", 1)[1]
        if name in moving:
            np.testing.assert_allclose(variable.numpy(), moving[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The metrics saw one loss (the step's, at the unperturbed weights), not two.
    np.testing.assert_allclose(model.loss_tracker.result(), logs["loss"], rtol=1e-6)
    assert float(model.loss_tracker.count) == 1.0


def _sam_config(**overrides):
    config = get_preset("quick")
    config = dataclasses.replace(config, depth=10, width=1, buffer_size=64, sgld_steps=2, seed=3,
                                 sgld_step_size=0.1, sam_rho=0.5, sam_adaptive=True)
    return dataclasses.replace(config, **overrides)


def _run_steps(strategy, initial_weights, config, steps=3):
    with strategy.scope():
        model = objectives.build_model(config, SHAPE, 4)
        model.compile(optimizer=precision.make_optimizer(keras.optimizers.SGD(0.05), config.precision))
        model.optimizer.build(model.trainable_variables)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS, GENERATIVE_IMAGES)).batch(8).repeat(steps)
    train_step = distributed_train_step(model, strategy)
    for batch in strategy.experimental_distribute_dataset(dataset):
        train_step(batch)
    return model


def test_two_replicas_perturb_with_the_global_gradient_like_one_device():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py makes two logical CPU devices before TensorFlow starts"
    # Plain SAM: a perturbation from each replica's own gradient would point elsewhere.
    config = _sam_config(sam_adaptive=False)
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    initial = _run_steps(one_device, None, config, steps=0).get_weights()
    one = _run_steps(one_device, initial, config)
    two = _run_steps(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), initial, config)
    movement = max(np.abs(a - b).max() for a, b in zip(one.get_weights(), initial))
    assert movement > 1e-3
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_mixed_float16_loss_scaling_is_undone():
    float32 = _sam_config(sgld_steps=0)
    initial = _run_steps(tf.distribute.get_strategy(), None, float32, steps=0).get_weights()
    reference = _run_steps(tf.distribute.get_strategy(), initial, float32, steps=1)
    mixed = _run_steps(tf.distribute.get_strategy(), initial, dataclasses.replace(float32, precision="mixed_float16"),
                       steps=1)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    want = np.concatenate([(a - b).ravel() for a, b in zip(reference.get_weights(), initial)])
    got = np.concatenate([(a - b).ravel() for a, b in zip(mixed.get_weights(), initial)])
    # float16 convolutions: the same update up to rounding, not a loss-scale factor off.
    assert np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.99
    assert np.linalg.norm(got) / np.linalg.norm(want) == pytest.approx(1.0, abs=0.05)


def test_generative_augmentation_is_refused_without_a_log_px_term():
    config = dataclasses.replace(get_preset("quick"), objective="classifier", generative_augmentation="none")
    with pytest.raises(ValueError, match="--generative_augmentation=none"):
        objectives.get("classifier").check_config(config, 1000)
    objectives.get("jem").check_config(dataclasses.replace(config, objective="jem"), 1000)
    with pytest.raises(ValueError, match="generative_augmentation"):
        dataclasses.replace(config, generative_augmentation="crop").validate()
    with pytest.raises(ValueError, match="sam_rho"):
        dataclasses.replace(config, sam_rho=-0.1).validate()
    with pytest.raises(ValueError, match="--labels_per_class=10"):
        dataclasses.replace(config, objective="jem", labels_per_class=10).validate()
