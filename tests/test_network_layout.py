"""Checkpoints of an older network layout (before the stride-2 padding change of issue #11) restore
without error into the new network but compute different outputs, so they are refused by name."""

import json
import os

import pytest
import tensorflow as tf

from jem_tf.configs.base import TrainConfig
from jem_tf.models import wide_resnet
from jem_tf.workdir import restore, run_files
from trainers import checkpointing, objectives


def write_workdir(path, with_layout_marker):
    config = TrainConfig(dataset="digits", workdir=str(path), objective="classifier", depth=10, width=1)
    os.makedirs(path / run_files.CHECKPOINT_DIR)
    (path / run_files.CONFIG_FILE).write_text(config.to_json())
    run_info = dict(dataset="digits", image_shape=[8, 8, 1], num_classes=10)
    (path / run_files.RUN_INFO_FILE).write_text(json.dumps(run_info))
    model = objectives.build_model(config, (8, 8, 1), 10)
    # Before the change, training checkpoints held the model (and optimizer/buffer) and no marker.
    checkpoint = checkpointing.make_checkpoint(model) if with_layout_marker else tf.train.Checkpoint(model=model)
    checkpoint.save(str(path / run_files.CHECKPOINT_DIR / "ckpt"))


def test_a_checkpoint_without_the_layout_marker_is_refused_naming_the_change(tmp_path):
    write_workdir(tmp_path / "old", with_layout_marker=False)
    with pytest.raises(wide_resnet.IncompatibleCheckpointError, match=r"layout 1.*padding=1"):
        restore.restore_run(str(tmp_path / "old"))


def test_a_current_checkpoint_restores(tmp_path):
    write_workdir(tmp_path / "new", with_layout_marker=True)
    model, _, run_info = restore.restore_run(str(tmp_path / "new"))
    assert run_info["global_step"] == 1 and model.num_classes == 10
