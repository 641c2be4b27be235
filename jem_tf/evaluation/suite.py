"""The evaluation suite: runs the registered evaluations (`jem_tf.evaluation.registry`) on one
trained run, sharing one `EvalContext`, and writes their outputs.

    results = evaluate_workdir("runs/quick", ["all"], EvalOptions(num_examples=500))

writes OUTPUT/results.json, one PNG per figure, OUTPUT/report.md and TensorBoard summaries under
OUTPUT/tensorboard. `run_suite` is the same on an in-memory model and arrays (what the tests use).
"""

import dataclasses
import os
import time

import numpy as np
from absl import logging

from jem_tf import cli
from jem_tf import precision as jem_precision
from jem_tf.configs.base import write_file_atomically
from jem_tf.evaluation import (
    accuracy,
    calibration,
    common,
    distal,
    logp_hist,
    ood,
    registry,
    report,
    robustness,
    sample_quality,
    samples,
)
from jem_tf.evaluation.context import EvalContext, EvaluatedRun
from jem_tf.evaluation.options import EvalOptions

# The modules of the built-in evaluations: importing them registers them (jem_tf.evaluation.registry).
BUILTIN_MODULES = (accuracy, calibration, ood, logp_hist, samples, sample_quality, robustness, distal)


def parse_evaluations(names) -> list:
    """['all'] or a list of names -> the registered evaluations to run, in the registry's order.

    Raises:
      ValueError: a name is not registered (the message lists the registered names).
    """
    registered = registry.names()
    names = [n.strip() for n in names if n.strip()]
    if not names or "all" in names:
        return list(registered)
    unknown = sorted(set(names) - set(registered))
    if unknown:
        raise ValueError(f"Unknown evaluation(s) {unknown}; choose from {', '.join(registered)} or 'all'.")
    return [name for name in registered if name in names]


def run_suite(run: EvaluatedRun, test_images, test_labels, evaluations, options: EvalOptions, output_dir: str,
              compare: EvaluatedRun | None = None, data_dir=None) -> dict:
    """Runs `evaluations` and writes results.json, the figures, report.md and TensorBoard summaries.

    An evaluation that cannot run here is recorded as "unavailable: why"; one that fails with an
    unexpected error is logged with its traceback, recorded under `errors/<name>`, and the others
    still run.
    """
    options.validate()
    evaluations = {name: registry.get(name)() for name in parse_evaluations(evaluations)}
    os.makedirs(output_dir, exist_ok=True)
    # Before minutes of evaluation: a full or read-only output fails now (EXIT_WRITE_FAILED), not at the end.
    probe = os.path.join(output_dir, f".write-probe-{os.getpid()}")
    write_file_atomically(probe, "probe")
    os.remove(probe)
    context = EvalContext(run, test_images, test_labels, options, output_dir, compare=compare, data_dir=data_dir)
    context.results.update({
        "meta/run": run.name, "meta/dataset": run.dataset, "meta/workdir": run.workdir or "",
        "meta/checkpoint": run.checkpoint or "", "meta/global_step": int(run.global_step),
        "meta/precision": jem_precision.precision_of(run.model),
        "meta/num_examples": len(context.images), "meta/evaluations": list(evaluations),
        "meta/options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()},
        # The settings that make these numbers comparable (or not) with the paper's.
        "meta/eval_input_noise": context.input_noise,
        "meta/eval_input_noise_source": ("--eval_input_noise" if options.eval_input_noise is not None
                                         else "the run's data_noise"),
        "meta/validation_split": run.validation_split,
        "meta/training_labels": run.training_labels,
    })
    if compare is not None:
        context.results.update({"meta/compare_run": compare.name, "meta/compare_workdir": compare.workdir or ""})
    for name, evaluation in evaluations.items():
        logging.info("=== Evaluation '%s' ===", name)
        start = time.time()
        try:
            evaluation.run(context)
        except common.Unavailable as reason:
            logging.warning("Evaluation %s unavailable: %s", name, reason)
            context.results[name] = common.unavailable(reason)
        except OSError as error:
            if error.errno in cli.WRITE_FAILED_ERRNOS:
                raise  # the output cannot be written: no later evaluation could save its results either
            logging.exception("Evaluation %s failed.", name)
            context.results[f"errors/{name}"] = f"{type(error).__name__}: {error}"
        except Exception as error:  # noqa: BLE001 - one broken evaluation must not lose the others
            logging.exception("Evaluation %s failed.", name)
            context.results[f"errors/{name}"] = f"{type(error).__name__}: {error}"
        context.results[f"timing/{name}_seconds"] = round(time.time() - start, 2)
    report.write_outputs(output_dir, context.results, context.figures, run, compare, evaluations)
    return context.results


def load_test_split(dataset: str, data_dir, num_examples: int, batch_size: int, validation_fraction: float = 0.1,
                    validation_size: int | None = None, **folder_options):
    """The first `num_examples` test images (float32 [-1, 1], clean) and labels of a dataset;
    `folder_options` (skip_bad_files, drop_empty_classes) go to `jem_tf.data.load` as the run was
    trained with them."""
    from jem_tf import data as data_lib

    image_data = data_lib.load(dataset, data_dir=data_dir, validation_fraction=validation_fraction,
                               validation_size=validation_size, **folder_options)
    images, labels = [], []
    for batch_images, batch_labels in data_lib.make_batches(image_data.test.take(num_examples), batch_size,
                                                            training=False):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    if not images:
        raise common.Unavailable(f"the {dataset!r} test split is empty")
    return np.concatenate(images), np.concatenate(labels), image_data


def restore_run(workdir: str, checkpoint=None, precision=None):
    """Restores a training workdir's network and replay buffer (jem_tf.workdir.restore.restore_run, read-only):
    (EvaluatedRun, TrainConfig). `precision` (jem_tf.precision.PRECISIONS) overrides the precision
    the run was trained in."""
    from jem_tf.workdir import restore

    model, config, run_info = restore.restore_run(workdir, checkpoint, precision=precision)
    return EvaluatedRun(
        model=model,
        name=f"{config.objective} ({os.path.basename(os.path.normpath(workdir))})",
        image_shape=tuple(int(d) for d in run_info["image_shape"]),
        num_classes=int(run_info["num_classes"]),
        class_names=tuple(run_info.get("class_names", ())),
        dataset=run_info.get("dataset", config.dataset),
        sgld_step_size=float(config.sgld_step_size),
        sgld_noise=float(config.sgld_noise),
        seed=int(config.seed),
        global_step=int(run_info.get("global_step", 0)),
        workdir=workdir,
        checkpoint=run_info.get("checkpoint"),
        data_noise=float(config.data_noise),
        validation_split=validation_split_description(config),
        training_labels=training_labels_description(run_info),
    ), config


def training_labels_description(run_info: dict) -> str:
    """Which training labels a run learned from, in words (recorded with the results): all, or its
    semi-supervised labelled subset as run_info.json records it."""
    subset = run_info.get("labelled_subset")
    if not subset:
        return "every training image's label"
    return (f"{subset['labels_per_class']} per class, {subset['num_labelled']} images (semi-supervised, "
            f"--labels_per_class; chosen by seed {subset['seed']}, indices sha256 {subset['indices_sha256'][:16]})")


def validation_split_description(config) -> str:
    """How a run's validation images were chosen, in words (recorded with the results)."""
    if config.validation_size is not None:
        return f"random {config.validation_size} training images (seed 1234, as the reference code)"
    return f"a fixed {config.validation_fraction:g} of the training split (deterministic hold-out)"


def evaluate_workdir(workdir: str, evaluations, options: EvalOptions, *, output_dir: str | None = None,
                     compare_workdir: str | None = None, checkpoint=None, data_dir=None,
                     download: bool = False, precision: str | None = None) -> dict:
    """Evaluates a training workdir (and optionally a comparison run on the same dataset).

    With `download`, the run's dataset and (when an evaluation that reads them, `ood` or
    `logp_hist`, is asked for) the tfds OOD sets that are not prepared in the data directory are
    downloaded and prepared first, before anything is written.

    Raises:
      FileNotFoundError: not a workdir, or no checkpoint.
      ValueError: bad options, or a comparison run on other data.
      jem_tf.data.DatasetUnavailableError: the in-distribution test data is not on this machine,
        or (DatasetDownloadError) `download` failed.
    """
    options.validate()
    evaluations = parse_evaluations(evaluations)
    run, config = restore_run(workdir, checkpoint, precision)
    compare = None
    if compare_workdir:
        compare, _ = restore_run(compare_workdir, precision=precision)
        if (compare.dataset, compare.image_shape, compare.num_classes) != (run.dataset, run.image_shape,
                                                                          run.num_classes):
            raise ValueError(
                f"--compare_workdir={compare_workdir!r} was trained on {compare.dataset} {compare.image_shape} with "
                f"{compare.num_classes} classes; {workdir!r} on {run.dataset} {run.image_shape} with "
                f"{run.num_classes}. Compare runs on the same data.")
    if download:
        from jem_tf import data as data_lib

        ood_sets = options.ood_sets if any(registry.get(name).uses_ood_sets for name in evaluations) else ()
        for name in dict.fromkeys([run.dataset, *ood_sets]):
            data_lib.prepare(name, data_dir or config.data_dir)
    images, labels, _ = load_test_split(run.dataset, data_dir or config.data_dir, options.num_examples,
                                        options.batch_size, config.validation_fraction, config.validation_size,
                                        skip_bad_files=config.skip_bad_files,
                                        drop_empty_classes=config.drop_empty_classes)
    output_dir = output_dir or os.path.join(workdir, "eval")
    logging.info("Evaluating %s (step %d) on %d %s test images; outputs in %s.", run.name, run.global_step,
                 len(images), run.dataset, output_dir)
    return run_suite(run, images, labels, evaluations, options, output_dir, compare=compare,
                     data_dir=data_dir or config.data_dir)
