"""The objective registry: names, the checks each objective owns, and the loop's hooks."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from jem_tf import energy
from jem_tf.configs import get_preset
from jem_tf.configs import objectives as objective_configs
from jem_tf.configs.base import OBJECTIVES
from jem_tf.models.wide_resnet import ARCHITECTURE_FIELDS, network_arguments
from jem_tf.workdir import restore
from trainers import objectives, registry
from trainers.classifier import Classifier
from trainers.jem import JEM

SHAPE = (8, 8, 1)


def test_the_config_lists_exactly_the_registered_objectives():
    # configs keeps the names so flags are checked before TensorFlow loads; they must not drift.
    assert tuple(sorted(OBJECTIVES)) == objectives.names()
    for name in objectives.names():  # each registered class points at its objective's config
        assert objectives.get(name).config_class is objective_configs.config_class(name)


def test_an_objective_without_a_declared_config_cannot_register():
    with pytest.raises(ValueError, match=r"--objective='ebm' is invalid: expected one of"):
        registry.register("ebm")


def test_an_unknown_objective_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match=r"--objective='ebm' is not a registered objective; registered: classifier"):
        objectives.get("ebm")


def test_registering_a_second_class_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="The objective .jem. is already registered"):
        registry.register("jem")(type("Other", (Classifier,), {}))


def test_build_model_makes_the_registered_class_from_its_config_fields():
    config = dataclasses.replace(get_preset("quick"), depth=10, width=1, sgld_steps=4, extra_sgld_steps=2,
                                 buffer_size=40, p_xy_weight=0.5)
    model = objectives.build_model(config, SHAPE, 4)
    assert type(model) is JEM
    assert (model.sgld_steps, model.buffer_size, model.p_xy_weight) == (6, 40, 0.5)
    assert set(model.checkpoint_items()) == {"replay_buffer"}
    assert model.sample_images(64).shape == (40,) + SHAPE  # at most the buffer
    classifier = objectives.build_model(dataclasses.replace(config, objective="classifier"), SHAPE, 4)
    assert type(classifier) is Classifier
    assert classifier.checkpoint_items() == {} and classifier.sample_images(64) is None


def test_every_network_of_a_run_is_described_from_its_config_in_one_place():
    config = dataclasses.replace(get_preset("quick"), depth=10, width=1, norm="group", activation="swish",
                                 dropout_rate=0.25, precision="mixed_bfloat16")
    expected = network_arguments(config, 4)
    assert {name: expected[name] for name in ARCHITECTURE_FIELDS} == dict(
        depth=10, width=1, norm="group", activation="swish", dropout_rate=0.25)
    model = objectives.build_model(config, SHAPE, 4)  # the trainer's
    reader, _ = restore.build_network(config, dict(image_shape=list(SHAPE), num_classes=4))  # export, evaluation
    for network in (model, model.to_wide_resnet(), reader):
        described = network_arguments(network, network.num_classes)
        assert described == dict(expected, dtype=described["dtype"]) and described["num_classes"] == 4
        assert network.dtype_policy.name == "mixed_bfloat16"


def test_each_objective_owns_its_data_checks():
    config = dataclasses.replace(get_preset("quick"), buffer_size=10)  # batch 64
    with pytest.raises(ValueError, match=r"--buffer_size=10 is smaller than --batch_size=64"):
        JEM.check_config(config, 1293)
    Classifier.check_config(config, 1293)  # no buffer: fine
    assert JEM.uses_replay_buffer(config) and not Classifier.uses_replay_buffer(config)


def test_jem_recovery_adds_sgld_steps_and_reinitialises_only_wild_chains():
    config = dataclasses.replace(get_preset("quick"), depth=10, width=1, buffer_size=8, sgld_steps=3,
                                 recovery_extra_sgld_steps=2, recovery_chain_limit=3.0)
    model = objectives.build_model(config, SHAPE, 4)
    images = model.replay_buffer.images.numpy()
    images[1, 0, 0, 0] = np.nan
    images[5, 2, 2, 0] = 7.0
    model.replay_buffer.images.assign(images)
    change = model.apply_recovery(config, seed=(0, 11, 0))
    assert change["sgld_steps"] == [3, 5] and model.sgld_steps == 5 and config.extra_sgld_steps == 2
    assert change["chains_reinitialised"] == 2
    after = model.replay_buffer.images.numpy()
    untouched = [i for i in range(8) if i not in (1, 5)]
    np.testing.assert_array_equal(after[untouched], images[untouched])
    assert np.all(np.abs(after[[1, 5]]) <= 1.0)
    # Re-applying the recorded change to the same restored buffer draws the same chains.
    model.replay_buffer.images.assign(images)
    model.reapply_recovery(change)
    np.testing.assert_array_equal(model.replay_buffer.images.numpy(), after)


def test_jem_takes_log_px_of_the_data_on_the_generative_images_when_the_batch_has_them():
    config = dataclasses.replace(get_preset("quick"), depth=10, width=1, buffer_size=16, sgld_steps=0,
                                 reinit_freq=0.0)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
    other = rng.uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
    labels = (np.arange(8) % 4).astype(np.int32)
    model = objectives.build_model(config, SHAPE, 4)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = tf.function(model.train_step)((images, labels, other))
    np.testing.assert_allclose(logs["log_px_data"], np.mean(energy.log_marginal(model(other, training=True))),
                               rtol=1e-5)
    np.testing.assert_allclose(logs["xent"], np.mean(energy.cross_entropy(model(images, training=True), labels)),
                               rtol=1e-5)
