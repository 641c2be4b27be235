"""Evaluation suite at tiny size: every evaluation's library function, then the command line (its main).

Models are WRN-10-1 on 8x8x1 images with a few dozen examples and 1-2 attack iterations.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_command

from jem_tf import energy
from jem_tf.evaluation import (
    EvalOptions,
    EvaluatedRun,
    accuracy,
    calibration,
    common,
    ood,
    registry,
    report,
    robustness,
    sample_quality,
    samples,
    suite,
)
from jem_tf.sampling import sgld
from trainers.classifier import Classifier
from trainers.jem import JEM

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def jem_model():
    keras.utils.set_random_seed(0)
    model = JEM(10, 1, 10, buffer_size=64)
    model.build((None,) + SHAPE)
    return model


@pytest.fixture(scope="module")
def smooth_model():
    """Swish activations: the loss through refinement is smooth, so finite differences are an oracle."""
    keras.utils.set_random_seed(0)
    model = JEM(10, 1, 10, buffer_size=64, activation="swish")
    model.build((None,) + SHAPE)
    return model


@pytest.fixture(scope="module")
def digits():
    images, labels, _ = suite.load_test_split("digits", None, 40, 20)
    return images, labels


# OOD sets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source,target", [((32, 32, 3), (8, 8, 1)), ((8, 8, 1), (16, 16, 3)),
                                           ((218, 178, 3), (32, 32, 3))])
def test_conform_images_matches_shape_and_range(source, target):
    images = np.random.default_rng(0).uniform(-1, 1, (3,) + source).astype(np.float32)
    converted = ood.conform_images(images, target).numpy()
    assert converted.shape == (3,) + target
    assert converted.min() >= -1.0 and converted.max() <= 1.0


def test_conform_images_keeps_grey_levels_and_crops_to_aspect():
    # A colour image of luma 0.3 stays 0.3 in grey; a tall image keeps its central band.
    colour = np.broadcast_to(np.array([0.3, 0.3, 0.3], np.float32), (1, 16, 16, 3))
    np.testing.assert_allclose(ood.conform_images(colour, (8, 8, 1)).numpy(), 0.3, atol=1e-3)
    tall = np.full((1, 30, 10, 1), -1.0, np.float32)
    tall[:, 10:20] = 1.0  # only the central 10x10 square is white
    np.testing.assert_allclose(ood.conform_images(tall, (5, 5, 1)).numpy(), 1.0, atol=1e-5)


def test_synthetic_ood_sets():
    reference = np.random.default_rng(1).uniform(-1, 1, (6,) + SHAPE).astype(np.float32)
    uniform = ood.synthetic_ood("uniform", reference, 10, seed=0)
    constant = ood.synthetic_ood("constant", reference, 10, seed=0)
    interp = ood.synthetic_ood("interp", reference, 10, seed=0)
    for images in (uniform, constant, interp):
        assert images.shape == (10,) + SHAPE and images.min() >= -1 and images.max() <= 1
    assert np.all(constant == constant[:, :1, :1, :])
    pair_means = {(i, j): (reference[i] + reference[j]) / 2 for i in range(6) for j in range(6) if i != j}
    for image in interp:
        assert any(np.allclose(image, mean) for mean in pair_means.values())
    np.testing.assert_array_equal(uniform, ood.synthetic_ood("uniform", reference, 10, seed=0))


def test_named_ood_sets_convert_or_report_unavailable(tmp_path, digits):
    images = ood.load_ood_images("digits", (12, 12, 3), 7, reference_images=digits[0])
    assert images.shape == (7, 12, 12, 3) and images.min() >= -1 and images.max() <= 1
    for name in ("svhn", "celeb_a"):
        with pytest.raises(common.Unavailable, match="not"):
            ood.load_ood_images(name, SHAPE, 5, reference_images=digits[0], data_dir=str(tmp_path))
    with pytest.raises(common.Unavailable, match="does not exist"):
        ood.load_ood_images(f"folder:{tmp_path}/missing", SHAPE, 5, reference_images=digits[0])


def test_ood_scores_come_from_the_energy_core(jem_model, digits):
    images = digits[0][:10]
    scores = ood.compute_scores(jem_model, images, batch_size=4, description="test", progress=False)
    logits = jem_model(images, training=False)
    log_px, score = energy.log_density_and_score(energy.marginal_log_density(lambda x: jem_model(x, training=False)),
                                                 tf.constant(images))
    np.testing.assert_allclose(scores["log_px"], energy.log_marginal(logits), rtol=1e-5)
    np.testing.assert_allclose(scores["max_prob"], np.max(energy.class_probabilities(logits), -1), rtol=1e-5)
    np.testing.assert_allclose(scores["grad_norm"], -energy.score_norm(score), rtol=1e-4)
    results = ood.ood_metrics(scores, {k: v + 1.0 for k, v in scores.items()}, "ood/shifted")
    assert results["ood/shifted/log_px/auroc"] < 0.5 and "ood/shifted/grad_norm/fpr_at_95_tpr" in results


# Accuracy, calibration, samples ------------------------------------------------------------------


def test_accuracy_plain_and_refined(jem_model, digits):
    images, labels = digits
    results, logits = accuracy.evaluate_accuracy(jem_model, images, labels, refine_steps=(0, 2), step_size=1.0,
                                                 noise_std=0.01, seed=3, batch_size=16, progress=False)
    direct = jem_model(images, training=False).numpy()
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-6)
    assert results["accuracy"] == pytest.approx(np.mean(direct.argmax(-1) == labels))
    assert set(results) >= {"num_examples", "cross_entropy", "refinement/steps_2/accuracy",
                            "refinement/steps_2/mean_log_px"}
    assert "refinement/steps_0/accuracy" not in results
    # Refinement is the sampler's, seeded per batch: batch 0 refined by hand gives the same logits.
    refined = sgld.refine(lambda x: jem_model(x, training=False), tf.constant(images[:16]), 2, 1.0, 0.01,
                          common.batch_seed(3, 0))
    logits_2, _ = accuracy.predict_logits(jem_model, images[:16], 16, refine_steps=2, seed=3, progress=False)
    np.testing.assert_allclose(logits_2, jem_model(refined, training=False), rtol=1e-4, atol=1e-5)


def test_calibration_results_and_reliability_figure(tmp_path, jem_model, digits):
    logits = jem_model(digits[0], training=False).numpy()
    results, bins = calibration.evaluate_calibration(logits, digits[1], num_bins=5)
    assert sum(results["calibration/bins"]["counts"]) == len(logits)
    # ECE by hand: equal-width confidence bins, |accuracy - confidence| weighted by the bin's share.
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    confidence, correct = probabilities.max(-1), probabilities.argmax(-1) == digits[1]
    which = np.minimum((confidence * 5).astype(int), 4)
    expected = sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
                   for b in range(5) if np.any(which == b))
    assert results["calibration/ece"] == pytest.approx(expected, abs=1e-5)
    assert results["calibration/accuracy"] == pytest.approx(correct.mean())
    path = calibration.reliability_figure(str(tmp_path / "r.png"), [("a", results, bins), ("b", results, bins)])
    assert os.path.getsize(path) > 0


def test_conditional_selection_follows_appendix_b():
    # Three classes; class 2 is never the argmax.
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.9, 0.05, 0.05], [0.15, 0.8, 0.05], [0.6, 0.3, 0.1],
                              [0.4, 0.5, 0.1]], np.float32))
    selections = samples.top_by_class(logits, num_classes=3, per_class=2)
    np.testing.assert_array_equal(selections[0], [1, 0])  # predicted 0, most confident first, capped
    np.testing.assert_array_equal(selections[1], [2, 4])
    assert selections[2].size == 0
    np.testing.assert_array_equal(samples.top_fraction(logits, 0.4), [1, 2])
    grid = samples.conditional_grid(np.zeros((5, 2, 2, 1), np.float32), selections, 2, (2, 2, 1))
    assert grid.shape == (6, 2, 2, 1) and np.all(grid[4:] == 1.0)  # the empty class row is blank


def test_fresh_chains_and_replay_buffer(jem_model):
    images = samples.fresh_chains(jem_model, 5, SHAPE, steps=2, step_size=1.0, noise_std=0.01, seed=0,
                                  labels=[0, 1, 2, 3, 4], batch_size=3, progress=False)
    assert images.shape == (5,) + SHAPE and np.all(np.isfinite(images))
    assert samples.buffer_images(jem_model, 10).shape == (10,) + SHAPE
    classifier = Classifier(10, 1, 10)
    classifier.build((None,) + SHAPE)
    with pytest.raises(common.Unavailable, match="no replay buffer"):
        samples.buffer_images(classifier, 10)


def test_inception_plumbing_with_random_weights():
    inception = sample_quality.InceptionModel(weights=None, image_size=sample_quality.MIN_INCEPTION_SIZE)
    rng = np.random.default_rng(0)
    reference, generated = (rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32) for n in (6, 4))
    features, probabilities = inception.features_and_probabilities(generated, 3, "test", progress=False)
    assert features.shape == (4, 2048) and probabilities.shape == (4, 1000)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-4)
    results = sample_quality.evaluate_sample_quality(inception, {"fresh": generated}, reference, batch_size=3,
                                                     num_splits=2, progress=False)
    assert "meaningless" in results["sample_quality/weights"]
    assert np.isfinite(results["sample_quality/fresh/fid"]) and results["sample_quality/fresh/inception_score"] >= 1
    # InceptionV3 traced once for these images, whatever the batch size (3, or the last batch of 1).
    assert [call.experimental_get_tracing_count() for call in inception._calls.values()] == [1]
    with pytest.raises(common.Unavailable, match="does not exist"):
        sample_quality.InceptionModel(weights="/nonexistent/inception.h5")


# Robustness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,step_size", [(0, 1.0), (1, 30.0), (10, 5.0)])
def test_art_gradients_flow_through_refinement(smooth_model, steps, step_size):
    """ART's loss gradient is the exact gradient of refine-then-classify: it matches central
    differences, and for K > 0 it differs from the gradient that ignores the refinement's Jacobian
    (what an attacker without access to the sampler's gradients would use)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4,) + SHAPE).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    direction = rng.normal(size=images.shape).astype(np.float32)
    defended = robustness.RefineThenClassify(smooth_model, SHAPE, steps, step_size, 0.0)
    classifier = robustness.art_classifier(defended, SHAPE, 10)
    gradient = classifier.loss_gradient(images, np.eye(10)[labels])

    def loss(x):
        return float(tf.reduce_mean(energy.cross_entropy(defended(x), labels)))

    h = 1e-2
    finite_difference = (loss(images + h * direction) - loss(images - h * direction)) / (2 * h)
    directional = float(np.sum(gradient * direction))
    refined = sgld.refine(lambda x: smooth_model(x, training=False), tf.constant(images), steps, step_size, 0.0,
                          tf.constant([0, 0], tf.int64))
    with tf.GradientTape() as tape:
        tape.watch(refined)
        refined_loss = tf.reduce_mean(energy.cross_entropy(smooth_model(refined, training=False), labels))
    without_jacobian = float(np.sum(tape.gradient(refined_loss, refined).numpy() * direction))
    assert directional == pytest.approx(finite_difference, abs=2e-5)
    if steps:
        assert abs(without_jacobian - finite_difference) > 5 * abs(directional - finite_difference)
    else:
        assert directional == pytest.approx(without_jacobian, abs=1e-6)


def test_pgd_curve_starts_at_clean_accuracy_and_never_rises(jem_model, digits):
    images, labels = digits[0][:8], digits[1][:8]
    # A model that knows the labels makes the curve non-trivial: it starts at 100 %.
    defended = robustness.RefineThenClassify(jem_model, SHAPE, 1, 1.0, 0.0)
    labels = robustness.predict_labels(defended, images, 8)
    classifier = robustness.art_classifier(defended, SHAPE, 10)
    # The largest epsilon must break some of an untrained network (whose logits are dominated by
    # the PyTorch-style head bias, so 0.5 is not always enough).
    flags = robustness.pgd_robustness(classifier, defended, images, labels, norm="linf", epsilons=[0.0, 0.02, 1.0],
                                      steps=2, restarts=1, batch_size=8, seed=0, progress=False)
    assert sorted(flags) == [0.0, 0.02, 1.0] and flags[0.0].all()
    assert np.all(flags[0.02] >= flags[1.0]) and flags[1.0].mean() < 1.0
    with pytest.raises(ValueError, match="norm"):
        robustness.pgd_robustness(classifier, defended, images, labels, norm="l1", epsilons=[0.1], steps=1,
                                  restarts=0, batch_size=8, seed=0)


def test_boundary_attack_distances(jem_model, digits):
    images = digits[0][:4]
    defended = robustness.RefineThenClassify(jem_model, SHAPE, 0, 1.0, 0.0)
    predicted = robustness.predict_labels(defended, images, 4)
    labels = predicted.copy()
    labels[0] = (labels[0] + 1) % 10  # already misclassified: distance 0, not attacked
    classifier = robustness.art_classifier(defended, SHAPE, 10)
    distances = robustness.boundary_distances(classifier, defended, images, labels, steps=2, pool_images=digits[0],
                                              pool_labels=robustness.predict_labels(defended, digits[0], 40),
                                              batch_size=8, seed=0, progress=False)
    assert distances["l2"][0] == 0 and distances["linf"][0] == 0
    assert np.all(distances["l2"][1:] > 0) and np.all(distances["linf"][1:] <= distances["l2"][1:])


def test_distal_adversarials_raise_target_confidence(jem_model):
    _, targets, before = robustness.distal_adversarials(jem_model, SHAPE, [0, 3], 2, steps=0, step_size=0.05, seed=0)
    images, targets, after = robustness.distal_adversarials(jem_model, SHAPE, [0, 3], 2, steps=10, step_size=0.05,
                                                            seed=0)
    np.testing.assert_array_equal(targets, [0, 0, 3, 3])
    assert images.min() >= -1 and images.max() <= 1 and np.all(after > before)


# Suite, report, command line ----------------------------------------------------------------------


def test_options_and_evaluation_names_are_validated():
    assert suite.parse_evaluations(["all"]) == list(registry.BUILTIN_ORDER)
    assert suite.parse_evaluations(["distal", "accuracy"]) == ["accuracy", "distal"]
    with pytest.raises(ValueError, match="Unknown evaluation"):
        suite.parse_evaluations(["accuracy", "fid"])
    with pytest.raises(ValueError, match="--num_examples"):
        EvalOptions(num_examples=0).validate()
    with pytest.raises(ValueError, match="--linf_epsilons"):
        EvalOptions(linf_epsilons=(0.1, -0.1)).validate()
    with pytest.raises(ValueError, match="--distal_step_size=inf is invalid: expected finite"):
        EvalOptions(distal_step_size=float("inf")).validate()
    with pytest.raises(ValueError, match=r"--l2_epsilons=\(0.5, nan\) is invalid: expected finite"):
        EvalOptions(l2_epsilons=(0.5, float("nan"))).validate()


def test_suite_records_unavailable_evaluations_and_writes_outputs(tmp_path, jem_model, digits):
    run = EvaluatedRun(jem_model, "jem (tiny)", SHAPE, 10, tuple("abcdefghij"), "digits")
    options = EvalOptions(num_examples=20, batch_size=10, ood_sets=("svhn", "uniform"), progress=False)
    results = suite.run_suite(run, *digits, ["calibration", "ood", "sample_quality"], options, str(tmp_path),
                              data_dir=str(tmp_path / "no_tfds"))
    assert results["sample_quality"].startswith("unavailable: no --inception_weights")
    assert results["ood/svhn"].startswith("unavailable: ") and "ood/uniform/log_px/auroc" in results
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["calibration/ece"] == pytest.approx(results["calibration/ece"])
    text = (tmp_path / "report.md").read_text()
    assert "max_y p(y\\|x)" in text and "unavailable: no --inception_weights" in text
    assert "![Reliability diagram](reliability_diagram.png)" in text
    for name in ("reliability_diagram.png", "ood_histograms_uniform.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert any((tmp_path / report.TENSORBOARD_DIR).iterdir())


def _run(module, *args, check=True):
    """The command line's main in this process (a new interpreter would only add TensorFlow's import)."""
    result = run_command(module, *args)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} {args} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


TINY_TRAINING = ("--preset=quick", "--max_steps=2", "--depth=10", "--width=1", "--batch_size=16",
                 "--buffer_size=64", "--sgld_steps=2", "--export=false")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    jem_dir, baseline_dir = str(root / "jem"), str(root / "baseline")
    _run("jem_tf.train", *TINY_TRAINING, f"--workdir={jem_dir}")
    # The classifier reads no SGLD or buffer flag (it refuses them).
    classifier_flags = [flag for flag in TINY_TRAINING if not flag.startswith(("--buffer_size=", "--sgld_steps="))]
    _run("jem_tf.train", *classifier_flags, "--objective=classifier", f"--workdir={baseline_dir}")
    return jem_dir, baseline_dir


@pytest.mark.slow
def test_restored_run_reproduces_the_trainers_test_accuracy(workdirs):
    """The evaluation sees the trained weights: its plain accuracy on the whole test split is the
    trainer's own final test accuracy (metrics.json)."""
    run, config = suite.restore_run(workdirs[0])
    images, labels, data = suite.load_test_split(run.dataset, None, 10_000, 100)
    assert len(images) == data.num_test
    results, logits = accuracy.evaluate_accuracy(run.model, images, labels, refine_steps=(), batch_size=100,
                                                 progress=False)
    with open(os.path.join(workdirs[0], "metrics.json")) as f:
        trained = json.load(f)
    assert results["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)
    # The trainer averages per-batch mean cross-entropies; the same average pins the weights down
    # far more tightly than an accuracy can.
    per_example = energy.cross_entropy(tf.constant(logits), labels).numpy()
    batch_means = [chunk.mean() for chunk in np.array_split(per_example, range(config.batch_size, len(per_example),
                                                                               config.batch_size))]
    assert np.mean(batch_means) == pytest.approx(trained["test_xent"], rel=1e-4)


@pytest.mark.slow
def test_command_line_runs_every_evaluation(workdirs, tmp_path, autograph_conversions):
    jem_dir, baseline_dir = workdirs
    output = tmp_path / "eval"
    _run("jem_tf.evaluate", f"--workdir={jem_dir}", f"--compare_workdir={baseline_dir}", "--eval=all",
         f"--output={output}", "--num_examples=24", "--batch_size=12", "--refine_steps=1",
         "--ood_sets=svhn,uniform,constant,interp", "--sample_steps=2", "--num_samples=4", "--samples_per_class=2",
         "--max_grid_classes=2", "--attack_examples=4", "--attack_refine_steps=0,1", "--linf_epsilons=0,0.1",
         "--l2_epsilons=0,1", "--pgd_steps=1", "--boundary_examples=2", "--boundary_steps=2", "--distal_per_class=1",
         "--distal_steps=2", "--noprogress")
    results = json.loads((output / "results.json").read_text())
    assert not [k for k in results if k.startswith("errors/")]
    expected = ["accuracy", "refinement/steps_1/accuracy", "calibration/ece", "compare/calibration/ece",
                "ood/uniform/log_px/auroc", "ood/constant/max_prob/auroc", "ood/interp/grad_norm/fpr_at_95_tpr",
                "compare/ood/uniform/grad_norm/auroc", "logp_hist/in_distribution/mean",
                "samples/fresh_conditional/class_agreement", "samples/buffer/mean_log_px",
                "robustness/linf/refine_1/eps_0.1/accuracy", "robustness/l2/refine_0/eps_1/accuracy",
                "compare/robustness/linf/refine_0/eps_0.1/accuracy", "robustness/boundary/refine_1/pgd_missed",
                "distal/mean_confidence", "compare/distal/mean_confidence"]
    assert [key for key in expected if key not in results] == []
    assert results["ood/svhn"].startswith("unavailable: ")
    assert results["sample_quality"].startswith("unavailable: ")
    assert results["meta/global_step"] == 2
    figures = {p.name for p in output.glob("*.png")}
    assert figures >= {"reliability_diagram.png", "ood_histograms_uniform.png", "logp_hist.png",
                       "samples_fresh_unconditional.png", "samples_fresh_conditional.png",
                       "samples_buffer_unconditional.png", "samples_buffer_conditional.png", "robustness.png",
                       "distal_adversarials.png", "compare_distal_adversarials.png"}
    text = (output / "report.md").read_text()
    for figure in figures:
        assert f"({figure})" in text
    # Every evaluation traces our code as written; only ART's own tf.functions convert the model
    # object they are given (its three-line __call__), which our code does not control.
    assert set(autograph_conversions) <= {"jem_tf.evaluation.robustness.RefineThenClassify.__call__"}


@pytest.mark.slow
def test_command_line_errors_are_one_line(workdirs, tmp_path):
    missing = _run("jem_tf.evaluate", f"--workdir={tmp_path / 'nothing'}", check=False)
    assert missing.returncode == 2 and "not a jem_tf training workdir" in missing.stderr
    only_unavailable = _run("jem_tf.evaluate", f"--workdir={workdirs[0]}", "--eval=ood", "--ood_sets=svhn",
                            f"--output={tmp_path / 'eval'}", "--num_examples=8", "--noprogress", check=False)
    assert only_unavailable.returncode == 1 and "unavailable" in only_unavailable.stderr
    for result in (missing, only_unavailable):
        assert "Traceback" not in result.stderr
