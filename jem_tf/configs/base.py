"""The training configuration: one dataclass whose defaults are the paper's Table 4.

TrainConfig declares the fields every run has; each objective's own fields (SGLD and buffer for
jem, the proximal sampler for jempp) are declared with the objective in jem_tf/configs/objectives.py
and inherited (ObjectiveFields), so the config stays one flat object and config.json one flat file.

Each field carries its help text in `metadata=dict(help=...)`; `jem_tf/cli.py` makes every field a
`python -m jem_tf.train` flag of the same name from it (`choices` makes an enum flag; `flag=False`
marks a field that is not a flag), so a new field is written once, here or in its objective's config:

    some_weight: float = dataclasses.field(default=0.0, metadata=dict(help="What it weighs (paper: 0)."))
"""

import contextlib
import dataclasses
import json
import math
import os
from typing import Optional

from jem_tf.configs import objectives
from jem_tf.configs.objectives import OBJECTIVES

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# The same names as jem_tf.precision.PRECISIONS (not imported: configs stay free of Keras).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
AUGMENTATIONS = ("none", "crop", "crop_flip")
NORMS = ("none", "batch", "group")
ACTIVATIONS = ("leaky_relu", "swish")
# numpy's legacy seeding (keras.utils.set_random_seed) takes 0..2**32-1; TF and SeedSequence
# take more. One documented range that every consumer accepts.
MAX_SEED = 2**31 - 1

# Settings every run has that define what a checkpoint *is*; resuming a workdir with any of them
# changed would silently mix two different runs, so it is refused. An objective's own such fields
# (JEM's buffer size) carry `resume_invariant=True` in their metadata (jem_tf/configs/objectives.py).
RESUME_INVARIANT_FIELDS = (
    "dataset",
    "objective",
    "depth",
    "width",
    "norm",
    "activation",
    "dropout_rate",
    "batch_size",
    "seed",
    # Which images are labelled (with the seed, it fixes the subset).
    "labels_per_class",
    # A resumed run must compute what the uninterrupted run would have (bit-identical resume), and
    # a mixed_float16 checkpoint holds the loss-scale state the others lack. Evaluation and export
    # may still choose another precision: the weights are float32 in every precision.
    "precision",
)

# The automatic divergence recovery's state (trainers/recovery.py): not flags; written into config.json
# by the training loop and carried over when a run is resumed, so the resumed run continues with
# the learning rate and SGLD steps the recoveries chose.
RECOVERY_STATE_FIELDS = ("learning_rate_scale", "extra_sgld_steps", "recoveries")


def _objective_fields_class():
    """A dataclass of every objective's own fields (jem_tf/configs/objectives.py), for TrainConfig to
    inherit: one flat config, whose objective fields are declared with their objective."""
    fields = [(field.name, field.type, dataclasses.field(default=field.default, metadata=field.metadata))
              for field in objectives.objective_fields()]
    fields_class = dataclasses.make_dataclass("ObjectiveFields", fields)
    fields_class.__module__ = __name__
    fields_class.__doc__ = "Every objective's own fields (jem_tf/configs/objectives.py)."
    return fields_class


ObjectiveFields = _objective_fields_class()


@dataclasses.dataclass
class TrainConfig(ObjectiveFields):
    """Every setting of a training run: the fields every run has, declared here, and every
    objective's own fields (ObjectiveFields, declared in jem_tf/configs/objectives.py), of which a run
    reads its objective's. Defaults reproduce Grathwohl et al. (2020), Table 4."""

    preset: str = dataclasses.field(default="paper", metadata=dict(
        flag=False,  # its own --preset flag (jem_tf/train.py) chooses the config the other flags override
        help="The preset this config started from (jem_tf/configs)."))
    dataset: str = dataclasses.field(default="cifar10", metadata=dict(
        help="digits | svhn | cifar10 | cifar100 | folder:PATH (paper preset: cifar10)."))
    data_dir: Optional[str] = dataclasses.field(default=None, metadata=dict(
        help="tensorflow-datasets data directory holding the prepared dataset (downloaded only with --download)."))
    workdir: str = dataclasses.field(default="runs/jem", metadata=dict(
        help="Run directory (re-running on it resumes): config, checkpoints, TensorBoard logs, samples, "
             "metrics.json, export. Paper preset: runs/<dataset>."))
    objective: str = dataclasses.field(default=objectives.DEFAULT_OBJECTIVE, metadata=dict(
        choices=OBJECTIVES,
        help=" | ".join(f"{name} ({config.summary})" for name, config in objectives.OBJECTIVE_CONFIGS.items())
        + ". Each objective's own flags are listed under its name in --helpfull; a flag the objective does not "
          "read is refused."))
    # WRN-28-10 without normalisation (the paper removes batch norm).
    depth: int = dataclasses.field(default=28, metadata=dict(help="WideResNet depth 6n+4 (paper: 28)."))
    width: int = dataclasses.field(default=10, metadata=dict(help="WideResNet widening factor (paper: 10)."))
    norm: str = dataclasses.field(default="none", metadata=dict(
        choices=NORMS, help="none (paper) | batch | group."))
    activation: str = dataclasses.field(default="leaky_relu", metadata=dict(
        choices=ACTIVATIONS, help="leaky_relu (slope 0.2, the reference code) | swish."))
    dropout_rate: float = dataclasses.field(default=0.0, metadata=dict(
        help="Dropout inside each residual block (paper: 0)."))
    # Optimisation: Adam 1e-4, 150 epochs, x0.3 at epochs 50 and 100, batch 64.
    batch_size: int = dataclasses.field(default=64, metadata=dict(
        help="Global batch size, split over replicas (paper: 64)."))
    epochs: int = dataclasses.field(default=150, metadata=dict(help="Training epochs (paper: 150)."))
    learning_rate: float = dataclasses.field(default=1e-4, metadata=dict(
        help="Adam learning rate (paper: 1e-4; epsilon 1e-8 as the reference code), decayed x lr_decay_rate at "
             "lr_decay_epochs."))
    lr_decay_epochs: tuple = dataclasses.field(default=(50, 100), metadata=dict(
        item_type=int,
        help="Epochs at which the learning rate decays (staircase, from the first step of each listed epoch): "
             "strictly increasing positive whole numbers (paper: 50,100)."))
    lr_decay_rate: float = dataclasses.field(default=0.3, metadata=dict(help="Staircase decay factor (paper: 0.3)."))
    # Linear warm-up used by the reference code's published command (--warmup_iters 1000).
    warmup_steps: int = dataclasses.field(default=1000, metadata=dict(
        help="Linear learning-rate warm-up from 0, learning_rate * step / warmup_steps (the reference code's; its "
             "published command: 1000)."))
    # Data: scale to [-1, 1] and add N(0, 0.03) noise.
    data_noise: float = dataclasses.field(default=0.03, metadata=dict(
        help="Std of Gaussian noise added to training images in [-1, 1] (paper: 0.03)."))
    augmentation: Optional[str] = dataclasses.field(default=None, metadata=dict(
        choices=AUGMENTATIONS,
        help="none | crop | crop_flip (default: the dataset's own; svhn and digits: crop, cifar and folders: "
             "crop_flip)."))
    validation_fraction: float = dataclasses.field(default=0.1, metadata=dict(
        help="Fraction of the training split held out for validation (a fixed, deterministic hold-out). Not with "
             "--validation_size."))
    skip_bad_files: bool = dataclasses.field(default=False, metadata=dict(
        help="folder:PATH datasets: leave out image files that do not decode (or are smaller than 8x8), with a "
             "warning and their count, instead of refusing the dataset (default: refuse)."))
    drop_empty_classes: bool = dataclasses.field(default=False, metadata=dict(
        help="folder:PATH datasets: leave out class folders without training images (and their test images), with "
             "a warning, instead of refusing the dataset (default: refuse)."))
    # Instead of the fraction (which must then be 0).
    validation_size: Optional[int] = dataclasses.field(default=None, metadata=dict(
        help="Hold out a seeded random set of this many training images for validation instead of "
             "--validation_fraction (the reference code: 5000, numpy seed 1234). Not with --validation_fraction."))
    labels_per_class: Optional[int] = dataclasses.field(default=None, metadata=dict(help=(
        "Semi-supervised training (the JEM paper's semi-supervised experiments; the reference code's "
        "--labels_per_class): cross-entropy only on a fixed, class-balanced subset of N training images per "
        "class chosen by --seed, the log p(x) term on every training image. Unset: every image is labelled.")))
    # Sharpness-aware minimisation, for every objective (SADA-JEM, Yang, Su & Ji, CVPR 2023, uses it with jem).
    sam_rho: float = dataclasses.field(default=0.0, metadata=dict(
        help="Sharpness-aware minimisation radius rho (0: off). Each step also evaluates the whole loss (same data "
             "and SGLD samples) at the weights moved by rho * g/||g|| along its gradient g and updates with the "
             "gradient there: two forward/backward passes per step. SADA-JEM: 2 with --sam_adaptive."))
    sam_adaptive: bool = dataclasses.field(default=False, metadata=dict(
        help="With --sam_rho > 0: adaptive SAM (ASAM, Kwon et al. 2021), whose step scales with each weight's "
             "magnitude (rho * w^2 g / ||w g||). SADA-JEM uses it (its rho >= 0.5 switches it on)."))
    # Execution.
    strategy: str = dataclasses.field(default="auto", metadata=dict(
        choices=STRATEGIES,
        help="auto (MirroredStrategy when >1 GPU) | default | mirrored | multi_worker (MultiWorkerMirroredStrategy "
             "over the cluster in the TF_CONFIG environment variable; docs/training.md)."))
    seed: int = dataclasses.field(default=0, metadata=dict(
        help="Seed of data order, augmentation, initial weights, buffer initialisation and SGLD noise: 0 .. "
             "2**31-1."))
    max_steps: Optional[int] = dataclasses.field(default=None, metadata=dict(
        help="Stop after this many global steps (cap for smoke runs); below the workdir's latest checkpoint the "
             "run is refused (training cannot go back)."))
    precision: str = dataclasses.field(default="float32", metadata=dict(
        choices=PRECISIONS,
        help="float32 (default) | mixed_bfloat16 (CPUs with AVX512-BF16/AMX, Ampere+ GPUs) | mixed_float16 (GPUs; "
             "dynamic loss scaling). 16-bit convolutions, float32 weights, logits, energies, SGLD images and replay "
             "buffer. Fixed for the life of a run (docs/training.md: Mixed precision)."))
    # Bookkeeping.
    checkpoint_every_steps: int = dataclasses.field(default=1000, metadata=dict(
        help="Save a checkpoint every N steps (and at the end)."))
    checkpoint_every_secs: float = dataclasses.field(default=300.0, metadata=dict(
        help="Also save a checkpoint when this many seconds passed since the last one (preemption loses less)."))
    keep_checkpoints: int = dataclasses.field(default=3, metadata=dict(help="Keep the last K checkpoints."))
    restart_from_scratch: bool = dataclasses.field(default=False, metadata=dict(
        help="When none of the workdir's checkpoints restores (each damaged one moved to checkpoints/broken/) "
             "although the run had made progress, train again from step 0 instead of stopping with exit code 5. "
             "Deletes nothing; no effect when a checkpoint restores."))
    summary_every_steps: int = dataclasses.field(default=100, metadata=dict(help="TensorBoard scalars every N steps."))
    sample_every_steps: int = dataclasses.field(default=1000, metadata=dict(
        help="Grid of current SGLD chains (TensorBoard + WORKDIR/samples) every N steps."))
    # Automatic divergence recovery (trainers/recovery.py); the objective's own policy is in its config.
    max_recoveries: int = dataclasses.field(default=3, metadata=dict(
        help="Automatic divergence recoveries (restore the last good checkpoint, apply the recovery policy, "
             "continue) before giving up with exit code 3; 0 stops at the first divergence."))
    recovery_lr_factor: float = dataclasses.field(default=0.5, metadata=dict(
        help="Recovery policy: multiply the learning rate by this at each recovery."))
    # Recovery state in effect (RECOVERY_STATE_FIELDS): written by the loop, not flags.
    learning_rate_scale: float = dataclasses.field(default=1.0, metadata=dict(
        flag=False, help="Recovery state: the multiplier on the learning-rate schedule."))
    extra_sgld_steps: int = dataclasses.field(default=0, metadata=dict(
        flag=False, help="Recovery state: SGLD steps added to sgld_steps."))
    recoveries: int = dataclasses.field(default=0, metadata=dict(
        flag=False, help="Recovery state: automatic recoveries made so far."))
    export: bool = dataclasses.field(default=True, metadata=dict(
        help="Export a SavedModel to WORKDIR/export at the end."))

    def validate(self) -> "TrainConfig":
        """Raises ValueError naming the first bad setting and what would be accepted."""

        def check(condition, name, expected):
            objectives.require(self, condition, name, expected)

        # inf or nan in any float setting would be trained into divergence (or never checked):
        # refused first, since every range check below is False for nan anyway.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float):
                check(math.isfinite(value), field.name, "a finite number")
            # A value no objective accepts is refused whatever the objective (not only the fields it reads).
            choices = field.metadata.get("choices")
            if choices is not None and isinstance(value, str):
                check(value in choices, field.name, f"one of {tuple(choices)}")
        check(self.strategy in STRATEGIES, "strategy", f"one of {STRATEGIES}")
        check(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        check(self.augmentation is None or self.augmentation in AUGMENTATIONS, "augmentation",
              f"one of {AUGMENTATIONS}")
        check(self.depth >= 10 and (self.depth - 4) % 6 == 0, "depth", "6n+4 with n >= 1 (10, 16, 22, 28, ...)")
        check(self.width >= 1, "width", "a positive integer")
        check(self.norm in NORMS, "norm", f"one of {NORMS}")
        check(self.activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}")
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
        check(self.sam_rho >= 0, "sam_rho", "a non-negative number (0: no sharpness-aware minimisation)")
        check(self.objective in OBJECTIVES, "objective", f"one of {OBJECTIVES}")
        # The objective's own fields: only the ones it reads (the others are refused on the command
        # line when given, jem_tf/train.py, and otherwise left alone).
        objectives.config_class(self.objective).check(self)
        check(isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED, "seed", f"an integer in [0, {MAX_SEED}]")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", "a positive integer or unset")
        check(self.checkpoint_every_steps >= 1, "checkpoint_every_steps", "a positive integer")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "a positive integer")
        check(self.summary_every_steps >= 1, "summary_every_steps", "a positive integer")
        check(self.sample_every_steps >= 1, "sample_every_steps", "a positive integer")
        check(self.checkpoint_every_secs > 0, "checkpoint_every_secs", "a positive number of seconds")
        check(self.max_recoveries >= 0, "max_recoveries", "a non-negative integer (0: stop at the first divergence)")
        check(0 < self.recovery_lr_factor <= 1, "recovery_lr_factor", "a value in (0, 1]")
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
    """The resume-invariant settings that differ, as 'name: saved -> requested' strings: the shared
    ones and those of the saved run's objective (another objective's fields take part in no check)."""
    names = RESUME_INVARIANT_FIELDS + objectives.resume_invariant_fields(saved.objective)
    return [
        f"{name}: {getattr(saved, name)!r} -> {getattr(requested, name)!r}"
        for name in names
        if getattr(saved, name) != getattr(requested, name)
    ]


def write_file_atomically(path: str, payload) -> None:
    """Writes `payload` (str or bytes) via a temporary file and rename, so a crash or a full disk
    never leaves half a file (the temporary one is removed when the write fails).

    Nothing is written through a symbolic link: the temporary file is created afresh with O_EXCL |
    O_NOFOLLOW (a link planted under its name is removed, not followed), and the rename replaces a
    link at `path` itself, never the file it points to."""
    tmp = f"{path}.tmp-{os.getpid()}"
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # our own leftover, or a planted link: unlink removes the link, not its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomically(path: str, payload: str) -> None:
    """Writes via a temporary file and rename, so a crash never leaves half a file (see
    `write_file_atomically`)."""
    write_file_atomically(path, payload)
