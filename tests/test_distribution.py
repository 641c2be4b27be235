"""trainers.distribution: the evaluator's compiled step serves every batch of a pass, the last and
smaller one included, on one device and on two replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers.distribution import classifier_evaluator


class _CountingClassifier:
    """What the evaluator needs of a model: test_step and the two trackers. Counts how often
    test_step runs as Python, which under a tf.function is once per trace."""

    def __init__(self):
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.xent_tracker = keras.metrics.Mean(name="xent")
        self.traces = 0

    @property
    def metrics(self):
        return [self.accuracy_tracker, self.xent_tracker]

    def test_step(self, batch):
        self.traces += 1
        images, labels = batch
        logits = tf.stack([tf.reduce_sum(images, axis=[1, 2, 3]), -tf.reduce_sum(images, axis=[1, 2, 3])], axis=1)
        self.accuracy_tracker.update_state(labels, logits)
        self.xent_tracker.update_state(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


@pytest.mark.parametrize("replicas", [1, 2])
def test_every_pass_and_its_last_smaller_batch_reuse_one_trace(replicas, two_logical_cpus):
    # 20 images in batches of 8: 8, 8, 4. Label 0 exactly where the images sum to more than 0.
    rng = np.random.default_rng(0)
    images = rng.normal(size=[20, 2, 2, 1]).astype(np.float32)
    labels = (images.sum(axis=(1, 2, 3)) <= 0).astype(np.int64)
    labels[:3] = 1 - labels[:3]  # three wrong, so accuracy 17/20 tells every batch was counted
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    strategy = tf.distribute.MirroredStrategy(two_logical_cpus) if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope():
        model = _CountingClassifier()
    evaluate = classifier_evaluator(model, strategy)
    first = evaluate(dataset)
    second = evaluate(dataset)
    assert first == second
    assert first["accuracy"] == pytest.approx(17 / 20)
    assert model.traces == replicas  # one trace; strategy.run calls test_step once per replica in it
