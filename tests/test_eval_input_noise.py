"""--eval_input_noise: N(0, sigma^2) on test and OOD inputs (interp included), seeded, as the
reference code evaluates; the default follows the run's data noise; the results say which."""

import json

import keras
import numpy as np
import pytest

from jem_tf.evaluation import EvalContext, EvalOptions, EvaluatedRun, accuracy, common, ood, suite
from trainers.jem import JEM

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def jem_model():
    keras.utils.set_random_seed(0)
    model = JEM(10, 1, 10, buffer_size=64)
    model.build((None,) + SHAPE)
    return model


@pytest.fixture(scope="module")
def digits():
    images, labels, _ = suite.load_test_split("digits", None, 30, 10)
    return images, labels


def test_noise_has_the_requested_std_and_is_seeded_per_set():
    images = np.zeros((40, 16, 16, 3), np.float32)
    noisy = common.add_input_noise(images, 0.03, seed=0, set_name="test")
    assert noisy.dtype == np.float32
    assert np.std(noisy) == pytest.approx(0.03, rel=0.03) and abs(np.mean(noisy)) < 0.001
    np.testing.assert_array_equal(noisy, common.add_input_noise(images, 0.03, seed=0, set_name="test"))
    assert not np.array_equal(noisy, common.add_input_noise(images, 0.03, seed=1, set_name="test"))
    assert not np.array_equal(noisy, common.add_input_noise(images, 0.03, seed=0, set_name="ood/svhn"))
    # Not clipped (the reference does not clip), and 0 leaves the images as they are.
    ones = np.ones((4, 8, 8, 1), np.float32)
    assert common.add_input_noise(ones, 0.1, 0, "test").max() > 1.0
    np.testing.assert_array_equal(common.add_input_noise(ones, 0.0, 0, "test"), ones)


def test_negative_or_infinite_noise_is_refused():
    for bad in (-0.01, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="--eval_input_noise="):
            EvalOptions(eval_input_noise=bad).validate()
    EvalOptions(eval_input_noise=0.0).validate()


def test_default_is_the_runs_data_noise_and_a_flag_overrides_it(jem_model):
    run = EvaluatedRun(jem_model, "jem", SHAPE, 10, data_noise=0.05)
    assert run.input_noise(EvalOptions()) == 0.05
    assert run.input_noise(EvalOptions(eval_input_noise=0.0)) == 0.0
    assert run.input_noise(EvalOptions(eval_input_noise=0.03)) == 0.03


def test_test_and_ood_sets_alike_get_the_noise(tmp_path, jem_model, digits):
    images, labels = digits
    sigma, seed = 0.2, 3
    run = EvaluatedRun(jem_model, "jem", SHAPE, 10, dataset="digits", data_noise=0.01)
    options = EvalOptions(num_examples=30, batch_size=10, seed=seed, eval_input_noise=sigma, refine_steps=(),
                          ood_sets=("uniform", "interp"), progress=False)
    # What the suite scores is exactly the clean images plus the seeded noise, per set.
    state = EvalContext(run, images, labels, options, str(tmp_path))
    noisy_test = common.add_input_noise(images, sigma, seed, "test")
    np.testing.assert_array_equal(state.images, noisy_test)
    # interp mixes two noisy test images and then gets its own noise, as the reference's cifar_interp.
    expected_interp = common.add_input_noise(ood.synthetic_ood("interp", noisy_test, 30, seed), sigma, seed,
                                             "ood/interp")
    np.testing.assert_array_equal(state.ood_images("interp"), expected_interp)
    expected_uniform = common.add_input_noise(ood.synthetic_ood("uniform", noisy_test, 30, seed), sigma, seed,
                                              "ood/uniform")
    np.testing.assert_array_equal(state.ood_images("uniform"), expected_uniform)

    results = suite.run_suite(run, images, labels, ["accuracy", "ood"], options, str(tmp_path / "eval"))
    direct, _ = accuracy.evaluate_accuracy(jem_model, noisy_test, labels, refine_steps=(), batch_size=10,
                                           progress=False)
    assert results["accuracy"] == pytest.approx(direct["accuracy"])
    assert results["mean_log_px"] == pytest.approx(direct["mean_log_px"], rel=1e-5)
    clean, _ = accuracy.evaluate_accuracy(jem_model, images, labels, refine_steps=(), batch_size=10, progress=False)
    assert results["mean_log_px"] != pytest.approx(clean["mean_log_px"], rel=1e-5)
    interp_scores = ood.compute_scores(jem_model, expected_interp, 10, "interp", progress=False)
    assert results["ood/interp/log_px/mean"] == pytest.approx(float(np.mean(interp_scores["log_px"])), rel=1e-5)

    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["meta/eval_input_noise"] == sigma
    assert saved["meta/eval_input_noise_source"] == "--eval_input_noise"
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "N(0, 0.2^2) added to test and OOD images (--eval_input_noise" in report


def test_results_say_when_the_runs_data_noise_was_used(tmp_path, jem_model, digits):
    run = EvaluatedRun(jem_model, "jem", SHAPE, 10, dataset="digits", data_noise=0.03,
                       validation_split="random 50 training images (seed 1234, as the reference code)")
    options = EvalOptions(num_examples=10, batch_size=10, refine_steps=(), progress=False)
    results = suite.run_suite(run, *digits, ["accuracy"], options, str(tmp_path))
    assert results["meta/eval_input_noise"] == 0.03
    assert results["meta/eval_input_noise_source"] == "the run's data_noise"
    assert results["meta/validation_split"].startswith("random 50 training images")
    assert "random 50 training images" in (tmp_path / "report.md").read_text()
