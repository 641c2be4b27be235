"""The training loop reads each step's logs one step late, yet never saves past a diverged step."""

import pytest
import tensorflow as tf

from trainers import loop


class _Progress:
    def __init__(self):
        self.updates = []

    def update(self, step, values):
        self.updates.append((step, dict(values)))


class _Manager:
    latest_checkpoint = "ckpt-1"


def _logs(loss, generative=0.0):
    return {"loss": tf.constant(loss), "generative_loss": tf.constant(generative)}


def _deferred():
    progress = _Progress()
    guard = loop._DivergenceGuard(max_abs_generative_loss=100.0, manager=_Manager())
    return loop._DeferredStepLogs(guard, progress), progress


def test_logs_are_read_one_step_late_and_flushed_on_demand():
    step_logs, progress = _deferred()
    step_logs.push(1, 0, _logs(2.5))
    assert progress.updates == []  # step 1 is read only once step 2 is queued
    step_logs.push(2, 0, _logs(2.0))
    assert progress.updates == [(1, {"loss": 2.5, "generative_loss": 0.0, "epoch": 1})]
    step_logs.flush()
    assert [step for step, _ in progress.updates] == [1, 2]
    step_logs.flush()  # nothing pending: no second update
    assert len(progress.updates) == 2


def test_a_diverged_step_is_reported_by_the_next_push_or_flush_naming_itself():
    step_logs, _ = _deferred()
    step_logs.push(1, 0, _logs(2.5))
    step_logs.push(2, 0, _logs(float("nan")))
    with pytest.raises(loop.TrainingDivergedError, match="at step 2: the loss is nan.*ckpt-1"):
        step_logs.push(3, 0, _logs(2.0))

    step_logs, _ = _deferred()
    step_logs.push(7, 0, _logs(1.0, generative=1e3))
    with pytest.raises(loop.TrainingDivergedError, match="at step 7: .*exceeds"):
        step_logs.flush()  # what the loop calls before every checkpoint


def test_the_training_step_is_traced_once_across_epochs(tmp_path):
    from jem_tf.configs.base import TrainConfig  # noqa: PLC0415

    config = TrainConfig(
        preset="quick", dataset="digits", workdir=str(tmp_path), depth=10, width=1, batch_size=256, buffer_size=256,
        sgld_steps=1, max_steps=7, export=False, warmup_steps=1, summary_every_steps=3, sample_every_steps=100,
    )
    metrics = loop.train(config)
    assert metrics["global_step"] == 7  # digits: 5 steps of 256 per epoch, so this crosses an epoch
    assert metrics["train_step_traces"] == 1
