"""The first of a run's three phases (check, build, train): every check that can refuse the
command, in one place and before anything is built or written, so a refused command leaves the
workdir as it was and the corrected one just runs.

    plan = run_plan.check_run(config)  # check: config, workdir, data, objective (nothing written)
    run = _Run(plan)                   # build: model, optimizer, checkpoints (nothing written)
    run.start(); run.train(...)        # train: under the workdir lock (trainers/loop.py)

`check_run` returns a RunPlan: what the build and the loop need (the config with the saved run's
recovery state, whether it resumes, the strategy, the data, the step counts).
"""

import dataclasses
import os

import tensorflow as tf

from jem_tf import data as jem_data
from jem_tf import preflight
from jem_tf.configs.base import RECOVERY_STATE_FIELDS, TrainConfig, incompatible_fields
from jem_tf.workdir import run_files
from trainers import objectives
from trainers.distribution import make_strategy


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a run made with settings that cannot be resumed by this one."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A checked run: what building and training it need.

    Attributes:
      config: the run's settings, with the saved run's recovery state (RECOVERY_STATE_FIELDS).
      resuming: the workdir already holds this run (its config.json).
      strategy: the distribution strategy, made before any other TensorFlow op.
      data: the loaded dataset.
      training_data: what run_info.json records of the training examples the run uses
        (jem_data.training_data_record, e.g. the labelled subset).
      steps_per_epoch, total_steps: the run's length (--epochs, capped by --max_steps).
    """

    config: TrainConfig
    resuming: bool
    strategy: tf.distribute.Strategy
    data: jem_data.ImageData
    training_data: dict
    steps_per_epoch: int
    total_steps: int


def check_run(config: TrainConfig) -> RunPlan:
    """Checks `config` against itself, the workdir, the data and the objective; returns the plan.

    Raises:
      IncompatibleWorkdirError: the workdir holds a run with other settings, or an unreadable config.
      ValueError (and the data's own errors): a setting, the data or the workdir refuses the run.
    """
    config.validate()
    preflight.check_workdir_path(config.workdir)
    resuming, config = _check_resumable(config)
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime at creation.
    strategy = make_strategy(config.strategy)
    data = jem_data.load(config.dataset, data_dir=config.data_dir, validation_fraction=config.validation_fraction,
                         validation_size=config.validation_size, skip_bad_files=config.skip_bad_files,
                         drop_empty_classes=config.drop_empty_classes)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} (global) must be divisible by the {replicas} replicas."
        )
    config.validate_for_data(data.num_train)
    training_data = jem_data.training_data_record(data, config)
    objective = objectives.get(config.objective)
    objective.check_config(config, data.num_train)
    steps_per_epoch = data.num_train // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    preflight.check_not_past_end(config, total_steps, steps_per_epoch)
    if objective.uses_replay_buffer(config):
        preflight.check_replay_buffer_memory(config, data.image_shape)
    preflight.warn_if_bfloat16_is_emulated(config, on_gpu=bool(tf.config.list_logical_devices("GPU")))
    return RunPlan(config=config, resuming=resuming, strategy=strategy, data=data, training_data=training_data,
                   steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def _check_resumable(config: TrainConfig):
    """Refuses a workdir made with incompatible settings.

    Returns (resuming, config): resuming is True when the workdir already holds this run; config
    carries the saved run's recovery state (RECOVERY_STATE_FIELDS) over.
    """
    config_path = os.path.join(config.workdir, run_files.CONFIG_FILE)
    if not os.path.exists(config_path):
        return False, config
    try:
        saved = TrainConfig.load(config_path)
    except (ValueError, TypeError) as error:
        raise IncompatibleWorkdirError(
            f"{config_path!r} cannot be read ({error}). Restore it from the command that started the run, or "
            "choose a new --workdir."
        ) from None
    differences = incompatible_fields(saved, config)
    if differences:
        raise IncompatibleWorkdirError(
            f"Workdir {config.workdir!r} holds a run with different settings ({'; '.join(differences)}). "
            "Resume it with its original settings, or choose a new --workdir."
        )
    return True, dataclasses.replace(config, **{name: getattr(saved, name) for name in RECOVERY_STATE_FIELDS})
