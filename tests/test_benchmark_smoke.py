"""The train-step benchmark runs end to end on a tiny network and prints a complete table.

Only that it works is checked; the numbers it prints are measurements, not test expectations.
"""

import json
import os

import pytest
from absl import app, flags

from benchmarks import flop_count, op_profile, step_cases, train_step

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


def _run(tmp_path, capsys, *extra):
    flag_values = flags.FlagValues()
    train_step.define_flags(flag_values)
    output_json = tmp_path / "benchmark.json"
    flag_values(["train_step"] + TINY + [f"--output_json={output_json}", *extra])
    train_step.main(["train_step"], flag_values=flag_values)
    with open(output_json) as f:
        return capsys.readouterr().out, json.load(f)


def test_tiny_benchmark_prints_every_row_with_positive_numbers(tmp_path, capsys):
    output, results = _run(tmp_path, capsys)
    rows = _table_rows(output)
    assert [row[0] for row in rows] == list(train_step.ROW_NAMES)
    for row in rows:
        assert row[1] == "float32", row
        gflop, median_ms, min_ms, max_ms, cpu_per_wall, gflops, best_gflops = (float(cell) for cell in row[3:10])
        assert gflop > 0 and gflops > 0 and best_gflops >= gflops and cpu_per_wall > 0, row
        assert 0 < min_ms <= median_ms <= max_ms, row
        assert row[10].endswith("%") and float(row[10][:-1]) > 0 and float(row[13]) > 0, row
        if row[0] in ("SGLD step", "JEM iteration"):
            assert float(row[11]) > 0 and row[12].endswith("%"), row
        else:
            assert row[11] == row[12] == "-", row
    assert "FLOP convention" in output and "Matmul ceilings: float32" in output
    assert "SGLD step, float32, XLA off:" in output and "strict 2F count" in output

    by_name = {row["name"]: row for row in results["rows"]}
    forward = results["forward_gflop_per_image"] * 4
    assert by_name["forward"]["gflop_per_call"] == pytest.approx(forward)
    assert by_name["SGLD step"]["gflop_per_call"] == pytest.approx(3 * forward)
    assert by_name["SGLD step"]["strict_gflop_per_call"] == pytest.approx(2 * forward)
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
    assert flop_count.count_graph_flops(graph) == 2 * (4 * 4 * 5 * 3 * 3 * 2) + 2 * (80 * 7)


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
    model, _ = step_cases.build_for_timing(step_cases.train_config(settings, "jem", jit), settings)
    assert model.sgld_jit_compile is jit


def test_precisions_get_their_own_rows_and_matmul_ceilings_and_profiles(tmp_path, capsys):
    output, results = _run(tmp_path, capsys, "--precision=float32,mixed_bfloat16",
                           f"--profile_dir={tmp_path / 'profile'}", "--top_op_types=5")
    rows = [(row["name"], row["precision"]) for row in results["rows"]]
    assert rows[:2] == [("matmul", "float32"), ("matmul", "bfloat16")]
    for precision in ("float32", "mixed_bfloat16"):
        assert [name for name, p in rows[2:] if p == precision] == list(train_step.ROW_NAMES[1:])
    assert set(results["matmul_ceilings_gflops"]) == {"float32", "bfloat16"}
    sgld = {row["precision"]: row for row in results["rows"] if row["name"] == "SGLD step"}
    # Each precision is compared with the ceiling of the dtype it computes in.
    assert sgld["mixed_bfloat16"]["matmul_ceiling_gflops"] == results["matmul_ceilings_gflops"]["bfloat16"]
    assert sgld["float32"]["matmul_ceiling_gflops"] == results["matmul_ceilings_gflops"]["float32"]
    assert "SGLD step, mixed_bfloat16, XLA off:" in output and "bfloat16 matmul ceiling" in output

    assert [(p["precision"], p["xla"]) for p in results["profiles"]] == [("float32", "off"), ("mixed_bfloat16", "off")]
    for profile in results["profiles"]:
        op_types = [op["op_type"] for op in profile["op_types"]]
        assert len(op_types) <= 6 and op_types[-1].startswith("other")
        # A JEM iteration is convolutions, forward and backward: together they lead the breakdown.
        # (Not any single one: at this size one iteration's ops take microseconds, and the optimizer's
        # forty variable updates outran the forward convolution once when the other core was busy.)
        shares = {op["op_type"]: op["fraction"] for op in profile["op_types"]}
        convolutions = sum(share for op_type, share in shares.items() if "Conv2D" in op_type)
        assert convolutions > max(share for op_type, share in shares.items() if "Conv2D" not in op_type), shares
        assert sum(op["fraction"] for op in profile["op_types"]) == pytest.approx(1.0)
        assert all(op["milliseconds"] > 0 and op["count"] > 0 for op in profile["op_types"])
        assert not set(op_types) & op_profile.CONTAINER_OP_TYPES
        assert os.listdir(os.path.join(profile["trace_dir"], "plugins", "profile"))
    assert "#### Op types of one JEM iteration (mixed_bfloat16, XLA off)" in output


@pytest.mark.parametrize("event,op_type", [
    ("model/stem/Conv2D:_MklNativeConv2DWithBias", "_MklNativeConv2DWithBias"),
    ("while:While", "While"),
    ("ExecutorState::Process", None),
    ("EagerLocalExecute: __inference_step_14", None),
    ("ThreadpoolListener::StartRegion", None),
    ("MemoryAllocation", None),
])
def test_op_type_of_trace_events(event, op_type):
    assert op_profile._op_type(event) == op_type


def test_unknown_precision_is_a_usage_error():
    flag_values = flags.FlagValues()
    train_step.define_flags(flag_values)
    flag_values(["train_step", "--precision=float32,float64"])
    with pytest.raises(app.UsageError, match="float64"):
        train_step.settings_from_flags(flag_values)
