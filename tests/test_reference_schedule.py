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


def torch_adam(gradients, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """torch.optim.Adam's update (no weight decay, no amsgrad), transcribed in float64: the weights
    after each gradient, starting from 0."""
    w, m, v, weights = 0.0, 0.0, 0.0, []
    for t, g in enumerate(gradients, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w -= lr / (1 - beta1**t) * m / (np.sqrt(v) / np.sqrt(1 - beta2**t) + eps)
        weights.append(w)
    return np.array(weights)


def test_training_optimizer_updates_like_torch_adam():
    # Gradients of 1e-8 make epsilon's place visible: Keras' Adam adds it to the uncorrected sqrt(v)
    # (first step 0.03 instead of torch's 0.5); the larger ones check the ordinary regime.
    import keras  # noqa: PLC0415

    schedule = optimization.learning_rate_schedule(TrainConfig(learning_rate=0.1, warmup_steps=0), steps_per_epoch=10)
    for gradients in ([1e-8, 2e-8, -1e-8, 3e-8], [0.5, -0.2, 1e-3, 2.0]):
        optimizer = optimization.make_optimizer(schedule)
        variable = keras.Variable(np.zeros([1], np.float32))
        ours = []
        for g in gradients:
            optimizer.apply([np.array([g], np.float32)], [variable])
            ours.append(float(variable.numpy()[0]))
        np.testing.assert_allclose(ours, torch_adam(gradients, lr=0.1), rtol=1e-5, err_msg=f"gradients {gradients}")


def test_each_variables_update_is_torch_adams_float32_arithmetic_in_its_order():
    """Bit for bit, for variables of different shapes updated in one step: the moments first, then
    the weight from the new moments, each operation rounded to float32 as PyTorch's kernels round
    it (the step's scalars computed in float64 and rounded once)."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    schedule = optimization.learning_rate_schedule(TrainConfig(learning_rate=0.1, warmup_steps=0), steps_per_epoch=10)
    optimizer = optimization.make_optimizer(schedule)
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 2, 4), (7,), ()]
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in shapes]
    f32 = np.float32
    expected = [(v.numpy(), np.zeros(s, f32), np.zeros(s, f32)) for v, s in zip(variables, shapes)]
    apply = tf.function(lambda grads: optimizer.apply(grads, variables), autograph=False)
    for t in range(1, 4):
        gradients = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
        apply(gradients)
        step_size = f32(0.1 / (1 - 0.9**t))
        bias_correction2_sqrt = f32(np.sqrt(1 - 0.999**t))
        updated = []
        for (w, m, v), g in zip(expected, gradients):
            m = m + (g - m) * f32(1 - 0.9)
            v = v + (np.square(g) - v) * f32(1 - 0.999)
            w = w - m * step_size / (np.sqrt(v) / bias_correction2_sqrt + f32(1e-8))
            updated.append((w, m, v))
        expected = updated
        for variable, (w, _, _) in zip(variables, expected):
            np.testing.assert_array_equal(variable.numpy(), w, err_msg=f"step {t}, shape {variable.shape}")


def test_adam_bias_corrections_are_not_rounded_to_float32():
    """A constant gradient moves a weight by lr * g / (|g| + eps) at every step, exactly: the bias
    corrections cancel the moments' start at 0. Computed in float32, 1 - 0.999^t loses ~1e-5 of
    itself (found by benchmarks.lockstep_reference); PyTorch computes them in double, and so do we."""
    import keras  # noqa: PLC0415

    schedule = optimization.learning_rate_schedule(TrainConfig(learning_rate=0.1, warmup_steps=0), steps_per_epoch=10)
    optimizer = optimization.make_optimizer(schedule)
    variable = keras.Variable(np.zeros([1], np.float32))
    updates = []
    for _ in range(40):
        variable.assign(np.zeros([1], np.float32))
        optimizer.apply([np.array([1.0], np.float32)], [variable])
        updates.append(-float(variable.numpy()[0]))
    np.testing.assert_allclose(updates, 0.1 / (1 + 1e-8), rtol=1e-6)


def test_a_keras_adam_checkpoint_restores_into_torch_adam(tmp_path):
    # Runs saved before TorchAdam resume: the same optimizer variables, restored one for one.
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    variable = keras.Variable(np.zeros([2], np.float32))
    old = keras.optimizers.Adam(0.1, epsilon=1e-8)
    old.apply([np.array([0.5, -1.0], np.float32)], [variable])
    path = tf.train.Checkpoint(optimizer=old).write(str(tmp_path / "ckpt"))
    new = optimization.TorchAdam(0.1, epsilon=1e-8)
    new.build([variable])
    tf.train.Checkpoint(optimizer=new).read(path).assert_consumed()
    assert int(new.iterations.numpy()) == 1
    np.testing.assert_array_equal(new._momentums[0].numpy(), old._momentums[0].numpy())
    np.testing.assert_array_equal(new._velocities[0].numpy(), old._velocities[0].numpy())


def test_two_replicas_update_like_torch_adam_on_the_warm_up_schedule(two_logical_cpus):
    # Under MirroredStrategy the scheduled learning rate, and so Adam's per-step scalars, are
    # per-replica values: each replica's variable updates must take their own replica's.
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    strategy = tf.distribute.MirroredStrategy(two_logical_cpus)
    schedule = optimization.learning_rate_schedule(TrainConfig(learning_rate=0.1, warmup_steps=2), steps_per_epoch=10)
    with strategy.scope():
        optimizer = optimization.make_optimizer(schedule)
        variable = keras.Variable(np.zeros([1], np.float32))
        optimizer.build([variable])

    @tf.function(autograph=False)
    def step(gradient):
        # Each replica's gradient is half the total: the optimizer sums them over replicas.
        strategy.run(lambda: optimizer.apply([tf.reshape(gradient / 2, [1])], [variable]))

    gradients = [0.5, -0.2, 1e-3, 2.0]
    weights = []
    for g in gradients:
        step(tf.constant(g, tf.float32))
        weights.append(float(variable.numpy()[0]))
    rates = [float(schedule(s)) for s in range(len(gradients))]  # 0, 0.05, 0.1, 0.1
    expected, w, m, v = [], 0.0, 0.0, 0.0
    for t, (g, rate) in enumerate(zip(gradients, rates), start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w -= rate / (1 - 0.9**t) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**t) + 1e-8)
        expected.append(w)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
