"""The cifar_cpu preset and its benchmark (benchmarks/cifar_cpu.py, benchmarks/run_harness.py, the
CIFAR mode of benchmarks/variants.py): the preset trains, exports and evaluates on a tiny CIFAR-shaped
folder through the harness; finished runs are reused; the results page and its claims come from the
numbers in the JSON."""

import json
import os
import shutil
import signal
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import warm_python
from absl import flags
from PIL import Image

from benchmarks import cifar_cpu, run_harness, variants
from jem_tf import train
from jem_tf.configs import get_preset
from tools import results_tables

FIXTURES = Path(__file__).resolve().parent / "data" / "cifar_cpu"
TINY_FLAGS = ("--max_steps=2", "--batch_size=8", "--buffer_size=32", "--sgld_steps=1", "--width=1",
              "--validation_fraction=0", "--checkpoint_every_steps=1")
TINY_EVAL = ("--eval=accuracy,calibration,ood,samples,robustness", "--ood_sets=digits,uniform", "--num_examples=8",
             "--batch_size=8", "--refine_steps=1", "--sample_steps=1", "--num_samples=4", "--samples_per_class=2",
             "--max_grid_classes=2", "--attack_examples=4", "--attack_refine_steps=0,1", "--linf_epsilons=0,0.03",
             "--l2_epsilons=0,0.5", "--pgd_steps=1", "--boundary_examples=0", "--noprogress")


def _cifar_folder(root: Path, per_class=(8, 4)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.jpg")
    return root


def test_the_preset_is_the_issues_starting_recipe_with_a_step_budget():
    config = get_preset("cifar_cpu")
    assert (config.objective, config.depth, config.width, config.norm, config.batch_size) == ("jem", 10, 2, "none", 64)
    assert (config.sgld_steps, config.sgld_step_size, config.sgld_noise) == (10, 1.0, 0.01)
    assert (config.learning_rate, config.warmup_steps, config.buffer_size, config.reinit_freq) == (1e-3, 200, 10000,
                                                                                                  0.05)
    assert (config.energy_l2, config.sgld_clamp, config.precision, config.data_noise) == (0.1, True, "mixed_bfloat16",
                                                                                          0.03)
    assert config.max_steps == 6000 and config.checkpoint_every_steps == 250
    # The budget, not the epochs or a decay, ends the run on the whole training set too (703 steps per epoch).
    assert config.epochs * 703 > config.max_steps and min(config.lr_decay_epochs) * 140 > config.max_steps


@pytest.mark.slow
def test_the_preset_trains_exports_and_evaluates_through_the_harness(tmp_path, monkeypatch):
    """A few steps of the preset on a CIFAR-shaped folder, its export, every evaluation the page
    uses, the run's JSON, a figure and the page, as the benchmark makes them (its training and
    evaluation processes started by tests/warm_python.py)."""
    monkeypatch.setattr(run_harness, "subprocess", warm_python.PythonCommandsWarm())
    data = _cifar_folder(tmp_path / "data")
    spec = run_harness.RunSpec("recipe_seed0", "test", ("--preset=cifar_cpu", *TINY_FLAGS), group="seeds",
                               evaluation="full", figures=("reliability_diagram", "samples_fresh_unconditional"))
    output = tmp_path / "runs"
    assert run_harness.run(spec, str(output), str(data), TINY_EVAL) == "done"
    paths = run_harness.run_paths(str(output), "recipe_seed0")
    assert os.path.isdir(os.path.join(paths["workdir"], "export"))  # the preset exports
    train_rc = json.loads(Path(paths["train_rc"]).read_text())
    assert train_rc["rc"] == 0 and train_rc["wall_s"] > 0 and "--preset=cifar_cpu" in train_rc["flags"]
    record = run_harness.result_record(spec, str(output), str(data))
    assert record["outcome"] == "finished" and record["steps_reached"] == 2 and record["recovery_count"] == 0
    assert record["config"]["precision"] == "mixed_bfloat16" and record["config"]["width"] == 1
    evaluation = record["evaluation"]
    for key in ("accuracy", "refinement/steps_1/accuracy", "calibration/ece", "ood/digits/log_px/auroc",
                "ood/uniform/grad_norm/auroc", "robustness/linf/refine_1/eps_0.03/accuracy",
                "samples/fresh_conditional/class_agreement"):
        assert isinstance(evaluation.get(key), (int, float)), key
    assert record["commit"] != "unknown" and record["machine"]["cores"] >= 1 and record["seconds_per_step"] > 0
    results_dir, figures_dir = tmp_path / "results", tmp_path / "figures"
    path = run_harness.write_result(record, spec, str(output), str(results_dir), str(figures_dir))
    written = json.loads(Path(path).read_text())
    assert set(written["figures"]) == {"reliability_diagram", "samples_fresh_unconditional"}
    for figure in written["figures"].values():
        assert os.path.getsize(figure) < run_harness.FIGURE_MAX_BYTES
    page = tmp_path / "page.md"
    cifar_cpu.write_page(str(results_dir), str(tmp_path / "none"), None, str(page))
    assert "`recipe_seed0`" in page.read_text() and "reliability_diagram" in page.read_text()


def _finished(output: Path, name: str, rc=0, results=None, done=True):
    root = output / name
    (root / "eval").mkdir(parents=True)
    (root / "wd").mkdir()
    (root / "train_rc.json").write_text(json.dumps({"rc": rc, "wall_s": 120, "flags": "--objective=jem"}))
    if results is not None:
        (root / "eval" / "results.json").write_text(json.dumps(results))
    if done:
        (root / "DONE").touch()
    return root


def test_a_finished_run_is_reused_and_an_unevaluated_one_is_only_evaluated(tmp_path):
    calls = []
    runner = lambda command, log, label="": calls.append(command[2]) or (0, 1.0)  # noqa: E731
    spec = cifar_cpu.SEARCH[0]
    _finished(tmp_path, spec.name, results={"accuracy": 0.3})
    assert run_harness.run(spec, str(tmp_path), "data", runner=runner) == "reused" and calls == []
    # Trained (exit 0) but not evaluated (no DONE): evaluated only, then marked DONE.
    other = cifar_cpu.SEARCH[1]
    root = _finished(tmp_path, other.name, done=False)
    runner = lambda command, log, label="": (calls.append(command[2]),  # noqa: E731
                                             (root / "eval" / "results.json").write_text("{}"))[0] or (0, 1.0)
    assert run_harness.run(other, str(tmp_path), "data", runner=runner) == "done"
    assert calls == ["jem_tf.evaluate"] and (root / "DONE").exists()
    # --rerun trains again, moving the old directory aside rather than deleting it.
    calls.clear()
    run_harness.run(other, str(tmp_path), "data", rerun=True, runner=lambda c, log, label="": calls.append(c[2])
                    or (1, 1.0))
    assert calls == ["jem_tf.train"] and any(p.name.startswith(other.name + ".replaced-") for p in tmp_path.iterdir())


def test_a_stopped_benchmark_stops_its_run(tmp_path):
    """Ctrl-C (or SIGTERM through stop_on_sigterm) reaches the training run: it must not keep
    training on its own."""
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    timer = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    # Python keeps SIGINT ignored when it starts ignored (a suite started in the background by a
    # non-interactive shell): what Ctrl-C does in a terminal is what is tested here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_harness.run_logged([sys.executable, "-c", child], str(tmp_path / "log"), "child")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_divergence_is_recorded_with_its_step_and_recoveries(tmp_path):
    spec = cifar_cpu.SEARCH[0]
    root = _finished(tmp_path, spec.name, rc=3, results={"accuracy": 0.2, "meta/global_step": 750})
    (root / "wd" / "run_status.json").write_text(json.dumps({"state": "diverged", "step": 966}))
    (root / "wd" / "recoveries.json").write_text(json.dumps([{"step": 700, "recovery": 1}]))
    record = run_harness.result_record(spec, str(tmp_path), "data")
    assert (record["outcome"], record["divergence_step"], record["recovery_count"]) == ("diverged", 966, 1)
    assert record["steps_reached"] == 750 and record["seconds_per_step"] == pytest.approx(120 / 966, abs=1e-4)
    assert cifar_cpu.outcome_text(record) == "diverged at step 966"
    assert cifar_cpu.recoveries_text(record) == "1 (at 700)"
    # A run stopped by hand carries the person's account (NOTE) into its JSON and its outcome.
    (root / "NOTE").write_text("Stopped by hand at step 108: samples ran away.\n")
    record = run_harness.result_record(spec, str(tmp_path), "data")
    assert cifar_cpu.outcome_text(record) == "diverged at step 966: Stopped by hand at step 108: samples ran away."


def test_the_classifier_budget_comes_from_measured_times(tmp_path):
    def metrics(name, steps, seconds):
        (tmp_path / name / "wd").mkdir(parents=True)
        (tmp_path / name / "wd" / "metrics.json").write_text(json.dumps(
            {"global_step": steps, "seconds_this_session": seconds}))

    with pytest.raises(ValueError, match="calib_recipe_50, calib_recipe_250"):
        cifar_cpu.classifier_budget(str(tmp_path))
    metrics("calib_recipe_50", 50, 45.0)  # 20 s start-up + 0.5 s per step
    metrics("calib_recipe_250", 250, 145.0)
    with pytest.raises(ValueError, match="calib_classifier_50, calib_classifier_250"):
        cifar_cpu.classifier_budget(str(tmp_path))
    metrics("calib_classifier_50", 50, 15.0)  # 10 s start-up + 0.1 s per step: start-ups cancel
    metrics("calib_classifier_250", 250, 35.0)
    budget = cifar_cpu.classifier_budget(str(tmp_path))
    assert budget["steps"] == cifar_cpu.BUDGET_STEPS * 5
    assert budget["recipe_seconds_per_step"] == pytest.approx(0.5)
    assert budget["classifier_seconds_per_step"] == pytest.approx(0.1)
    assert set(budget["load_average_1min_at_start"]) == {
        "calib_recipe_50", "calib_recipe_250", "calib_classifier_50", "calib_classifier_250"}
    assert cifar_cpu.classifier_budget(str(tmp_path), given_steps=7)["method"] == "given by --classifier_steps"


def _page(results_dir, tmp_path, family_dir=None, compare=None) -> str:
    return cifar_cpu.render_page(run_harness.load_results(str(results_dir)),
                                 run_harness.load_results(str(family_dir)) if family_dir else {}, [compare],
                                 str(results_dir), str(tmp_path))


def _claim(page: str, start: str) -> str:
    return next(line for line in page.splitlines() if line.startswith("| " + start))


def test_the_page_and_its_claims_come_from_the_numbers(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES, results)
    page = _page(results, tmp_path)
    assert "| `s02_sada_bn_lr1e-3` |" in page and "diverged at step 412" in page and "1 (at 966)" in page
    assert _claim(page, "JEM's test accuracy within 5 points").endswith("| 0.410 | 0.440 | **shows** |")
    assert _claim(page, "log p(x) AUROC ≥ 0.95").endswith("| 0.980 | 0.300 | **shows** |")
    assert _claim(page, "ECE no worse").endswith("| 0.050 | 0.070 | **shows** |")
    assert _claim(page, "stable across seeds").endswith("**shows** |")
    assert _claim(page, "the budget trains within 60").endswith("| 50.0 min, 50.0 min, 50.0 min |  | **shows** |")
    assert "| test accuracy | 0.410 ± 0.010 (3 runs) | 0.440 | -0.030 |" in page
    assert "PGD L-inf ε=0.0314, 0 refinement steps: accuracy" in page and "The classifier trained 21000 steps" in page
    # One number changed in the JSON: the page changes with it.
    classifier = json.loads((results / "classifier.json").read_text())
    classifier["evaluation"]["accuracy"] = 0.50
    classifier["evaluation"]["ood/digits/log_px/auroc"] = 0.9
    (results / "classifier.json").write_text(json.dumps(classifier))
    seed = json.loads((results / "recipe_seed1.json").read_text())
    seed["recoveries"] = [{"step": 10}]
    seed["recovery_count"] = 1
    seed["train_wall_s"] = 3900
    (results / "recipe_seed1.json").write_text(json.dumps(seed))
    changed = _page(results, tmp_path)
    assert _claim(changed, "JEM's test accuracy within 5 points").endswith("| 0.410 | 0.500 | **does not show** |")
    assert _claim(changed, "log p(x) AUROC against a real other dataset").endswith("**does not show** |")
    assert _claim(changed, "stable across seeds").endswith("**does not show** |")
    # A slower seed shared the CPU: the fastest one still shows the budget fits; when none fits, it does not.
    assert _claim(changed, "the budget trains within 60").endswith("65.0 min, 50.0 min |  | **shows** |")
    assert _claim(changed, "log p(x) AUROC against constant").endswith("**shows** |")
    for path in results.glob("recipe_seed*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps(dict(record, train_wall_s=3900)))
    slow = _page(results, tmp_path)
    assert _claim(slow, "the budget trains within 60").endswith(
        "| 65.0 min, 65.0 min, 65.0 min |  | **does not show** |")


def test_the_readme_headline_table_comes_from_the_run_json(tmp_path):
    page = tmp_path / "page.md"
    cifar_cpu.write_page(str(FIXTURES), str(tmp_path / "none"), None, str(page), headline_dir=str(tmp_path))
    table = results_tables.load(cifar_cpu.HEADLINE_NAME, tmp_path)
    jem, classifier = table["rows"]
    # The fixture's seed 2 needed one recovery.
    assert jem[:2] == ["JEM, `--preset=cifar_cpu`", 3] and jem[3] == "0.410 ± 0.010" and jem[-1] == "1 of 3"
    assert classifier[:2] == ["classifier, same wall clock", 1] and classifier[3] == "0.440"
    assert all(f"[{name}" in table["commit"] or f", {name}" in table["commit"]
               for name in ("recipe_seed0", "recipe_seed1", "recipe_seed2", "classifier"))
    # Without a recipe seed there is no headline to write.
    assert cifar_cpu.headline_table({}) is None


def test_write_page_adds_the_summary_figure_and_large_figures_are_shrunk(tmp_path):
    page = tmp_path / "page.md"
    cifar_cpu.write_page(str(FIXTURES), str(tmp_path / "none"), None, str(page), str(tmp_path / "figures"))
    assert "![Every run's test numbers](figures/summary.png)" in page.read_text()
    assert (tmp_path / "figures" / "summary.png").stat().st_size > 0
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(noisy)
    assert noisy.stat().st_size > run_harness.FIGURE_MAX_BYTES
    written = run_harness.shrink_figure(str(noisy), str(tmp_path / "small"))
    assert written.endswith(".jpg") and os.path.getsize(written) <= run_harness.FIGURE_MAX_BYTES


def test_the_page_shows_missing_parts_as_not_measured_and_the_official_comparison(tmp_path):
    page = _page(tmp_path / "empty", tmp_path)
    assert _claim(page, "JEM's test accuracy").endswith("| not measured |") and "No search row" in page
    compare = {"settings": {"steps": 1500}, "runs": [
        {"implementation": "official", "seed": 0, "steps": 1500, "diverged": False, "test_accuracy": 0.22},
        {"implementation": "jem_tf", "seed": 0, "steps": 966, "diverged": True, "diverged_at": 966}],
        "diverged": {"official": [0, 1], "jem_tf": [1, 1]}}
    compare["runs"][0]["device"] = "NVIDIA H200"
    page = _page(tmp_path / "empty", tmp_path, compare=compare)
    assert "| official | 0 | 1500 | no | 0.220 | NVIDIA H200 |" in page
    assert "| jem_tf | 0 | 966 | step 966 | n/a | not recorded |" in page
    assert "jem_tf 1 of 1; official 0 of 1" in page


def test_the_variants_cifar_rows_parse_and_are_rebuilt_from_committed_json(tmp_path):
    chosen = [v for v in variants.VARIANTS if v.name in variants.CIFAR_VARIANTS]
    assert [v.name for v in chosen] == sorted(variants.CIFAR_VARIANTS, key=[v.name for v in variants.VARIANTS].index)
    configs = {}
    for variant in chosen:
        flag_values = flags.FlagValues()
        train.define_flags(flag_values)
        flag_values(["train", *variants.cifar_spec(variant).flags, "--workdir=/tmp/unused"])
        configs[variant.name] = train.config_from_flags(flag_values)
    assert configs["jem"].energy_l2 == 0 and not configs["jem"].sgld_clamp and configs["jem"].max_steps == 6000
    assert configs["jem_stabilised"].energy_l2 == 0.1 and configs["jem_stabilised"].sgld_clamp
    # A committed row is reused: nothing runs, the table comes from the JSON.
    results = tmp_path / "results"
    results.mkdir()
    record = json.loads((FIXTURES / "s01_jem_stab_lr3e-4.json").read_text())
    (results / "jem.json").write_text(json.dumps(dict(record, name="jem", group="family")))
    # A row measured earlier (no run directory here) stays in the table.
    (results / "sada_jem.json").write_text(json.dumps(dict(record, name="sada_jem", group="family", outcome="diverged",
                                                           divergence_step=412)))
    _finished(tmp_path / "runs", "jem", results={"accuracy": 0.31})
    assert variants.run_cifar(["jem"], str(tmp_path / "runs"), "data", str(results), rerun=False) == 0
    table = (tmp_path / "runs" / "variants_cifar.md").read_text()
    assert "| jem | 0.310 |" in table and "| sada_jem | 0.310 |" in table and "diverged at step 412" in table


def _fake_runner(calls):
    """Stands in for run_logged: a training writes metrics.json (JEM 1 s per step; the classifier
    10 s start-up + 0.1 s per step), an evaluation results.json."""

    def run(command, log_path, label=""):
        arguments = dict(a[2:].split("=", 1) for a in command[3:] if a.startswith("--") and "=" in a)
        calls.append((command[2], os.path.basename(os.path.dirname(arguments.get("workdir", arguments.get("output"))))))
        if command[2] == "jem_tf.train":
            steps = int(arguments.get("max_steps", 6000))
            seconds = 10 + 0.1 * steps if arguments.get("objective") == "classifier" else float(steps)
            os.makedirs(arguments["workdir"], exist_ok=True)
            Path(arguments["workdir"], "metrics.json").write_text(json.dumps(
                {"global_step": steps, "seconds_this_session": seconds, "steps_this_session": steps}))
        else:
            os.makedirs(arguments["output"], exist_ok=True)
            Path(arguments["output"], "results.json").write_text(json.dumps({"accuracy": 0.3}))
        return 0, 1.0

    return run


def _run_settings(tmp_path, **overrides):
    """run_all's settings: runs under tmp_path/runs, result JSON under tmp_path/results."""
    return types.SimpleNamespace(**{**dict(
        output_dir=str(tmp_path / "runs"), data="subset", full_data="full", only=None, rerun=False,
        classifier_steps=None, results_dir=str(tmp_path / "results"), figures_dir=None,
        family_results_dir=str(tmp_path / "family"), compare_training_json=None, page=str(tmp_path / "page.md"),
        headline_dir=None), **overrides})


def test_the_command_runs_everything_in_order_once_and_gives_the_classifier_the_recipes_time(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_harness, "run_logged", _fake_runner(calls))
    settings = _run_settings(tmp_path)
    assert cifar_cpu.run_all(settings) == 0
    trained = [name for module, name in calls if module == "jem_tf.train"]
    assert trained == cifar_cpu.all_names()
    assert [name for module, name in calls if module == "jem_tf.evaluate"] == [
        n for n in cifar_cpu.all_names() if not n.startswith("calib_")]
    classifier = json.loads((tmp_path / "results" / "classifier.json").read_text())
    # 6000 recipe steps x 1 s per recipe step / 0.1 s per classifier step (start-ups cancel in the calibration).
    assert classifier["budget"]["steps"] == 60000 and classifier["steps_reached"] == 60000
    assert json.loads((tmp_path / "results" / "classifier_full.json").read_text())["data"] == "full"
    assert "`recipe_seed2`" in (tmp_path / "page.md").read_text()
    calls.clear()
    assert cifar_cpu.run_all(settings) == 0 and calls == []  # every run finished: nothing runs again


def test_the_whole_set_classifier_keeps_the_subset_classifiers_recorded_budget(tmp_path, monkeypatch):
    # Another output directory, without the calibration runs: the budget comes from classifier.json.
    calls = []
    monkeypatch.setattr(run_harness, "run_logged", _fake_runner(calls))
    results = tmp_path / "results"
    results.mkdir()
    (results / "classifier.json").write_text(json.dumps({"budget": {"steps": 123, "method": "measured"}}))
    settings = _run_settings(tmp_path, only=["classifier_full"])
    assert cifar_cpu.run_all(settings) == 0
    assert [name for module, name in calls if module == "jem_tf.train"] == ["classifier_full"]
    full = json.loads((results / "classifier_full.json").read_text())
    assert full["budget"]["steps"] == 123 and full["steps_reached"] == 123
    assert full["budget"]["method"].startswith("the subset classifier's budget")


def test_bad_flags_exit_2(tmp_path):
    settings = types.SimpleNamespace(page_only=False, output_dir=None, only=None, data=str(tmp_path),
                                     full_data=str(tmp_path), classifier_steps=None)
    assert cifar_cpu.main(["prog"], settings) == 2  # no --output_dir
    settings.output_dir = str(tmp_path)
    settings.only = ["nonsense"]
    assert cifar_cpu.main(["prog"], settings) == 2
    settings.only = ["recipe_seed0"]
    assert cifar_cpu.main(["prog"], settings) == 2  # --data is not an image folder
    assert cifar_cpu.main(["prog", "extra"], settings) == 2
