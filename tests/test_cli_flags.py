"""The flags of every command line are generated from the config dataclasses' field metadata: each
field that is a flag has one, with the field's help text; a field added to a dataclass becomes a flag
with no other edit; values parse to the field's type; bad values exit 2 naming the flag."""

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional

import pytest
import warm_python
from absl import flags, logging

from jem_tf import cli, evaluate, train
from jem_tf.configs import TrainConfig
from jem_tf.configs import objectives as objective_configs
from jem_tf.configs.base import RECOVERY_STATE_FIELDS

REPO = Path(__file__).resolve().parents[1]


def without_whitespace(text):
    """absl wraps help at 80 columns (also after hyphens): compare texts without their whitespace."""
    return re.sub(r"\s+", "", text)


def train_flags(*argv):
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["jem_tf.train", *argv])
    return flag_values


def evaluate_flags(*argv):
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["jem_tf.evaluate", "--workdir=unused", *argv])
    return flag_values


# -- TrainConfig and EvalOptions ---------------------------------------------------------------


def test_every_trainconfig_field_has_help_and_only_the_recovery_state_and_preset_are_not_flags():
    fields = dataclasses.fields(TrainConfig)
    assert all(field.metadata.get("help") for field in fields), [f.name for f in fields if not f.metadata.get("help")]
    not_flags = {field.name for field in fields if field.metadata.get("flag") is False}
    assert not_flags == {*RECOVERY_STATE_FIELDS, "preset"}


@pytest.mark.parametrize("command,config_class", [("jem_tf.train", lambda: TrainConfig),
                                                  ("jem_tf.evaluate", evaluate.eval_options_class)])
def test_every_flag_field_has_a_flag_with_its_help_defined_by_the_command(command, config_class):
    flag_values = train_flags() if command == "jem_tf.train" else evaluate_flags()
    config_class = config_class()
    help_texts = {field.name: field.metadata["help"] for field, _ in cli.flag_fields(config_class)}
    assert len(help_texts) >= 20  # guards the loop below against an empty list
    for name, help_text in help_texts.items():
        assert name in flag_values, name
        assert flag_values[name].help.endswith(help_text)  # enum flags: "<a|b>: " first
        # Attributed to the command (not to jem_tf.cli), an objective's own field under the
        # objective's heading (--helpfull), and a key flag of the command either way (--helpshort).
        group = objective_configs.flag_group(command, name) if command == "jem_tf.train" else None
        assert flag_values.find_module_defining_flag(name) == (group or command)
        assert name in {flag.name for flag in flag_values.get_key_flags_for_module(command)}


def test_the_non_flag_fields_have_no_flag():
    flag_values = train_flags()
    assert not any(name in flag_values for name in RECOVERY_STATE_FIELDS)
    # --preset is train.py's own enum of the presets.
    assert flag_values["preset"].default == "paper" and "quick" in flag_values["preset"].parser.enum_values


def test_unset_train_flags_keep_the_preset_and_set_ones_are_typed():
    from jem_tf.configs import get_preset  # noqa: PLC0415

    assert train.config_from_flags(train_flags("--preset=quick")) == get_preset("quick")
    config = train.config_from_flags(train_flags(
        "--preset=quick", "--lr_decay_epochs=3,9", "--learning_rate=2e-3", "--nojit_compile", "--export=false",
        "--max_steps=7", "--augmentation=crop", "--objective=jempp", "--data_dir=/somewhere"))
    assert config.lr_decay_epochs == (3, 9) and config.learning_rate == 2e-3
    assert config.jit_compile is False and config.export is False
    assert config.max_steps == 7 and config.augmentation == "crop" and config.objective == "jempp"
    assert config.data_dir == "/somewhere" and config.depth == get_preset("quick").depth


def test_a_flag_the_objective_does_not_read_is_refused_naming_the_objectives_that_do():
    message = "--sgld_steps is read by --objective=jem and jempp only, not by --objective=classifier"
    with pytest.raises(ValueError, match=message):
        train.config_from_flags(train_flags("--objective=classifier", "--sgld_steps=5"))
    # Given on the command line counts, even at the default's value (it was meant to do something).
    with pytest.raises(ValueError, match=message):
        train.config_from_flags(train_flags("--objective=classifier", "--sgld_steps=20"))
    with pytest.raises(ValueError, match=r"--sgld_clamp is read .*; --chain_init is read by --objective=jempp only, "
                                         r"not by --objective=classifier\. Drop them"):
        train.config_from_flags(train_flags("--objective=classifier", "--sgld_clamp", "--chain_init=uniform"))
    # The preset's own values of fields the objective does not read are not the user's: accepted.
    config = train.config_from_flags(train_flags("--preset=quick", "--objective=classifier", "--depth=10"))
    assert config.objective == "classifier" and config.buffer_size == 1000
    # Fields every objective reads, and the objective's own, are accepted.
    assert train.config_from_flags(train_flags("--objective=jem", "--sgld_steps=5")).sgld_steps == 5
    assert train.config_from_flags(train_flags("--objective=jempp", "--chain_init=uniform")).chain_init == "uniform"


def test_train_main_exits_2_naming_the_unread_flag_and_its_objectives(monkeypatch, tmp_path):
    code, errors = _train_main(monkeypatch, "--objective=classifier", "--sgld_steps=5", f"--workdir={tmp_path / 'run'}")
    assert code == cli.EXIT_BAD_INPUT
    assert len(errors) == 1 and "--sgld_steps is read by --objective=jem and jempp only" in errors[0]
    assert not (tmp_path / "run").exists()


def test_helpfull_groups_the_flags_by_objective():
    flag_values = train_flags()
    groups = {module: {flag.name for flag in module_flags}
              for module, module_flags in flag_values.flags_by_module_dict().items()}
    jem_family = groups.pop("jem_tf.train: --objective=jem, jempp only")
    jempp = groups.pop("jem_tf.train: --objective=jempp only")
    assert {"sgld_steps", "buffer_size", "p_x_weight", "energy_l2", "jit_compile"} <= jem_family
    assert jempp == {"proximal_max_grad", "proximal_inner_steps", "chain_init", "chain_init_jitter"}
    assert not any(name.startswith("jem_tf.train: ") for name in groups), "no heading for the classifier: no fields"
    shared = groups["jem_tf.train"]
    assert {"depth", "learning_rate", "objective", "sam_rho", "labels_per_class"} <= shared
    assert not shared & (jem_family | jempp)
    help_text = flag_values.get_help()
    assert help_text.index("jem_tf.train: --objective=jem, jempp only:") < help_text.index("--sgld_steps:")


def test_validation_size_replaces_the_presets_fraction_and_both_are_refused():
    config = train.config_from_flags(train_flags("--preset=quick", "--validation_size=100"))
    assert (config.validation_fraction, config.validation_size) == (0.0, 100)
    with pytest.raises(ValueError, match="pass only one"):
        train.config_from_flags(train_flags("--preset=quick", "--validation_size=100", "--validation_fraction=0.2"))


def test_dataset_alone_on_the_paper_preset_chooses_the_workdir():
    assert train.config_from_flags(train_flags("--dataset=svhn")).workdir == "runs/svhn"
    assert train.config_from_flags(train_flags("--dataset=svhn", "--workdir=x")).workdir == "x"


def test_evaluate_defaults_are_the_eval_options_and_list_flags_parse():
    eval_options = evaluate.eval_options_class()
    assert evaluate.options_from_flags(evaluate_flags()) == eval_options()
    options = evaluate.options_from_flags(evaluate_flags(
        "--linf_epsilons=0.1,2e-2", "--refine_steps=3", "--ood_sets=uniform,folder:/x", "--noprogress",
        "--eval_input_noise=0", "--inception_weights=random"))
    assert options.linf_epsilons == (0.1, 0.02) and options.refine_steps == (3,)
    assert options.ood_sets == ("uniform", "folder:/x") and options.progress is False
    assert options.eval_input_noise == 0.0 and options.inception_weights == "random"


# -- the generator on a throwaway dataclass ----------------------------------------------------


@dataclasses.dataclass
class Knobs:
    count: int = dataclasses.field(default=3, metadata=dict(help="How many."))
    rate: float = dataclasses.field(default=0.5, metadata=dict(help="How fast."))
    enabled: bool = dataclasses.field(default=True, metadata=dict(help="Whether."))
    name: Optional[str] = dataclasses.field(default=None, metadata=dict(help="Called."))
    cap: int | None = dataclasses.field(default=None, metadata=dict(help="At most."))
    mode: str = dataclasses.field(default="a", metadata=dict(choices=("a", "b"), help="Which way."))
    steps: tuple = dataclasses.field(default=(1, 2), metadata=dict(help="Whole steps."))
    radii: tuple = dataclasses.field(default=(0.0, 0.5), metadata=dict(help="Radii."))
    sets: tuple = dataclasses.field(default=("x", "y"), metadata=dict(help="Named sets."))
    typed: tuple[float, ...] = dataclasses.field(default=(), metadata=dict(help="Typed by the annotation."))
    listed: list = dataclasses.field(default_factory=lambda: [4], metadata=dict(help="A list field."))
    state: int = dataclasses.field(default=0, metadata=dict(flag=False, help="Not a flag."))


def knob_flags(*argv, field_defaults=False, config_class=Knobs):
    flag_values = flags.FlagValues()
    names = cli.define_dataclass_flags(config_class, flag_values, field_defaults=field_defaults)
    flag_values(["knobs", *argv])
    return names, flag_values


def test_every_field_becomes_a_flag_of_its_type_except_flag_false():
    names, flag_values = knob_flags()
    assert names == ["count", "rate", "enabled", "name", "cap", "mode", "steps", "radii", "sets", "typed", "listed"]
    assert "state" not in flag_values
    assert [flag_values[name].flag_type() for name in names] == [
        "int", "float", "bool", "string", "int", "string enum", *["comma separated list of strings"] * 5]
    assert all(flag_values[name].default is None for name in names)
    assert flag_values["mode"].help == "<a|b>: Which way."


def test_a_field_added_to_a_dataclass_is_a_flag_with_no_other_edit():
    extended = dataclasses.make_dataclass("Extended", [
        ("new_weight", float, dataclasses.field(default=0.1, metadata=dict(help="A new loss weight.")))],
        bases=(Knobs,))
    names, flag_values = knob_flags("--new_weight=0.25", config_class=extended)
    assert names[-1] == "new_weight" and flag_values["new_weight"].help == "A new loss weight."
    assert cli.values_from_flags(extended, flag_values) == {"new_weight": 0.25}


def test_unset_flags_are_left_out_and_set_ones_have_the_fields_types():
    _, flag_values = knob_flags()
    assert cli.values_from_flags(Knobs, flag_values) == {}
    _, flag_values = knob_flags("--count=7", "--rate=1e-3", "--noenabled", "--name=n", "--cap=4", "--mode=b",
                                "--steps=3,9", "--radii=1,2.5", "--sets=u,v,w", "--typed=2", "--listed=5,6")
    assert cli.values_from_flags(Knobs, flag_values) == dict(
        count=7, rate=1e-3, enabled=False, name="n", cap=4, mode="b", steps=(3, 9), radii=(1.0, 2.5),
        sets=("u", "v", "w"), typed=(2.0,), listed=[5, 6])
    values = cli.values_from_flags(Knobs, flag_values)
    assert type(values["radii"][0]) is float and type(values["steps"][0]) is int


def test_field_defaults_make_the_dataclass_defaults_the_flag_defaults():
    _, flag_values = knob_flags(field_defaults=True)
    assert Knobs(**cli.values_from_flags(Knobs, flag_values)) == Knobs()
    assert flag_values["steps"].default == ["1", "2"] and flag_values["listed"].default == ["4"]


@pytest.mark.parametrize("argv,message", [
    (["--steps=3,x"], r"--steps=3,x is invalid: 'x' is not a whole number"),
    (["--steps=1.5"], r"--steps=1.5 is invalid: '1.5' is not a whole number"),
    (["--radii=0.1,abc"], r"--radii=0.1,abc is invalid: 'abc' is not a number"),
])
def test_a_bad_list_entry_is_a_usage_error_naming_the_flag(argv, message):
    _, flag_values = knob_flags(*argv)
    with pytest.raises(cli.UsageError, match=message):
        cli.values_from_flags(Knobs, flag_values)


def test_a_list_field_with_choices_refuses_other_entries():
    @dataclasses.dataclass
    class Choosy:
        picks: tuple = dataclasses.field(default=("a",), metadata=dict(choices=("a", "b"), help="Picks."))

    _, flag_values = knob_flags("--picks=a,c", config_class=Choosy)
    with pytest.raises(cli.UsageError, match=r"--picks=a,c is invalid: 'c' is not one of a, b"):
        cli.values_from_flags(Choosy, flag_values)


def test_a_flag_field_without_help_or_of_an_unflaggable_type_is_refused_by_name():
    @dataclasses.dataclass
    class Undocumented:
        plain: int = 1

    @dataclasses.dataclass
    class Mapping:
        table: dict = dataclasses.field(default_factory=dict, metadata=dict(help="A table."))

    with pytest.raises(TypeError, match=r"Undocumented.plain has no help text"):
        cli.define_dataclass_flags(Undocumented, flags.FlagValues())
    with pytest.raises(TypeError, match=r"Mapping.table: no flag type"):
        cli.define_dataclass_flags(Mapping, flags.FlagValues())


# -- bad values end in exit code 2 naming the flag (values absl cannot parse: tests/test_preflight.py)


def logged_errors(monkeypatch):
    errors = []
    monkeypatch.setattr(logging, "error", lambda message, *args: errors.append(message % args))
    return errors


def _train_main(monkeypatch, *argv):
    """jem_tf.train's main in process on fresh flags: (its exit code, the errors it logged)."""
    errors = logged_errors(monkeypatch)
    monkeypatch.setattr(flags, "FLAGS", train_flags(*argv))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["jem_tf.train"])
    return exit_info.value.code, errors


def test_train_main_exits_2_naming_a_bad_list_entry_before_importing_tensorflow(monkeypatch, tmp_path):
    code, errors = _train_main(monkeypatch, "--preset=quick", "--lr_decay_epochs=5,x", f"--workdir={tmp_path / 'run'}")
    assert code == cli.EXIT_BAD_INPUT
    assert errors == ["--lr_decay_epochs=5,x is invalid: 'x' is not a whole number; expected comma-separated whole "
                      "numbers."]
    assert not (tmp_path / "run").exists()


def test_evaluate_main_returns_2_naming_a_bad_list_entry(monkeypatch, tmp_path):
    errors = logged_errors(monkeypatch)
    monkeypatch.setattr(evaluate, "FLAGS", evaluate_flags("--linf_epsilons=0.1,x", f"--output={tmp_path / 'out'}"))
    assert evaluate.main(["jem_tf.evaluate"]) == cli.EXIT_BAD_INPUT
    assert len(errors) == 1 and "--linf_epsilons=0.1,x is invalid: 'x' is not a number" in errors[0]
    assert not (tmp_path / "out").exists()


# -- --helpfull ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("module,config_class", [("jem_tf.train", lambda: TrainConfig),
                                                 ("jem_tf.evaluate", evaluate.eval_options_class)])
def test_helpfull_lists_every_field_flag_with_its_help(module, config_class):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    result = warm_python.run(["-m", module, "--helpfull"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]  # absl's help exit code (docs/reliability.md: exit codes)
    shown = without_whitespace(result.stdout)
    fields = cli.flag_fields(config_class())
    assert len(fields) >= 20  # guards the loop below against an empty list
    for field, kind in fields:
        flag = f"--[no]{field.name}:" if kind is bool else f"--{field.name}:"
        assert flag in shown, field.name
        assert without_whitespace(field.metadata["help"]) in shown, field.name
