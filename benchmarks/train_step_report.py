"""The markdown report of `benchmarks.train_step`'s measurements (printed; the docs table is
`benchmarks.results_json.train_step_table`)."""

from benchmarks.flop_count import INPUT_GRADIENT_MULTIPLIER, PASS_MULTIPLIER


def _number(value):
    """One decimal from 1 up, three significant digits below (tiny settings stay non-zero)."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def format_table(results: dict) -> str:
    """The markdown report: a settings header, the table, the FLOP convention, the SGLD step
    against the matmul ceilings, and the op-type breakdowns when profiled."""
    s = results["settings"]
    env = results["environment"]
    height, width, channels = s["image_shape"]
    profiled = results["profiler_forward_gflop_per_image"]
    ceilings = results["matmul_ceilings_gflops"]
    lines = [
        f"### WRN-{s['depth']}-{s['width']}, batch {s['batch_size']}, {s['sgld_steps']} SGLD steps, "
        f"{height}x{width}x{channels}, {s['num_classes']} classes",
        "",
        f"TensorFlow {env['tensorflow']}, Keras {env['keras']}; {env['cpu_count']} CPU(s) ({env['processor']}; "
        f"{' '.join(env['cpu_flags']) or 'no AVX-512/AMX flags'}); "
        f"intra-op threads {env['intra_op_threads']}, inter-op {env['inter_op_threads']}; "
        f"load average {env['load_average_before'][0]:.2f} before, {env['load_average_after'][0]:.2f} after; "
        f"{s['repeats']} timed rounds after {s['warmup']} warm-up call(s) per row.",
        "",
        f"Forward FLOPs per image: {results['forward_gflop_per_image']:.4f} GFLOP (analytic: 2 x MACs of the "
        "Conv2D/MatMul ops of the traced graph"
        + (f"; tf.profiler float_ops: {profiled:.4f}, incl. bias/residual adds)." if profiled else ")."),
        "Matmul ceilings: " + "; ".join(f"{dtype} {value:.1f} GFLOP/s" for dtype, value in ceilings.items())
        + f" (best {s['matmul_size']}^3 matmul of the run in each dtype).",
        "",
        "| measurement | precision | XLA | GFLOP/call | median ms | min ms | max ms | CPU/wall | GFLOP/s (median) "
        "| GFLOP/s (min ms) | of matmul ceiling | strict GFLOP/s | strict, of ceiling | GFLOP per CPU-s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        strict = "strict_gflops_per_s" in row
        strict_rate = _number(row["strict_gflops_per_s"]) if strict else "-"
        strict_share = f"{100 * row['strict_fraction_of_matmul_ceiling']:.0f}%" if strict else "-"
        lines.append(
            f"| {row['name']} | {row['precision']} | {row['xla']} | {_number(row['gflop_per_call'])} | "
            f"{_number(row['median_ms'])} | {_number(row['min_ms'])} | {_number(row['max_ms'])} | "
            f"{row['cpu_per_wall']:.2f} | {_number(row['gflops_per_s'])} | {_number(row['best_gflops_per_s'])} | "
            f"{100 * row['fraction_of_matmul_ceiling']:.0f}% | "
            f"{strict_rate} | {strict_share} | "
            f"{_number(row['gflop_per_cpu_s'])} |"
        )
    lines += [
        "",
        f"FLOP convention: forward+backward = {PASS_MULTIPLIER} x forward for a training pass and for an SGLD "
        f"step; JEM iteration = steps x {PASS_MULTIPLIER}F(B) + {PASS_MULTIPLIER}F(2B); optimizer, buffer "
        "and elementwise work not counted. Strict count: an SGLD step needs only the forward pass and the "
        f"gradient with respect to the input, {INPUT_GRADIENT_MULTIPLIER}F(B). SGLD step = (time of a chain) / "
        "steps. 'of matmul ceiling' = GFLOP/s (median) / the matmul ceiling of the row's compute dtype "
        "(float32 for float32, bfloat16 for mixed_bfloat16, float16 for mixed_float16). CPU/wall = cores the "
        "process had (TensorFlow's default: one thread per core); GFLOP per CPU-s = FLOPs / median process CPU "
        "time, which other load on the machine inflates much less than wall time.",
        "",
    ]
    for row in results["rows"]:
        if row["name"] == "SGLD step":
            lines.append(
                f"SGLD step, {row['precision']}, XLA {row['xla']}: {row['strict_gflops_per_s']:.1f} GFLOP/s under the "
                f"strict {INPUT_GRADIENT_MULTIPLIER}F count = {100 * row['strict_fraction_of_matmul_ceiling']:.0f}% of "
                f"the same-run {row['compute_dtype']} matmul ceiling ({row['matmul_ceiling_gflops']:.1f} GFLOP/s)."
            )
    for profile in results.get("profiles", []):
        lines += [
            "",
            f"#### Op types of one JEM iteration ({profile['precision']}, XLA {profile['xla']}); "
            f"trace in {profile['trace_dir']}",
            "",
            "| op type | ops run | ms (summed over threads) | share |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {op['op_type']} | {op['count']} | {_number(op['milliseconds'])} | {100 * op['fraction']:.1f}% |"
                  for op in profile["op_types"]]
    return "\n".join(lines)


RESULTS_COLUMNS = ["model", "precision", "SGLD step", "SGLD GFLOP/s (strict 2F)", "matmul ceiling (row's dtype)",
                   "share of ceiling", "JEM iteration"]


def results_table(results: dict, provenance: dict) -> dict:
    """The docs table (docs/results/train_step_wrn16.json's shape): per precision and XLA setting, the
    SGLD step (median), its GFLOP/s under the strict 2F count against the same run's matmul ceiling in
    the row's compute dtype, and the JEM iteration (median)."""
    s = results["settings"]
    rows, by_key = [], {}
    for row in results["rows"]:
        by_key.setdefault((row["precision"], row["xla"]), {})[row["name"]] = row
    for (precision, xla), named in by_key.items():
        sgld, jem = named.get("SGLD step"), named.get("JEM iteration")
        if not sgld or not jem:
            continue
        rows.append([f"WRN-{s['depth']}-{s['width']}", precision + (", XLA" if xla == "on" else ""),
                     round(sgld["median_ms"]), round(sgld["strict_gflops_per_s"], 1),
                     round(sgld["matmul_ceiling_gflops"]), round(100 * sgld["strict_fraction_of_matmul_ceiling"]),
                     round(jem["median_ms"] / 1e3, 2)])
    return dict(**provenance, columns=RESULTS_COLUMNS, align=["l", "l", "r", "r", "r", "r", "r"],
                formats=[None, None, "{} ms", "{}", "{} GFLOP/s", "{} %", "{:.2f} s"], rows=rows)
