"""The training configuration: one dataclass whose defaults are the paper's Table 4.

Each field carries its help text in `metadata=dict(help=...)`; `jem_tf/cli.py` makes every field a
`python -m jem_tf.train` flag of the same name from it (`choices` makes an enum flag; `flag=False`
marks a field that is not a flag), so a new field is written once, here:

    some_weight: float = dataclasses.field(default=0.0, metadata=dict(help="What it weighs (paper: 0)."))
"""

import contextlib
import dataclasses
import json
import math
import os
from typing import Optional

# The registered objectives' names (trainers/registry.py; a test keeps them equal), here so that a
# bad --objective is refused before TensorFlow is imported.
OBJECTIVES = ("classifier", "jem", "jempp")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# The same names as jem_tf.precision.PRECISIONS (not imported: configs stay free of Keras).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
AUGMENTATIONS = ("none", "crop", "crop_flip")
# What the log p(x) data term sees: the augmented training images, or the same without crop/flip.
GENERATIVE_AUGMENTATIONS = ("same", "none")
NORMS = ("none", "batch", "group")
ACTIVATIONS = ("leaky_relu", "swish")
# Where replay-buffer chains start: U(-1, 1) noise, or JEM++'s class-wise Gaussians of the data.
CHAIN_INITS = ("uniform", "informative")

# An objective's own defaults where they differ from the preset's (JEM++'s published CIFAR-10
# setting: 10 proximal steps of 0.2 without noise, chains from the class-wise Gaussians). They apply
# when --objective chooses another objective than the preset's; explicit flags still win.
OBJECTIVE_DEFAULTS = {
    "jempp": dict(sgld_steps=10, sgld_step_size=0.2, sgld_noise=0.0, chain_init="informative"),
}
# Fields only --objective=jempp reads; another objective refuses them when set (never ignored silently).
JEMPP_FIELDS = ("proximal_max_grad", "proximal_inner_steps", "chain_init", "chain_init_jitter")
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
    # The checkpoint holds the class Gaussians only with informative chains.
    "chain_init",
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
    objective: str = dataclasses.field(default="jem", metadata=dict(
        choices=OBJECTIVES,
        help="jem (classifier + log p(x) via SGLD) | classifier (cross-entropy baseline: the same network, data "
             "and flags, cross-entropy only) | jempp (JEM++: proximal sampler and informative chain initialisation, "
             "with its own sampler defaults: 10 steps of 0.2, no noise)."))
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
    # SGLD and persistent chains.
    sgld_steps: int = dataclasses.field(default=20, metadata=dict(
        help="SGLD steps per training iteration (paper: 20)."))
    sgld_step_size: float = dataclasses.field(default=1.0, metadata=dict(
        help="SGLD step size alpha on d log p(x)/dx (paper: 1)."))
    sgld_noise: float = dataclasses.field(default=0.01, metadata=dict(
        help="SGLD noise standard deviation sigma (paper: 0.01)."))
    buffer_size: int = dataclasses.field(default=10000, metadata=dict(help=(
        "Replay buffer size: persistent chains (paper: 10000). 0: short-run training (Nijkamp et al. 2019; the "
        "reference's --buffer_size 0): every step starts its chains from fresh U(-1, 1) noise and keeps none, "
        "so use many more --sgld_steps (the reference's help: 100; the paper found 80 the fewest that trained "
        "stably, appendix G.2).")))
    reinit_freq: float = dataclasses.field(default=0.05, metadata=dict(
        help="Probability of restarting a chain from U(-1, 1) (paper: 0.05)."))
    sgld_clamp: bool = dataclasses.field(default=False, metadata=dict(help=(
        "Stabiliser: clip the SGLD chain images to the data range [-1, 1] after every step, so chains cannot "
        "wander into pixel values the energy was never trained on (JEM++'s sampler clamps likewise).")))
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
    # Loss weights: L = xent + p_x_weight * L_gen(x) + p_xy_weight * L_gen(x, y).
    p_x_weight: float = dataclasses.field(default=1.0, metadata=dict(help="Weight of the log p(x) term (paper: 1)."))
    p_xy_weight: float = dataclasses.field(default=0.0, metadata=dict(
        help="Weight of the optional log p(x, y) term with class-conditional chains (paper: 0)."))
    # SADA-JEM (Yang, Su & Ji, CVPR 2023): sharpness-aware minimisation, and the log p(x) term
    # on un-augmented images.
    sam_rho: float = dataclasses.field(default=0.0, metadata=dict(
        help="Sharpness-aware minimisation radius rho (0: off). Each step also evaluates the whole loss (same data "
             "and SGLD samples) at the weights moved by rho * g/||g|| along its gradient g and updates with the "
             "gradient there: two forward/backward passes per step. SADA-JEM: 2 with --sam_adaptive."))
    sam_adaptive: bool = dataclasses.field(default=False, metadata=dict(
        help="With --sam_rho > 0: adaptive SAM (ASAM, Kwon et al. 2021), whose step scales with each weight's "
             "magnitude (rho * w^2 g / ||w g||). SADA-JEM uses it (its rho >= 0.5 switches it on)."))
    generative_augmentation: str = dataclasses.field(default="same", metadata=dict(
        choices=GENERATIVE_AUGMENTATIONS,
        help="Images of the log p(x) data term: same (the augmented training images, as JEM) | none (the same "
             "images without crop or flip, keeping --data_noise; SADA-JEM). Only for objectives with log p(x)."))
    p_y_given_x_weight: float = dataclasses.field(default=1.0, metadata=dict(help=(
        "Weight of the cross-entropy (log p(y|x)) term of the jem objective (the reference's flag of the same "
        "name; paper: 1). With --p_y_given_x_weight=0 --p_x_weight=0 --p_xy_weight=1 the model trains on "
        "log p(x, y) only (the paper's p(x|y) ablation).")))
    class_cond_p_x_sample: bool = dataclasses.field(default=False, metadata=dict(help=(
        "Draw the log p(x) term's samples from p(y) p(x|y) instead of p(x): each chain gets a uniformly drawn "
        "class y and runs SGLD on log p~(x, y) from that class's part of the replay buffer (the reference's "
        "flag; paper appendix A: nicer samples, lower accuracy). Needs --p_x_weight > 0.")))
    energy_l2: float = dataclasses.field(default=0.0, metadata=dict(help=(
        "Stabiliser: adds energy_l2 * (mean E(x)^2 + mean E(x_hat)^2) to the jem loss, E = -log p~(x) = "
        "-logsumexp of the logits, over the data batch x and every SGLD sample x_hat of the step; it keeps "
        "energies near zero. The JEM author's advice for diverging runs (wgrathwohl/JEM issue #4, after Du & "
        "Mordatch 2019): about 0.1. 0 = off.")))
    # JEM++ (Yang & Ji, ICCV 2021; --objective=jempp only): the proximal sampler and the informative
    # initialisation. Its SGLD defaults come from OBJECTIVE_DEFAULTS.
    proximal_max_grad: float = dataclasses.field(default=1.0, metadata=dict(help=(
        "JEM++ (--objective=jempp): the proximal sampler clips each pixel's gradient d log p(x)/dx to "
        "+-this before a step (JEM++'s --eps: 1), so one inner update moves a pixel by at most "
        "--sgld_step_size times this; images are clipped to [-1, 1] after every update.")))
    proximal_inner_steps: int = dataclasses.field(default=5, metadata=dict(help=(
        "JEM++ (--objective=jempp): clipped updates per sampler step, all with that step's gradient "
        "(JEM++'s --in_steps: 5); a sampler step moves a pixel by at most this x --sgld_step_size x "
        "--proximal_max_grad.")))
    chain_init: str = dataclasses.field(default="uniform", metadata=dict(choices=CHAIN_INITS, help=(
        "uniform | informative. Where replay-buffer chains start and restart: U(-1, 1) noise, or (JEM++, "
        "--objective=jempp's default) class-wise Gaussians fitted on the training images, kept in the "
        "checkpoint and checked against the data on resume.")))
    chain_init_jitter: float = dataclasses.field(default=1e-4, metadata=dict(help=(
        "JEM++ informative initialisation: added to the diagonal of every class covariance so a "
        "rank-deficient one (fewer images than pixels, constant pixels) can be sampled (JEM++: 1e-4).")))
    # Execution.
    strategy: str = dataclasses.field(default="auto", metadata=dict(
        choices=STRATEGIES,
        help="auto (MirroredStrategy when >1 GPU) | default | mirrored | multi_worker (MultiWorkerMirroredStrategy "
             "over the cluster in the TF_CONFIG environment variable; README)."))
    seed: int = dataclasses.field(default=0, metadata=dict(
        help="Seed of data order, augmentation, initial weights, buffer initialisation and SGLD noise: 0 .. "
             "2**31-1."))
    max_steps: Optional[int] = dataclasses.field(default=None, metadata=dict(
        help="Stop after this many global steps (cap for smoke runs); below the workdir's latest checkpoint the "
             "run is refused (training cannot go back)."))
    jit_compile: bool = dataclasses.field(default=False, metadata=dict(
        help="XLA-compile the SGLD sampler (for GPUs; measured 7-8x slower on CPU, see benchmarks)."))
    precision: str = dataclasses.field(default="float32", metadata=dict(
        choices=PRECISIONS,
        help="float32 (default) | mixed_bfloat16 (CPUs with AVX512-BF16/AMX, Ampere+ GPUs) | mixed_float16 (GPUs; "
             "dynamic loss scaling). 16-bit convolutions, float32 weights, logits, energies, SGLD images and replay "
             "buffer. Fixed for the life of a run (README: Mixed precision)."))
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
    max_abs_generative_loss: float = dataclasses.field(default=1e8, metadata=dict(
        help="Divergence guard: a step whose |generative loss| exceeds this diverged (reference: 1e8)."))
    # Automatic divergence recovery (trainers/loop.py).
    max_recoveries: int = dataclasses.field(default=3, metadata=dict(
        help="Automatic divergence recoveries (restore the last good checkpoint, apply the recovery policy, "
             "continue) before giving up with exit code 3; 0 stops at the first divergence."))
    recovery_lr_factor: float = dataclasses.field(default=0.5, metadata=dict(
        help="Recovery policy: multiply the learning rate by this at each recovery."))
    recovery_extra_sgld_steps: int = dataclasses.field(default=5, metadata=dict(
        help="Recovery policy: add this many SGLD steps per iteration at each recovery."))
    recovery_chain_limit: float = dataclasses.field(default=3.0, metadata=dict(
        help="Recovery policy: re-initialise replay-buffer chains with a non-finite pixel or one beyond +-this "
             "from U(-1, 1)."))
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
        check(self.sgld_steps >= 0, "sgld_steps", "a non-negative integer")
        check(self.sgld_step_size >= 0, "sgld_step_size", "a non-negative number")
        check(self.sgld_noise >= 0, "sgld_noise", "a non-negative number")
        check(self.buffer_size >= 0, "buffer_size",
              "a non-negative integer (0: short-run chains from fresh noise, no replay buffer)")
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
        check(self.sam_rho >= 0, "sam_rho", "a non-negative number (0: no sharpness-aware minimisation)")
        check(self.generative_augmentation in GENERATIVE_AUGMENTATIONS, "generative_augmentation",
              f"one of {GENERATIVE_AUGMENTATIONS}")
        if self.generative_augmentation != "same" and self.labels_per_class is not None:
            raise ValueError(
                f"--generative_augmentation={self.generative_augmentation} and --labels_per_class="
                f"{self.labels_per_class} both choose the log p(x) term's images (the un-augmented view, or every "
                "training image); pass only one.")
        check(self.p_y_given_x_weight >= 0, "p_y_given_x_weight", "a non-negative number")
        check(self.energy_l2 >= 0, "energy_l2", "a non-negative number (0: no energy penalty; advice: about 0.1)")
        if self.buffer_size == 0 and self.chain_init == "informative":
            raise ValueError(
                "--chain_init=informative draws the replay buffer's chains from class Gaussians, but --buffer_size=0 "
                "keeps no buffer (short-run chains start from U(-1, 1) noise). Use --chain_init=uniform with "
                "--buffer_size=0, or a replay buffer.")
        if self.class_cond_p_x_sample and self.p_x_weight == 0:
            raise ValueError(
                "--class_cond_p_x_sample chooses how the log p(x) term's samples are drawn, but --p_x_weight=0 "
                "turns that term off. Set --p_x_weight above 0, or drop --class_cond_p_x_sample.")
        check(self.proximal_max_grad > 0, "proximal_max_grad", "a positive number (JEM++: 1)")
        check(isinstance(self.proximal_inner_steps, int) and self.proximal_inner_steps >= 1, "proximal_inner_steps",
              "a positive integer (JEM++: 5)")
        check(self.chain_init in CHAIN_INITS, "chain_init", f"one of {CHAIN_INITS}")
        check(self.chain_init_jitter > 0, "chain_init_jitter", "a positive number (JEM++: 1e-4)")
        if self.objective != "jempp":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in JEMPP_FIELDS:
                check(getattr(self, name) == defaults[name], name,
                      f"its default {defaults[name]!r}: it is read by --objective=jempp only (JEM++), "
                      f"not by --objective={self.objective}")
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


def objective_defaults(preset_objective: str, objective: str) -> dict:
    """The fields `objective` sets when it replaces the preset's objective (OBJECTIVE_DEFAULTS);
    apply them before the explicit flags, which win."""
    return dict(OBJECTIVE_DEFAULTS.get(objective, {})) if objective != preset_objective else {}


def incompatible_fields(saved: TrainConfig, requested: TrainConfig) -> list:
    """The resume-invariant settings that differ, as 'name: saved -> requested' strings."""
    return [
        f"{name}: {getattr(saved, name)!r} -> {getattr(requested, name)!r}"
        for name in RESUME_INVARIANT_FIELDS
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
