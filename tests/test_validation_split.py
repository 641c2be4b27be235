"""--validation_size: a seeded random validation hold-out drawn like the reference code's, in the
data layer (digits, folders, tfds), the config and the training command line."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_command
from PIL import Image

from jem_tf import data
from jem_tf.configs import get_preset
from jem_tf.data import splits
from jem_tf.evaluation import suite


def _arrays(ds):
    images, labels = [], []
    for image, label in ds.batch(4096):  # unbatched splits, read in batches
        images.append(np.asarray(image))
        labels.append(np.asarray(label))
    return (np.concatenate(images), np.concatenate(labels)) if images else (np.zeros((0,)), np.zeros((0,)))


def _hashes(images):
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images]


def test_indices_are_the_reference_codes_draw():
    # train_wrn_ebm.get_data: np.random.seed(1234); np.random.shuffle(all_inds); valid = all_inds[:n_valid].
    np.random.seed(1234)
    all_inds = list(range(1000))
    np.random.shuffle(all_inds)
    expected = sorted(all_inds[:50])
    np.testing.assert_array_equal(splits.random_validation_indices(1000, 50), expected)
    # The global numpy state is not what makes it reproducible: another state, the same draw.
    np.random.seed(7)
    np.testing.assert_array_equal(splits.random_validation_indices(1000, 50), expected)


def test_too_large_a_validation_size_is_refused_naming_it():
    with pytest.raises(ValueError, match="validation_size=1437 leaves no training images"):
        data.load("digits", validation_fraction=0.0, validation_size=1437)
    with pytest.raises(ValueError, match="both choose the validation split"):
        data.load("digits", validation_fraction=0.1, validation_size=10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="validation_size must be a positive integer"):
            data.load("digits", validation_fraction=0.0, validation_size=bad)


def test_digits_random_hold_out_partitions_the_training_split():
    everything = data.load("digits", validation_fraction=0.0)
    held_out = data.load("digits", validation_fraction=0.0, validation_size=100)
    assert (held_out.num_train, held_out.num_validation, held_out.num_test) == (1337, 100, 360)
    train, validation = _arrays(held_out.train)[0], _arrays(held_out.validation)[0]
    assert (len(train), len(validation)) == (1337, 100)
    assert not set(_hashes(train)) & set(_hashes(validation))
    assert sorted(_hashes(train) + _hashes(validation)) == sorted(_hashes(_arrays(everything.train)[0]))
    # The chosen images are those at the reference's indices of the full training split.
    full = _arrays(everything.train)[0]
    np.testing.assert_array_equal(validation, full[splits.random_validation_indices(1437, 100)])
    np.testing.assert_array_equal(_arrays(held_out.test)[0], _arrays(everything.test)[0])
    # Not the fraction's hold-out.
    by_fraction = data.load("digits", validation_fraction=100 / 1437)
    assert set(_hashes(validation)) != set(_hashes(_arrays(by_fraction.validation)[0]))


def _write_tree(root, per_class=4):
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 1)):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{index}.png")


def test_folder_random_hold_out_has_exact_counts_and_cardinality(tmp_path):
    _write_tree(tmp_path)
    everything = data.load(f"folder:{tmp_path}", validation_fraction=0.0)
    held_out = data.load(f"folder:{tmp_path}", validation_fraction=0.0, validation_size=3)
    assert (held_out.num_train, held_out.num_validation) == (5, 3)
    assert (int(held_out.train.cardinality()), int(held_out.validation.cardinality())) == (5, 3)
    full = _arrays(everything.train)[0]
    validation, train = _arrays(held_out.validation)[0], _arrays(held_out.train)[0]
    indices = splits.random_validation_indices(8, 3)
    np.testing.assert_array_equal(validation, full[indices])
    np.testing.assert_array_equal(train, np.delete(full, indices, axis=0))
    # Batches for training work on the filtered split (known size, shuffled, augmented).
    batch, _ = next(iter(data.make_batches(held_out.train, 5, training=True, augmentation="crop_flip")))
    assert batch.shape == (5, 8, 8, 3)


def test_tfds_random_hold_out_under_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        everything = data.load("cifar10", data_dir=str(tmp_path), validation_fraction=0.0)
        held_out = data.load("cifar10", data_dir=str(tmp_path), validation_fraction=0.0, validation_size=6)
        assert (held_out.num_train, held_out.num_validation) == (14, 6)
        full = _arrays(everything.train)[0]
        indices = splits.random_validation_indices(20, 6)
        np.testing.assert_array_equal(_arrays(held_out.validation)[0], full[indices])
        np.testing.assert_array_equal(_arrays(held_out.train)[0], np.delete(full, indices, axis=0))


def test_config_refuses_a_size_together_with_a_fraction():
    config = dataclasses.replace(get_preset("quick"), validation_size=100)
    with pytest.raises(ValueError, match="--validation_size=100 and --validation_fraction=0.1 both"):
        config.validate()
    dataclasses.replace(config, validation_fraction=0.0).validate()
    with pytest.raises(ValueError, match="--validation_size=0 is invalid"):
        dataclasses.replace(config, validation_fraction=0.0, validation_size=0).validate()


def _train(*flags):
    return run_command("jem_tf.train", *flags)


@pytest.mark.slow
def test_command_line_size_replaces_the_presets_fraction_and_both_flags_are_refused(tmp_path):
    both = _train("--preset=quick", "--validation_size=50", "--validation_fraction=0.2",
                  f"--workdir={tmp_path / 'both'}")
    assert both.returncode == 2, both.stderr[-2000:]
    assert "--validation_size=50 and --validation_fraction=0.2 both choose the validation split" in both.stderr
    assert "Traceback" not in both.stderr and not (tmp_path / "both").exists()

    workdir = tmp_path / "size"
    result = _train("--preset=quick", "--validation_size=50", "--depth=10", "--width=1", "--batch_size=16",
                    "--buffer_size=32", "--sgld_steps=1", "--max_steps=1", "--export=false", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert (config["validation_size"], config["validation_fraction"]) == (50, 0.0)
    run_info = json.loads((workdir / "run_info.json").read_text())
    assert run_info["num_validation"] == 50
    # Evaluation reads the split and the data noise from the run's config (and reports them).
    run, _ = suite.restore_run(str(workdir))
    assert run.validation_split.startswith("random 50 training images") and run.data_noise == 0.03
