"""Each objective's own settings: one dataclass per `--objective`, holding the fields only that
objective reads (help text, default), its defaults where they differ from another objective's,
and the checks of those fields.

    ClassifierConfig   classifier: cross-entropy only; no field of its own
    JEMConfig          jem: SGLD, replay buffer, generative loss weights, their recovery policy
    JEMPPConfig        jempp: JEM's fields with JEM++'s defaults, plus the proximal sampler and
                       the informative chain initialisation

`jem_tf.configs.base.TrainConfig` is flat: the fields every run has, plus the union of these
(so `config.sgld_steps` reads the same for every objective, and a workdir's config.json stays one
flat JSON object that old runs' files still load into). Which objective reads which field is known
here: `python -m jem_tf.train` refuses a flag the chosen objective does not read (naming the
objectives that do) and `--helpfull` lists the flags by objective. The trainers' registered model
classes (trainers/registry.py) point at their config class (`config_class`), and a test keeps the
two lists equal; this module lives in the library, so both the config and the trainers reach it
without the library importing trainers/.

A new objective with settings of its own adds a dataclass here (a subclass, to read another
objective's fields too) and lists it in OBJECTIVE_CONFIGS.
"""

import dataclasses
from typing import ClassVar

# Where replay-buffer chains start: U(-1, 1) noise, or JEM++'s class-wise Gaussians of the data.
CHAIN_INITS = ("uniform", "informative")
# What the log p(x) data term sees: the augmented training images, or the same without crop/flip.
GENERATIVE_AUGMENTATIONS = ("same", "none")
# Which batch the cross-entropy sees: the log p(x) term's batch, or an independently drawn one (the reference).
XENT_BATCHES = ("same", "independent")


def require(config, condition: bool, name: str, expected: str) -> None:
    """ValueError `--name=value is invalid: expected ...` unless `condition`."""
    if not condition:
        value = getattr(config, name)
        # Lists as they are typed on the command line (--lr_decay_epochs=11,8).
        shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else repr(value)
        raise ValueError(f"--{name}={shown} is invalid: expected {expected}.")


@dataclasses.dataclass
class ClassifierConfig:
    """--objective=classifier: the WideResNet on cross-entropy only. It reads none of the other
    objectives' fields; every field it reads is one every run has (TrainConfig)."""

    name: ClassVar[str] = "classifier"
    summary: ClassVar[str] = "cross-entropy baseline: the same network, data and flags, cross-entropy only"

    @classmethod
    def field_names(cls) -> tuple:
        """The fields this objective reads beyond the ones every run has."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def check(cls, config) -> None:
        """Refuses bad values of this objective's fields in `config` (a TrainConfig), with a
        ValueError naming the flag and what it accepts."""
        del config


@dataclasses.dataclass
class JEMConfig(ClassifierConfig):
    """--objective=jem: the classifier plus log p(x) through SGLD chains from a replay buffer
    (Grathwohl et al. 2020). Defaults: the paper's Table 4 (the quick preset sets a 1000-chain buffer)."""

    name: ClassVar[str] = "jem"
    summary: ClassVar[str] = "classifier + log p(x) via SGLD, the paper"

    sgld_steps: int = dataclasses.field(default=20, metadata=dict(
        help="SGLD steps per training iteration (paper: 20; --objective=jempp's default: JEM++'s 10)."))
    sgld_step_size: float = dataclasses.field(default=1.0, metadata=dict(
        help="SGLD step size alpha on d log p(x)/dx (paper: 1; --objective=jempp's default: JEM++'s 0.2)."))
    sgld_noise: float = dataclasses.field(default=0.01, metadata=dict(
        help="SGLD noise standard deviation sigma (paper: 0.01; --objective=jempp's default: JEM++'s 0)."))
    # resume_invariant: part of what a checkpoint is (a resumed run must keep it; configs.base).
    buffer_size: int = dataclasses.field(default=10000, metadata=dict(resume_invariant=True, help=(
        "Replay buffer size: persistent chains (paper: 10000; quick preset: 1000). 0: short-run training "
        "(Nijkamp et al. 2019; the reference's --buffer_size 0): every step starts its chains from fresh U(-1, 1) "
        "noise and keeps none, so use many more --sgld_steps (the reference's help: 100; the paper found 80 the "
        "fewest that trained stably, appendix G.2).")))
    reinit_freq: float = dataclasses.field(default=0.05, metadata=dict(
        help="Probability of restarting a chain from U(-1, 1) (paper: 0.05)."))
    sgld_clamp: bool = dataclasses.field(default=False, metadata=dict(help=(
        "Stabiliser: clip the SGLD chain images to the data range [-1, 1] after every step, so chains cannot "
        "wander into pixel values the energy was never trained on (JEM++'s sampler clamps likewise).")))
    jit_compile: bool = dataclasses.field(default=False, metadata=dict(
        help="XLA-compile the SGLD sampler (for GPUs; measured 7-8x slower on CPU, see benchmarks)."))
    # Loss weights: L = p_y_given_x_weight * xent + p_x_weight * L_gen(x) + p_xy_weight * L_gen(x, y).
    p_x_weight: float = dataclasses.field(default=1.0, metadata=dict(help="Weight of the log p(x) term (paper: 1)."))
    p_xy_weight: float = dataclasses.field(default=0.0, metadata=dict(
        help="Weight of the optional log p(x, y) term with class-conditional chains (paper: 0)."))
    p_y_given_x_weight: float = dataclasses.field(default=1.0, metadata=dict(help=(
        "Weight of the cross-entropy (log p(y|x)) term of the jem objective (the reference's flag of the same "
        "name; paper: 1). With --p_y_given_x_weight=0 --p_x_weight=0 --p_xy_weight=1 the model trains on "
        "log p(x, y) only (the paper's p(x|y) ablation).")))
    class_cond_p_x_sample: bool = dataclasses.field(default=False, metadata=dict(help=(
        "Draw the log p(x) term's samples from p(y) p(x|y) instead of p(x): each chain gets a uniformly drawn "
        "class y and runs SGLD on log p~(x, y) from that class's part of the replay buffer (the reference's "
        "flag; paper appendix A: nicer samples, lower accuracy). Needs --p_x_weight > 0.")))
    # SADA-JEM (Yang, Su & Ji, CVPR 2023) takes the log p(x) term on un-augmented images.
    generative_augmentation: str = dataclasses.field(default="same", metadata=dict(
        choices=GENERATIVE_AUGMENTATIONS,
        help="Images of the log p(x) data term: same (the augmented training images, as JEM) | none (the same "
             "images without crop or flip, keeping --data_noise; SADA-JEM)."))
    xent_batch: str = dataclasses.field(default="same", metadata=dict(
        choices=XENT_BATCHES,
        help="Batch of the cross-entropy term: same (the log p(x) term's batch; the two log p~(x) of the data then "
             "cancel exactly and the step's data gradient is -d f_y(x)) | independent (a second batch drawn, "
             "shuffled, augmented and noised independently each step, as the reference's train_wrn_ebm.py: 2x the "
             "data images per step, one more forward pass of batch_size images)."))
    energy_l2: float = dataclasses.field(default=0.0, metadata=dict(help=(
        "Stabiliser: adds energy_l2 * (mean E(x)^2 + mean E(x_hat)^2) to the jem loss, E = -log p~(x) = "
        "-logsumexp of the logits, over the data batch x and every SGLD sample x_hat of the step; it keeps "
        "energies near zero. The JEM author's advice for diverging runs (wgrathwohl/JEM issue #4, after Du & "
        "Mordatch 2019): about 0.1. 0 = off.")))
    # Divergence: the guard on the generative loss and this objective's recovery policy (trainers/jem.py).
    max_abs_generative_loss: float = dataclasses.field(default=1e8, metadata=dict(
        help="Divergence guard: a step whose |generative loss| exceeds this diverged (reference: 1e8)."))
    recovery_extra_sgld_steps: int = dataclasses.field(default=5, metadata=dict(
        help="Recovery policy: add this many SGLD steps per iteration at each recovery."))
    recovery_chain_limit: float = dataclasses.field(default=3.0, metadata=dict(
        help="Recovery policy: re-initialise replay-buffer chains with a non-finite pixel or one beyond +-this "
             "from U(-1, 1)."))

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        require(config, config.sgld_steps >= 0, "sgld_steps", "a non-negative integer")
        require(config, config.sgld_step_size >= 0, "sgld_step_size", "a non-negative number")
        require(config, config.sgld_noise >= 0, "sgld_noise", "a non-negative number")
        require(config, config.buffer_size >= 0, "buffer_size",
                "a non-negative integer (0: short-run chains from fresh noise, no replay buffer)")
        require(config, 0.0 <= config.reinit_freq <= 1.0, "reinit_freq", "a probability in [0, 1]")
        require(config, config.p_x_weight >= 0, "p_x_weight", "a non-negative number")
        require(config, config.p_xy_weight >= 0, "p_xy_weight", "a non-negative number")
        require(config, config.p_y_given_x_weight >= 0, "p_y_given_x_weight", "a non-negative number")
        require(config, config.generative_augmentation in GENERATIVE_AUGMENTATIONS, "generative_augmentation",
                f"one of {GENERATIVE_AUGMENTATIONS}")
        if config.generative_augmentation != "same" and config.labels_per_class is not None:
            raise ValueError(
                f"--generative_augmentation={config.generative_augmentation} and --labels_per_class="
                f"{config.labels_per_class} both choose the log p(x) term's images (the un-augmented view, or every "
                "training image); pass only one.")
        require(config, config.xent_batch in XENT_BATCHES, "xent_batch", f"one of {XENT_BATCHES}")
        if config.xent_batch != "same" and (config.labels_per_class is not None
                                            or config.generative_augmentation != "same"):
            raise ValueError(
                f"--xent_batch={config.xent_batch} gives the cross-entropy a batch of its own, as --labels_per_class "
                "and --generative_augmentation=none already do (a second stream); pass only one of them.")
        require(config, config.energy_l2 >= 0, "energy_l2",
                "a non-negative number (0: no energy penalty; advice: about 0.1)")
        if config.class_cond_p_x_sample and config.p_x_weight == 0:
            raise ValueError(
                "--class_cond_p_x_sample chooses how the log p(x) term's samples are drawn, but --p_x_weight=0 "
                "turns that term off. Set --p_x_weight above 0, or drop --class_cond_p_x_sample.")
        require(config, config.max_abs_generative_loss > 0, "max_abs_generative_loss", "a positive number")
        require(config, config.recovery_extra_sgld_steps >= 0, "recovery_extra_sgld_steps", "a non-negative integer")
        require(config, config.recovery_chain_limit >= 1, "recovery_chain_limit",
                "a number >= 1 (chains start in [-1, 1])")


def _metadata(config, name: str):
    """The metadata (help text) of `config`'s field `name`, for a subclass that changes its default."""
    return {field.name: field for field in dataclasses.fields(config)}[name].metadata


@dataclasses.dataclass
class JEMPPConfig(JEMConfig):
    """--objective=jempp: JEM++ (Yang & Ji, ICCV 2021). JEM's fields with JEM++'s published CIFAR-10
    sampler (10 proximal steps of 0.2 without noise, chains from the class-wise Gaussians), plus the
    proximal sampler's and the informative initialisation's own fields."""

    name: ClassVar[str] = "jempp"
    summary: ClassVar[str] = ("JEM++: proximal sampler and informative chain initialisation, with its own sampler "
                              "defaults: 10 steps of 0.2, no noise")

    # JEM's sampler fields with JEM++'s defaults (the help is JEM's, which names both).
    sgld_steps: int = dataclasses.field(default=10, metadata=_metadata(JEMConfig, "sgld_steps"))
    sgld_step_size: float = dataclasses.field(default=0.2, metadata=_metadata(JEMConfig, "sgld_step_size"))
    sgld_noise: float = dataclasses.field(default=0.0, metadata=_metadata(JEMConfig, "sgld_noise"))
    proximal_max_grad: float = dataclasses.field(default=1.0, metadata=dict(help=(
        "JEM++ (--objective=jempp): the proximal sampler clips each pixel's gradient d log p(x)/dx to "
        "+-this before a step (JEM++'s --eps: 1), so one inner update moves a pixel by at most "
        "--sgld_step_size times this; images are clipped to [-1, 1] after every update.")))
    proximal_inner_steps: int = dataclasses.field(default=5, metadata=dict(help=(
        "JEM++ (--objective=jempp): clipped updates per sampler step, all with that step's gradient "
        "(JEM++'s --in_steps: 5); a sampler step moves a pixel by at most this x --sgld_step_size x "
        "--proximal_max_grad.")))
    # The checkpoint holds the class Gaussians only with informative chains.
    chain_init: str = dataclasses.field(default="informative", metadata=dict(
        resume_invariant=True, choices=CHAIN_INITS, help=(
        "uniform | informative. Where replay-buffer chains start and restart: U(-1, 1) noise, or (JEM++, "
        "--objective=jempp's default) class-wise Gaussians fitted on the training images, kept in the "
        "checkpoint and checked against the data on resume.")))
    chain_init_jitter: float = dataclasses.field(default=1e-4, metadata=dict(help=(
        "JEM++ informative initialisation: added to the diagonal of every class covariance so a "
        "rank-deficient one (fewer images than pixels, constant pixels) can be sampled (JEM++: 1e-4).")))

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        require(config, config.proximal_max_grad > 0, "proximal_max_grad", "a positive number (JEM++: 1)")
        require(config, isinstance(config.proximal_inner_steps, int) and config.proximal_inner_steps >= 1,
                "proximal_inner_steps", "a positive integer (JEM++: 5)")
        require(config, config.chain_init in CHAIN_INITS, "chain_init", f"one of {CHAIN_INITS}")
        require(config, config.chain_init_jitter > 0, "chain_init_jitter", "a positive number (JEM++: 1e-4)")
        if config.buffer_size == 0 and config.chain_init == "informative":
            raise ValueError(
                "--chain_init=informative draws the replay buffer's chains from class Gaussians, but --buffer_size=0 "
                "keeps no buffer (short-run chains start from U(-1, 1) noise). Use --chain_init=uniform with "
                "--buffer_size=0, or a replay buffer.")


# Every objective's config, by --objective name. The first is the default objective (the paper's):
# TrainConfig's default for a field is the first declaring objective's.
OBJECTIVE_CONFIGS = {config.name: config for config in (JEMConfig, ClassifierConfig, JEMPPConfig)}
OBJECTIVES = tuple(OBJECTIVE_CONFIGS)
DEFAULT_OBJECTIVE = OBJECTIVES[0]


def config_class(objective: str):
    """The config dataclass of `objective` (ValueError naming the known objectives otherwise)."""
    if objective not in OBJECTIVE_CONFIGS:
        raise ValueError(f"--objective={objective!r} is invalid: expected one of {OBJECTIVES}.")
    return OBJECTIVE_CONFIGS[objective]


def fields_of(objective: str) -> tuple:
    """The names of the fields `objective` reads beyond the ones every run has."""
    return config_class(objective).field_names()


def objective_fields() -> list:
    """Every objective's fields once (a dataclasses.Field each, name and type set), in declaration
    order; a field several objectives declare takes the first declaring objective's default (the
    default objective's, e.g. JEM's 20 SGLD steps, not JEM++'s 10)."""
    fields = {}
    for config in OBJECTIVE_CONFIGS.values():
        for field in dataclasses.fields(config):
            fields.setdefault(field.name, field)
    return list(fields.values())


def resume_invariant_fields(objective: str) -> tuple:
    """The fields of `objective` that define what its checkpoint is (`resume_invariant` metadata)."""
    return tuple(field.name for field in dataclasses.fields(config_class(objective))
                 if field.metadata.get("resume_invariant"))


def readers(field_name: str) -> tuple:
    """The objectives that read `field_name`; () for a field every run has (or no field)."""
    return tuple(name for name in OBJECTIVES if field_name in fields_of(name))


def reads(objective: str, field_name: str) -> bool:
    """Whether a run of `objective` reads `field_name` (every run reads the shared fields)."""
    owners = readers(field_name)
    return not owners or objective in owners


def objective_defaults(preset_objective: str, objective: str) -> dict:
    """The fields `objective` sets when it replaces the preset's objective: its own defaults where
    they differ from the preset objective's (a field the preset's objective does not read takes
    the new objective's default). Apply them before the explicit flags, which win; a preset's own
    values of fields both objectives read with the same default (the quick preset's buffer) stay."""
    if objective == preset_objective:
        return {}
    before = {field.name: field.default for field in dataclasses.fields(config_class(preset_objective))}
    return {field.name: field.default for field in dataclasses.fields(config_class(objective))
            if field.name not in before or before[field.name] != field.default}


def unused_flags(objective: str, names) -> list:
    """Messages for the fields in `names` (flags given on the command line) that `objective` does not read."""
    def listed(owners):  # "jem and jempp", "a, b and c"
        return " and ".join(filter(None, [", ".join(owners[:-1]), owners[-1]]))

    return [f"--{name} is read by --objective={listed(readers(name))} only, not by --objective={objective}"
            for name in names if not reads(objective, name)]


def flag_group(command: str, field_name: str):
    """The --helpfull heading of an objective's field ('jem_tf.train: --objective=jem, jempp'), None
    for a field every run has (listed under the command itself)."""
    owners = readers(field_name)
    return f"{command}: --objective={', '.join(owners)} only" if owners else None


__all__ = ["CHAIN_INITS", "DEFAULT_OBJECTIVE", "GENERATIVE_AUGMENTATIONS", "OBJECTIVES", "OBJECTIVE_CONFIGS",
           "ClassifierConfig", "JEMConfig", "JEMPPConfig", "config_class", "fields_of", "flag_group",
           "objective_defaults", "objective_fields", "readers", "reads", "require", "resume_invariant_fields",
           "unused_flags"]
