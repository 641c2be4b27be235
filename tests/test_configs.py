"""Every preset loads and validates; broken settings are refused by name; flags override presets."""

import dataclasses

import pytest

from jem_tf.configs import PRESETS, TrainConfig, get_preset, incompatible_fields


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid(name):
    config = get_preset(name)
    assert isinstance(config, TrainConfig)
    assert config.preset == name


@pytest.mark.parametrize("name", ["paper", "svhn", "cifar10", "cifar100"])
def test_paper_presets_reproduce_table_4(name):
    config = get_preset(name)
    assert (config.depth, config.width, config.norm) == (28, 10, "none")
    assert (config.learning_rate, config.epochs, config.lr_decay_rate, config.lr_decay_epochs) == (1e-4, 150, 0.3,
                                                                                                   (50, 100))
    assert (config.sgld_steps, config.sgld_step_size, config.sgld_noise) == (20, 1.0, 0.01)
    assert (config.buffer_size, config.reinit_freq, config.data_noise, config.batch_size) == (10000, 0.05, 0.03, 64)
    assert config.dataset == ("cifar10" if name == "paper" else name)


def test_quick_preset_needs_no_download():
    assert get_preset("quick").dataset == "digits"


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'tiny'"):
        get_preset("tiny")


@pytest.mark.parametrize(
    "field,value",
    [("depth", 12), ("objective", "gan"), ("reinit_freq", 1.5), ("sgld_steps", -1), ("batch_size", 0),
     ("strategy", "tpu"), ("learning_rate", 0.0), ("buffer_size", 10), ("augmentation", "mixup")],
)
def test_a_broken_setting_is_refused_naming_flag_and_value(field, value):
    config = dataclasses.replace(get_preset("quick"), **{field: value})
    with pytest.raises(ValueError, match=f"--{field}={value!r}".replace("(", "\\(").replace(".", "\\.")):
        config.validate()


def test_json_round_trip_and_unknown_keys(tmp_path):
    config = get_preset("quick")
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert TrainConfig.load(str(path)) == config
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


def test_incompatible_fields_lists_what_changed():
    saved = get_preset("quick")
    assert incompatible_fields(saved, dataclasses.replace(saved, max_steps=5, learning_rate=0.1)) == []
    assert incompatible_fields(saved, dataclasses.replace(saved, width=3)) == ["width: 2 -> 3"]
