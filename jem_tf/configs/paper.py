"""The paper's setup (Table 4): WRN-28-10, no normalisation, Adam 1e-4, 150 epochs, batch 64,
20 SGLD steps of size 1 with noise 0.01, a 10000-chain buffer re-initialised at 5 %.

    python -m jem_tf.train --dataset=svhn --workdir=runs/svhn        # preset 'paper' is the default
    python -m jem_tf.train --preset=cifar100 --workdir=runs/cifar100

Presets 'svhn', 'cifar10' and 'cifar100' are this setup on each dataset (with that dataset's
augmentation). Cost: about 10.7 TFLOP per iteration at batch 64 (21 forward+backward passes of
WRN-28-10); 117k iterations on CIFAR-10 — days on one GPU, not a CPU job. The tfds data must be
prepared under --data_dir beforehand (nothing is downloaded).
"""

from jem_tf.configs.base import TrainConfig


def get_config(dataset: str = "cifar10", preset: str = "paper") -> TrainConfig:
    return TrainConfig(preset=preset, dataset=dataset, workdir=f"runs/{dataset}")
