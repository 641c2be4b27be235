"""The benchmarks write their docs tables themselves (issue #16: results are generated, never typed).

Each writer is fed a fake measurement (no benchmark runs here) and must write docs/results/NAME.json
in the shape the committed file has, with commit, machine, date and command, rendering to a table.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from absl import flags

from benchmarks import compare_reference, compare_training, reference_report, results_json, train_step
from benchmarks.training_curves import RunResult
from tools import measure_quick_run, measure_test_suite, results_tables

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
CPU = dict(model="Test CPU", num_cpus=2, isa_flags=["avx2", "avx512f", "avx512_bf16"],
           lscpu={"Hypervisor vendor": "KVM"})


def _committed(name):
    return json.loads((RESULTS / f"{name}.json").read_text())


def _check_shape(name, written, results_dir):
    """Loads like every docs table, has the committed file's keys (less the transcription note), renders."""
    data = results_tables.load(name, results_dir)
    assert data == json.loads(Path(written).read_text())
    # "provenance" (how a transcribed table came to be) stays only on rows a run did not measure again.
    assert set(data) - {"provenance"} == set(_committed(name)) - {"provenance"}, sorted(data)
    assert re.match(r"\d{4}-\d{2}-\d{2}\b", data["date"])  # a merged table names the rows of each date
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert data["commit"].startswith(head.strip())
    table = results_tables.render(name, data, REPO / "docs" / "page.md")
    assert table.startswith("| " + " | ".join(data["columns"]) + " |")
    assert f"command: `{data['command']}`" in table
    return data


def _flag_values(define, argv):
    flag_values = flags.FlagValues()
    define(flag_values)
    flag_values(argv)
    return flag_values


def test_command_line_names_only_the_flags_given():
    flag_values = _flag_values(train_step.define_flags, ["x", "--depth=28", "--precision=float32,mixed_bfloat16"])
    assert results_json.command_line("benchmarks.train_step", flag_values) == (
        "python -m benchmarks.train_step --depth=28 --precision=float32,mixed_bfloat16")


def test_machine_names_the_cpu_and_no_date():
    assert results_json.machine(CPU, "quiet") == "Test CPU, 2 CPUs, KVM guest, avx512f avx512_bf16; quiet"
    assert results_json.machine(dict(CPU, isa_flags=["avx2"], lscpu=None)) == "Test CPU, 2 CPUs, no AVX-512/AMX"


def test_a_partial_rerun_replaces_its_rows_and_keeps_the_others():
    old = _committed("speed_vs_official")
    new = dict(commit="abc1234", machine="M2", date="2026-12-05", command="C2", columns=old["columns"],
               rows=[["WRN-16-2", "mixed_bfloat16", 5.0, 2.0, 0.4, 0.4, 3]])
    merged = results_json.merge(old, new, key_columns=2)
    assert [row[:2] for row in merged["rows"]] == [["WRN-16-2", "mixed_bfloat16"], ["WRN-16-2", "float32"],
                                                   ["WRN-28-2", "mixed_bfloat16"]]
    assert merged["commit"] == "abc1234 [WRN-16-2 mixed_bfloat16] | 1d2fda6 [WRN-16-2 float32, WRN-28-2 mixed_bfloat16]"
    assert merged["provenance"].startswith("Rows WRN-16-2 float32, WRN-28-2 mixed_bfloat16: Transcribed")
    # A second run re-measuring another row reads the row labels back.
    newer = dict(new, commit="def5678", rows=[["WRN-28-2", "mixed_bfloat16", 9.0, 4.0, 0.44, 0.45, 3]])
    again = results_json.merge(merged, newer, key_columns=2)
    assert again["commit"] == ("def5678 [WRN-28-2 mixed_bfloat16] | abc1234 [WRN-16-2 mixed_bfloat16] | "
                               "1d2fda6 [WRN-16-2 float32]")
    assert again["date"] == ("2026-12-05 [WRN-28-2 mixed_bfloat16, WRN-16-2 mixed_bfloat16] | "
                             "2026-12-01 [WRN-16-2 float32]")
    # Re-measuring every row leaves one plain value per field.
    everything = dict(new, rows=[r[:2] + [1.0, 1.0, 1.0, 1.0, 1] for r in old["rows"]])
    assert results_json.merge(again, everything, key_columns=2)["commit"] == "abc1234"


def test_train_step_writes_its_table(tmp_path):
    def row(name, median_ms, **extra):
        return dict(name=name, precision="float32", xla="off", median_ms=median_ms, matmul_ceiling_gflops=209.4,
                    **extra)

    results = dict(
        settings=dict(depth=16, width=2, batch_size=64, sgld_steps=20, image_shape=[32, 32, 3], repeats=3),
        environment=dict(tensorflow="2.21.0", load_average_before=[0.1], load_average_after=[0.3]),
        rows=[row("matmul", 80.0), row("forward", 30.0),
              row("SGLD step", 209.2, strict_gflops_per_s=158.64, strict_fraction_of_matmul_ceiling=0.757),
              row("JEM iteration", 4601.0), row("classifier iteration", 300.0)])
    flag_values = _flag_values(train_step.define_flags, ["x", "--repeats=3", "--results_json=train_step_wrn16"])
    written = train_step.write_results("train_step_wrn16", results, flag_values, tmp_path)
    data = _check_shape("train_step_wrn16", written, tmp_path)
    assert data["rows"] == [["WRN-16-2", "float32", 209, 158.6, 209, 76, 4.6]]
    assert data["command"] == "python -m benchmarks.train_step --repeats=3 --results_json=train_step_wrn16"
    assert "load average 0.10 before, 0.30 after" in data["machine"]
    assert "| WRN-16-2 | float32 | 209 ms | 158.6 | 209 GFLOP/s | 76 % | 4.60 s |" in results_tables.render(
        "train_step_wrn16", data, REPO / "docs" / "page.md")


def _samples(seconds, count=3):
    return [dict(wall_seconds=seconds, cpu_seconds=seconds, other_load=0.01, sgld_step_seconds=seconds / 40)
            for _ in range(count)]


def test_compare_reference_writes_its_row_into_the_speed_table(tmp_path):
    shutil.copy(RESULTS / "speed_vs_official.json", tmp_path)
    settings = dict(depth=16, width=2, batch_size=64, sgld_steps=20, threads=2, rounds=4, samples_per_round=2,
                    warmup=1, precision="float32", ours_flags=[])
    report = reference_report.build_report(dict(official=_samples(5.714), jem_tf=_samples(4.8)), settings, CPU,
                                           dict(torch="2.13.0", tensorflow="2.21.0"), 0.1, 3)
    flag_values = _flag_values(compare_reference.define_flags, ["x", "--reference_dir=/r", "--rounds=4"])
    written = compare_reference.write_results("speed_vs_official", report, flag_values, tmp_path)
    data = _check_shape("speed_vs_official", written, tmp_path)
    assert data["columns"] == _committed("speed_vs_official")["columns"]
    assert data["rows"][0] == ["WRN-16-2", "float32", 5.71, 4.8, 0.84, 0.84, 4]
    assert [row[:2] for row in data["rows"][1:]] == [["WRN-16-2", "mixed_bfloat16"], ["WRN-28-2", "mixed_bfloat16"]]
    assert "PyTorch 2.13.0 CPU vs TensorFlow 2.21.0" in data["machine"]
    assert "python -m benchmarks.compare_reference --reference_dir=/r --rounds=4 [WRN-16-2 float32]" in data["command"]
    busy = dict(report, valid=False)
    with pytest.raises(ValueError, match="no valid ratio"):
        reference_report.speed_table(busy, {})


def test_compare_training_writes_both_dynamics_tables(tmp_path):
    def curves(steps, value):
        return {step: dict(xent=value, accuracy=0.1, log_px_data=value, log_px_samples=-value) for step in range(steps)}

    runs = [RunResult("official", 1, curves(50, 2.3), steps=50, test_accuracy=0.14751),
            RunResult("jem_tf", 1, curves(50, 2.5), steps=50, test_accuracy=0.172),
            RunResult("official", 2, curves(30, 2.1), steps=30, diverged=True, diverged_at=30, reason="guard"),
            RunResult("jem_tf", 2, curves(50, 2.7), steps=50, test_accuracy=0.129)]
    settings = dict(steps=50, seeds=[1, 2], report_every=25, data_noise=0.03)
    flag_values = _flag_values(compare_training.define_flags, ["x", "--steps=50", "--report_every=25"])
    compare_training.write_results("training_dynamics", runs, settings, flag_values, tmp_path)
    table = _check_shape("training_dynamics_runs", tmp_path / "training_dynamics_runs.json", tmp_path)
    assert table["columns"] == _committed("training_dynamics_runs")["columns"]
    assert table["rows"] == [["official", 1, 50, "no", 0.1475], ["jem_tf", 1, 50, "no", 0.172],
                             ["official", 2, 30, "yes, at step 30", None], ["jem_tf", 2, 50, "no", 0.129]]
    assert table["notes"][0].startswith("Diverged: official 1 of 2, jem_tf 0 of 2. Final test accuracy")
    curves_table = _check_shape("training_dynamics_curves", tmp_path / "training_dynamics_curves.json", tmp_path)
    assert curves_table["columns"] == _committed("training_dynamics_curves")["columns"]
    assert [row[:3] for row in curves_table["rows"]] == [["0–24", 2.2, 2.6], ["25–49", 2.2, 2.6]]
    assert "25-step windows" in curves_table["notes"][0]


def test_measure_quick_run_writes_the_quick_run_table(tmp_path, monkeypatch):
    def fake_run(objective, workdir):  # the two training runs are not run here
        metrics = dict(jem=(72.4, 0.9611), classifier=(10.2, 0.9667))[objective]
        return dict(objective=objective, wall_seconds=80.3 if objective == "jem" else 18.9,
                    metrics=dict(seconds_this_session=metrics[0], global_step=240, test_accuracy=metrics[1]))

    monkeypatch.setattr(measure_quick_run, "run_once", fake_run)
    write = results_json.write
    monkeypatch.setattr(measure_quick_run.results_json, "write",
                        lambda name, table, **kwargs: write(name, table, results=tmp_path))
    assert measure_quick_run.main([]) == 0
    data = _check_shape("quick_run", tmp_path / "quick_run.json", tmp_path)
    assert data["columns"] == _committed("quick_run")["columns"]
    assert data["rows"] == [["jem", 80, 72, 240, 0.961], ["classifier", 19, 10, 240, 0.967]]
    assert data["command"] == "python -m tools.measure_quick_run"


def test_training_writes_no_docs():
    # The quick-run table comes from tools.measure_quick_run; a training run never touches docs/.
    for module in ("jem_tf/train.py", "trainers/loop.py", "trainers/checkpointing.py", "trainers/recovery.py"):
        assert "docs/results" not in (REPO / module).read_text() and "results_json" not in (REPO / module).read_text()


def test_the_suites_counts_and_time_come_from_pytests_closing_line(tmp_path):
    log = "....F.s\n=========== 780 passed, 1 failed, 3 skipped, 2 warnings in 842.50s (0:14:02) ===========\n"
    counts = measure_test_suite.counts_of(log)
    assert counts == {"passed": 780, "failed": 1, "skipped": 3, "warnings": 2}
    assert measure_test_suite.counts_of("12 passed in 3.10s\n") == {"passed": 12}
    table = measure_test_suite.suite_table(counts, 842.5, "a training run",
                                           dict(commit="abc1234", machine="AMD EPYC, 2 CPUs, no AVX-512/AMX",
                                                date="d", command="c"),
                                           "python -m pytest")
    assert table["rows"] == [["abc1234", "python -m pytest", 1, 780, 1, 3, 14.0, "a training run",
                              "AVX2, no AVX-512/AMX"]]
    assert len(table["columns"]) == len(table["align"]) == len(table["rows"][0])
    with pytest.raises(ValueError, match="closing line"):
        measure_test_suite.counts_of("collected 0 items\n")
    (tmp_path / "log").write_text("no summary here\n")
    assert measure_test_suite.main([f"--log={tmp_path / 'log'}", "--seconds=1", "--commit=abc"]) == 2


def test_the_suites_table_keeps_every_measurement_newest_first(tmp_path):
    # Measured twice (and before and after a change): each measurement is a row; the oldest drop out.
    provenance = dict(commit="c1", machine="m", date="d", command="c")
    merged = None
    for commit, minutes in (("c1", 18), ("c2", 9), ("c2", 8)):
        number = measure_test_suite.next_number(merged, commit, "python -m pytest")
        table = measure_test_suite.suite_table({"passed": 5}, 60.0 * minutes, "", dict(provenance, commit=commit),
                                               "python -m pytest", number)
        merged = results_json.merge(merged, table, measure_test_suite.KEY_COLUMNS)
    newest = measure_test_suite.keep_newest(merged, max_rows=2)
    assert [(row[0], row[2], row[6]) for row in newest["rows"]] == [("c2", 2, 8.0), ("c2", 1, 9.0)]
    assert newest["commit"] == "c2"  # c1's row dropped out, and so did its commit
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.pytest.ini_options]\naddopts = "-ra -n 2"\n')
    assert measure_test_suite.pytest_command(["-q"], pyproject) == "python -m pytest -q (addopts: -ra -n 2)"
    # A run recorded from its log gets the addopts of the commit it ran, not the working tree's.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for command in (["init", "-q"], ["add", "pyproject.toml"], ["commit", "-qm", "addopts"]):
        subprocess.run(git + command, check=True, capture_output=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    pyproject.write_text('[tool.pytest.ini_options]\naddopts = "-ra -n 3"\n')
    assert measure_test_suite.pytest_command([], pyproject, commit) == "python -m pytest (addopts: -ra -n 2)"
    with pytest.raises(ValueError, match="--commit=0000000"):
        measure_test_suite.pytest_command([], pyproject, "0000000")


def test_the_suites_provenance_names_only_the_rows_kept_however_often_it_is_measured():
    # The tool merges each measurement into the committed table and keeps the newest rows: the
    # fields must not keep (and nest) the provenance of rows that dropped out.
    table = None
    for index in range(6):
        commit = f"c{index}"
        provenance = dict(commit=commit, machine=f"m{index % 2}", date=f"d{index}", command="c")
        new = measure_test_suite.suite_table({"passed": 5}, 60.0, "", provenance, "python -m pytest",
                                             measure_test_suite.next_number(table, commit, "python -m pytest"))
        table = measure_test_suite.keep_newest(results_json.merge(table, new, measure_test_suite.KEY_COLUMNS),
                                               max_rows=2)
    assert [row[0] for row in table["rows"]] == ["c5", "c4"]
    assert table["commit"] == "c5 [c5 python -m pytest 1] | c4 [c4 python -m pytest 1]"
    assert table["date"] == "d5 [c5 python -m pytest 1] | d4 [c4 python -m pytest 1]"


def test_rows_measured_before_the_cpu_column_get_their_cpu_from_their_recorded_machine():
    old = dict(commit="c1 [c1 pytest 1] | c0 [c0 pytest 1]", date="d", command="c",
               machine="Xeon, 2 CPUs, avx512f amx_tile amx_bf16 [c1 pytest 1] | "
                       "EPYC, 2 CPUs, no AVX-512/AMX [c0 pytest 1]",
               columns=measure_test_suite.COLUMNS_WITHOUT_CPU, align=["l"] * 8,
               rows=[["c1", "pytest", 1, 5, 0, 0, 9.0, "nothing"], ["c0", "pytest", 1, 5, 0, 0, 20.0, "nothing"]])
    upgraded = measure_test_suite.with_cpu_column(old)
    assert upgraded["columns"] == measure_test_suite.COLUMNS and len(upgraded["align"]) == 9
    assert [row[-1] for row in upgraded["rows"]] == ["AVX-512 and AMX", "AVX2, no AVX-512/AMX"]
    assert measure_test_suite.with_cpu_column(upgraded) is upgraded
