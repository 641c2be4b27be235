"""Command line: train JEM (or the classifier baseline).

    python -m jem_tf.train --preset=quick                # tiny WRN on bundled digits, minutes on a CPU
    python -m jem_tf.train --dataset=svhn --workdir=runs/svhn   # the paper's setup (Table 4)

Re-running the same command on the same workdir resumes from the newest checkpoint that verifies.

Everything that can refuse the command is checked before anything is written (flags, data files,
workdir, replay-buffer memory), so a refused command leaves the workdir as it was. Exit codes
(`jem_tf/cli.py`):
  0  done.
  1  unexpected failure (a bug or an unforeseen environment problem), with a traceback; also
     absl's `--help` / `--helpshort` / `--helpfull`, which print the flags and exit 1.
  2  the command cannot run as given, one message saying what to change and nothing written: an
     unknown flag or a value absl cannot parse, a bad flag value (range, inf/nan, --lr_decay_epochs),
     data unavailable offline or unusable (undecodable files, < 2 classes, empty class, symlinks
     out of the folder), a --workdir that is a file or a run with other settings, --max_steps /
     --epochs before the workdir's latest step, a replay buffer that does not fit in memory; also
     a workdir in use by another run (the message names its PID and host).
  3  training diverged (non-finite loss or runaway generative loss) after --max_recoveries
     automatic recoveries.
  4  the workdir could not be written (disk full, quota, read-only): free space and re-run to resume.
  130 / 143  stopped by SIGINT (Ctrl-C) / SIGTERM after saving a checkpoint: re-run to resume.
"""

import dataclasses
import os
import sys

from absl import flags, logging

from jem_tf import cli

# Flags that map one-to-one onto TrainConfig fields, with their help text. Every default is None:
# unset flags keep the preset's value, and the default preset is the paper's setup.
FLAG_HELP = {
    "dataset": "digits | svhn | cifar10 | cifar100 | folder:PATH (paper preset: cifar10).",
    "data_dir": "tensorflow-datasets data directory holding the prepared dataset (downloaded only with --download).",
    "workdir": "Run directory: config, checkpoints, TensorBoard logs, samples, metrics.json, export.",
    "objective": "jem (classifier + log p(x) via SGLD) | classifier (cross-entropy baseline).",
    "depth": "WideResNet depth 6n+4 (paper: 28).",
    "width": "WideResNet widening factor (paper: 10).",
    "norm": "none (paper) | batch | group.",
    "activation": "leaky_relu (slope 0.2, the reference code) | swish.",
    "dropout_rate": "Dropout inside each residual block (paper: 0).",
    "batch_size": "Global batch size, split over replicas (paper: 64).",
    "epochs": "Training epochs (paper: 150).",
    "learning_rate": "Adam learning rate (paper: 1e-4), decayed x lr_decay_rate at lr_decay_epochs.",
    "lr_decay_rate": "Staircase decay factor (paper: 0.3).",
    "warmup_steps": "Linear learning-rate warm-up steps (reference command: 1000).",
    "sgld_steps": "SGLD steps per training iteration (paper: 20).",
    "sgld_step_size": "SGLD step size alpha on d log p(x)/dx (paper: 1).",
    "sgld_noise": "SGLD noise standard deviation sigma (paper: 0.01).",
    "buffer_size": "Replay buffer size: persistent chains (paper: 10000).",
    "reinit_freq": "Probability of restarting a chain from U(-1, 1) (paper: 0.05).",
    "data_noise": "Std of Gaussian noise added to training images in [-1, 1] (paper: 0.03).",
    "augmentation": "none | crop | crop_flip (default: the dataset's own; svhn: crop, cifar: crop_flip).",
    "validation_fraction": "Fraction of the training split held out for validation (a fixed, deterministic "
                           "hold-out). Not with --validation_size.",
    "validation_size": "Hold out a seeded random set of this many training images for validation instead of "
                       "--validation_fraction (the reference code: 5000, numpy seed 1234).",
    "skip_bad_files": "folder:PATH datasets: leave out image files that do not decode (or are smaller than 8x8), "
                      "with a warning and their count, instead of refusing the dataset (default: refuse).",
    "drop_empty_classes": "folder:PATH datasets: leave out class folders without training images (and their test "
                          "images), with a warning, instead of refusing the dataset (default: refuse).",
    "p_x_weight": "Weight of the log p(x) term (paper: 1).",
    "p_xy_weight": "Weight of the optional log p(x, y) term with class-conditional chains (paper: 0).",
    "strategy": "auto (MirroredStrategy when >1 GPU) | default | mirrored | multi_worker "
                "(MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable; README).",
    "seed": "Seed of data order, augmentation, buffer initialisation and SGLD noise: 0 .. 2**31-1.",
    "max_steps": "Stop after this many global steps (cap for smoke runs); below the workdir's latest checkpoint "
                 "the run is refused (training cannot go back).",
    "jit_compile": "XLA-compile the SGLD sampler (for GPUs; measured 7-8x slower on CPU, see benchmarks).",
    "precision": "float32 (default) | mixed_bfloat16 (CPUs with AVX512-BF16/AMX, Ampere+ GPUs) | mixed_float16 "
                 "(GPUs; dynamic loss scaling). 16-bit convolutions, float32 weights, logits, energies, SGLD "
                 "images and replay buffer. Fixed for the life of a run.",
    "checkpoint_every_steps": "Save a checkpoint every N steps (and at the end).",
    "checkpoint_every_secs": "Also save a checkpoint when this many seconds passed since the last one.",
    "keep_checkpoints": "Keep the last K checkpoints.",
    "summary_every_steps": "TensorBoard scalars every N steps.",
    "sample_every_steps": "Grid of current SGLD chains (TensorBoard + WORKDIR/samples) every N steps.",
    "max_abs_generative_loss": "Divergence guard: a step whose |generative loss| exceeds this diverged "
                               "(reference: 1e8).",
    "max_recoveries": "Automatic divergence recoveries (restore the last good checkpoint, apply the recovery "
                      "policy, continue) before giving up with exit code 3; 0 stops at the first divergence.",
    "recovery_lr_factor": "Recovery policy: multiply the learning rate by this at each recovery.",
    "recovery_extra_sgld_steps": "Recovery policy: add this many SGLD steps per iteration at each recovery.",
    "recovery_chain_limit": "Recovery policy: re-initialise replay-buffer chains with a non-finite pixel or one "
                            "beyond +-this from U(-1, 1).",
    "export": "Export a SavedModel to WORKDIR/export at the end.",
}


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags in `flag_values` (absl's global FLAGS when run as a program)."""
    from jem_tf.configs import PRESETS, TrainConfig  # noqa: PLC0415

    flags.DEFINE_enum("preset", "paper", sorted(PRESETS), "Experiment preset; other flags override its fields.",
                      flag_values=flag_values)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, help_text in FLAG_HELP.items():
        field_type = fields[name].type
        if field_type in (int, "int") or name in ("max_steps", "validation_size"):
            flags.DEFINE_integer(name, None, help_text, flag_values=flag_values)
        elif field_type in (float, "float"):
            flags.DEFINE_float(name, None, help_text, flag_values=flag_values)
        elif field_type in (bool, "bool"):
            flags.DEFINE_bool(name, None, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
    flags.DEFINE_list("lr_decay_epochs", None, "Epochs at which the learning rate decays, strictly increasing "
                      "positive whole numbers (paper: 50,100).", flag_values=flag_values)
    flags.DEFINE_bool("download", False, "If the tfds dataset (svhn, cifar10, cifar100) is not prepared in --data_dir, "
                      "download and prepare it there first (needs internet access; off by default).",
                      flag_values=flag_values)


def config_from_flags(flag_values):
    """The preset's config with every explicitly set flag applied, validated (ValueError naming
    the flag otherwise)."""
    from jem_tf.configs import get_preset, objective_defaults  # noqa: PLC0415

    config = get_preset(flag_values.preset)
    overrides = {name: flag_values[name].value for name in FLAG_HELP if flag_values[name].value is not None}
    if flag_values.lr_decay_epochs is not None:
        overrides["lr_decay_epochs"] = cli.parse_number_list("lr_decay_epochs", flag_values.lr_decay_epochs)
    if "validation_size" in overrides:
        if "validation_fraction" in overrides:
            raise ValueError(
                f"--validation_size={overrides['validation_size']} and "
                f"--validation_fraction={overrides['validation_fraction']} both choose the validation split; "
                "pass only one (--validation_size replaces the fraction).")
        # The size replaces the preset's fraction.
        overrides["validation_fraction"] = 0.0
    # An objective other than the preset's brings its own defaults (e.g. JEM++'s few proximal steps).
    overrides = {**objective_defaults(config.objective, overrides.get("objective", config.objective)), **overrides}
    if "dataset" in overrides and "workdir" not in overrides and flag_values.preset == "paper":
        overrides["workdir"] = f"runs/{overrides['dataset'].replace(':', '_').replace('/', '_')}"
    return dataclasses.replace(config, **overrides).validate()


def main(argv):
    del argv  # cli.run refuses positional arguments
    try:
        # Before TensorFlow's import: a bad flag value is refused in a fraction of a second.
        config = config_from_flags(flags.FLAGS)
    except ValueError as error:
        logging.error("%s", error)
        sys.exit(cli.EXIT_BAD_INPUT)
    from export import savedmodel  # noqa: PLC0415 (imports TensorFlow)
    from jem_tf import data as data_lib  # noqa: PLC0415
    from jem_tf.data import DatasetUnavailableError  # noqa: PLC0415
    from trainers import loop  # noqa: PLC0415

    def export_final_checkpoint(workdir, version):
        return savedmodel.export_run(workdir, output=os.path.join(workdir, "export"), version=version, overwrite=True)

    try:
        if flags.FLAGS.download:  # before training writes anything into the workdir
            data_lib.prepare(config.dataset, config.data_dir)
        metrics = loop.train(config, exporter=export_final_checkpoint)
    except (ValueError, DatasetUnavailableError, FileNotFoundError) as error:
        logging.error("%s", error)
        sys.exit(cli.EXIT_BAD_INPUT)
    except loop.TrainingDivergedError as error:
        logging.error("%s", error)
        sys.exit(cli.EXIT_DIVERGED)
    except loop.RunStopped as stop:  # preempted, workdir locked or not writable
        logging.error("%s", stop)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training caught signals: nothing was trained yet
        logging.error("Interrupted before training started; nothing was saved.")
        sys.exit(130)
    logging.info("test_accuracy=%.4f global_step=%d workdir=%s", metrics["test_accuracy"],
                 metrics["global_step"], config.workdir)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    define_flags()
    cli.run(main)
