"""Runs the whole test suite, times it and writes docs/results/test_suite.json (and the docs from it).

    python -m tools.measure_test_suite                     # the README's test command, timed
    python -m tools.measure_test_suite --log=FILE --seconds=S --commit=SHA --shared="what else ran"
                                                           # record a run made before from its log

The table holds the counts pytest printed on its closing line and the wall time, with the commit,
machine, date and the machine's load (a suite timed while other jobs shared the CPU says so: it is
slower, not a different suite). Exit codes: 0 written; 1 the suite failed (nothing written);
2 bad arguments or a log without pytest's closing line.
"""

import argparse
import os
import re
import subprocess
import sys
import time

from benchmarks import results_json

COLUMNS = ["passed", "failed", "skipped", "wall time (min)", "CPU shared with"]
SUMMARY = re.compile(r"^=* ?(?P<counts>(\d+ \w+(, )?)+) in (?P<seconds>[\d.]+)s")


def counts_of(log_text: str) -> dict:
    """pytest's closing line ('780 passed, 2 skipped in 812.3s ...') as {'passed': 780, 'skipped': 2, ...}."""
    for line in reversed(log_text.splitlines()):
        match = SUMMARY.match(line.strip())
        if match:
            return {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", match["counts"])}
    raise ValueError("no pytest closing line ('N passed ... in S s') in the log")


def suite_table(counts: dict, seconds: float, shared: str, provenance: dict) -> dict:
    row = [counts.get("passed", 0), counts.get("failed", 0) + counts.get("errors", 0) + counts.get("error", 0),
           counts.get("skipped", 0), round(seconds / 60, 1), shared or "nothing (quiet)"]
    return dict(**provenance, columns=COLUMNS, align=["r", "r", "r", "r", "l"], rows=[row],
                notes=["`python -m pytest` on the 2-core machine; a suite timed while other jobs shared the CPU "
                       "is slower, not shorter."])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", help="a finished `python -m pytest` run's output, instead of running it here")
    parser.add_argument("--seconds", type=float, help="with --log: the run's wall seconds")
    parser.add_argument("--commit", help="with --log: the commit it ran on")
    parser.add_argument("--shared", default="", help="what else ran on the CPU meanwhile (empty: nothing)")
    args = parser.parse_args(argv)
    if args.log and (args.seconds is None or not args.commit):
        parser.error("--log needs --seconds and --commit")
    if args.log:
        with open(args.log) as f:
            text, seconds = f.read(), args.seconds
        command = "python -m pytest (recorded from its log by python -m tools.measure_test_suite --log)"
    else:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], capture_output=True,
                              text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        text, seconds, command = done.stdout, time.perf_counter() - started, "python -m tools.measure_test_suite"
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + "\nThe suite failed: nothing written.\n")
            return 1
    try:
        counts = counts_of(text)
    except ValueError as error:
        sys.stderr.write(f"measure_test_suite: {error}\n")
        return 2
    provenance = results_json.provenance(command, results_json.machine(detail=args.shared or None))
    if args.commit:
        provenance["commit"] = args.commit
    path = results_json.write("test_suite", suite_table(counts, seconds, args.shared, provenance))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
