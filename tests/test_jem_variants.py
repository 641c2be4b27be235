"""The jem objective's variant flags (issue #8 variants 1, 3, 7), at the train-step level:
class-conditional p(x) sampling, the p(y|x) weight (the log p(x, y)-only ablation), short-run
chains without a buffer (buffer_size=0), and the stabilisers energy_l2 and sgld_clamp.

Each test records what the sampler was given and returned (a wrapper around trainers.jem's
`compiled_sgld`) and recomputes the expected values independently from a copy of the weights.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from jem_tf import energy
from jem_tf.configs import get_preset
from jem_tf.sampling import sgld_sample
from trainers import jem as jem_module
from trainers.distribution import distributed_train_step
from trainers.jem import JEM

SHAPE = (8, 8, 1)
NUM_CLASSES = 4
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
LABELS = (np.arange(8) % NUM_CLASSES).astype(np.int32)


def _jem(**kwargs):
    settings = dict(buffer_size=32, sgld_steps=3, seed=7)
    settings.update(kwargs)
    model = JEM(10, 1, NUM_CLASSES, **settings)
    model.build((None,) + SHAPE)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def _copy_before_step(model, **kwargs):
    """A model with `model`'s current weights (the step's loss is computed on these)."""
    copy = _jem(**kwargs)
    for variable, value in zip(copy.trainable_weights, model.trainable_weights):
        variable.assign(value.numpy())
    return copy


@pytest.fixture
def chains(monkeypatch):
    """Records every sampler call of the train step: dict(initial, samples, kwargs)."""
    calls = []
    original = jem_module.compiled_sgld

    def recording(jit_compile=False):
        sampler = original(jit_compile)

        def run(log_density, initial, *args, **kwargs):
            samples = sampler(log_density, initial, *args, **kwargs)
            calls.append(dict(initial=np.array(initial), samples=np.array(samples), kwargs=kwargs))
            return samples

        return run

    monkeypatch.setattr(jem_module, "compiled_sgld", recording)
    return calls


# -- 1. class-conditional p(x) sampling and the p(y|x) weight ------------------------------------

def test_class_conditional_chains_come_from_their_drawn_class_and_run_on_log_p_x_y(chains, monkeypatch):
    model = _jem(class_cond_p_x_sample=True, sgld_steps=2, sgld_step_size=0.1, sgld_noise=0.0, reinit_freq=0.0)
    drawn = []
    original_sample = model.replay_buffer.sample

    def recording_sample(local_batch, seed, reinit_freq, labels=None, num_classes=None):
        initial, slots = original_sample(local_batch, seed, reinit_freq, labels=labels, num_classes=num_classes)
        drawn.append((None if labels is None else np.array(labels), np.array(slots)))
        return initial, slots

    monkeypatch.setattr(model.replay_buffer, "sample", recording_sample)
    reference = _copy_before_step(model)
    buffer_before = model.replay_buffer.images.numpy().copy()
    logs = model.train_step((IMAGES, LABELS))

    (chain_labels, slots), = drawn
    assert chain_labels is not None, "class-conditional p(x) chains must be drawn with labels"
    # The class-partitioned buffer: slot s holds class s mod num_classes.
    np.testing.assert_array_equal(slots % NUM_CLASSES, chain_labels)
    np.testing.assert_array_equal(chains[0]["initial"], buffer_before[slots])
    # The chains ran on log p~(x, y') for their drawn y' (noise-free here, so recomputable).
    expected = sgld_sample(energy.joint_log_density(lambda x: reference(x, training=False), chain_labels),
                           buffer_before[slots], 2, 0.1, 0.0, tf.constant([0, 0], tf.int64))
    np.testing.assert_allclose(chains[0]["samples"], expected, rtol=1e-5, atol=1e-6)
    # The p(x) term is log p~(x) of exactly those samples (the reference: f(x_q) = logsumexp).
    log_px_samples = np.mean(energy.log_marginal(reference(chains[0]["samples"], training=True)))
    np.testing.assert_allclose(logs["log_px_samples"], log_px_samples, rtol=1e-5)
    # ... and they went back to their slots.
    np.testing.assert_allclose(model.replay_buffer.images.numpy()[slots], chains[0]["samples"])


def test_class_conditional_draws_classes_uniformly_not_the_batch_labels(monkeypatch):
    model = _jem(class_cond_p_x_sample=True, sgld_steps=0, buffer_size=400)
    seen = []
    original_sample = model.replay_buffer.sample

    def recording_sample(local_batch, seed, reinit_freq, labels=None, num_classes=None):
        seen.append(np.array(labels))
        return original_sample(local_batch, seed, reinit_freq, labels=labels, num_classes=num_classes)

    monkeypatch.setattr(model.replay_buffer, "sample", recording_sample)
    step = model.train_step
    for _ in range(3):
        step((np.repeat(IMAGES[:1], 200, axis=0), np.zeros(200, np.int32)))  # every data label is 0
    fractions = np.bincount(np.concatenate(seen), minlength=NUM_CLASSES) / 600
    assert np.all(np.abs(fractions - 1 / NUM_CLASSES) < 0.06), fractions
    assert not np.array_equal(seen[0], seen[1]), "classes are drawn anew every step"


def test_without_the_flag_p_x_chains_are_unconditional(monkeypatch):
    model = _jem(sgld_steps=0)
    seen = []
    original_sample = model.replay_buffer.sample

    def recording_sample(local_batch, seed, reinit_freq, labels=None, num_classes=None):
        seen.append(labels)
        return original_sample(local_batch, seed, reinit_freq, labels=labels, num_classes=num_classes)

    monkeypatch.setattr(model.replay_buffer, "sample", recording_sample)
    model.train_step((IMAGES, LABELS))
    assert seen == [None]


def test_p_y_given_x_weight_scales_the_cross_entropy():
    half = _jem(p_y_given_x_weight=0.5)
    logs = tf.function(half.train_step)((IMAGES, LABELS))
    np.testing.assert_allclose(logs["loss"], 0.5 * logs["xent"] + logs["generative_loss"], rtol=1e-5)


def test_the_log_p_x_y_only_ablation_trains_on_the_joint_term_alone(chains):
    model = _jem(p_y_given_x_weight=0.0, p_x_weight=0.0, p_xy_weight=1.0, sgld_steps=0, reinit_freq=0.0)
    reference = _copy_before_step(model)
    logs = model.train_step((IMAGES, LABELS))
    assert len(chains) == 1  # only the log p(x, y) chains
    data_logits = reference(IMAGES, training=True)
    sample_logits = reference(chains[0]["samples"], training=True)
    expected = np.mean(energy.log_joint(sample_logits, LABELS)) - np.mean(energy.log_joint(data_logits, LABELS))
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5, atol=1e-6)
    assert float(logs["xent"]) > 0.1  # still measured, just not trained on


# -- 3. short-run chains: buffer_size=0 ----------------------------------------------------------

def test_short_run_has_no_buffer_and_fresh_noise_starts_every_step(chains):
    model = _jem(buffer_size=0, sgld_steps=2)
    assert model.replay_buffer is None
    assert not [v.path for v in model.variables if "replay_buffer" in v.path or "images" in v.path]
    assert model.checkpoint_items() == {}
    step = model.train_step
    step((IMAGES, LABELS))
    step((IMAGES, LABELS))
    first, second = chains[0]["initial"], chains[1]["initial"]
    for initial in (first, second):
        assert initial.min() >= -1 and initial.max() <= 1
        assert abs(initial.mean()) < 0.15 and abs(initial.std() - 1 / np.sqrt(3)) < 0.05  # U(-1, 1)
    assert not np.allclose(first, second), "each step must start from new noise"
    # Not the previous step's samples either (that would be a one-batch persistent chain).
    assert not np.allclose(second, chains[0]["samples"])
    # The starts are a function of (seed, step): the same step of another model draws the same.
    other = _jem(buffer_size=0, sgld_steps=2)
    other.train_step((IMAGES, LABELS))
    np.testing.assert_array_equal(chains[2]["initial"], first)


def test_short_run_sample_images_are_fresh_short_chains(chains):
    model = _jem(buffer_size=0, sgld_steps=2)
    images = np.asarray(model.sample_images(6))
    assert images.shape == (6,) + SHAPE and np.all(np.isfinite(images))
    assert chains and chains[-1]["initial"].shape == (6,) + SHAPE


def test_short_run_recovery_adds_sgld_steps_and_resets_no_chains():
    model = _jem(buffer_size=0, sgld_steps=3)
    config = dataclasses.replace(get_preset("quick"), buffer_size=0, sgld_steps=3, recovery_extra_sgld_steps=5)
    change = model.apply_recovery(config, seed=(0, 7, 0))
    assert change == {"sgld_steps": [3, 8]} and model.sgld_steps == 8 and config.extra_sgld_steps == 5
    model.reapply_recovery(dict(chain_seed=[0, 7, 0], chain_limit=3.0))  # a record of a buffered run: no-op


def test_short_run_config_checks():
    quick = get_preset("quick")
    short_run = dataclasses.replace(quick, buffer_size=0, batch_size=64).validate()
    JEM.check_config(short_run, 1000)  # no buffer: no batch-vs-buffer check
    assert not JEM.uses_replay_buffer(short_run) and JEM.uses_replay_buffer(quick)
    with pytest.raises(ValueError, match=r"--buffer_size=-1 is invalid"):
        dataclasses.replace(quick, buffer_size=-1).validate()
    with pytest.raises(ValueError, match=r"--buffer_size=10 is smaller than --batch_size=64.*--buffer_size=0"):
        JEM.check_config(dataclasses.replace(quick, buffer_size=10).validate(), 1000)
    # JEM++'s informative initialisation fills a buffer: with none it is refused, uniform starts are not.
    with pytest.raises(ValueError, match=r"--chain_init=informative .* --buffer_size=0"):
        dataclasses.replace(quick, objective="jempp", buffer_size=0, chain_init="informative").validate()
    dataclasses.replace(quick, objective="jempp", buffer_size=0, chain_init="uniform").validate()


def test_from_config_passes_every_variant_field():
    config = dataclasses.replace(get_preset("quick"), buffer_size=0, class_cond_p_x_sample=True, p_y_given_x_weight=0.5,
                                 energy_l2=0.1, sgld_clamp=True).validate()
    model = JEM.from_config(config, depth=10, width=1, num_classes=NUM_CLASSES)
    assert (model.buffer_size, model.class_cond_p_x_sample, model.p_y_given_x_weight, model.energy_l2,
            model.sgld_clamp) == (0, True, 0.5, 0.1, True)


# -- 7. stabilisers -------------------------------------------------------------------------------

def test_energy_l2_adds_the_squared_energies_of_data_and_samples(chains):
    weight = 0.1
    model = _jem(energy_l2=weight, p_xy_weight=1.0, sgld_steps=0, reinit_freq=0.0)
    reference = _copy_before_step(model)
    logs = model.train_step((IMAGES, LABELS))
    unconditional, conditional = chains[0]["samples"], chains[1]["samples"]
    data = reference(IMAGES, training=True).numpy()
    samples = reference(np.concatenate([unconditional, conditional]), training=True).numpy()

    def energies(logits):  # E(x) = -log sum_y exp f(x)[y], in numpy
        top = logits.max(-1, keepdims=True)
        return -(top[:, 0] + np.log(np.exp(logits - top).sum(-1)))

    def xent(logits, labels):
        return np.mean(-energies(logits) - logits[np.arange(len(labels)), labels])

    penalty = weight * (np.mean(energies(data) ** 2) + np.mean(energies(samples) ** 2))
    generative = (np.mean(-energies(samples[:8])) - np.mean(-energies(data))
                  + np.mean(samples[8:][np.arange(8), LABELS]) - np.mean(data[np.arange(8), LABELS]))
    np.testing.assert_allclose(logs["energy_penalty"], penalty, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], xent(data, LABELS) + generative + penalty, rtol=1e-4)


def test_energy_l2_zero_adds_nothing():
    logs = tf.function(_jem().train_step)((IMAGES, LABELS))
    assert "energy_penalty" not in logs
    np.testing.assert_allclose(logs["loss"], logs["xent"] + logs["generative_loss"], rtol=1e-5)


def test_sgld_clamp_keeps_training_chains_in_minus_one_one(chains):
    # A large step makes unclamped chains leave [-1, 1] after one step of an untrained network.
    loose = _jem(sgld_step_size=50.0, reinit_freq=0.0)
    loose.train_step((IMAGES, LABELS))
    assert np.abs(chains[-1]["samples"]).max() > 1.0
    assert np.abs(loose.replay_buffer.images.numpy()).max() > 1.0
    clamped = _jem(sgld_step_size=50.0, reinit_freq=0.0, sgld_clamp=True)
    clamped.train_step((IMAGES, LABELS))
    assert chains[-1]["kwargs"]["clamp"] is True
    assert np.abs(chains[-1]["samples"]).max() <= 1.0
    assert np.abs(clamped.replay_buffer.images.numpy()).max() <= 1.0


def test_variant_settings_are_checked():
    quick = get_preset("quick")
    for field, value in (("p_y_given_x_weight", -1.0), ("energy_l2", -0.1)):
        with pytest.raises(ValueError, match=rf"--{field}={value!r} is invalid"):
            dataclasses.replace(quick, **{field: value}).validate()
    with pytest.raises(ValueError, match=r"--class_cond_p_x_sample .* --p_x_weight=0"):
        dataclasses.replace(quick, class_cond_p_x_sample=True, p_x_weight=0.0, p_xy_weight=1.0).validate()
    with pytest.raises(ValueError, match=r"--buffer_size=2 is smaller than the 4 classes"):
        JEM(10, 1, NUM_CLASSES, buffer_size=2, class_cond_p_x_sample=True)


# -- distribution: the new draws are made for the global batch --------------------------------------

def _replica_run(strategy, initial_weights, steps=2):
    config = dataclasses.replace(
        get_preset("quick"), depth=10, width=1, buffer_size=0, sgld_steps=2, sgld_step_size=0.1, seed=3,
        class_cond_p_x_sample=True, energy_l2=0.1, sgld_clamp=True).validate()
    with strategy.scope():
        model = JEM.from_config(config, depth=10, width=1, num_classes=NUM_CLASSES, seed=3)
        model.build((None,) + SHAPE)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        model.optimizer.build(model.trainable_variables)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(8).repeat(steps)
    step = distributed_train_step(model, strategy)
    losses = [float(step(batch)["loss"]) for batch in strategy.experimental_distribute_dataset(dataset)]
    return model, losses


def test_two_replicas_draw_what_one_device_draws_for_short_run_class_conditional_chains():
    """Short-run, class-conditional, penalised, clamped: two replicas train to the single
    device's losses and weights (the draws themselves are compared in the next test)."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py configures two logical CPU devices before TF starts"
    initial = _replica_run(tf.distribute.OneDeviceStrategy("/cpu:0"), None, steps=0)[0].get_weights()
    one, one_losses = _replica_run(tf.distribute.OneDeviceStrategy("/cpu:0"), initial)
    two, two_losses = _replica_run(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), initial)
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-4)
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    # The loop draws the sample grid outside the replicas: fresh chains there too.
    np.testing.assert_allclose(two.sample_images(4), one.sample_images(4), rtol=1e-3, atol=1e-4)


def test_each_replica_gets_its_slice_of_the_global_draws():
    """The drawn classes and the fresh short-run starts of a 2-replica step are the single device's,
    split in two (not each replica drawing its own, which would repeat the same rows)."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py configures two logical CPU devices before TF starts"
    seed = tf.constant([5, 9], tf.int64)

    def draws(strategy, local_batch):
        with strategy.scope():
            model = JEM(10, 1, NUM_CLASSES, buffer_size=0, sgld_steps=0, class_cond_p_x_sample=True)
            model.build((None,) + SHAPE)

        @tf.function
        def replica_fn():
            labels = model.draw_chain_labels(local_batch, seed)
            starts, _ = model.sample_chains(local_batch, seed, labels)
            return labels, starts

        labels, starts = strategy.run(replica_fn)
        return (np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(labels)]),
                np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(starts)]))

    one_labels, one_starts = draws(tf.distribute.OneDeviceStrategy("/cpu:0"), 8)
    two_labels, two_starts = draws(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), 4)
    np.testing.assert_array_equal(two_labels, one_labels)
    np.testing.assert_array_equal(two_starts, one_starts)
    assert not np.array_equal(one_starts[:4], one_starts[4:])


def test_short_run_works_with_the_jempp_proximal_sampler():
    from trainers.jempp import JEMPP  # noqa: PLC0415

    model = JEMPP(10, 1, NUM_CLASSES, buffer_size=0, sgld_steps=2, chain_init="uniform", seed=7)
    model.build((None,) + SHAPE)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    assert model.replay_buffer is None and model.checkpoint_items() == {}
    logs = model.train_step((IMAGES, LABELS))
    assert np.isfinite(float(logs["loss"]))
