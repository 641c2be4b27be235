"""The real commands end bad input with one message and exit code 2, never a traceback, and write
nothing. A representative few per command (each subprocess pays TensorFlow's import); every case is
tested in-process in tests/test_preflight.py, tests/test_configs.py and tests/test_data.py."""

import os
from pathlib import Path

import numpy as np
import pytest
import warm_python
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_module(module, *flags, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return warm_python.run(["-m", module, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_clear_error(result, *named):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert text in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("module", ["jem_tf.train", "jem_tf.evaluate", "export.savedmodel"])
def test_an_unknown_flag_exits_2_in_every_command(module, tmp_path):
    result = run_module(module, f"--workdir={tmp_path / 'run'}", "--no_such_flag")
    assert_one_clear_error(result, "Unknown command line flag 'no_such_flag'", "--helpshort")
    assert not (tmp_path / "run").exists()


def test_seed_minus_one_exits_2_and_the_workdir_stays_absent(tmp_path):
    result = run_module("jem_tf.train", "--preset=quick", "--seed=-1", f"--workdir={tmp_path / 'run'}")
    assert_one_clear_error(result, "--seed=-1 is invalid")
    assert not (tmp_path / "run").exists()


def test_lr_decay_epochs_that_is_not_a_number_names_the_flag(tmp_path):
    result = run_module("jem_tf.train", "--preset=quick", "--lr_decay_epochs=abc", f"--workdir={tmp_path / 'run'}")
    assert_one_clear_error(result, "--lr_decay_epochs=abc is invalid: 'abc' is not a whole number")
    assert not (tmp_path / "run").exists()


def test_a_corrupt_test_image_is_named_before_training(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for class_name in ("a", "b"):
            folder = tmp_path / "data" / split / class_name
            folder.mkdir(parents=True)
            for index in range(4):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    corrupt = tmp_path / "data/test/a/broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_module("jem_tf.train", "--preset=quick", f"--dataset=folder:{tmp_path / 'data'}",
                        f"--workdir={tmp_path / 'run'}", "--max_steps=1", "--export=false")
    assert_one_clear_error(result, str(corrupt), "--skip_bad_files")
    assert not (tmp_path / "run").exists()
