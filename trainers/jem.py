"""JEM: the WideResNet classifier trained as a joint energy-based model (Algorithm 1).

  L = xent(f(x), y)
      + p_x_weight  * (mean log p~(x_hat) - mean log p~(x))            (log p(x),    eq. 2)
      + p_xy_weight * (mean log p~(x_hat_y, y) - mean log p~(x, y))     (log p(x, y), optional)

x_hat are persistent SGLD chains on log p~(x) drawn from and written back to the replay buffer;
x_hat_y are class-conditional chains on log p~(x, y) for the batch's labels. When the batch carries
generative images (see `Classifier.objective_terms`), log p~(x) of the data is taken on them.
"""

import keras
import tensorflow as tf
from absl import logging

from jem_tf import energy, precision
from jem_tf.sampling import ReplayBuffer, compiled_sgld
from jem_tf.sampling.replay_buffer import replica_slice
from trainers import registry
from trainers.classifier import Classifier


@registry.register("jem")
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

    # -- the loop's hooks (see Classifier) -------------------------------------------------------

    @classmethod
    def from_config(cls, config, **network):
        return cls(
            **network, sgld_steps=config.sgld_steps + config.extra_sgld_steps, sgld_step_size=config.sgld_step_size,
            sgld_noise=config.sgld_noise, buffer_size=config.buffer_size, reinit_freq=config.reinit_freq,
            p_x_weight=config.p_x_weight, p_xy_weight=config.p_xy_weight, sgld_jit_compile=config.jit_compile,
        )

    @classmethod
    def check_config(cls, config, num_train: int) -> None:
        del num_train
        if config.batch_size > config.buffer_size:
            raise ValueError(
                f"--buffer_size={config.buffer_size} is smaller than --batch_size={config.batch_size}: each step draws "
                f"a batch of distinct chains from the buffer. Use --buffer_size={config.batch_size} or more, or a "
                "smaller --batch_size."
            )

    @classmethod
    def uses_replay_buffer(cls, config) -> bool:
        del config
        return True

    def checkpoint_items(self) -> dict:
        return {"replay_buffer": self.replay_buffer}

    def sample_images(self, count: int):
        return self.replay_buffer.images[: min(count, self.replay_buffer.size)].numpy()

    def apply_recovery(self, config, seed) -> dict:
        """More SGLD steps per iteration, and chains that ran away (non-finite, or beyond
        +-recovery_chain_limit) re-initialised."""
        before = self.sgld_steps
        config.extra_sgld_steps += config.recovery_extra_sgld_steps
        self.sgld_steps = config.sgld_steps + config.extra_sgld_steps
        change = dict(sgld_steps=[before, self.sgld_steps], chain_seed=list(seed),
                      chain_limit=config.recovery_chain_limit)
        change["chains_reinitialised"] = self.replay_buffer.reinitialise_wild(config.recovery_chain_limit, seed)
        return change

    def reapply_recovery(self, change: dict) -> None:
        if "chain_seed" in change:
            count = self.replay_buffer.reinitialise_wild(change["chain_limit"], change["chain_seed"])
            logging.info("Re-applied recovery %d's re-initialisation of %d chains to the restored buffer.",
                         change.get("recovery", 0), count)

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

    def objective_terms(self, images, labels, generative_images=None):
        local_batch = tf.shape(images)[0]
        unconditional_seed, conditional_seed = tf.unstack(
            tf.random.experimental.stateless_split(self.step_seed(), 2)
        )
        batches = [images]
        if generative_images is not None:  # log p(x) of the data is taken on these (same batch size)
            batches.append(generative_images)
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
        # The data batches come first: images, then generative_images if given; samples after them.
        num_data_batches = 1 if generative_images is None else 2
        log_px_data = tf.reduce_mean(energy.log_marginal(all_logits[num_data_batches - 1]))
        logs["log_px_data"] = log_px_data
        generative_loss = tf.constant(0.0)
        if self.p_x_weight > 0:
            log_px_samples = tf.reduce_mean(energy.log_marginal(all_logits[num_data_batches]))
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

