"""Objectives by name: `--objective=NAME` picks the registered Keras model class that trains it.

    @registry.register("jem")
    class JEM(Classifier): ...

    model = objectives.build_model(config, image_shape, num_classes)

Objective modules register when imported; `trainers/objectives.py` imports all of them (add a new
objective's module there).

Every objective is a WideResNet subclass with its own `train_step` (trainers.classifier.Classifier
holds what they share and documents the hooks the loop calls: `from_config`, `check_config`,
`uses_replay_buffer`, `checkpoint_items`, `sample_images`, `apply_recovery`, `reapply_recovery`,
`prepare_for_data`).
The loop asks the model through these hooks and never checks which objective it runs.

Each objective's settings (fields, help, defaults, checks) are declared with it in
`jem_tf/configs/objectives.py` (its `config_class` here), where the config and the command line
read them before TensorFlow is imported; a test keeps the two lists of names equal.
"""

from jem_tf.configs import objectives as objective_configs
from jem_tf.registry import Registry


def _unknown(name, names) -> str:
    return f"--objective={name!r} is not a registered objective; registered: {', '.join(sorted(names))}."


_OBJECTIVES = Registry("objective", name_attribute="objective_name", unknown=_unknown)


def register(name: str):
    """Class decorator: makes the class the objective `name`, whose settings are declared in
    `jem_tf.configs.objectives` (the class's `config_class`; an objective without one is refused)."""
    config_class = objective_configs.config_class(name)

    def add(cls):
        cls.config_class = config_class
        return _OBJECTIVES.register(name)(cls)

    return add


def names() -> tuple:
    return tuple(sorted(_OBJECTIVES.names()))


def get(name: str):
    """The objective class registered as `name` (ValueError naming the registered ones otherwise)."""
    return _OBJECTIVES.get(name)


def build_model(config, image_shape, num_classes: int):
    """The model for `config.objective`, built (weights, and state such as a replay buffer, created)
    in `config.precision`. Call inside the strategy scope so variables are mirrored."""
    from jem_tf.models import network_arguments  # noqa: PLC0415 (Keras: the registry itself stays light)

    model = get(config.objective).from_config(config, seed=config.seed, **network_arguments(config, num_classes))
    model.build((None,) + tuple(image_shape))
    return model
