"""Readers take the replay buffer from the checkpoint, never from the objective's name: a run whose
checkpoint holds chains gets them back (as many as were stored), a run without (a classifier, a
short-run --buffer_size=0 variant) restores and evaluates with fresh chains only."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from jem_tf.configs.base import TrainConfig
from jem_tf.evaluation import EvalOptions, suite
from jem_tf.models import wide_resnet
from jem_tf.sampling import ReplayBuffer
from jem_tf.workdir import checkpoints, restore, run_files

SHAPE = (8, 8, 1)


def write_workdir(path, objective, stored_chains):
    """A workdir whose config names `objective` (with --buffer_size=64) and whose one checkpoint
    holds `stored_chains` replay-buffer chains (0: no buffer). Returns the stored chains."""
    config = TrainConfig(dataset="digits", workdir=str(path), objective=objective, depth=10, width=1, buffer_size=64)
    os.makedirs(path / run_files.CHECKPOINT_DIR)
    run_files.write_config(str(path), config)
    run_info = dict(dataset="digits", image_shape=list(SHAPE), num_classes=10)
    run_files.write_run_info(str(path), run_info)
    network, _ = restore.build_network(config, run_info)
    parts = {"model": network, wide_resnet.NETWORK_LAYOUT_KEY: tf.Variable(wide_resnet.NETWORK_LAYOUT, dtype=tf.int64)}
    chains = None
    if stored_chains:
        buffer = ReplayBuffer(stored_chains, SHAPE, seed=7)
        chains = np.random.default_rng(0).uniform(-1, 1, (stored_chains,) + SHAPE).astype(np.float32)
        buffer.images.assign(chains)
        parts["replay_buffer"] = buffer
    tf.train.Checkpoint(**parts).save(str(path / run_files.CHECKPOINT_DIR / checkpoints.CHECKPOINT_PREFIX))
    return chains


def test_replay_buffer_size_reads_the_stored_chains(tmp_path):
    write_workdir(tmp_path / "with", "jem", stored_chains=12)
    write_workdir(tmp_path / "without", "jem", stored_chains=0)
    for name, expected in (("with", 12), ("without", 0)):
        path = checkpoints.checkpoint_path(checkpoints.checkpoint_dir(str(tmp_path / name)), 1)
        assert restore.replay_buffer_size(path) == expected


@pytest.mark.parametrize("objective", ["jem", "classifier"])
def test_a_stored_buffer_is_restored_whatever_the_objective(tmp_path, objective):
    chains = write_workdir(tmp_path, objective, stored_chains=12)
    for checkpoint in (None, 1):  # the newest, and one named by its step
        model, _, _ = restore.restore_run(str(tmp_path), checkpoint)
        # Its size is the stored one (12), not the config's --buffer_size (64).
        assert model.replay_buffer.size == 12
        np.testing.assert_array_equal(model.replay_buffer.images.numpy(), chains)
    model, _, _ = restore.restore_run(str(tmp_path), with_replay_buffer=False)
    assert getattr(model, "replay_buffer", None) is None


def test_a_jem_run_without_a_buffer_evaluates_with_fresh_chains_only(tmp_path):
    write_workdir(tmp_path, "jem", stored_chains=0)
    run, _ = suite.restore_run(str(tmp_path))
    assert not run.has_replay_buffer
    images = np.random.default_rng(1).uniform(-1, 1, (6,) + SHAPE).astype(np.float32)
    options = EvalOptions(num_examples=6, batch_size=6, sample_steps=1, num_samples=4, samples_per_class=1,
                          max_grid_classes=2, progress=False)
    results = suite.run_suite(run, images, np.arange(6) % 10, ["samples"], options, str(tmp_path / "eval"))
    assert results["samples/fresh/num_images"] == 4 and results["samples/fresh_conditional/num_images"] == 2
    assert results["samples/buffer"].startswith("unavailable: the run has no replay buffer")
    assert "samples/buffer/num_images" not in results
    assert not [key for key in results if key.startswith("errors/")]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["samples/buffer"] == results["samples/buffer"]
