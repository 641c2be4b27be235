"""JEM: the WideResNet classifier trained as a joint energy-based model (Algorithm 1).

  L = xent(f(x), y)
      + p_x_weight  * (mean log p~(x_hat) - mean log p~(x))            (log p(x),    eq. 2)
      + p_xy_weight * (mean log p~(x_hat_y, y) - mean log p~(x, y))     (log p(x, y), optional)

x_hat are persistent SGLD chains on log p~(x) drawn from and written back to the replay buffer;
x_hat_y are class-conditional chains on log p~(x, y) for the batch's labels.
"""

import keras
import tensorflow as tf

from jem_tf import energy, precision
from jem_tf.sampling import ReplayBuffer, compiled_sgld
from jem_tf.sampling.replay_buffer import replica_slice
from trainers.classifier import Classifier


class JEM(Classifier):
    """WideResNet whose `train_step` adds the SGLD-estimated generative loss."""

    # None: the SGLD update; a `jem_tf.sampling.proximal.ProximalBounds` for JEM++ (trainers.jempp).
    proximal_bounds = None

    def __init__(
        self,
        *args,
        sgld_steps: int = 20,
        sgld_step_size: float = 1.0,
        sgld_noise: float = 0.01,
        buffer_size: int = 10000,
        reinit_freq: float = 0.05,
        p_x_weight: float = 1.0,
        p_xy_weight: float = 0.0,
        sgld_jit_compile: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if p_x_weight == 0 and p_xy_weight == 0:
            raise ValueError("JEM needs p_x_weight > 0 or p_xy_weight > 0; for neither, use the classifier objective.")
        self.sgld_steps = sgld_steps
        self.sgld_step_size = sgld_step_size
        self.sgld_noise = sgld_noise
        self.buffer_size = buffer_size
        self.reinit_freq = reinit_freq
        self.p_x_weight = p_x_weight
        self.p_xy_weight = p_xy_weight
        # Not `jit_compile`: that is Keras' own attribute, which `compile()` resets.
        self.sgld_jit_compile = sgld_jit_compile
        self.replay_buffer = None
        self.generative_loss_tracker = keras.metrics.Mean(name="generative_loss")
        self.log_px_data_tracker = keras.metrics.Mean(name="log_px_data")
        self.log_px_samples_tracker = keras.metrics.Mean(name="log_px_samples")

    def build(self, input_shape):
        super().build(input_shape)
        if self.replay_buffer is None:
            # Created here, inside the strategy scope the model is built in.
            self.replay_buffer = ReplayBuffer(self.buffer_size, self.input_image_shape, seed=self.seed)

    @property
    def metrics(self):
        return super().metrics + [self.generative_loss_tracker, self.log_px_data_tracker, self.log_px_samples_tracker]

    def sample_chains(self, local_batch, seed, labels=None):
        """Draws chain starts from the buffer and runs SGLD; returns (samples, buffer slots)."""
        sample_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        initial, slots = self.replay_buffer.sample(
            local_batch, sample_seed, self.reinit_freq, labels=labels, num_classes=self.num_classes
        )

        def logits_fn(images):
            return self(images, training=False)

        log_density = (
            energy.marginal_log_density(logits_fn)
            if labels is None
            else energy.joint_log_density(logits_fn, labels)
        )
        global_batch, offset = replica_slice(local_batch)
        samples = compiled_sgld(self.sgld_jit_compile)(
            log_density,
            initial,
            self.sgld_steps,
            self.sgld_step_size,
            self.sgld_noise,
            noise_seed,
            noise_batch_size=global_batch,
            noise_batch_offset=offset,
            score_scale=precision.input_gradient_scale(self),
            proximal=self.proximal_bounds,
        )
        return tf.stop_gradient(samples), slots

    def objective_terms(self, images, labels):
        local_batch = tf.shape(images)[0]
        unconditional_seed, conditional_seed = tf.unstack(
            tf.random.experimental.stateless_split(self.step_seed(), 2)
        )
        batches = [images]
        pending_writes = []
        if self.p_x_weight > 0:
            samples, slots = self.sample_chains(local_batch, unconditional_seed)
            batches.append(samples)
            pending_writes.append((slots, samples))
        if self.p_xy_weight > 0:
            conditional_samples, conditional_slots = self.sample_chains(local_batch, conditional_seed, labels)
            batches.append(conditional_samples)
            pending_writes.append((conditional_slots, conditional_samples))

        # One forward pass over data and samples: larger batches run faster than several small ones.
        all_logits = tf.split(self(tf.concat(batches, axis=0), training=True), len(batches), axis=0)
        logits = all_logits[0]
        xent, logs = self.classification_terms(logits, labels)
        log_px_data = tf.reduce_mean(energy.log_marginal(logits))
        logs["log_px_data"] = log_px_data
        generative_loss = tf.constant(0.0)
        if self.p_x_weight > 0:
            log_px_samples = tf.reduce_mean(energy.log_marginal(all_logits[1]))
            generative_loss += self.p_x_weight * (log_px_samples - log_px_data)
            logs["log_px_samples"] = log_px_samples
        if self.p_xy_weight > 0:
            log_pxy_data = tf.reduce_mean(energy.log_joint(logits, labels))
            log_pxy_samples = tf.reduce_mean(energy.log_joint(all_logits[-1], labels))
            generative_loss += self.p_xy_weight * (log_pxy_samples - log_pxy_data)
            logs["log_pxy_samples"] = log_pxy_samples
        logs["generative_loss"] = generative_loss
        self.generative_loss_tracker.update_state(generative_loss)
        self.log_px_data_tracker.update_state(log_px_data)
        if "log_px_samples" in logs:
            self.log_px_samples_tracker.update_state(logs["log_px_samples"])
        return xent + generative_loss, logs, pending_writes

    def after_update(self, pending_updates):
        # Chains go back to their slots after the weight update, as in Algorithm 1 (line 11).
        for slots, samples in pending_updates:
            self.replay_buffer.write(slots, samples)

    def get_config(self):
        config = super().get_config()
        config.update(
            sgld_steps=self.sgld_steps, sgld_step_size=self.sgld_step_size, sgld_noise=self.sgld_noise,
            buffer_size=self.buffer_size, reinit_freq=self.reinit_freq, p_x_weight=self.p_x_weight,
            p_xy_weight=self.p_xy_weight, sgld_jit_compile=self.sgld_jit_compile, seed=self.seed,
        )
        return config

