"""Command line: the paper's section 5 on a trained run, with numbers, tables and figures.

    python -m jem_tf.evaluate --workdir=runs/quick --eval=all
    python -m jem_tf.evaluate --workdir=runs/cifar10 --compare_workdir=runs/cifar10_baseline \\
        --eval=accuracy,calibration,ood --num_examples=10000 --data_dir=/data/tensorflow_datasets

Writes OUTPUT/results.json, OUTPUT/report.md, one PNG per figure and TensorBoard summaries in
OUTPUT/tensorboard (OUTPUT defaults to WORKDIR/eval). Exit codes: 0 done; 1 an evaluation failed
or every requested one was unavailable (also absl's --help); 2 bad or unknown flags, workdir or
unavailable test data; 4 the outputs could not be written (full disk, read-only workdir without
--output), nothing half-written left (jem_tf/cli.py).
"""

import os

from absl import flags, logging

from jem_tf import cli

FLAGS = flags.FLAGS


def eval_options_class():
    """The dataclass whose fields are this command's evaluation flags (imports TensorFlow)."""
    from jem_tf.evaluation import options

    return options.EvalOptions


def define_flags(flag_values=FLAGS):
    """Defines the flags; called only when run as a program, so importing defines nothing."""
    from jem_tf import precision
    from jem_tf.evaluation import registry

    flags.DEFINE_string("workdir", None, "Training workdir to evaluate (config.json, run_info.json, checkpoints/).",
                        flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Checkpoint step or path prefix (default: the latest).",
                        flag_values=flag_values)
    flags.DEFINE_list("eval", ["all"], f"Evaluations: 'all' or any of {', '.join(registry.names())}.",
                      flag_values=flag_values)
    flags.DEFINE_string("output", None, "Output directory (default: WORKDIR/eval).", flag_values=flag_values)
    flags.DEFINE_string("compare_workdir", None,
                        "A second run on the same data (e.g. --objective=classifier) shown beside this one in "
                        "accuracy, calibration, OOD, robustness (0 refinement steps) and distal adversarials.",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory (default: the run's data_dir).",
                        flag_values=flag_values)
    flags.DEFINE_bool("download", False, "Before evaluating, download and prepare into the data directory the run's "
                      "tfds dataset and the tfds OOD sets (svhn, cifar10, cifar100, celeb_a) that are not prepared "
                      "(needs internet access; off by default).", flag_values=flag_values)
    flags.DEFINE_enum("precision", None, list(precision.PRECISIONS),
                      "Precision the networks compute in (default: each run's training --precision); logits, "
                      "energies and SGLD images are float32 in every precision.", flag_values=flag_values)
    # One flag per EvalOptions field, help text from the field's metadata, default the field's.
    cli.define_dataclass_flags(eval_options_class(), flag_values, field_defaults=True)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def options_from_flags(flag_values=FLAGS):
    """EvalOptions from the flags (not yet validated); a bad list entry is a UsageError naming the flag."""
    options_class = eval_options_class()
    return options_class(**cli.values_from_flags(options_class, flag_values))


def exit_code(results: dict, evaluations) -> int:
    """1 when an evaluation failed, or when every requested evaluation was unavailable."""
    from jem_tf.evaluation import common

    if any(key.startswith("errors/") for key in results):
        return 1
    if all(common.is_unavailable(results.get(name)) for name in evaluations):
        return 1
    return 0


def main(argv):
    del argv  # cli.run refuses positional arguments
    from jem_tf import data as data_lib
    from jem_tf.evaluation import common, suite

    try:
        options = options_from_flags(FLAGS).validate()
        evaluations = suite.parse_evaluations(FLAGS.eval)
        results = suite.evaluate_workdir(
            FLAGS.workdir, evaluations, options, output_dir=FLAGS.output, compare_workdir=FLAGS.compare_workdir,
            checkpoint=FLAGS.checkpoint, data_dir=FLAGS.data_dir, download=FLAGS.download,
            precision=FLAGS.precision)
    except (ValueError, FileNotFoundError, data_lib.DatasetUnavailableError, common.Unavailable) as error:
        logging.error("%s", error)
        return 2
    except OSError as error:
        if not cli.write_failure(error):
            raise
        output = FLAGS.output or os.path.join(FLAGS.workdir, "eval")
        cli.exit_write_failed(error, f"the evaluation outputs to {output!r}",
                              "Free space, or pass --output=DIR on a writable disk (the workdir may be read-only), "
                              "and re-run.")
    code = exit_code(results, evaluations)
    if code:
        logging.error("Evaluation incomplete: see the errors/ and unavailable entries in results.json.")
    return code


def command():
    """The `jem-evaluate` console script (pyproject.toml): `python -m jem_tf.evaluate` under another name."""
    cli.run_as_main("jem_tf.evaluate")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
