"""Command line: the paper's section 5 on a trained run, with numbers, tables and figures.

    python -m jem_tf.evaluate --workdir=runs/quick --eval=all
    python -m jem_tf.evaluate --workdir=runs/cifar10 --compare_workdir=runs/cifar10_baseline \\
        --eval=accuracy,calibration,ood --num_examples=10000 --data_dir=/data/tensorflow_datasets

Writes OUTPUT/results.json, OUTPUT/report.md, one PNG per figure and TensorBoard summaries in
OUTPUT/tensorboard (OUTPUT defaults to WORKDIR/eval). Exit codes: 0 done; 1 an evaluation failed
or every requested one was unavailable (also absl's --help); 2 bad or unknown flags, workdir or
unavailable test data (jem_tf/cli.py).
"""

from absl import flags, logging

from jem_tf import cli

FLAGS = flags.FLAGS


def _floats(name):
    return cli.parse_number_list(name, FLAGS[name].value, float)


def _ints(name):
    return cli.parse_number_list(name, FLAGS[name].value, int)


def define_flags():
    """Defines the flags; called only when run as a program, so importing defines nothing."""
    from jem_tf import precision
    from jem_tf.evaluation import registry
    from jem_tf.evaluation.options import EvalOptions

    defaults = EvalOptions()
    flags.DEFINE_string("workdir", None, "Training workdir to evaluate (config.json, run_info.json, checkpoints/).")
    flags.DEFINE_string("checkpoint", None, "Checkpoint step or path prefix (default: the latest).")
    flags.DEFINE_list("eval", ["all"], f"Evaluations: 'all' or any of {', '.join(registry.names())}.")
    flags.DEFINE_string("output", None, "Output directory (default: WORKDIR/eval).")
    flags.DEFINE_string("compare_workdir", None,
                        "A second run on the same data (e.g. --objective=classifier) shown beside this one in "
                        "accuracy, calibration, OOD, robustness (0 refinement steps) and distal adversarials.")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory (default: the run's data_dir).")
    flags.DEFINE_bool("download", False, "Before evaluating, download and prepare into the data directory the run's "
                      "tfds dataset and the tfds OOD sets (svhn, cifar10, cifar100, celeb_a) that are not prepared "
                      "(needs internet access; off by default).")
    flags.DEFINE_enum("precision", None, list(precision.PRECISIONS),
                      "Precision the networks compute in (default: each run's training --precision); logits, "
                      "energies and SGLD images are float32 in every precision.")
    flags.DEFINE_integer("num_examples", defaults.num_examples, "Cap on test images and on each OOD set.")
    flags.DEFINE_float("eval_input_noise", defaults.eval_input_noise,
                       "Std of N(0, sigma^2) noise added to test and OOD images (interp too), seeded by --seed, as "
                       "the reference code evaluates (the paper's numbers: 0.03). Default: the run's --data_noise; "
                       "0: clean images, as a served model sees them.")
    flags.DEFINE_integer("batch_size", defaults.batch_size, "Evaluation batch size.")
    flags.DEFINE_integer("seed", defaults.seed, "Seed of every random draw of the evaluation.")
    flags.DEFINE_boolean("progress", defaults.progress, "Show progress bars.")
    flags.DEFINE_list("refine_steps", list(map(str, defaults.refine_steps)),
                      "Accuracy after K SGLD refinement steps, for each K (JEM-K).")
    flags.DEFINE_integer("calibration_bins", defaults.calibration_bins, "Confidence bins of the ECE and diagram.")
    flags.DEFINE_list("ood_sets", list(defaults.ood_sets),
                      "OOD sets: svhn, cifar10, cifar100, celeb_a (tfds: prepared or --download), digits, folder:PATH, "
                      "uniform, constant, interp.")
    flags.DEFINE_integer("sample_steps", defaults.sample_steps, "SGLD steps of fresh chains from U(-1, 1).")
    flags.DEFINE_integer("num_samples", defaults.num_samples, "Fresh unconditional chains (and buffer images shown).")
    flags.DEFINE_integer("samples_per_class", defaults.samples_per_class, "Columns of class-conditional grids.")
    flags.DEFINE_integer("max_grid_classes", defaults.max_grid_classes,
                         "Classes (rows) in class-conditional grids and distal adversarials.")
    flags.DEFINE_string("inception_weights", None,
                        "Local InceptionV3 weights (.h5 with top) for IS/FID; nothing is downloaded. 'random' runs "
                        "the plumbing with random weights (meaningless numbers).")
    flags.DEFINE_integer("quality_splits", defaults.quality_splits, "Inception Score splits.")
    flags.DEFINE_integer("attack_examples", defaults.attack_examples, "Test images attacked with PGD.")
    flags.DEFINE_list("attack_refine_steps", list(map(str, defaults.attack_refine_steps)),
                      "Refinement steps of the attacked defenses (paper: 0, 1, 10).")
    flags.DEFINE_float("attack_refine_noise", defaults.attack_refine_noise,
                       "SGLD noise during attacked refinement (0: deterministic defense, exact gradients).")
    flags.DEFINE_list("linf_epsilons", list(map(str, defaults.linf_epsilons)),
                      "L-inf PGD radii in the [-1, 1] pixel scale (2/255 = one grey level).")
    flags.DEFINE_list("l2_epsilons", list(map(str, defaults.l2_epsilons)), "L2 PGD radii in the [-1, 1] pixel scale.")
    flags.DEFINE_integer("pgd_steps", defaults.pgd_steps, "PGD iterations (paper: 100).")
    flags.DEFINE_integer("pgd_restarts", defaults.pgd_restarts, "PGD random starts (paper: 20).")
    flags.DEFINE_integer("boundary_examples", defaults.boundary_examples,
                         "Images attacked with the gradient-free boundary attack (0: skip).")
    flags.DEFINE_integer("boundary_steps", defaults.boundary_steps, "Boundary attack iterations.")
    flags.DEFINE_integer("distal_per_class", defaults.distal_per_class, "Distal adversarials per class.")
    flags.DEFINE_integer("distal_steps", defaults.distal_steps, "Signed-gradient steps of distal adversarials.")
    flags.DEFINE_float("distal_step_size", defaults.distal_step_size, "Step size of distal adversarials.")
    flags.mark_flag_as_required("workdir")


def options_from_flags():
    from jem_tf.evaluation.options import EvalOptions

    return EvalOptions(
        num_examples=FLAGS.num_examples, eval_input_noise=FLAGS.eval_input_noise, batch_size=FLAGS.batch_size,
        seed=FLAGS.seed, progress=FLAGS.progress,
        refine_steps=_ints("refine_steps"), calibration_bins=FLAGS.calibration_bins,
        ood_sets=tuple(FLAGS.ood_sets), sample_steps=FLAGS.sample_steps, num_samples=FLAGS.num_samples,
        samples_per_class=FLAGS.samples_per_class, max_grid_classes=FLAGS.max_grid_classes,
        inception_weights=FLAGS.inception_weights, quality_splits=FLAGS.quality_splits,
        attack_examples=FLAGS.attack_examples, attack_refine_steps=_ints("attack_refine_steps"),
        attack_refine_noise=FLAGS.attack_refine_noise, linf_epsilons=_floats("linf_epsilons"),
        l2_epsilons=_floats("l2_epsilons"), pgd_steps=FLAGS.pgd_steps, pgd_restarts=FLAGS.pgd_restarts,
        boundary_examples=FLAGS.boundary_examples, boundary_steps=FLAGS.boundary_steps,
        distal_per_class=FLAGS.distal_per_class, distal_steps=FLAGS.distal_steps,
        distal_step_size=FLAGS.distal_step_size,
    )


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
        options = options_from_flags().validate()
        evaluations = suite.parse_evaluations(FLAGS.eval)
        results = suite.evaluate_workdir(
            FLAGS.workdir, evaluations, options, output_dir=FLAGS.output, compare_workdir=FLAGS.compare_workdir,
            checkpoint=FLAGS.checkpoint, data_dir=FLAGS.data_dir, download=FLAGS.download,
            precision=FLAGS.precision)
    except (ValueError, FileNotFoundError, data_lib.DatasetUnavailableError, common.Unavailable) as error:
        logging.error("%s", error)
        return 2
    code = exit_code(results, evaluations)
    if code:
        logging.error("Evaluation incomplete: see the errors/ and unavailable entries in results.json.")
    return code


if __name__ == "__main__":
    define_flags()
    cli.run(main)
