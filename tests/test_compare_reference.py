"""benchmarks.compare_reference: the quietness filter, ratio and report on fake timings (no torch),
refusal of bad input, and a smoke run against the real reference code where torch and a checkout of
it are available (JEM_TORCH_PYTHON, JEM_REFERENCE_DIR)."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from absl import flags
from reference_env import REFERENCE_DIR, TORCH_PYTHON, torch_and_reference_missing

from benchmarks import compare_reference, machine_load, reference_report

REPO = Path(__file__).resolve().parents[1]


def _sample(seconds, load, sgld=None):
    return dict(wall_seconds=seconds, cpu_seconds=seconds, other_load=load,
                sgld_step_seconds=seconds / 10 if sgld is None else sgld)


SETTINGS = dict(depth=16, width=2, batch_size=64, sgld_steps=20, threads=2, rounds=2, samples_per_round=2, warmup=1,
                ours_flags=[])
CPU = dict(model="Test CPU", num_cpus=2, isa_flags=["avx2", "avx512f"], lscpu=None)


def test_ratio_uses_only_quiet_samples():
    samples = {
        # A loud sample (other load 0.9) that would move either median is left out.
        "official": [_sample(10.0, 0.02), _sample(12.0, 0.05), _sample(1.0, 0.9), _sample(11.0, None)],
        "jem_tf": [_sample(5.0, 0.0), _sample(6.0, 0.08), _sample(50.0, 0.5)],
    }
    report = reference_report.build_report(samples, SETTINGS, CPU, {}, max_other_load=0.1, min_quiet_samples=2)
    official, ours = report["sides"]["official"], report["sides"]["jem_tf"]
    assert (official["num_quiet"], official["num_samples"], ours["num_quiet"]) == (2, 4, 2)
    assert official["iteration_quiet"]["median"] == pytest.approx(11.0)
    assert ours["iteration_quiet"]["median"] == pytest.approx(5.5)
    assert report["valid"] and report["iteration_ratio"] == pytest.approx(0.5)
    assert report["sgld_step_ratio"] == pytest.approx(0.5)
    assert official["iteration_all"]["median"] == pytest.approx(10.5)
    text = reference_report.format_report(report)
    assert "Ratio jem_tf / official, JEM iteration (quiet medians): 0.500" in text and "2.00x as fast" in text
    assert "| official (PyTorch) | 2 / 4 | 11 s (min 10)" in text
    assert "Test CPU, 2 CPU(s); ISA: avx2 avx512f" in text and "WRN-16-2, batch 64, 20 SGLD steps" in text


def test_a_busy_machine_gives_no_ratio_and_says_so():
    samples = {"official": [_sample(10.0, 0.02), _sample(9.0, 0.5)], "jem_tf": [_sample(5.0, 0.6)]}
    report = reference_report.build_report(samples, SETTINGS, CPU, {}, max_other_load=0.1, min_quiet_samples=1)
    assert not report["valid"] and report["iteration_ratio"] is None
    assert report["iteration_ratio_all_samples"] == pytest.approx(5.0 / 9.5)
    text = reference_report.format_report(report)
    assert "No valid ratio" in text and "NOT a speed claim" in text and "Ratio jem_tf / official" not in text


def test_rounds_alternate_abba():
    assert [reference_report.round_order(r)[0] for r in range(4)] == ["official", "jem_tf", "official", "jem_tf"]


@pytest.mark.parametrize("flag", ["--depth=28", "--nocompare_jit", "--threads=4", "jit_compile", "--precision=x"])
def test_our_side_cannot_change_what_both_sides_share(flag):
    with pytest.raises(ValueError, match="is not accepted"):
        compare_reference.check_ours_flags([flag])
    assert compare_reference.check_ours_flags(["--jit_compile", "--inter_op_threads=1"])


def test_other_load_from_proc_stat_readings(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 50 0 25 500 0 0 0 0\n")
    hertz = os.sysconf("SC_CLK_TCK")
    before = machine_load.read_cpu_times(str(stat))
    assert before["user"] == pytest.approx(100 / hertz) and before["idle"] == pytest.approx(1000 / hertz)
    # 2 s on 2 CPUs: 4 CPU-seconds. Busy 3 s, of which 1 s was ours; 0.4 s stolen.
    after = dict(before, user=before["user"] + 2.5, system=before["system"] + 0.5, steal=before["steal"] + 0.4)
    load = machine_load.other_load(before, after, own_cpu_seconds=1.0, wall_seconds=2.0, num_cpus=2)
    assert load["other_load"] == pytest.approx((3.0 - 1.0 + 0.4) / 4.0)
    assert load["steal_fraction"] == pytest.approx(0.1)
    assert machine_load.is_quiet(load, 0.6) and not machine_load.is_quiet(load, 0.5)
    unknown = machine_load.other_load(None, after, 1.0, 2.0, 2)
    assert unknown["other_load"] is None and not machine_load.is_quiet(unknown, 1.0)


def test_measure_reports_wall_cpu_and_a_load_fraction(monkeypatch):
    sample = machine_load.measure(lambda: sum(i * i for i in range(200_000)))
    assert sample["result"] == 199_999 * 200_000 * 399_999 // 6  # the sum of squares below n, in closed form
    assert sample["wall_seconds"] > 0 and sample["cpu_seconds"] > 0
    assert machine_load.cpu_description()["num_cpus"] == os.cpu_count()
    # With known clocks and /proc/stat readings: 2 s wall on 2 CPUs, 1 s of it our CPU time, the machine
    # busy 3 s and 0.4 s stolen, so the others used (3 - 1 + 0.4) / 4 of it.
    before = dict.fromkeys(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), 100.0)
    after = dict(before, user=102.5, system=100.5, steal=100.4)
    readings = iter([before, after])
    monkeypatch.setattr(machine_load, "read_cpu_times", lambda: next(readings))
    monkeypatch.setattr(machine_load, "time", types.SimpleNamespace(perf_counter=iter([10.0, 12.0]).__next__,
                                                                    process_time=iter([5.0, 6.0]).__next__))
    sample = machine_load.measure(lambda: "done", num_cpus=2)
    assert (sample["result"], sample["wall_seconds"], sample["cpu_seconds"]) == ("done", 2.0, 1.0)
    assert sample["other_load"] == pytest.approx(0.6) and sample["steal_fraction"] == pytest.approx(0.1)


def _cli(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "benchmarks.compare_reference", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bad_reference_dir_or_python_exits_2_naming_it(tmp_path):
    result = _cli(f"--reference_dir={tmp_path}", f"--torch_python={sys.executable}")
    assert result.returncode == 2 and f"--reference_dir='{tmp_path}' is not a checkout" in result.stderr
    assert "Traceback" not in result.stderr
    fake_checkout = tmp_path / "JEM"
    fake_checkout.mkdir()
    (fake_checkout / "train_wrn_ebm.py").write_text("")
    result = _cli(f"--reference_dir={fake_checkout}", f"--torch_python={tmp_path / 'no_python'}")
    assert result.returncode == 2 and "--torch_python=" in result.stderr and "cannot be run" in result.stderr


@pytest.mark.slow
def test_a_crashing_worker_exits_1_naming_its_log(tmp_path):
    # A "Python" that passes the torch probe (-c ...) but dies when started as the timing worker.
    fake_python = tmp_path / "fake_python"
    fake_python.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo 2.0; exit 0; fi\n'
                           'echo "worker exploded" >&2; exit 7\n')
    fake_python.chmod(0o755)
    checkout = tmp_path / "JEM"
    checkout.mkdir()
    (checkout / "train_wrn_ebm.py").write_text("")
    result = _cli(f"--reference_dir={checkout}", f"--torch_python={fake_python}", "--depth=10", "--width=1")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the official worker exited with code 7" in result.stderr and "official.log" in result.stderr
    assert "worker exploded" in result.stderr and "Traceback" not in result.stderr


def test_flags_parse_with_defaults():
    flag_values = flags.FlagValues()
    compare_reference.define_flags(flag_values)
    flag_values(["compare_reference", "--reference_dir=x", "--ours_flag=--jit_compile", "--ours_flag=--repeats=3"])
    assert (flag_values.depth, flag_values.width, flag_values.batch_size, flag_values.sgld_steps) == (16, 2, 64, 20)
    assert flag_values.threads == 2 and flag_values.ours_flag == ["--jit_compile", "--repeats=3"]
    with pytest.raises(ValueError, match="--repeats"):
        compare_reference.check_ours_flags(flag_values.ours_flag)


def test_our_side_gets_the_shared_settings_and_the_precision():
    flag_values = flags.FlagValues()
    compare_reference.define_flags(flag_values)
    flag_values(["compare_reference", "--depth=10", "--width=1", "--batch_size=4", "--sgld_steps=2"])
    step_flags = compare_reference.our_step_flags(flag_values)
    parsed = compare_reference.parse_step_flags(step_flags)
    assert (parsed.depth, parsed.width, parsed.batch_size, parsed.sgld_steps, parsed.image_size) == (10, 1, 4, 2, 32)
    # float32 is train_step's default: nothing is passed, so a train_step without --precision runs too.
    assert not [flag for flag in step_flags if flag.startswith("--precision")]
    flag_values(["compare_reference", "--precision=mixed_bfloat16"])
    assert "--precision=mixed_bfloat16" in compare_reference.our_step_flags(flag_values)
    flag_values(["compare_reference", "--precision=float32", "--ours_flag=--no_such_flag=1"])
    with pytest.raises(ValueError, match="no_such_flag"):
        compare_reference.parse_step_flags(compare_reference.our_step_flags(flag_values))


@pytest.mark.slow
@pytest.mark.skipif(bool(torch_and_reference_missing()), reason=torch_and_reference_missing() or "available")
def test_smoke_against_the_reference_code(tmp_path):
    output = tmp_path / "comparison.json"
    result = _cli(f"--reference_dir={REFERENCE_DIR}", f"--torch_python={TORCH_PYTHON}", "--depth=10", "--width=1",
                  "--batch_size=4", "--sgld_steps=2", "--rounds=1", "--samples_per_round=1", "--warmup=1",
                  "--max_other_load=1", "--min_quiet_samples=1", f"--output_json={output}")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(output.read_text())
    for side in ("official", "jem_tf"):
        (sample,) = report["samples"][side]
        assert sample["wall_seconds"] > 0 and sample["sgld_step_seconds"] > 0
    assert report["versions"]["torch"] and report["versions"]["tensorflow"]
    assert report["iteration_ratio"] > 0
    assert "| official (PyTorch) | 1 / 1 |" in result.stdout and "| jem_tf | 1 / 1 |" in result.stdout
    assert "Ratio jem_tf / official" in result.stdout and "CPU:" in result.stdout
