"""The training configuration: one dataclass whose defaults are the paper's Table 4."""

import dataclasses
import json
import math
import os
from typing import Optional

# The registered objectives' names (trainers/registry.py; a test keeps them equal), here so that a
# bad --objective is refused before TensorFlow is imported.
OBJECTIVES = ("classifier", "jem")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# The same names as jem_tf.precision.PRECISIONS (not imported: configs stay free of Keras).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
AUGMENTATIONS = ("none", "crop", "crop_flip")
# numpy's legacy seeding (keras.utils.set_random_seed) takes 0..2**32-1; TF and SeedSequence
# take more. One documented range that every consumer accepts.
MAX_SEED = 2**31 - 1

# Settings that define what a checkpoint *is*; resuming a workdir with any of them changed would
# silently mix two different runs, so it is refused.
RESUME_INVARIANT_FIELDS = (
    "dataset",
    "objective",
    "depth",
    "width",
    "norm",
    "activation",
    "dropout_rate",
    "buffer_size",
    "batch_size",
    "seed",
    # Which images are labelled (with the seed, it fixes the subset).
    "labels_per_class",
    # A resumed run must compute what the uninterrupted run would have (bit-identical resume), and
    # a mixed_float16 checkpoint holds the loss-scale state the others lack. Evaluation and export
    # may still choose another precision: the weights are float32 in every precision.
    "precision",
)

# The automatic divergence recovery's state (trainers/loop.py): not flags; written into config.json
# by the training loop and carried over when a run is resumed, so the resumed run continues with
# the learning rate and SGLD steps the recoveries chose.
RECOVERY_STATE_FIELDS = ("learning_rate_scale", "extra_sgld_steps", "recoveries")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run. Defaults reproduce Grathwohl et al. (2020), Table 4."""

    preset: str = "paper"
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    workdir: str = "runs/jem"
    objective: str = "jem"
    # WRN-28-10 without normalisation (the paper removes batch norm).
    depth: int = 28
    width: int = 10
    norm: str = "none"
    activation: str = "leaky_relu"
    dropout_rate: float = 0.0
    # Optimisation: Adam 1e-4, 150 epochs, x0.3 at epochs 50 and 100, batch 64.
    batch_size: int = 64
    epochs: int = 150
    learning_rate: float = 1e-4
    lr_decay_epochs: tuple = (50, 100)
    lr_decay_rate: float = 0.3
    # Linear warm-up used by the reference code's published command (--warmup_iters 1000).
    warmup_steps: int = 1000
    # SGLD and persistent chains.
    sgld_steps: int = 20
    sgld_step_size: float = 1.0
    sgld_noise: float = 0.01
    buffer_size: int = 10000
    reinit_freq: float = 0.05
    # Data: scale to [-1, 1] and add N(0, 0.03) noise; augmentation None = the dataset's default.
    data_noise: float = 0.03
    augmentation: Optional[str] = None
    validation_fraction: float = 0.1
    # folder:PATH datasets: leave out files that do not decode / class folders without training
    # images (with a warning) instead of refusing the dataset.
    skip_bad_files: bool = False
    drop_empty_classes: bool = False
    # Instead of the fraction (which must then be 0): a random hold-out of this many training
    # images drawn as the reference code draws its 5000 (numpy seed 1234).
    validation_size: Optional[int] = None
    labels_per_class: Optional[int] = dataclasses.field(default=None, metadata=dict(help=(
        "Semi-supervised training (the JEM paper's semi-supervised experiments; the reference code's "
        "--labels_per_class): cross-entropy only on a fixed, class-balanced subset of N training images per "
        "class chosen by --seed, the log p(x) term on every training image. Unset: every image is labelled.")))
    # Loss weights: L = xent + p_x_weight * L_gen(x) + p_xy_weight * L_gen(x, y).
    p_x_weight: float = 1.0
    p_xy_weight: float = 0.0
    # Execution.
    strategy: str = "auto"
    seed: int = 0
    max_steps: Optional[int] = None
    jit_compile: bool = False
    # float32 | mixed_bfloat16 | mixed_float16 (jem_tf.precision); logits and SGLD stay float32.
    precision: str = "float32"
    # Bookkeeping.
    checkpoint_every_steps: int = 1000
    # Also a checkpoint when this much time passed since the last one (preemption loses less).
    checkpoint_every_secs: float = 300.0
    keep_checkpoints: int = 3
    summary_every_steps: int = 100
    sample_every_steps: int = 1000
    # The reference aborts when |L_gen| exceeds 1e8.
    max_abs_generative_loss: float = 1e8
    # Automatic divergence recovery: restore the last good checkpoint, multiply the learning rate
    # by recovery_lr_factor, add recovery_extra_sgld_steps SGLD steps, re-initialise replay-buffer
    # chains that are non-finite or beyond +-recovery_chain_limit; give up after max_recoveries.
    max_recoveries: int = 3
    recovery_lr_factor: float = 0.5
    recovery_extra_sgld_steps: int = 5
    recovery_chain_limit: float = 3.0
    # Recovery state in effect (see RECOVERY_STATE_FIELDS): the schedule's multiplier, SGLD steps
    # added to sgld_steps, and recoveries made so far.
    learning_rate_scale: float = 1.0
    extra_sgld_steps: int = 0
    recoveries: int = 0
    export: bool = True

    def validate(self) -> "TrainConfig":
        """Raises ValueError naming the first bad setting and what would be accepted."""

        def check(condition, name, expected):
            if not condition:
                value = getattr(self, name)
                # Lists as they are typed on the command line (--lr_decay_epochs=11,8).
                shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else repr(value)
                raise ValueError(f"--{name}={shown} is invalid: expected {expected}.")

        # inf or nan in any float setting would be trained into divergence (or never checked):
        # refused first, since every range check below is False for nan anyway.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float):
                check(math.isfinite(value), field.name, "a finite number")
        check(self.objective in OBJECTIVES, "objective", f"one of {OBJECTIVES}")
        check(self.strategy in STRATEGIES, "strategy", f"one of {STRATEGIES}")
        check(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        check(self.augmentation is None or self.augmentation in AUGMENTATIONS, "augmentation",
              f"one of {AUGMENTATIONS}")
        check(self.depth >= 10 and (self.depth - 4) % 6 == 0, "depth", "6n+4 with n >= 1 (10, 16, 22, 28, ...)")
        check(self.width >= 1, "width", "a positive integer")
        check(self.norm in ("none", "batch", "group"), "norm", "one of ('none', 'batch', 'group')")
        check(self.activation in ("leaky_relu", "swish"), "activation", "one of ('leaky_relu', 'swish')")
        check(0.0 <= self.dropout_rate < 1.0, "dropout_rate", "a value in [0, 1)")
        check(self.batch_size >= 1, "batch_size", "a positive integer (the global batch)")
        check(self.epochs >= 1, "epochs", "a positive integer")
        check(self.learning_rate > 0, "learning_rate", "a positive number")
        check(0 < self.lr_decay_rate <= 1, "lr_decay_rate", "a value in (0, 1]")
        decay = tuple(self.lr_decay_epochs)
        check(all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in decay), "lr_decay_epochs",
              "positive whole epochs, comma-separated (e.g. 50,100)")
        check(all(a < b for a, b in zip(decay, decay[1:])), "lr_decay_epochs",
              "strictly increasing epochs (e.g. 50,100)")
        check(self.warmup_steps >= 0, "warmup_steps", "a non-negative integer")
        check(self.sgld_steps >= 0, "sgld_steps", "a non-negative integer")
        check(self.sgld_step_size >= 0, "sgld_step_size", "a non-negative number")
        check(self.sgld_noise >= 0, "sgld_noise", "a non-negative number")
        check(self.buffer_size >= 1, "buffer_size", "a positive integer")
        check(0.0 <= self.reinit_freq <= 1.0, "reinit_freq", "a probability in [0, 1]")
        check(self.data_noise >= 0, "data_noise", "a non-negative number")
        check(0.0 <= self.validation_fraction < 1.0, "validation_fraction", "a value in [0, 1)")
        check(self.validation_size is None or self.validation_size >= 1, "validation_size",
              "a positive integer or unset")
        if self.validation_size is not None and self.validation_fraction:
            raise ValueError(
                f"--validation_size={self.validation_size} and --validation_fraction={self.validation_fraction} both "
                "choose the validation split; pass only one (--validation_size replaces the fraction).")
        check(self.labels_per_class is None or (isinstance(self.labels_per_class, int)
                                                and not isinstance(self.labels_per_class, bool)
                                                and self.labels_per_class >= 1),
              "labels_per_class", "a positive integer (labelled images per class) or unset (all labelled)")
        check(self.p_x_weight >= 0, "p_x_weight", "a non-negative number")
        check(self.p_xy_weight >= 0, "p_xy_weight", "a non-negative number")
        check(isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED, "seed", f"an integer in [0, {MAX_SEED}]")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", "a positive integer or unset")
        check(self.checkpoint_every_steps >= 1, "checkpoint_every_steps", "a positive integer")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "a positive integer")
        check(self.summary_every_steps >= 1, "summary_every_steps", "a positive integer")
        check(self.sample_every_steps >= 1, "sample_every_steps", "a positive integer")
        check(self.max_abs_generative_loss > 0, "max_abs_generative_loss", "a positive number")
        check(self.checkpoint_every_secs > 0, "checkpoint_every_secs", "a positive number of seconds")
        check(self.max_recoveries >= 0, "max_recoveries", "a non-negative integer (0: stop at the first divergence)")
        check(0 < self.recovery_lr_factor <= 1, "recovery_lr_factor", "a value in (0, 1]")
        check(self.recovery_extra_sgld_steps >= 0, "recovery_extra_sgld_steps", "a non-negative integer")
        check(self.recovery_chain_limit >= 1, "recovery_chain_limit", "a number >= 1 (chains start in [-1, 1])")
        return self

    def validate_for_data(self, num_train: int) -> "TrainConfig":
        """The checks that need the training set's size; raises ValueError naming the flag to change.

        The objective's own checks (e.g. JEM's buffer against the batch) run after this one
        (trainers.registry), so a batch larger than the training set blames --batch_size, not
        --buffer_size.
        """
        if self.batch_size > num_train:
            raise ValueError(
                f"--batch_size={self.batch_size} is larger than the {num_train} training examples of "
                f"{self.dataset!r} (after the --validation_fraction={self.validation_fraction:g} hold-out): not one "
                f"batch fits in an epoch. Use --batch_size={num_train} or less."
            )
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown config keys {unknown}; known keys are {sorted(known)}.")
        values = dict(values)
        if "lr_decay_epochs" in values:
            values["lr_decay_epochs"] = tuple(values["lr_decay_epochs"])
        return cls(**values)

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def incompatible_fields(saved: TrainConfig, requested: TrainConfig) -> list:
    """The resume-invariant settings that differ, as 'name: saved -> requested' strings."""
    return [
        f"{name}: {getattr(saved, name)!r} -> {getattr(requested, name)!r}"
        for name in RESUME_INVARIANT_FIELDS
        if getattr(saved, name) != getattr(requested, name)
    ]


def write_json_atomically(path: str, payload: str) -> None:
    """Writes via a temporary file and rename, so a crash never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(payload)
    os.replace(tmp, path)
