"""The train-step benchmark runs end to end on a tiny network and prints a complete table.

Only that it works is checked; the numbers it prints are measurements, not test expectations.
"""

import json

import pytest
from absl import flags

from benchmarks import train_step

TINY = [
    "--depth=10", "--width=1", "--image_size=8", "--channels=1", "--num_classes=4", "--batch_size=4",
    "--sgld_steps=2", "--repeats=1", "--warmup=1", "--matmul_size=128",
]


def _table_rows(output):
    """Markdown table rows as lists of cells, header and separator excluded."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("|")
    ]
    return rows[2:]


def _run(tmp_path, capsys):
    flag_values = flags.FlagValues()
    train_step.define_flags(flag_values)
    output_json = tmp_path / "benchmark.json"
    flag_values(["train_step"] + TINY + [f"--output_json={output_json}"])
    train_step.main(["train_step"], flag_values=flag_values)
    with open(output_json) as f:
        return capsys.readouterr().out, json.load(f)


def test_tiny_benchmark_prints_every_row_with_positive_numbers(tmp_path, capsys):
    output, results = _run(tmp_path, capsys)
    rows = _table_rows(output)
    assert [row[0] for row in rows] == list(train_step.ROW_NAMES)
    for row in rows:
        gflop, median_ms, min_ms, max_ms, cpu_per_wall, gflops, best_gflops = (float(cell) for cell in row[2:9])
        assert gflop > 0 and gflops > 0 and best_gflops >= gflops and cpu_per_wall > 0, row
        assert 0 < min_ms <= median_ms <= max_ms, row
        assert row[9].endswith("%") and float(row[9][:-1]) > 0 and float(row[10]) > 0, row
    assert "FLOP convention" in output and "Matmul ceiling" in output

    by_name = {row["name"]: row for row in results["rows"]}
    forward = results["forward_gflop_per_image"] * 4
    assert by_name["forward"]["gflop_per_call"] == pytest.approx(forward)
    assert by_name["SGLD step"]["gflop_per_call"] == pytest.approx(3 * forward)
    assert by_name["JEM iteration"]["gflop_per_call"] == pytest.approx(2 * 3 * forward + 3 * 2 * forward)
    assert by_name["classifier iteration"]["gflop_per_call"] == pytest.approx(3 * forward)
    assert all(row["gflops_per_s"] > 0 and row["median_ms"] > 0 for row in results["rows"])
    assert results["matmul_ceiling_gflops"] > 0
    # The analytic count and TensorFlow's profiler agree up to the bias and residual adds.
    assert results["profiler_forward_gflop_per_image"] == pytest.approx(results["forward_gflop_per_image"], rel=0.1)


def test_flop_count_of_a_known_graph():
    import tensorflow as tf

    def network(x):
        kernel = tf.ones([3, 3, 2, 5])
        hidden = tf.nn.conv2d(x, kernel, strides=2, padding="SAME")  # [1, 4, 4, 5]
        return tf.linalg.matmul(tf.reshape(hidden, [1, 80]), tf.ones([80, 7]))

    graph = tf.function(network).get_concrete_function(tf.TensorSpec([1, 8, 8, 2])).graph
    assert train_step.count_graph_flops(graph) == 2 * (4 * 4 * 5 * 3 * 3 * 2) + 2 * (80 * 7)


def test_compare_jit_measures_xla_off_then_on():
    flag_values = flags.FlagValues()
    train_step.define_flags(flag_values)
    flag_values(["train_step", "--compare_jit", "--jit_compile"])
    assert train_step.settings_from_flags(flag_values).jit_settings == (False, True)
    flag_values(["train_step", "--nocompare_jit", "--jit_compile"])
    assert train_step.settings_from_flags(flag_values).jit_settings == (True,)


@pytest.mark.parametrize("jit", [False, True])
def test_the_timed_jem_uses_the_requested_sampler_compilation(jit):
    # The XLA rows must time the sampler they are labelled with.
    settings = train_step.Settings(depth=10, width=1, batch_size=4, sgld_steps=1, image_size=8, channels=1,
                                   num_classes=4)
    model, _ = train_step.build_for_timing(train_step.train_config(settings, "jem", jit), settings)
    assert model.sgld_jit_compile is jit
