"""The evaluation registry: a newly registered evaluation is run by the suite like the built-in ones
(results.json, report.md, --eval=all), failures stay contained, and --eval names are checked
against what is registered."""

import json

import keras
import numpy as np
import pytest
from conftest import run_command

from jem_tf import energy
from jem_tf.evaluation import EvalOptions, EvaluatedRun, common, registry, suite
from jem_tf.models import WideResNet

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    network = WideResNet(depth=10, width=1, num_classes=10)
    network.build((None,) + SHAPE)
    return network


@pytest.fixture
def temporary_evaluations():
    """Registers test evaluations through `add` and unregisters them afterwards."""
    added = []

    def add(name, cls):
        registry.register(name)(cls)
        added.append(name)
        return cls

    yield add
    for name in added:
        registry.unregister(name)


class MeanLogPx(registry.Evaluation):
    """A new evaluation using the shared context: mean log p~(x) of the test images."""

    title = "Mean log p(x) (test evaluation)"

    def run(self, context):
        context.results[f"{self.name}/mean_log_px"] = float(np.mean(energy.log_marginal(context.logits(
            context.images)).numpy()))
        context.results[f"{self.name}/num_examples"] = len(context.images)


def test_a_registered_evaluation_runs_and_lands_in_the_outputs(tmp_path, model, temporary_evaluations):
    temporary_evaluations("mean_log_px", MeanLogPx)
    assert registry.names() == (*registry.BUILTIN_ORDER, "mean_log_px")
    assert suite.parse_evaluations(["all"])[-1] == "mean_log_px"
    images = np.random.default_rng(0).uniform(-1, 1, (12,) + SHAPE).astype(np.float32)
    run = EvaluatedRun(model, "wrn (tiny)", SHAPE, 10, dataset="digits")
    options = EvalOptions(num_examples=12, batch_size=5, refine_steps=(), progress=False)
    results = suite.run_suite(run, images, np.arange(12) % 10, ["mean_log_px", "accuracy"], options, str(tmp_path))

    expected = float(np.mean(energy.log_marginal(model(images, training=False)).numpy()))
    assert results["mean_log_px/mean_log_px"] == pytest.approx(expected, rel=1e-5)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mean_log_px/mean_log_px"] == pytest.approx(expected, rel=1e-5)
    assert saved["mean_log_px/num_examples"] == 12
    assert saved["meta/evaluations"] == ["accuracy", "mean_log_px"]  # the registry's order, not the request's
    assert "timing/mean_log_px_seconds" in saved and "accuracy" in saved
    report = (tmp_path / "report.md").read_text()
    assert "## Mean log p(x) (test evaluation)" in report
    assert "| mean_log_px/num_examples | 12 |" in report


def test_an_evaluations_failure_or_unavailability_is_contained(tmp_path, model, temporary_evaluations):
    class Broken(registry.Evaluation):
        def run(self, context):
            raise RuntimeError("boom")

    class Missing(registry.Evaluation):
        def run(self, context):
            raise common.Unavailable("no such data here")

    temporary_evaluations("broken", Broken)
    temporary_evaluations("missing", Missing)
    images = np.zeros((4,) + SHAPE, np.float32)
    run = EvaluatedRun(model, "wrn (tiny)", SHAPE, 10, dataset="digits")
    options = EvalOptions(num_examples=4, batch_size=4, refine_steps=(), progress=False)
    results = suite.run_suite(run, images, np.zeros(4), ["broken", "missing", "calibration"], options, str(tmp_path))
    assert results["errors/broken"] == "RuntimeError: boom"
    assert results["missing"] == "unavailable: no such data here"
    assert "calibration/ece" in results
    report = (tmp_path / "report.md").read_text()
    assert "## broken" in report and "**failed**: `RuntimeError: boom`" in report
    assert "## missing" in report and "**unavailable: no such data here**" in report


def test_register_refuses_bad_names_duplicates_and_non_evaluations(temporary_evaluations):
    for bad in ("", "all", "a-b", "two words"):
        with pytest.raises(ValueError, match="is invalid"):
            registry.register(bad)
    with pytest.raises(ValueError, match="The evaluation 'accuracy' is already registered"):
        registry.register("accuracy")(MeanLogPx)
    with pytest.raises(TypeError, match="expects an Evaluation subclass"):
        registry.register("not_an_evaluation")(object)
    with pytest.raises(ValueError, match="Unknown evaluation 'fid'; choose from accuracy, calibration"):
        registry.get("fid")


@pytest.mark.slow
def test_an_unknown_eval_name_exits_2_naming_the_registered_ones(tmp_path):
    result = run_command("jem_tf.evaluate", f"--workdir={tmp_path}", "--eval=accuracy,fid")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Unknown evaluation(s) ['fid']; choose from " + ", ".join(registry.names()) + " or 'all'." in result.stderr
    assert "Traceback" not in result.stderr
