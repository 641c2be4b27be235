"""Experiment presets: each returns a validated `TrainConfig`; flags then override fields."""

import functools

from jem_tf.configs import cifar_cpu, paper, quick
from jem_tf.configs.base import TrainConfig, incompatible_fields
from jem_tf.configs.objectives import objective_defaults

PRESETS = {
    "paper": paper.get_config,
    "svhn": functools.partial(paper.get_config, "svhn", "svhn"),
    "cifar10": functools.partial(paper.get_config, "cifar10", "cifar10"),
    "cifar100": functools.partial(paper.get_config, "cifar100", "cifar100"),
    "quick": quick.get_config,
    "cifar_cpu": cifar_cpu.get_config,
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"--preset={name!r} is unknown; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]().validate()


__all__ = ["PRESETS", "TrainConfig", "get_preset", "incompatible_fields", "objective_defaults"]
