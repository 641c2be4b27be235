"""A refused training command leaves its workdir exactly as it was, and the corrected command then
runs: every check runs before the first write. In-process (`loop.train`, `config_from_flags`);
tests/test_cli.py proves the exit codes of the real commands for a representative few."""

import dataclasses
import io
import re
from pathlib import Path

import conftest
import numpy as np
import pytest
from absl import flags
from PIL import Image

from jem_tf import cli, precision, preflight, train
from jem_tf.configs import TrainConfig, get_preset
from jem_tf.configs import objectives as objective_configs
from trainers import loop, objectives, run_plan


def tiny_config(workdir, **overrides) -> TrainConfig:
    """The suite's tiny run (conftest) for one step at its smallest, with the quick preset's
    validation split: the real training path at its smallest."""
    return conftest.tiny_config(workdir, **{**dict(
        buffer_size=16, sgld_steps=1, batch_size=8, max_steps=1, checkpoint_every_steps=1, summary_every_steps=1,
        validation_fraction=get_preset("quick").validation_fraction), **overrides})


def snapshot(path: Path):
    """None when absent, the bytes of a file, or {relative path: bytes or 'dir'} of a tree."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): "dir" if p.is_dir() else p.read_bytes() for p in sorted(path.rglob("*"))}


def write_folder(root: Path, classes=("a", "b"), per_class=5, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return f"folder:{root}"


def _bad_seed(tmp_path):
    return dict(seed=-1), dict(seed=0), r"--seed=-1 is invalid.*\[0, 2147483647\]"


def _infinite_learning_rate(tmp_path):
    return dict(learning_rate=float("inf")), {}, r"--learning_rate=inf is invalid: expected a finite number"


def _decreasing_decay_epochs(tmp_path):
    return dict(lr_decay_epochs=(11, 8)), {}, r"--lr_decay_epochs=11,8 is invalid.*strictly increasing"


def _batch_larger_than_training_set(tmp_path):
    return dict(batch_size=5000), {}, r"--batch_size=5000 is larger than the \d+ training examples"


def _buffer_beyond_memory(tmp_path):
    # 10**9 chains of 8x8x1 float32 need 512 GB: no test machine has that free.
    return dict(buffer_size=10**9), {}, r"--buffer_size=1000000000 does not fit in memory.*GiB.*available"


def _folder_with_one_class(tmp_path):
    bad = dict(dataset=write_folder(tmp_path / "data", classes=("only",)), validation_fraction=0.0)

    def fix():
        write_folder(tmp_path / "data", classes=("only", "other"))
        return bad

    return bad, fix, r"1 class\(es\) with training images"


def _folder_with_a_corrupt_test_image(tmp_path):
    bad = dict(dataset=write_folder(tmp_path / "data"), validation_fraction=0.0)
    corrupt = tmp_path / "data/test/b/broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")

    def fix():
        corrupt.unlink()
        return bad

    return bad, fix, re.escape(str(corrupt))


def _folder_with_an_empty_class(tmp_path):
    bad = dict(dataset=write_folder(tmp_path / "data"), validation_fraction=0.0)
    (tmp_path / "data/train/empty").mkdir()
    return bad, dict(bad, drop_empty_classes=True), r"class\(es\) empty have no usable training images"


def _folder_with_a_link_out_of_the_tree(tmp_path):
    bad = dict(dataset=write_folder(tmp_path / "data"), validation_fraction=0.0)
    link = tmp_path / "data/train/a/x.png"
    link.symlink_to("/etc/passwd")

    def fix():
        link.unlink()
        return bad

    return bad, fix, r"x.png -> /etc/passwd"


def _workdir_is_a_file(tmp_path):
    (tmp_path / "run").write_text("my notes")
    return {}, dict(workdir=str(tmp_path / "run_dir")), r"--workdir=.* is an existing file, not a directory"


REFUSED = [
    _bad_seed, _infinite_learning_rate, _decreasing_decay_epochs, _batch_larger_than_training_set,
    _buffer_beyond_memory, _folder_with_one_class, _folder_with_a_corrupt_test_image, _folder_with_an_empty_class,
    _folder_with_a_link_out_of_the_tree, _workdir_is_a_file,
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.__name__.strip("_"))
def test_a_refused_run_writes_nothing_and_the_corrected_one_runs(tmp_path, case):
    # Each case: (bad overrides, corrected overrides or a function that fixes the data and returns
    # them, the expected message). The corrected command is the tiny run with only those overrides.
    bad, corrected, message = case(tmp_path)
    workdir = tmp_path / "run"
    before = snapshot(workdir)
    with pytest.raises(ValueError, match=message):
        loop.train(tiny_config(workdir, **bad))
    assert snapshot(workdir) == before, "a refused run must leave the workdir as it was"
    corrected = corrected() if callable(corrected) else corrected
    config = tiny_config(corrected.pop("workdir", workdir), **corrected)
    assert loop.train(config)["global_step"] == 1
    assert Path(config.workdir, "config.json").exists()


def test_max_steps_before_the_workdirs_step_is_refused_untouched_and_a_later_end_continues(tmp_path):
    workdir = tmp_path / "run"
    loop.train(tiny_config(workdir, max_steps=2))
    before = snapshot(workdir)
    with pytest.raises(ValueError, match=r"already at step 2, past the end this command asks for \(step 1, from "
                                         r"--max_steps=1\).*--max_steps=2 or more.*export.savedmodel"):
        loop.train(tiny_config(workdir, max_steps=1))
    assert snapshot(workdir) == before
    assert loop.train(tiny_config(workdir, max_steps=3))["steps_this_session"] == 1


def test_epochs_before_the_workdirs_step_blame_epochs(tmp_path):
    config = tiny_config(tmp_path, max_steps=None, epochs=1)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/ckpt-500.index").write_bytes(b"")
    with pytest.raises(ValueError, match=r"from --epochs=1 \(100 steps per epoch\).*--epochs=5 or more"):
        preflight.check_not_past_end(config, total_steps=100, steps_per_epoch=100)
    preflight.check_not_past_end(config, total_steps=500, steps_per_epoch=100)  # the same end: a resume


def test_latest_checkpoint_step_reads_the_index_files_not_the_state_file(tmp_path):
    assert preflight.latest_checkpoint_step(str(tmp_path)) is None
    (tmp_path / "checkpoints").mkdir()
    for name in ("ckpt-5.index", "ckpt-20.index", "ckpt-30.data-00000-of-00001", "checkpoint"):
        (tmp_path / "checkpoints" / name).write_text("garbled")
    assert preflight.latest_checkpoint_step(str(tmp_path)) == 20


def test_memory_refusal_names_both_numbers_and_a_buffer_size_that_fits():
    config = dataclasses.replace(get_preset("quick"), buffer_size=100_000)  # 8x8x1: 25.6 MB per copy
    with pytest.raises(ValueError) as error:
        preflight.check_replay_buffer_memory(config, (8, 8, 1), available=(2**30 // 100, "test meminfo"))
    message = str(error.value)
    assert "need about 0.05 GiB" in message and "only 0.01 GiB is available (test meminfo)" in message
    fits = int(re.search(r"Use --buffer_size=(\d+) or less", message).group(1))
    preflight.check_replay_buffer_memory(dataclasses.replace(config, buffer_size=fits), (8, 8, 1),
                                         available=(2**30 // 100, "test"))
    with pytest.raises(ValueError):
        preflight.check_replay_buffer_memory(dataclasses.replace(config, buffer_size=fits + 1), (8, 8, 1),
                                             available=(2**30 // 100, "test"))


def test_available_memory_is_read_from_this_machine():
    available, source = preflight.available_memory_bytes()
    assert available is not None and available > 0, source


def test_bfloat16_without_bfloat16_instructions_warns_with_the_fix(tmp_path, caplog):
    bf16 = dataclasses.replace(get_preset("cifar_cpu"), workdir=str(tmp_path))
    emulated = {"sse4_2", "avx2", "fma"}  # an AVX2-only CPU
    with caplog.at_level("WARNING"):
        assert preflight.warn_if_bfloat16_is_emulated(bf16, on_gpu=False, flags=emulated)
    assert "--precision=float32" in caplog.text and "avx512_bf16" in caplog.text
    assert not preflight.warn_if_bfloat16_is_emulated(bf16, on_gpu=False, flags=emulated | {"avx512_bf16"})
    assert not preflight.warn_if_bfloat16_is_emulated(bf16, on_gpu=False, flags=emulated | {"amx_bf16"})
    assert not preflight.warn_if_bfloat16_is_emulated(bf16, on_gpu=True, flags=emulated)
    assert not preflight.warn_if_bfloat16_is_emulated(dataclasses.replace(bf16, precision="float32"), on_gpu=False,
                                                      flags=emulated)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) is None


def test_workdir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot be created: .*file.* is a file"):
        preflight.check_workdir_path(str(tmp_path / "file" / "run"))


def test_garbled_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(run_plan.IncompatibleWorkdirError, match="config.json' cannot be read"):
        loop.train(tiny_config(tmp_path))


# -- flags -------------------------------------------------------------------------------------


def parsed_flags(*argv):
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["jem_tf.train", "--preset=quick", *argv])
    return flag_values


@pytest.mark.parametrize(
    "value,message",
    [("abc", r"--lr_decay_epochs=abc is invalid: 'abc' is not a whole number"),
     ("8,1.5", r"'1.5' is not a whole number"),
     ("11,8", r"--lr_decay_epochs=11,8 is invalid: expected strictly increasing"),
     ("-5", r"--lr_decay_epochs=-5 is invalid: expected positive whole epochs")],
)
def test_lr_decay_epochs_flag_errors_name_the_flag(value, message):
    with pytest.raises(ValueError, match=message):
        train.config_from_flags(parsed_flags(f"--lr_decay_epochs={value}"))


def test_lr_decay_epochs_flag_is_parsed():
    assert train.config_from_flags(parsed_flags("--lr_decay_epochs=3,9")).lr_decay_epochs == (3, 9)


FLOAT_FLAGS = [field.name for field, kind in cli.flag_fields(TrainConfig) if kind is float]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FLAGS)
def test_every_float_flag_refuses_inf_and_nan(name, value):
    # With an objective that reads the flag (another refuses the flag itself, test_cli_flags).
    objective = [f"--objective={readers[0]}"] if (readers := objective_configs.readers(name)) else []
    with pytest.raises(ValueError, match=f"--{name}=.*finite"):
        train.config_from_flags(parsed_flags(*objective, f"--{name}={value}"))


def test_float_flags_are_found():
    assert {"learning_rate", "sgld_noise", "data_noise", "max_abs_generative_loss"} <= set(FLOAT_FLAGS)


def test_seed_minus_one_is_refused_not_rewritten():
    with pytest.raises(ValueError, match=r"--seed=-1 is invalid"):
        train.config_from_flags(parsed_flags("--seed=-1"))


@pytest.mark.parametrize("argv,named", [
    (["--no_such_flag"], "no_such_flag"), (["--seed=abc"], "--seed=abc"), (["--preset=tiny"], "tiny"),
    (["--depth=abc"], "--depth=abc"), (["--learning_rate=fast"], "learning_rate"),
    (["--objective=gan"], "--objective=gan"), (["--export=maybe"], "--export")])
def test_flags_absl_cannot_parse_exit_2_with_one_line(argv, named, monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    monkeypatch.setattr(flags, "FLAGS", flag_values)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["jem_tf.train", *argv])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT == 2
    assert named in stderr.getvalue() and "--helpshort" in stderr.getvalue()


def test_number_list_flags_of_every_command_name_the_flag():
    assert cli.parse_number_list("linf_epsilons", ["0.1", "2e-2"], float) == (0.1, 0.02)
    with pytest.raises(cli.UsageError, match=r"--linf_epsilons=0.1,x is invalid: 'x' is not a number"):
        cli.parse_number_list("linf_epsilons", ["0.1", "x"], float)
    with pytest.raises(cli.UsageError, match=r"--refine_steps=1,2.5 is invalid: '2.5' is not a whole number"):
        cli.parse_number_list("refine_steps", ["1", "2.5"], int)


def test_a_model_that_fails_to_build_leaves_no_config_behind(tmp_path, monkeypatch):
    def out_of_accelerator_memory(*args, **kwargs):
        raise MemoryError("simulated: the buffer does not fit on the accelerator")

    monkeypatch.setattr(objectives, "build_model", out_of_accelerator_memory)
    with pytest.raises(MemoryError):
        loop.train(tiny_config(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
