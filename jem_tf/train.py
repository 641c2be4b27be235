"""Command line: train JEM (or the classifier baseline).

    python -m jem_tf.train --preset=quick                # tiny WRN on bundled digits, minutes on a CPU
    python -m jem_tf.train --dataset=svhn --workdir=runs/svhn   # the paper's setup (Table 4)

Re-running the same command on the same workdir resumes from the newest checkpoint that verifies.
Every TrainConfig field is a flag of the same name, made from the field's metadata (jem_tf/cli.py);
`--helpfull` lists them all, an objective's own flags under its name (jem_tf/configs/objectives.py).
A flag the chosen --objective does not read is refused (exit 2), naming the objectives that read it.

Everything that can refuse the command is checked before anything is written (flags, data files,
workdir, replay-buffer memory), so a refused command leaves the workdir as it was. Exit codes
(`jem_tf/cli.py`):
  0  done.
  1  unexpected failure (a bug or an unforeseen environment problem), with a traceback; also
     absl's `--help` / `--helpshort` / `--helpfull`, which print the flags and exit 1.
  2  the command cannot run as given, one message saying what to change and nothing written: an
     unknown flag or a value absl cannot parse, a bad flag value (range, inf/nan, --lr_decay_epochs),
     a flag the --objective does not read (e.g. --sgld_steps with --objective=classifier),
     data unavailable offline or unusable (undecodable files, < 2 classes, empty class, symlinks
     out of the folder), a --workdir that is a file or a run with other settings, --max_steps /
     --epochs before the workdir's latest step, a replay buffer that does not fit in memory; also
     a workdir in use by another run (the message names its PID and host), an empty --workdir, a
     .lock that is a symbolic or hard link.
  3  training diverged (non-finite loss or runaway generative loss) after --max_recoveries
     automatic recoveries.
  4  the workdir could not be written (disk full, quota, read-only): free space and re-run to resume.
  5  the run had made progress but none of its checkpoints restores (each moved to
     checkpoints/broken/): put one back and re-run, or re-run with --restart_from_scratch.
  130 / 143  stopped by SIGINT (Ctrl-C) / SIGTERM after saving a checkpoint: re-run to resume.
"""

import dataclasses
import os
import sys

from absl import flags, logging

from jem_tf import cli


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags in `flag_values` (absl's global FLAGS when run as a program)."""
    from jem_tf.configs import PRESETS, TrainConfig  # noqa: PLC0415
    from jem_tf.configs import objectives as objective_configs  # noqa: PLC0415

    flags.DEFINE_enum("preset", "paper", sorted(PRESETS), "Experiment preset; other flags override its fields.",
                      flag_values=flag_values)
    # One flag per TrainConfig field, help text from the field's metadata; every default is None:
    # an unset flag keeps the preset's value. An objective's own fields are listed under its name.
    cli.define_dataclass_flags(TrainConfig, flag_values,
                               group=lambda name: objective_configs.flag_group("jem_tf.train", name))
    flags.DEFINE_bool("download", False, "If the tfds dataset (svhn, cifar10, cifar100) is not prepared in --data_dir, "
                      "download and prepare it there first (needs internet access; off by default).",
                      flag_values=flag_values)


def config_from_flags(flag_values):
    """The preset's config with every explicitly set flag applied, validated (ValueError naming
    the flag otherwise). A flag given on the command line that the chosen objective does not read
    is refused, naming the objectives that read it (never ignored silently)."""
    from jem_tf.configs import TrainConfig, get_preset, objective_defaults  # noqa: PLC0415
    from jem_tf.configs import objectives as objective_configs  # noqa: PLC0415

    config = get_preset(flag_values.preset)
    overrides = cli.values_from_flags(TrainConfig, flag_values)
    objective = overrides.get("objective", config.objective)
    unused = objective_configs.unused_flags(objective, [name for name in overrides if flag_values[name].present])
    if unused:
        raise ValueError("; ".join(unused) + ". Drop " + ("it" if len(unused) == 1 else "them")
                         + ", or choose an objective that reads " + ("it" if len(unused) == 1 else "them") + ".")
    if "validation_size" in overrides:
        if "validation_fraction" in overrides:
            raise ValueError(
                f"--validation_size={overrides['validation_size']} and "
                f"--validation_fraction={overrides['validation_fraction']} both choose the validation split; "
                "pass only one (--validation_size replaces the fraction).")
        # The size replaces the preset's fraction.
        overrides["validation_fraction"] = 0.0
    # An objective other than the preset's brings its own defaults (e.g. JEM++'s few proximal steps).
    overrides = {**objective_defaults(config.objective, objective), **overrides}
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
    from trainers import loop, recovery  # noqa: PLC0415

    def export_final_checkpoint(workdir, version):
        return savedmodel.export_run(workdir, output=os.path.join(workdir, "export"), version=version, overwrite=True)

    try:
        if flags.FLAGS.download:  # before training writes anything into the workdir
            data_lib.prepare(config.dataset, config.data_dir)
        metrics = loop.train(config, exporter=export_final_checkpoint)
    except (ValueError, DatasetUnavailableError, FileNotFoundError) as error:
        logging.error("%s", error)
        sys.exit(cli.EXIT_BAD_INPUT)
    except recovery.TrainingDivergedError as error:
        logging.error("%s", error)
        sys.exit(cli.EXIT_DIVERGED)
    except cli.RunStopped as stop:  # preempted, workdir locked or not writable
        logging.error("%s", stop)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training caught signals: nothing was trained yet
        logging.error("Interrupted before training started; nothing was saved.")
        sys.exit(130)
    logging.info("test_accuracy=%.4f global_step=%d workdir=%s", metrics["test_accuracy"],
                 metrics["global_step"], config.workdir)


def command():
    """The `jem-train` console script (pyproject.toml): `python -m jem_tf.train` under another name."""
    cli.run_as_main("jem_tf.train")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    define_flags()
    cli.run(main)
