"""A tiny JEM on scikit-learn's bundled 8x8 digits: the paper's algorithm at CPU scale.

    python -m jem_tf.train --preset=quick --workdir=runs/quick

WRN-10-2 without normalisation, 20 SGLD steps, a 1000-chain buffer. Finishes in a few minutes on
2 CPU cores (docs/results/quick_run.json has the measured time and accuracy) and needs no download.
"""

from jem_tf.configs.base import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        preset="quick",
        dataset="digits",
        workdir="runs/quick",
        depth=10,
        width=2,
        batch_size=64,
        epochs=12,
        learning_rate=1e-3,
        lr_decay_epochs=(8, 11),
        warmup_steps=50,
        buffer_size=1000,
        validation_fraction=0.1,
        checkpoint_every_steps=50,
        summary_every_steps=10,
        sample_every_steps=50,
    )
