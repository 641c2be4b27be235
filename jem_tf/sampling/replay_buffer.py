"""The persistent-chain replay buffer: a non-trainable `tf.Variable` of images in [-1, 1].

Distribution design (measured: a buffer updated per replica drifts unless aggregated on purpose):
slots, re-initialisation draws and noise are drawn for the *global* batch from a stateless seed,
and each replica takes its own slice. Replicas therefore use disjoint slots (the global draw is
without replacement) and different noise, and a run on N replicas draws exactly what a run on one
device draws. On write, every replica all-gathers the (slot, image) pairs of all replicas and
applies the same scatter; the variable is created with ONLY_FIRST_REPLICA aggregation, so the
update is applied once, identically, on every copy and none is lost.
"""

import tensorflow as tf


def replica_slice(local_batch):
    """(global batch size, this replica's first row in it) for the current replica context.

    Assumes equal per-replica batches, as `experimental_distribute_dataset` makes them with
    drop_remainder=True.
    """
    context = tf.distribute.get_replica_context()
    num_replicas = context.num_replicas_in_sync if context is not None else 1
    replica_id = context.replica_id_in_sync_group if context is not None else 0
    return local_batch * num_replicas, tf.cast(replica_id, tf.int32) * local_batch


def _all_gather(value):
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


class ReplayBuffer(tf.Module):
    """`size` persistent SGLD chains of shape `image_shape`, initialised U(-1, 1).

    Create it inside the distribution strategy's scope, and save it in the checkpoint.
    """

    def __init__(self, size: int, image_shape, seed: int = 0, name: str = "replay_buffer", initializer=None):
        """`initializer`: None for U(-1, 1) chains; or an object drawing fresh chains for given
        classes, `initializer.sample(classes, seed, batch_size, offset)` with `num_classes`
        (`jem_tf.sampling.informative_init.ClassGaussians`, JEM++): it then also draws the
        re-initialised chains, and `initialise_chains` fills the buffer from it."""
        super().__init__(name=name)
        self.initializer = initializer
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"buffer_size must be a positive integer; received {size!r}.")
        self.size = size
        self.image_shape = tuple(int(d) for d in image_shape)
        initial = tf.random.stateless_uniform(
            (size,) + self.image_shape, seed=[seed, 0x5EED], minval=-1.0, maxval=1.0
        )
        self.images = tf.Variable(
            initial,
            trainable=False,
            name="images",
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def sample(self, local_batch, seed, reinit_freq, labels=None, num_classes=None):
        """Draws chain starts for this replica's slice of the global batch.

        Args:
          local_batch: this replica's batch size (int32 scalar).
          seed: stateless seed [2] for this training step.
          reinit_freq: probability of replacing a chain by fresh U(-1, 1) noise.
          labels: optional [local_batch] labels for class-conditional chains; slot s then holds
            class s mod num_classes (the reference code partitions the buffer by class likewise).
          num_classes: required with `labels`.

        Returns:
          (initial images [local_batch, H, W, C], slot indices [local_batch] int32).
        """
        global_batch, offset = replica_slice(local_batch)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
        if labels is None:
            # A global draw without replacement: replicas never share a slot.
            order = tf.argsort(tf.random.stateless_uniform([self.size], seed=seeds[0]))
            slots = order[:global_batch][offset : offset + local_batch]
        else:
            per_class = self.size // num_classes
            picks = tf.random.stateless_uniform(
                [global_batch], seed=seeds[0], minval=0, maxval=per_class, dtype=tf.int32
            )[offset : offset + local_batch]
            slots = tf.cast(labels, tf.int32) + num_classes * picks
        slots = tf.cast(slots, tf.int32)
        reinit = (
            tf.random.stateless_uniform([global_batch], seed=seeds[1])[offset : offset + local_batch]
            < reinit_freq
        )
        fresh = self._fresh_chains(global_batch, offset, local_batch, seeds[2], labels)
        stored = tf.gather(self.images, slots)
        return tf.where(reinit[:, None, None, None], fresh, stored), slots

    def _fresh_chains(self, global_batch, offset, local_batch, seed, labels):
        """This replica's slice of the global batch's candidate re-initialised chains."""
        if self.initializer is None:
            return tf.random.stateless_uniform(
                tf.concat([[global_batch], self.image_shape], 0), seed=seed, minval=-1.0, maxval=1.0
            )[offset : offset + local_batch]
        class_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if labels is None:  # a class drawn uniformly for each chain, as JEM++ draws it
            classes = tf.random.stateless_uniform(
                [global_batch], seed=class_seed, minval=0, maxval=self.initializer.num_classes, dtype=tf.int32
            )[offset : offset + local_batch]
        else:  # a class-conditional chain starts from its own class's Gaussian
            classes = tf.cast(labels, tf.int32)
        return self.initializer.sample(classes, normal_seed, batch_size=global_batch, offset=offset)

    def slot_classes(self):
        """The class of each slot for `initialise_chains`: slot s holds class s mod num_classes,
        the partition the class-conditional `sample` uses."""
        return tf.range(self.size) % self.initializer.num_classes

    def initialise_chains(self, seed) -> None:
        """Fills every chain from `initializer` (cross-replica context), a stateless draw from `seed`."""
        if self.initializer is None:
            raise ValueError(
                "initialise_chains needs the buffer's initializer; the U(-1, 1) chains are made in __init__.")
        self.images.assign(self.initializer.sample(self.slot_classes(), tf.cast(seed, tf.int64)))

    def write(self, slots, images):
        """Writes this replica's chains back; call from every replica (collective)."""
        all_slots = _all_gather(tf.cast(slots, tf.int32))
        all_images = _all_gather(tf.convert_to_tensor(images, tf.float32))
        return self.images.scatter_update(tf.IndexedSlices(all_images, all_slots))

    def reinitialise_wild(self, limit: float, seed) -> int:
        """Replaces chains holding a non-finite pixel or one beyond +-limit by fresh U(-1, 1) noise, or
        draws from the `initializer` when there is one (a stateless draw from `seed`, three integers);
        returns how many were replaced. Eager, outside any replica context (divergence recovery)."""
        images = self.images.read_value()
        finite = tf.reduce_all(tf.math.is_finite(images), axis=[1, 2, 3])
        bounded = tf.reduce_all(tf.abs(tf.where(tf.math.is_finite(images), images, 0.0)) <= limit, axis=[1, 2, 3])
        wild = tf.logical_not(tf.logical_and(finite, bounded))
        count = int(tf.reduce_sum(tf.cast(wild, tf.int32)))
        if count:
            fresh_seed = tf.constant([seed[0], seed[1] * 1000 + seed[2]], tf.int64)
            if self.initializer is None:
                fresh = tf.random.stateless_uniform(tf.shape(images), seed=fresh_seed, minval=-1.0, maxval=1.0)
            else:  # from the initializer, slot s from class s mod num_classes (as `initialise_chains`)
                fresh = self.initializer.sample(self.slot_classes(), fresh_seed)
            self.images.assign(tf.where(wild[:, None, None, None], fresh, images))
        return count
