"""JEM: the WideResNet classifier trained as a joint energy-based model (Algorithm 1).

  L = p_y_given_x_weight * xent(f(x), y)                                (log p(y|x), default 1)
      + p_x_weight  * (mean log p~(x_hat) - mean log p~(x))            (log p(x),    eq. 2)
      + p_xy_weight * (mean log p~(x_hat_y, y) - mean log p~(x, y))     (log p(x, y), optional)
      + energy_l2 * (mean E(x)^2 + mean E(x_all_hat)^2)                 (stabiliser, optional)

x_hat are persistent SGLD chains on log p~(x) drawn from and written back to the replay buffer
(with class_cond_p_x_sample: chains on log p~(x, y') for uniformly drawn classes y', from the
buffer's part of class y', as the reference's --class_cond_p_x_sample); x_hat_y are
class-conditional chains on log p~(x, y) for the batch's labels. E = -log p~(x) = -logsumexp f(x);
x_all_hat are all samples of the step. With buffer_size=0 (short-run training) every chain starts
from fresh U(-1, 1) noise and nothing is kept. When the batch carries generative images (see
`Classifier.objective_terms`), log p~(x) of the data (and E(x)) is taken on them.
"""

import keras
import tensorflow as tf
from absl import logging

from jem_tf import energy, precision
from jem_tf.sampling import ReplayBuffer, compiled_sgld
from jem_tf.sampling.replay_buffer import replica_slice
from trainers import registry
from trainers.classifier import Classifier

# Short-run chains (buffer_size=0): the fewest SGLD steps the paper trained stably (appendix G.2).
SHORT_RUN_STABLE_STEPS = 80


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
        p_y_given_x_weight: float = 1.0,
        class_cond_p_x_sample: bool = False,
        energy_l2: float = 0.0,
        sgld_clamp: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if p_x_weight == 0 and p_xy_weight == 0:
            raise ValueError("JEM needs p_x_weight > 0 or p_xy_weight > 0; for neither, use the classifier objective.")
        if class_cond_p_x_sample and p_x_weight == 0:
            raise ValueError("class_cond_p_x_sample draws the log p(x) term's samples; it needs p_x_weight > 0.")
        class_conditional_chains = class_cond_p_x_sample or p_xy_weight > 0
        if class_conditional_chains and 0 < buffer_size < self.num_classes:
            raise ValueError(
                f"--buffer_size={buffer_size} is smaller than the {self.num_classes} classes: class-conditional "
                "chains (--class_cond_p_x_sample or --p_xy_weight > 0) need at least one buffer slot per class. Use "
                f"--buffer_size={self.num_classes} or more, or --buffer_size=0 for short-run chains.")
        if buffer_size == 0 and sgld_steps < SHORT_RUN_STABLE_STEPS:
            logging.warning(
                "Short-run training (buffer_size=0) with %d SGLD steps from fresh noise: the paper found %d the "
                "fewest that trained stably (appendix G.2) and the reference code suggests 100 (--sgld_steps).",
                sgld_steps, SHORT_RUN_STABLE_STEPS)
        self.sgld_steps = sgld_steps
        self.sgld_step_size = sgld_step_size
        self.sgld_noise = sgld_noise
        self.buffer_size = buffer_size
        self.reinit_freq = reinit_freq
        self.p_x_weight = p_x_weight
        self.p_xy_weight = p_xy_weight
        # Not `jit_compile`: that is Keras' own attribute, which `compile()` resets.
        self.sgld_jit_compile = sgld_jit_compile
        self.p_y_given_x_weight = p_y_given_x_weight
        self.class_cond_p_x_sample = class_cond_p_x_sample
        self.energy_l2 = energy_l2
        self.sgld_clamp = sgld_clamp
        self.replay_buffer = None
        self.generative_loss_tracker = keras.metrics.Mean(name="generative_loss")
        self.log_px_data_tracker = keras.metrics.Mean(name="log_px_data")
        self.log_px_samples_tracker = keras.metrics.Mean(name="log_px_samples")

    def build(self, input_shape):
        super().build(input_shape)
        if self.replay_buffer is None and self.buffer_size > 0:
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
            p_y_given_x_weight=config.p_y_given_x_weight, class_cond_p_x_sample=config.class_cond_p_x_sample,
            energy_l2=config.energy_l2, sgld_clamp=config.sgld_clamp, **cls.optimisation_settings(config),
        )

    @classmethod
    def check_config(cls, config, num_train: int) -> None:
        super().check_config(config, num_train)
        if 0 < config.buffer_size < config.batch_size:
            raise ValueError(
                f"--buffer_size={config.buffer_size} is smaller than --batch_size={config.batch_size}: each step draws "
                f"a batch of distinct chains from the buffer. Use --buffer_size={config.batch_size} or more, a "
                "smaller --batch_size, or --buffer_size=0 for short-run chains without a buffer."
            )

    @classmethod
    def uses_replay_buffer(cls, config) -> bool:
        return config.buffer_size > 0

    def checkpoint_items(self) -> dict:
        """The replay buffer, when there is one (short-run training keeps no chains)."""
        return {} if self.replay_buffer is None else {"replay_buffer": self.replay_buffer}

    def sample_images(self, count: int):
        """The first `count` persistent chains, or with no buffer `count` fresh short-run chains
        (seeded by the step, so a resumed run draws the same; per class in turn with
        class_cond_p_x_sample, like the chains the p(x) term trains on)."""
        if self.replay_buffer is not None:
            return self.replay_buffer.images[: min(count, self.replay_buffer.size)].numpy()
        step = tf.cast(self.optimizer.iterations, tf.int64) if self.optimizer is not None else tf.constant(0, tf.int64)
        # Its own stream: the grid never reuses a training step's draws.
        seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(self.seed, tf.int64), step]), 0x6121D)
        labels = tf.range(count) % self.num_classes if self.class_cond_p_x_sample else None
        return self.sample_chains(count, seed, labels)[0].numpy()

    def apply_recovery(self, config, seed) -> dict:
        """More SGLD steps per iteration, and chains that ran away (non-finite, or beyond
        +-recovery_chain_limit) re-initialised."""
        before = self.sgld_steps
        config.extra_sgld_steps += config.recovery_extra_sgld_steps
        self.sgld_steps = config.sgld_steps + config.extra_sgld_steps
        change = dict(sgld_steps=[before, self.sgld_steps])
        if self.replay_buffer is not None:  # short-run chains start fresh every step: nothing to reset
            change.update(chain_seed=list(seed), chain_limit=config.recovery_chain_limit)
            change["chains_reinitialised"] = self.replay_buffer.reinitialise_wild(config.recovery_chain_limit, seed)
        return change

    def reapply_recovery(self, change: dict) -> None:
        if "chain_seed" in change and self.replay_buffer is not None:
            count = self.replay_buffer.reinitialise_wild(change["chain_limit"], change["chain_seed"])
            logging.info("Re-applied recovery %d's re-initialisation of %d chains to the restored buffer.",
                         change.get("recovery", 0), count)

    def sample_chains(self, local_batch, seed, labels=None):
        """Draws chain starts and runs SGLD; returns (samples, buffer slots or None).

        Starts come from the replay buffer, or with buffer_size=0 are fresh U(-1, 1) noise drawn for
        the global batch (as the buffer's re-initialisations are) and sliced for this replica.
        """
        sample_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        global_batch, offset = replica_slice(local_batch)
        if self.replay_buffer is None:
            initial = tf.random.stateless_uniform(
                tf.concat([[global_batch], self.input_image_shape], 0), seed=sample_seed, minval=-1.0, maxval=1.0
            )[offset : offset + local_batch]
            slots = None
        else:
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
            clamp=self.sgld_clamp,
        )
        return tf.stop_gradient(samples), slots

    def draw_chain_labels(self, local_batch, seed):
        """Uniform classes for class_cond_p_x_sample, drawn for the global batch (so a run on N
        replicas draws what one device draws) and sliced for this replica."""
        global_batch, offset = replica_slice(local_batch)
        return tf.random.stateless_uniform(
            [global_batch], seed=seed, minval=0, maxval=self.num_classes, dtype=tf.int32
        )[offset : offset + local_batch]

    def draw_negatives(self, images, labels):
        """The step's SGLD samples (unconditional chains if p_x_weight > 0, then class-conditional
        chains for `labels` if p_xy_weight > 0) and their buffer writes for `after_update`."""
        local_batch = tf.shape(images)[0]
        unconditional_seed, conditional_seed = tf.unstack(
            tf.random.experimental.stateless_split(self.step_seed(), 2)
        )
        negatives, pending_writes = [], []
        if self.p_x_weight > 0:
            chain_labels = None
            if self.class_cond_p_x_sample:
                # Its own stream (not a split of the chains' seed), so the plain run's draws are unchanged.
                chain_labels = self.draw_chain_labels(
                    local_batch, tf.random.experimental.stateless_fold_in(unconditional_seed, 1))
            samples, slots = self.sample_chains(local_batch, unconditional_seed, chain_labels)
            negatives.append(samples)
            if slots is not None:
                pending_writes.append((slots, samples))
        if self.p_xy_weight > 0:
            conditional_samples, conditional_slots = self.sample_chains(local_batch, conditional_seed, labels)
            negatives.append(conditional_samples)
            if conditional_slots is not None:
                pending_writes.append((conditional_slots, conditional_samples))
        return tuple(negatives), pending_writes

    def objective_terms(self, images, labels, generative_images=None, negatives=()):
        # log p(x) of the data is taken on generative_images when given.
        data_batches = [images] if generative_images is None else [images, generative_images]
        data_logits, sample_logits = self.data_and_sample_logits(data_batches, list(negatives))
        logits = data_logits[0]
        xent, logs = self.classification_terms(logits, labels)
        # The reference: log p(x) of the samples however they were drawn (also from p(x|y')).
        log_px_data = tf.reduce_mean(energy.log_marginal(data_logits[-1]))
        logs["log_px_data"] = log_px_data
        generative_loss = tf.constant(0.0)
        if self.p_x_weight > 0:
            log_px_samples = tf.reduce_mean(energy.log_marginal(sample_logits[0]))
            generative_loss += self.p_x_weight * (log_px_samples - log_px_data)
            logs["log_px_samples"] = log_px_samples
        if self.p_xy_weight > 0:
            log_pxy_data = tf.reduce_mean(energy.log_joint(logits, labels))
            log_pxy_samples = tf.reduce_mean(energy.log_joint(sample_logits[-1], labels))
            generative_loss += self.p_xy_weight * (log_pxy_samples - log_pxy_data)
            logs["log_pxy_samples"] = log_pxy_samples
        logs["generative_loss"] = generative_loss
        loss = self.p_y_given_x_weight * xent + generative_loss
        if self.energy_l2 > 0:
            # E = -log p~(x); squared, so the sign does not matter.
            data_energy_sq = tf.reduce_mean(tf.square(energy.log_marginal(data_logits[-1])))
            sample_energy_sq = tf.reduce_mean(tf.square(energy.log_marginal(tf.concat(sample_logits, axis=0))))
            energy_penalty = self.energy_l2 * (data_energy_sq + sample_energy_sq)
            logs["energy_penalty"] = energy_penalty
            loss += energy_penalty
        self.generative_loss_tracker.update_state(generative_loss)
        self.log_px_data_tracker.update_state(log_px_data)
        if "log_px_samples" in logs:
            self.log_px_samples_tracker.update_state(logs["log_px_samples"])
        return loss, logs

    def data_and_sample_logits(self, data_batches, sample_batches):
        """(logits of each data batch, logits of each sample batch), under the tape.

        Without batch norm: one forward pass over all of them (larger batches run faster than
        several small ones), and the logits do not depend on what else is in the batch.

        With batch norm, a fused pass would normalise the data with statistics of data and samples
        together and move the moving averages towards the samples'. Instead the data alone run in
        training mode (batch statistics of the data; the moving averages take the data in) and the
        samples run in inference mode, as SGLD drew them: a sample's energy is the function the
        chain climbed, independent of the other samples, and the samples never reach the moving
        averages. JEM++ (Yang & Ji, ICCV 2021) scores the log p(x) term in inference mode with its
        `--plc=eval`; its default and SADA-JEM instead run the samples in training mode, which
        normalises each sample with the other samples' statistics and feeds them into the moving
        averages, the two things this avoids. The sample pass follows the data pass, so it reads
        the moving averages already updated with this data (PyTorch momentum 0.9: 90 % of this
        batch's statistics). Scoring the samples in training mode with their own statistics (and
        undoing that pass's moving-average updates) was tried and left out: SGLD, in inference mode,
        then climbs a density the loss never corrects (docs/jem_family.md, "Batch norm with JEM").
        """
        def forward(batches, training):
            # Batches may differ in size (e.g. an unlabelled stream's); the split follows them.
            sizes = [tf.shape(batch)[0] for batch in batches]
            return tf.split(self(tf.concat(batches, axis=0), training=training), sizes, axis=0)

        num_data = len(data_batches)
        if self.norm != "batch":
            logits = forward(data_batches + sample_batches, training=True)
            return logits[:num_data], logits[num_data:]
        data_logits = forward(data_batches, training=True)
        return data_logits, (forward(sample_batches, training=False) if sample_batches else [])

    def after_update(self, pending_updates):
        # Chains go back to their slots after the weight update, as in Algorithm 1 (line 11).
        for slots, samples in pending_updates:
            self.replay_buffer.write(slots, samples)

    def get_config(self):
        config = super().get_config()
        config.update(
            sgld_steps=self.sgld_steps, sgld_step_size=self.sgld_step_size, sgld_noise=self.sgld_noise,
            buffer_size=self.buffer_size, reinit_freq=self.reinit_freq, p_x_weight=self.p_x_weight,
            p_xy_weight=self.p_xy_weight, sgld_jit_compile=self.sgld_jit_compile,
            p_y_given_x_weight=self.p_y_given_x_weight, class_cond_p_x_sample=self.class_cond_p_x_sample,
            energy_l2=self.energy_l2, sgld_clamp=self.sgld_clamp,
        )
        return config

