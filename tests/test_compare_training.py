"""benchmarks.compare_training: divergence counting, curve windows and tables on fake runs, the
reference's printed progress parsed into curves, jem_tf's TensorBoard curves read back (no torch),
and a few-step smoke run of both implementations where torch and the reference code are available."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import run_command
from PIL import Image
from reference_env import REFERENCE_DIR, TORCH_PYTHON, torch_and_reference_missing

from benchmarks import compare_training, reference_worker, training_curves
from benchmarks.training_curves import RunResult

REPO = Path(__file__).resolve().parents[1]


def _curve(values):
    """{step: all four metrics = value}."""
    return {step: dict.fromkeys(training_curves.METRICS, value) for step, value in enumerate(values)}


def test_divergence_counts_guards_and_non_finite_values():
    runs = [
        RunResult("official", 1, _curve([1.0, 2.0, 3.0])),
        # The reference's |L| > 1e8 check lets NaN through: a NaN logged at step 1 is a divergence there.
        training_curves.mark_non_finite(RunResult("official", 2, _curve([1.0, float("nan"), 2.0]))),
        RunResult("jem_tf", 1, _curve([1.0, 2.0]), diverged=True, diverged_at=2, reason="guard"),
        training_curves.mark_non_finite(RunResult("jem_tf", 2, _curve([1.0, 1.0, 1.0]))),
    ]
    assert runs[1].diverged and runs[1].diverged_at == 1 and runs[1].reason == "non-finite logged values"
    assert not runs[3].diverged
    assert training_curves.count_diverged(runs) == {"official": (1, 2), "jem_tf": (1, 2)}
    # An earlier non-finite value moves a guard's divergence step back; a later one does not.
    late = training_curves.mark_non_finite(RunResult("jem_tf", 3, _curve([1.0, 1.0, math.inf]), diverged=True,
                                                      diverged_at=1, reason="guard"))
    assert (late.diverged_at, late.reason) == (1, "guard")


def test_window_means_skip_non_finite_values_and_average_seeds():
    run = RunResult("official", 1, _curve([1.0, 3.0, float("nan"), 5.0, 7.0]))
    assert training_curves.window_means(run, every=2, steps=5)["xent"] == {2: 2.0, 4: 5.0, 5: 7.0}
    other = RunResult("official", 2, _curve([3.0, 5.0]))
    ours = RunResult("jem_tf", 1, _curve([10.0, 20.0, 30.0, 40.0]))
    table = training_curves.curve_table([run, other, ours], every=2, steps=4)
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    # steps 0-1: official (2 + 4) / 2 = 3 over 2 seeds; jem_tf 15. Steps 2-3: official only seed 1 (5).
    assert [cell.strip() for cell in rows[0][:3]] == ["0–1", "3 (2)", "15 (1)"]
    assert [cell.strip() for cell in rows[1][:3]] == ["2–3", "5 (1)", "35 (1)"]


def test_report_lists_runs_divergence_and_settings():
    runs = [RunResult("official", 1, _curve([1.0] * 4), steps=4, test_accuracy=0.25, seconds=60),
            RunResult("jem_tf", 1, _curve([1.0] * 2), steps=2, diverged=True, diverged_at=2, reason="guard")]
    settings = dict(depth=10, width=2, batch_size=64, sgld_steps=10, learning_rate=1e-4, warmup_steps=100,
                    buffer_size=10000, steps=4, seeds=[1], data="DATA", validation_size=1000, report_every=2)
    text = training_curves.format_report(runs, settings)
    assert "Diverged: official 0 of 1; jem_tf 1 of 1." in text
    assert "| official | 1 | 4 | no | 0.2500 | 1.0 |" in text and "| jem_tf | 1 | 2 | yes, at step 2 (guard) |" in text
    assert "WRN-10-2, batch 64, 10 SGLD steps, lr 0.0001 (warm-up 100)" in text


def test_the_references_printed_progress_becomes_curves():
    lines = [
        "| Wide-Resnet 10x2",
        "P(x) | 0:0 f(x_p_d)=   2.303801537 f(x_q)=   2.303401232 d=   0.000400305",
        "P(y|x) 0:0 loss=   2.322321653, acc=   0.000000000",
        "P(x) | 1:0 f(x_p_d)=  -1.500000000 f(x_q)=           nan d=           nan",
        "P(y|x) 1:7 loss=   2.1, acc=   0.250000000",
        "Epoch 0: Valid Loss 2.25, Valid Acc 0.2",
        "Epoch 0: Test Loss 2.30, Test Acc 0.1",
    ]
    parsed = reference_worker.parse_training_output(lines)
    assert parsed["curves"][0] == dict(log_px_data=2.303801537, log_px_samples=2.303401232, xent=2.322321653,
                                       accuracy=0.0)
    # The step is the P(y|x) line's iteration count, not the P(x) line's batch index in the epoch.
    assert parsed["curves"][7]["log_px_data"] == -1.5 and math.isnan(parsed["curves"][7]["log_px_samples"])
    assert parsed["epochs"] == [dict(epoch=0, split="valid", xent=2.25, accuracy=0.2),
                                dict(epoch=0, split="test", xent=2.30, accuracy=0.1)]


def test_jem_tf_curves_are_read_from_tensorboard_with_steps_before_the_update(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in (1, 2):
            tf.summary.scalar("train/xent", 2.0 + step, step=step)
            tf.summary.scalar("train/log_px_samples", -step, step=step)
            tf.summary.scalar("train/learning_rate", 1e-4, step=step)
            tf.summary.scalar("validation/xent", 9.0, step=step)
    writer.close()
    curves = compare_training.read_tensorboard_curves(str(tmp_path))
    assert curves == {0: {"xent": 3.0, "log_px_samples": -1.0}, 1: {"xent": 4.0, "log_px_samples": -2.0}}


def test_reference_arguments_are_its_defaults_plus_overrides():
    args = reference_worker.reference_args(depth=10, n_steps=5)
    assert (args.depth, args.width, args.n_steps, args.sgld_lr, args.sgld_std, args.reinit_freq) == (10, 10, 5, 1.0,
                                                                                                     0.01, 0.05)
    assert args.n_classes == 10 and reference_worker.reference_args(dataset="cifar100").n_classes == 100
    with pytest.raises(ValueError, match="steps"):
        reference_worker.reference_args(steps=3)


def _cli(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "benchmarks.compare_training", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _main(*args):
    """The command line's main in this process (conftest.run_command), for its refusals and failures
    before any training: a new interpreter would only add TensorFlow's import."""
    return run_command("benchmarks.compare_training", *args)


def _image_tree(root, classes=10, size=32, per_class=4):
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 1)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")


@pytest.mark.slow
def test_bad_input_exits_2_naming_it(tmp_path):
    missing = _main(f"--data={tmp_path / 'none'}", f"--output_dir={tmp_path / 'out'}", "--implementations=jem_tf")
    assert missing.returncode == 2 and "has no train/ folder" in missing.stderr and "Traceback" not in missing.stderr
    _image_tree(tmp_path / "small", classes=3, size=8, per_class=1)
    wrong_shape = _main(f"--data={tmp_path / 'small'}", f"--output_dir={tmp_path / 'out'}", "--implementations=jem_tf")
    assert wrong_shape.returncode == 2 and "3 classes of (8, 8, 3) images" in wrong_shape.stderr
    no_reference = _main(f"--data={tmp_path / 'small'}", f"--output_dir={tmp_path / 'out'}")
    assert no_reference.returncode == 2 and "--reference_dir is required" in no_reference.stderr


@pytest.mark.slow
@pytest.mark.skipif(bool(torch_and_reference_missing()), reason=torch_and_reference_missing() or "available")
def test_smoke_both_implementations_train_a_few_steps(tmp_path):
    _image_tree(tmp_path / "images")
    output = tmp_path / "out"
    result = _cli(f"--reference_dir={REFERENCE_DIR}", f"--torch_python={TORCH_PYTHON}", f"--data={tmp_path / 'images'}",
                  f"--output_dir={output}", "--steps=3", "--seeds=1", "--depth=10", "--width=1", "--batch_size=8",
                  "--sgld_steps=1", "--buffer_size=100", "--validation_size=5", "--warmup_steps=2", "--report_every=2",
                  "--parallel", "--threads=1")
    assert result.returncode == 0, result.stderr[-4000:]
    saved = json.loads((output / "compare_training.json").read_text())
    runs = {run["implementation"]: run for run in saved["runs"]}
    for run in runs.values():
        assert run["steps"] == 3 and not run["diverged"]
        # Accuracy over exactly the 10 test images (one per class): a whole number of them right.
        correct = run["test_accuracy"] * 10
        assert correct == pytest.approx(round(correct), abs=1e-6) and 0 <= round(correct) <= 10, run["test_accuracy"]
        assert sorted(run["curves"]) == ["0", "1", "2"]
        assert set(run["curves"]["0"]) == set(training_curves.METRICS)
        # Ten classes, nothing learned in 3 steps: the cross-entropy starts near log(10).
        assert abs(run["curves"]["0"]["xent"] - math.log(10)) < 0.5
    assert (output / "compare_training.png").stat().st_size > 0
    assert "Diverged: official 0 of 1; jem_tf 0 of 1." in result.stdout


def _main_in_process(*argv) -> int:
    """compare_training's main with fresh flags (no subprocess: the runs it reads were made before)."""
    flag_values = flags.FlagValues()
    compare_training.define_flags(flag_values)
    flag_values(["compare_training", *argv])
    return compare_training.main(["compare_training"], flag_values)


def test_official_runs_made_elsewhere_are_read_not_run(tmp_path):
    """--official_results: the reference ran on another machine (no torch here); its result files are
    read and reported beside jem_tf's runs, and a missing seed is refused before anything runs."""
    _image_tree(tmp_path / "images")
    results = tmp_path / "official"
    results.mkdir()
    curves = {str(step): {"xent": 2.3 - 0.1 * step, "accuracy": 0.1, "log_px_data": 0.5, "log_px_samples": 0.4}
              for step in range(4)}
    (results / "official_seed1.json").write_text(json.dumps(
        dict(curves=curves, steps=4, diverged=False, test_accuracy=0.3, seconds=12.0)))
    common = [f"--data={tmp_path / 'images'}", f"--output_dir={tmp_path / 'out'}", "--implementations=official",
              f"--official_results={results}", "--steps=4", "--report_every=2"]
    assert _main_in_process(*common, "--seeds=1,2") == compare_training.EXIT_BAD_INPUT
    assert not (tmp_path / "out" / "compare_training.json").exists()
    assert _main_in_process(*common, "--seeds=1") == 0
    saved = json.loads((tmp_path / "out" / "compare_training.json").read_text())
    (run,) = saved["runs"]
    assert (run["implementation"], run["steps"], run["test_accuracy"], run["seconds"]) == ("official", 4, 0.3, 12.0)
    assert saved["settings"]["official_results"] == str(results)
    assert run["curves"]["3"]["xent"] == pytest.approx(2.0)


def _fake_jem_tf_workdir(workdir, state, steps=4):
    """What a jem_tf run leaves that compare_training reads: train/* summaries (step after the update),
    run_status.json and, when it finished, metrics.json."""
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
    with writer.as_default():
        for step in range(1, steps + 1):
            for metric in compare_training.METRICS:
                tf.summary.scalar(f"train/{metric}", 2.0 - 0.1 * step, step=step)
    writer.close()
    (workdir / "run_status.json").write_text(json.dumps({"state": state, "step": steps}))
    if state == "finished":
        (workdir / "metrics.json").write_text(json.dumps({"test_accuracy": 0.2}))


def test_jem_tf_runs_made_before_are_read_not_run(tmp_path):
    _image_tree(tmp_path / "images")
    ours = tmp_path / "ours"
    for seed, state in ((1, "finished"), (2, "diverged"), (3, "running")):
        (ours / f"jem_tf_seed{seed}").mkdir(parents=True)
        _fake_jem_tf_workdir(ours / f"jem_tf_seed{seed}", state)
    common = [f"--data={tmp_path / 'images'}", f"--output_dir={tmp_path / 'out'}", "--implementations=jem_tf",
              f"--jem_tf_results={ours}", "--steps=4", "--report_every=2"]
    assert _main_in_process(*common, "--seeds=1,3") == compare_training.EXIT_BAD_INPUT
    assert _main_in_process(*common, "--seeds=1,2") == 0
    saved = json.loads((tmp_path / "out" / "compare_training.json").read_text())
    runs = {run["seed"]: run for run in saved["runs"]}
    assert (runs[1]["diverged"], runs[1]["test_accuracy"], runs[1]["steps"]) == (False, 0.2, 4)
    assert runs[2]["diverged"] and runs[2]["test_accuracy"] is None
    assert runs[1]["curves"]["0"]["xent"] == pytest.approx(1.9)
