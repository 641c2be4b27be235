"""The optimizer and learning-rate schedules of training: the reference's Adam and schedule, and the
divergence recovery's scaled schedule."""

import collections

import keras
import tensorflow as tf
from tensorflow.python.ops import gen_resource_variable_ops

from jem_tf import precision as jem_precision
from jem_tf.configs.base import TrainConfig

# The reference's Adam epsilon (PyTorch's default); Keras' default is 1e-7.
ADAM_EPSILON = 1e-8


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """The reference's schedule (train_wrn_ebm.py), step for step.

    Step s (the optimizer's iteration count before the update, 0 first) uses
    `learning_rate * s / warmup_steps` while s <= warmup_steps (so the very first update has rate 0),
    and after that `learning_rate * lr_decay_rate**d`, d = the number of lr_decay_epochs whose first
    step lies in (warmup_steps, s]: a decay takes effect at the first step of its epoch. Like the
    reference, a decay epoch that starts inside the warm-up is overwritten by it and never applies.
    """
    decay_steps = sorted(int(epoch * steps_per_epoch) for epoch in config.lr_decay_epochs)
    decay_steps = [b for b in decay_steps if b > config.warmup_steps]
    return _ReferenceSchedule(config.learning_rate, config.lr_decay_rate, decay_steps, config.warmup_steps)


def make_optimizer(schedule, precision: str = jem_precision.FLOAT32):
    """The reference's Adam (`TorchAdam`, epsilon 1e-8) on `schedule` (see `learning_rate_schedule`),
    with loss scaling for mixed_float16. Checkpoints written for training (also by
    trainers.from_reference) must use this, so their optimizer variables match."""
    return jem_precision.make_optimizer(TorchAdam(schedule, epsilon=ADAM_EPSILON), precision)


class TorchAdam(keras.optimizers.Adam):
    """Adam with PyTorch's update (torch.optim.Adam, which the reference uses):

        w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + epsilon)

    Keras' Adam adds epsilon to the *uncorrected* sqrt(v) (the paper's "epsilon hat"), which in
    PyTorch's terms is an epsilon of epsilon / sqrt(1 - beta2^t): 32x larger at the first step, 1.4x
    at step 700. Same variables (momentums, velocities) as keras.optimizers.Adam, so checkpoints
    restore either way; no amsgrad.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("TorchAdam does not implement amsgrad.")

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras' TensorFlow optimizer calls this once per step in each replica, then `update_step`
        # once per variable with what it was given as the learning rate. The bias corrections
        # depend on the step only, so they are computed here once instead of in every variable's
        # update: the same values, and a third less time tracing the optimizer (the tests trace
        # hundreds of steps). Per replica, as the learning rate is: Keras hands each replica's value
        # to that replica's variable updates.
        #
        # The step size lr / (1 - beta1^t) and sqrt(1 - beta2^t) in float64, rounded once, as PyTorch
        # computes them (in Python). In float32, 1 - 0.999^t cancels most of its digits (0.999 itself
        # is not a float32): a relative error of ~1e-5 in every update, which the lockstep with the
        # official code (benchmarks.lockstep_reference) showed growing to 4e-5 in the weights by
        # step 8, where the reference's own float32 run stays within 4e-8 of float64.
        local_step = keras.ops.cast(self.iterations + 1, "float64")
        bias_correction1 = 1 - keras.ops.power(keras.ops.convert_to_tensor(self.beta_1, "float64"), local_step)
        bias_correction2 = 1 - keras.ops.power(keras.ops.convert_to_tensor(self.beta_2, "float64"), local_step)
        step_size = keras.ops.cast(learning_rate, "float64") / bias_correction1
        bias_correction2_sqrt = keras.ops.sqrt(bias_correction2)
        # Every scalar of the update in each variable dtype, made once per step here and passed to
        # every variable's update (`_update_variable`), not cast and made again for each variable.
        step = {}
        for variable in trainable_variables:
            dtype = tf.as_dtype(variable.dtype)
            if dtype.name not in step:
                step[dtype.name] = _StepScalars(
                    step_size=tf.cast(step_size, dtype), bias_correction2_sqrt=tf.cast(bias_correction2_sqrt, dtype),
                    one_minus_beta_1=tf.constant(1 - self.beta_1, dtype),
                    one_minus_beta_2=tf.constant(1 - self.beta_2, dtype), epsilon=tf.constant(self.epsilon, dtype))
        return super()._backend_update_step(grads, trainable_variables, step)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # The sum over one replica is the gradient itself. Keras all-reduces even then, and
        # TensorFlow's ReplicaContext.all_reduce registers a custom gradient in its process-wide
        # gradient registry on every trace, which keeps that trace's graph, and through its
        # captures the weights and optimizer state, alive until the process exits: every training
        # run in a process leaked its whole training step. Several replicas still all-reduce (and
        # leak so).
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)

    def update_step(self, gradient, variable, step):
        """One variable's update; `step` maps each variable dtype to the step's `_StepScalars` (Keras
        passes the learning rate here, which `_backend_update_step` replaces).

        One call of `_update_variable`, traced once per process and dtype for variables of any shape,
        instead of its ~20 ops written out for every variable: a WRN-10-1's optimizer traces in about
        0.1 s instead of 0.2 s (141 ops instead of 461), and every training run traces one. TensorFlow
        inlines the call before running it: the same kernels, the same time per step."""
        dtype = tf.as_dtype(variable.dtype)
        index = self._get_variable_index(variable)
        _update_variable(tf.cast(tf.convert_to_tensor(gradient), dtype), variable.handle,
                         self._momentums[index].value.handle, self._velocities[index].value.handle,
                         *step[dtype.name])


@tf.function(autograph=False, reduce_retracing=True)
def _update_variable(gradient, variable, m, v, step_size, bias_correction2_sqrt, one_minus_beta_1, one_minus_beta_2,
                     epsilon):
    """TorchAdam's update of one variable from its resource handles and the step's scalars: the ops
    `w.assign_sub(...)` and friends build on the variables themselves, in the same order."""
    dtype = gradient.dtype
    resource = gen_resource_variable_ops
    resource.assign_add_variable_op(m, (gradient - resource.read_variable_op(m, dtype)) * one_minus_beta_1)
    resource.assign_add_variable_op(v, (tf.square(gradient) - resource.read_variable_op(v, dtype)) * one_minus_beta_2)
    resource.assign_sub_variable_op(variable, resource.read_variable_op(m, dtype) * step_size / (
        tf.sqrt(resource.read_variable_op(v, dtype)) / bias_correction2_sqrt + epsilon))


# Adam's per-step scalars in one variable dtype (the step size and bias correction computed in
# float64 and rounded once), shared by the updates of every variable of that dtype.
_StepScalars = collections.namedtuple(
    "_StepScalars", "step_size bias_correction2_sqrt one_minus_beta_1 one_minus_beta_2 epsilon")


class _ReferenceSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, learning_rate, decay_rate, decay_steps, warmup_steps):
        self.learning_rate = float(learning_rate)
        self.decay_rate = float(decay_rate)
        self.decay_steps = list(decay_steps)
        self.warmup_steps = int(warmup_steps)
        # Rates computed in Python (double) once, as the reference multiplies its rate in Python.
        self._rates = [self.learning_rate * self.decay_rate**i for i in range(len(self.decay_steps) + 1)]

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        decays = tf.reduce_sum(tf.cast(tf.constant(self.decay_steps, tf.int64) <= step, tf.int32)) \
            if self.decay_steps else tf.constant(0, tf.int32)
        rate = tf.gather(tf.constant(self._rates, tf.float64), decays)
        if self.warmup_steps > 0:
            warming = self.learning_rate * tf.cast(step, tf.float64) / float(self.warmup_steps)
            rate = tf.where(step <= self.warmup_steps, warming, rate)
        return tf.cast(rate, tf.float32)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate, "decay_rate": self.decay_rate,
            "decay_steps": self.decay_steps, "warmup_steps": self.warmup_steps,
        }


class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning-rate schedule times `scale`, a variable the divergence recovery lowers.

    A variable, not a Python float, so a traced train step sees the new value. It is reachable only
    through this (untracked) schedule object, so it is not part of the checkpoint; the scale in
    effect is stored in config.json instead. x1.0 is exact: an unrecovered run is unchanged.
    """

    def __init__(self, schedule, scale: float):
        self.schedule = schedule
        self.scale = tf.Variable(float(scale), trainable=False, dtype=tf.float32, name="learning_rate_scale")

    def __call__(self, step):
        return self.schedule(step) * self.scale

    def get_config(self):
        return {"scale": float(self.scale.numpy())}
