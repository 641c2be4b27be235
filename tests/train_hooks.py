"""Test helper: run code after each step of the training loop (preemption and divergence tests)."""

from trainers import loop


def wrap_train_step(monkeypatch, hook):
    """Wraps the loop's compiled train step so that, after each step, `hook(step, logs, model)` runs
    and returns the logs the loop sees (to send a signal or corrupt a step at a given step). Undone
    with `monkeypatch`."""
    original = loop.distributed_train_step

    def wrapped(model, strategy):
        step_fn = original(model, strategy)

        def train_step(batch):
            logs = step_fn(batch)  # first: the hook sees the step this call completed
            return hook(int(model.optimizer.iterations), logs, model)

        train_step.experimental_get_tracing_count = step_fn.experimental_get_tracing_count
        return train_step

    monkeypatch.setattr(loop, "distributed_train_step", wrapped)
