"""Measures the quick preset for both objectives and writes docs/results/quick_run.json (and the docs from it).

    python -m tools.measure_quick_run                  # a few minutes on 2 CPU cores; run it on a quiet machine

Runs `python -m jem_tf.train --preset=quick` and the same with `--objective=classifier`, one after the
other, each in a fresh temporary workdir, and records per objective the whole command's wall time
(start-up, training, test pass and export), the training time, the steps and the test accuracy (the
run's metrics.json), with the commit, machine, date and command line (`benchmarks.results_json`).
`jem_tf.train` itself never writes docs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import results_json

OBJECTIVES = ("jem", "classifier")
TRAIN_COMMAND = "python -m jem_tf.train --preset=quick [--objective=classifier]"
COLUMNS = ["objective", "whole command (s)", "training (s)", "steps", "test accuracy (360 held-out digits)"]


def run_once(objective: str, workdir: str) -> dict:
    """One quick run: {objective, wall_seconds, metrics (the run's metrics.json)}; RuntimeError if it fails."""
    command = [sys.executable, "-m", "jem_tf.train", "--preset=quick", f"--workdir={workdir}"]
    if objective != "jem":
        command.append(f"--objective={objective}")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    with open(os.path.join(workdir, "metrics.json")) as f:
        return dict(objective=objective, wall_seconds=wall, metrics=json.load(f))


def quick_run_table(measurements: list, provenance: dict) -> dict:
    """docs/results/quick_run.json's shape: one row per objective from `run_once`'s measurements."""
    rows = [[m["objective"], round(m["wall_seconds"]), round(m["metrics"]["seconds_this_session"]),
             m["metrics"]["global_step"], round(m["metrics"]["test_accuracy"], 3)] for m in measurements]
    return dict(**provenance, columns=COLUMNS, align=["l", "r", "r", "r", "r"],
                formats=[None, None, None, None, "{:.3f}"], rows=rows,
                notes=[f"Each row is one `{TRAIN_COMMAND}` run. Chance is 0.10. The whole command includes "
                       "start-up, the test pass and the export."])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results_json", default="quick_run",
                        help="write docs/results/NAME.json (default: %(default)s)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="quick_run_") as root:
        measurements = []
        for objective in OBJECTIVES:
            measurements.append(run_once(objective, os.path.join(root, objective)))
            print(f"{objective}: {measurements[-1]['wall_seconds']:.0f} s, "
                  f"test accuracy {measurements[-1]['metrics']['test_accuracy']:.3f}", flush=True)
    load = f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    command = "python -m tools.measure_quick_run" + ("" if args.results_json == "quick_run"
                                                      else f" --results_json={args.results_json}")
    provenance = results_json.provenance(command, results_json.machine(detail=load))
    path = results_json.write(args.results_json, quick_run_table(measurements, provenance))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
