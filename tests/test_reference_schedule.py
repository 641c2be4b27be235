"""The learning-rate schedule matches the reference's (train_wrn_ebm.py): warm-up
`lr * it / warmup` from 0, and each decay at the first step of its epoch."""

import numpy as np

from jem_tf.configs.base import TrainConfig
from trainers import optimization


def reference_rates(learning_rate, warmup, decay_epochs, decay_rate, steps_per_epoch, epochs):
    """The reference's loop, transcribed as a plain simulation: decay at each decay epoch's start,
    then the warm-up overwrites the rate while it <= warmup."""
    rate, rates, it = learning_rate, [], 0
    for epoch in range(epochs):
        if epoch in decay_epochs:
            rate *= decay_rate
        for _ in range(steps_per_epoch):
            if it <= warmup:
                rate = learning_rate * it / float(warmup)
            rates.append(rate)
            it += 1
    return np.array(rates)


def test_schedule_equals_the_reference_step_for_step():
    for warmup, decay_epochs in ((7, (2, 4)), (0, (1, 3)), (25, (2, 4))):  # the last decays inside the warm-up
        config = TrainConfig(learning_rate=0.1, warmup_steps=warmup, lr_decay_epochs=decay_epochs, lr_decay_rate=0.3)
        schedule = optimization.learning_rate_schedule(config, steps_per_epoch=6)
        ours = np.array([float(schedule(step)) for step in range(36)])
        if warmup == 0:  # the reference's -1 (no warm-up); its 0 would divide by zero
            warmup = -1
        expected = reference_rates(0.1, warmup, decay_epochs, 0.3, 6, 6)
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=0, err_msg=f"warmup={warmup}, decays={decay_epochs}")
    assert float(optimization.learning_rate_schedule(TrainConfig(warmup_steps=10), 100)(0)) == 0.0



def test_training_optimizer_is_the_reference_adam():
    schedule = optimization.learning_rate_schedule(TrainConfig(warmup_steps=4), steps_per_epoch=10)
    optimizer = optimization.make_optimizer(schedule)
    assert optimizer.epsilon == 1e-8  # PyTorch's default, which the reference uses (Keras': 1e-7)
    assert float(optimizer.learning_rate) == 0.0  # step 0 of the warm-up
