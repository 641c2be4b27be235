"""The plain classifier baseline: the same WideResNet trained on cross-entropy only.

`Classifier` holds what every objective shares (cross-entropy, accuracy, replica-scaled
gradients, `test_step`) and the hooks through which the training loop talks to any objective
(`from_config` ... `reapply_recovery`, all no-ops here); `trainers.jem.JEM` adds the generative term.
"""

import keras
import tensorflow as tf

from jem_tf import energy
from jem_tf.models import WideResNet, network_arguments
from trainers import registry, sharpness


def num_replicas() -> int:
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


@registry.register("classifier")
class Classifier(WideResNet):
    """WideResNet with a cross-entropy `train_step`.

    `train_step` returns this step's values (not running means) so the training loop can log them
    and watch for divergence; the running means live in `self.metrics`.
    """

    def __init__(self, *args, seed: int = 0, sam_rho: float = 0.0, sam_adaptive: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = int(seed)
        if sam_rho < 0:
            raise ValueError(f"sam_rho must be >= 0 (0: no sharpness-aware minimisation); received {sam_rho!r}.")
        self.sam_rho = float(sam_rho)
        self.sam_adaptive = bool(sam_adaptive)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.xent_tracker = keras.metrics.Mean(name="xent")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.xent_tracker, self.accuracy_tracker]

    # -- the hooks the training loop calls (trainers/registry.py) -----------------------------

    @classmethod
    def from_config(cls, config, **network):
        """The objective's model from its TrainConfig fields; `network` holds the WideResNet's."""
        return cls(**network, **cls.optimisation_settings(config))

    @classmethod
    def optimisation_settings(cls, config) -> dict:
        """The fields every objective's train_step reads (sharpness-aware minimisation)."""
        return dict(sam_rho=config.sam_rho, sam_adaptive=config.sam_adaptive)

    @classmethod
    def check_config(cls, config, num_train: int) -> None:
        """Checks that need the training set's size; ValueError naming the flag to change."""
        del num_train
        if config.generative_augmentation != "same" and "generative_augmentation" not in cls.config_class.field_names():
            raise ValueError(
                f"--generative_augmentation={config.generative_augmentation} changes the images of the log p(x) "
                f"term, which --objective={config.objective} does not have. Leave it at 'same', or choose an "
                "objective with a log p(x) term (jem).")
        if config.xent_batch != "same" and "xent_batch" not in cls.config_class.field_names():
            raise ValueError(
                f"--xent_batch={config.xent_batch} draws the cross-entropy's batch apart from the log p(x) term's, "
                f"which --objective={config.objective} does not have. Leave it at 'same', or choose jem.")

    @classmethod
    def uses_replay_buffer(cls, config) -> bool:
        """Whether the run keeps persistent chains (the loop checks they fit in memory)."""
        del config
        return False

    def checkpoint_items(self) -> dict:
        """Trackable state saved beside the model and optimizer (name -> object)."""
        return {}

    def sample_images(self, count: int):
        """Up to `count` current model samples for the loop's sample grid, or None."""
        del count
        return None

    def apply_recovery(self, config, seed) -> dict:
        """After a divergence restored the last good checkpoint: change what this objective's
        recovery policy changes (in `config` too, which the loop saves) and return the changes
        for recoveries.json. `seed` makes any random draw repeatable by `reapply_recovery`."""
        del config, seed
        return {}

    def reapply_recovery(self, change: dict) -> None:
        """Repeats the state change of the recovery recorded as `change` that no checkpoint holds
        (a run killed after a recovery, before its next checkpoint)."""
        del change

    def prepare_for_data(self, train_images, restored: bool) -> None:
        """Called once per session with the unbatched training examples whose labels the run may use
        (`jem_tf.data.labelled_training_examples`: with --labels_per_class only the labelled subset),
        after the checkpoint restore (`restored`: whether one was restored) and before the first save
        and step: state the objective derives from the data (JEM++'s class Gaussians) is made or
        checked here. None here."""
        del train_images, restored

    def step_seed(self) -> tf.Tensor:
        """Stateless seed [2] for this optimizer step: (config seed, step). Resuming from a
        checkpoint restores the step, so a resumed run draws the same numbers."""
        return tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])

    def draw_negatives(self, images, labels):
        """Returns (negatives, pending state updates for `after_update`): the model samples the loss
        contrasts the data with (JEM: SGLD chains), drawn before the gradient tape and held fixed
        for the step. The classifier has neither."""
        del images, labels
        return (), ()

    def objective_terms(self, images, labels, generative_images=None, negatives=()):
        """Returns (loss, this step's logged values).

        `generative_images`, when the batch has them, are the images a generative term models
        instead of `images` (the unlabelled stream, or an un-augmented view); `negatives` come from
        `draw_negatives`. The classifier ignores both. Called under the gradient tape; with
        --sam_rho > 0 a second time at the perturbed weights inside a `keras.StatelessScope`, whose
        state changes (metric updates, batch-norm moving averages) are dropped. Nothing is stashed
        on `self`: under MirroredStrategy every replica runs this concurrently on the same Python
        object.
        """
        del generative_images, negatives
        xent, logs = self.classification_terms(self(images, training=True), labels)
        return xent, logs

    def classification_terms(self, logits, labels):
        """Cross-entropy of the data logits and this step's logs; updates the accuracy tracker."""
        xent = tf.reduce_mean(energy.cross_entropy(logits, labels))
        self.accuracy_tracker.update_state(labels, logits)
        return xent, {"xent": xent, "accuracy": self._batch_accuracy(logits, labels)}

    def train_step(self, data):
        # (images, labels) or (images, labels, generative_images): see `objective_terms`.
        images, labels, *generative_images = data
        generative_images = generative_images[0] if generative_images else None
        negatives, pending_updates = self.draw_negatives(images, labels)

        def losses():
            loss, logs = self.objective_terms(images, labels, generative_images, negatives)
            if self.losses:
                loss = loss + tf.add_n(self.losses)
            # The optimizer sums gradients over replicas; scale like Keras scales its own losses.
            scaled_loss = loss / num_replicas()
            # The identity, except under a LossScaleOptimizer (mixed_float16), whose `apply`
            # unscales the gradients again.
            return loss, self.optimizer.scale_loss(scaled_loss), logs

        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            loss, scaled_loss, logs = losses()
        gradients = tape.gradient(scaled_loss, variables)
        if self.sam_rho > 0:
            gradients = self.sharpness_aware_gradients(gradients, variables, lambda: losses()[1])
        self.optimizer.apply(gradients, variables)
        self.after_update(pending_updates)
        self.loss_tracker.update_state(loss)
        self.xent_tracker.update_state(logs["xent"])
        return {"loss": loss, **logs}

    def sharpness_aware_gradients(self, gradients, variables, scaled_loss_fn):
        """SAM / ASAM (trainers/sharpness.py): the gradient of `scaled_loss_fn` at w + e, where
        e is the ascent step of `gradients` (this replica's gradient at w).

        As SADA-JEM does, the whole loss is perturbed (its `first_step` ascends along the gradient
        of the classification and the generative loss together, and its `second_step` descends
        along the gradient of both at w + e), with the same data and the same negatives (no new
        SGLD chains at w + e). The loss at w + e is computed in a `keras.StatelessScope` that maps
        each weight to w + e, so the weights are never moved (no restore needed, nothing to go
        wrong under MirroredStrategy) and that pass's state updates (metrics, batch-norm moving
        averages) are dropped, like SADA-JEM's `disable_running_stats` for its second pass.
        """
        gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # e needs the full gradient (its norm is over it); each replica holds its share.
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # mixed_float16: undo the loss scale. The direction does not depend on it; the guard
            # against a zero norm (sharpness.NORM_EPSILON) would. A gradient that overflowed
            # makes e and so the second gradient non-finite, and the optimizer skips the step.
            gradients = [g / self.optimizer.dynamic_scale for g in gradients]
        weights = [v.value for v in variables]
        perturbed = [w + e for w, e in zip(weights, sharpness.perturbations(
            gradients, weights, self.sam_rho, self.sam_adaptive))]
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            with keras.StatelessScope(state_mapping=list(zip(variables, perturbed))):
                scaled_loss = scaled_loss_fn()
        return tape.gradient(scaled_loss, perturbed)

    def after_update(self, pending_updates):
        """Applies state updates that follow the weight update (the JEM replay buffer)."""
        del pending_updates  # the classifier has none

    def test_step(self, data):
        images, labels = data
        logits = self(images, training=False)
        xent = tf.reduce_mean(energy.cross_entropy(logits, labels))
        self.xent_tracker.update_state(xent)
        self.accuracy_tracker.update_state(labels, logits)
        return {"xent": self.xent_tracker.result(), "accuracy": self.accuracy_tracker.result()}

    @staticmethod
    def _batch_accuracy(logits, labels):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))

    def to_wide_resnet(self) -> WideResNet:
        """A plain WideResNet with this model's weights and none of its training state (no replay
        buffer, no optimizer), e.g. for export."""
        network = WideResNet(**network_arguments(self, self.num_classes))
        network.build((None,) + self.input_image_shape)
        network.set_weights(self.get_weights())
        return network

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed, sam_rho=self.sam_rho, sam_adaptive=self.sam_adaptive)
        return config
