"""Every preset loads and validates; broken settings are refused by name; flags override presets."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from jem_tf.configs import PRESETS, TrainConfig, get_preset, incompatible_fields, objectives
from jem_tf.configs import base as configs_base

# config.json files written by the code before the objectives declared their own fields (the quick
# preset as jem, as classifier with recovery state, and as jempp with its defaults).
OLD_CONFIGS = Path(__file__).resolve().parent / "data" / "configs_before_objective_fields"


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
     ("strategy", "tpu"), ("learning_rate", 0.0), ("augmentation", "mixup"), ("seed", -1), ("seed", 2**31),
     ("lr_decay_epochs", (11, 8)), ("lr_decay_epochs", (-5,)), ("lr_decay_epochs", (5, 5)),
     ("lr_decay_epochs", (2.5,))],
)
def test_a_broken_setting_is_refused_naming_flag_and_value(field, value):
    config = dataclasses.replace(get_preset("quick"), **{field: value})
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
    with pytest.raises(ValueError, match=re.escape(f"--{field}={shown} is invalid")):
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
    # An objective's own resume-invariant fields count for that objective only (the classifier has no buffer).
    assert incompatible_fields(saved, dataclasses.replace(saved, buffer_size=500)) == ["buffer_size: 1000 -> 500"]
    classifier = dataclasses.replace(saved, objective="classifier")
    assert incompatible_fields(classifier, dataclasses.replace(classifier, buffer_size=500)) == []
    assert objectives.resume_invariant_fields("jempp") == ("buffer_size", "chain_init")


FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.type in (float, "float")]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_float_setting_refuses_inf_and_nan(field, value):
    config = dataclasses.replace(get_preset("quick"), **{field: value})
    with pytest.raises(ValueError, match=f"--{field}={value!r}.*finite"):
        config.validate()


def test_float_fields_are_found():
    # Guards the parametrization above against an empty list (it would test nothing).
    assert {"learning_rate", "sgld_step_size", "max_abs_generative_loss"} <= set(FLOAT_FIELDS)


def test_seed_range_ends_are_accepted():
    for seed in (0, 2**31 - 1):
        dataclasses.replace(get_preset("quick"), seed=seed).validate()


def test_a_batch_larger_than_the_training_set_blames_batch_size_not_buffer_size():
    config = dataclasses.replace(get_preset("quick"), batch_size=2000)  # buffer_size is 1000
    config.validate()  # nothing wrong without the data
    with pytest.raises(ValueError, match=r"--batch_size=2000 is larger than the 1293 training examples.*1293 or less"):
        config.validate_for_data(1293)



# -- the objectives' own fields ---------------------------------------------------------------


def test_the_shared_config_declares_no_objective_field_and_names_no_objective():
    shared = set(TrainConfig.__dataclass_fields__) - set(configs_base.ObjectiveFields.__dataclass_fields__)
    own = {name for objective in objectives.OBJECTIVES for name in objectives.fields_of(objective)}
    assert not shared & own and own == set(configs_base.ObjectiveFields.__dataclass_fields__)
    assert {"sgld_steps", "buffer_size", "proximal_max_grad", "chain_init"} <= own
    source = Path(configs_base.__file__).read_text()
    for name in objectives.OBJECTIVES:
        assert f'"{name}"' not in source, f"configs/base.py names the objective {name!r}"
    assert "JEMPP_FIELDS" not in source and "OBJECTIVE_DEFAULTS" not in source


def test_each_objective_declares_its_fields_defaults_and_checks():
    assert objectives.fields_of("classifier") == ()
    assert set(objectives.fields_of("jem")) < set(objectives.fields_of("jempp"))
    assert (objectives.JEMConfig().sgld_steps, objectives.JEMPPConfig().sgld_steps) == (20, 10)
    # TrainConfig's default is the default objective's (the paper's JEM), not JEM++'s.
    assert TrainConfig().objective == objectives.DEFAULT_OBJECTIVE == "jem" and TrainConfig().sgld_steps == 20
    assert objectives.readers("sgld_steps") == ("jem", "jempp") and objectives.readers("depth") == ()
    # A run checks the fields of its objective, and only those.
    quick = get_preset("quick")
    with pytest.raises(ValueError, match=r"--buffer_size=-1 is invalid"):
        dataclasses.replace(quick, buffer_size=-1).validate()
    dataclasses.replace(quick, objective="classifier", buffer_size=-1).validate()
    with pytest.raises(ValueError, match=r"--proximal_inner_steps=0 is invalid"):
        dataclasses.replace(quick, objective="jempp", proximal_inner_steps=0).validate()
    dataclasses.replace(quick, proximal_inner_steps=0).validate()
    # A value no objective accepts is refused whatever the objective.
    with pytest.raises(ValueError, match=r"--chain_init='gaussian' is invalid: expected one of"):
        dataclasses.replace(quick, objective="classifier", chain_init="gaussian").validate()


@pytest.mark.parametrize("objective", ["classifier", "jem", "jempp"])
def test_an_old_config_json_still_loads_and_resumes_with_the_same_flags(objective):
    path = OLD_CONFIGS / f"{objective}.json"
    saved = TrainConfig.load(str(path)).validate()
    old, loaded = json.loads(path.read_text()), json.loads(saved.to_json())
    # Every field the old file had keeps its value; fields added since (xent_batch, restart_from_scratch, ...)
    # take their defaults.
    assert saved.objective == objective and {name: loaded[name] for name in old} == old
    defaults = json.loads(TrainConfig().to_json())
    added = set(loaded) - set(old)
    assert {name: loaded[name] for name in added} == {name: defaults[name] for name in added}
    # The same command today makes a config the old run resumes under (an objective's field the
    # run does not read, e.g. a jem run's chain_init, takes part in no resume check).
    requested = dataclasses.replace(get_preset("quick"), objective=objective,
                                    **objectives.objective_defaults("jem", objective))
    assert incompatible_fields(saved, requested) == []
    assert incompatible_fields(saved, dataclasses.replace(requested, depth=16)) == ["depth: 10 -> 16"]
    if objective == "jempp":
        assert incompatible_fields(saved, dataclasses.replace(requested, chain_init="uniform")) == [
            "chain_init: 'informative' -> 'uniform'"]
