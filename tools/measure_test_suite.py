"""Runs the whole test suite, times it and writes docs/results/test_suite.json (and the docs from it).

    python -m tools.measure_test_suite                     # the README's test command, timed
    python -m tools.measure_test_suite --log=FILE --seconds=S --commit=SHA --shared="what else ran"
                                                           # record a run made before from its log

Each measurement is one row: the commit, the pytest command with the options pyproject.toml adds
to it (`addopts`), which measurement of that commit and command it is, the counts pytest printed
on its closing line, the wall time and what else shared the CPU (a suite timed while other jobs
ran says so: it is slower, not a different suite). Rows of earlier measurements are kept (the
newest MAX_ROWS), so that a figure measured twice shows both times and a change's before and after
sit side by side; the dates stay in the JSON's provenance, not in the page.
Exit codes: 0 written; 1 the suite failed (nothing written); 2 bad arguments or a log without
pytest's closing line.
"""

import argparse
import os
import re
import subprocess
import sys
import time
import tomllib

from benchmarks import results_json
from tools import results_tables

COLUMNS = ["commit", "command", "measurement", "passed", "failed", "skipped", "wall time (min)",
           "CPU shared with", "CPU's wide vector units"]
# The table before it named the CPU: its rows are carried over with the CPU read from their provenance.
COLUMNS_WITHOUT_CPU = COLUMNS[:-1]
KEY_COLUMNS = 3  # commit, command and the measurement's number: every measurement is its own row
MAX_ROWS = 6
PYPROJECT = results_json.REPO / "pyproject.toml"
SUMMARY = re.compile(r"^=* ?(?P<counts>(\d+ \w+(, )?)+) in (?P<seconds>[\d.]+)s")


def counts_of(log_text: str) -> dict:
    """pytest's closing line ('780 passed, 2 skipped in 812.3s ...') as {'passed': 780, 'skipped': 2, ...}."""
    for line in reversed(log_text.splitlines()):
        match = SUMMARY.match(line.strip())
        if match:
            return {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", match["counts"])}
    raise ValueError("no pytest closing line ('N passed ... in S s') in the log")


def pytest_command(extra_args=(), pyproject=PYPROJECT, commit=None) -> str:
    """`python -m pytest` with the options pyproject.toml's `addopts` adds to every run (e.g. `-n 2`):
    the file's at `commit` (a run recorded from its log may have run another commit's), else the
    working tree's. ValueError when git cannot show the commit's file."""
    if commit:
        shown = subprocess.run(["git", "show", f"{commit}:{os.path.basename(pyproject)}"],
                               cwd=os.path.dirname(os.path.abspath(pyproject)), capture_output=True, text=True)
        if shown.returncode != 0:
            raise ValueError(f"--commit={commit}: git cannot show its pyproject.toml: {shown.stderr.strip()}")
        text = shown.stdout
    else:
        with open(pyproject) as f:
            text = f.read()
    addopts = tomllib.loads(text).get("tool", {}).get("pytest", {}).get("ini_options", {}).get("addopts", "")
    return " ".join(["python -m pytest", *extra_args]) + (f" (addopts: {addopts})" if addopts else "")


def vector_units(machine_text: str) -> str:
    """What of a machine description (`results_json.machine`) decides the suite's speed most between
    the project's machines: AMX and AVX-512 (bfloat16 in hardware), or neither."""
    if "amx_bf16" in machine_text:
        return "AVX-512 and AMX"
    if "avx512" in machine_text:
        return "AVX-512"
    return "AVX2, no AVX-512/AMX" if "no AVX-512/AMX" in machine_text else "unknown"


def suite_table(counts: dict, seconds: float, shared: str, provenance: dict, command: str, number: int = 1) -> dict:
    row = [provenance["commit"], command, number, counts.get("passed", 0),
           counts.get("failed", 0) + counts.get("errors", 0) + counts.get("error", 0), counts.get("skipped", 0),
           round(seconds / 60, 1), shared or "nothing (quiet)", vector_units(provenance["machine"])]
    return dict(**provenance, columns=COLUMNS, align=["l", "l", "l", "r", "r", "r", "r", "l", "l"], rows=[row],
                notes=["The whole suite on the 2-core machine, newest first; a suite timed while other jobs shared "
                       "the CPU is slower, not shorter, and the machine itself differs from session to session "
                       "(the last column; the JSON has each row's machine): compare rows of one kind of CPU."])


def with_cpu_column(old: dict | None) -> dict | None:
    """A table written before the CPU column, with each row's CPU read from its recorded machine."""
    if not old or old.get("columns") != COLUMNS_WITHOUT_CPU:
        return old
    labels = [results_json.row_label(row, KEY_COLUMNS) for row in old["rows"]]
    machine_of = {label: text for text, named in results_json.rows_of_field(old["machine"], labels).items()
                  for label in named}
    rows = [[*row, vector_units(machine_of[label])] for row, label in zip(old["rows"], labels)]
    return dict(old, columns=COLUMNS, align=[*old["align"], "l"], rows=rows)


def next_number(old: dict | None, commit: str, command: str) -> int:
    """1 + how often this commit and command were measured before (the dates stay in the JSON's provenance)."""
    rows = (old or {}).get("rows", []) if (old or {}).get("columns") == COLUMNS else []
    return 1 + sum(row[:2] == [commit, command] for row in rows)


def keep_newest(table: dict, max_rows: int = MAX_ROWS) -> dict:
    """The merged table (newest rows first, as `results_json.merge` keeps them) cut to `max_rows`, its
    provenance fields naming only the rows kept."""
    return results_json.keep_rows(table, table["rows"][:max_rows], KEY_COLUMNS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", help="a finished `python -m pytest` run's output, instead of running it here")
    parser.add_argument("--seconds", type=float, help="with --log: the run's wall seconds")
    parser.add_argument("--commit", help="with --log: the commit it ran on")
    parser.add_argument("--shared", default="", help="what else ran on the CPU meanwhile (empty: nothing)")
    parser.add_argument("--pytest_args", default="", help="with --log: the options the run added to `python -m "
                        "pytest` (e.g. '-p no:cacheprovider'); without --log: options to add")
    args = parser.parse_args(argv)
    if args.log and (args.seconds is None or not args.commit):
        parser.error("--log needs --seconds and --commit")
    extra_args = args.pytest_args.split()
    if args.log:
        with open(args.log) as f:
            text, seconds = f.read(), args.seconds
        how = "recorded from its log by python -m tools.measure_test_suite --log"
    else:
        extra_args = extra_args or ["-q", "-p", "no:cacheprovider"]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", *extra_args], capture_output=True,
                              text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        text, seconds = done.stdout, time.perf_counter() - started
        how = "timed by python -m tools.measure_test_suite"
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + "\nThe suite failed: nothing written.\n")
            return 1
    try:
        counts = counts_of(text)
        command = pytest_command(extra_args, commit=args.commit)
    except ValueError as error:
        sys.stderr.write(f"measure_test_suite: {error}\n")
        return 2
    provenance = results_json.provenance(f"python -m pytest, {how}", results_json.machine(detail=args.shared or None))
    if args.commit:
        provenance["commit"] = args.commit
    existing = results_tables.RESULTS / "test_suite.json"
    old = with_cpu_column(results_tables.load("test_suite", results_tables.RESULTS) if existing.is_file() else None)
    table = suite_table(counts, seconds, args.shared, provenance, command,
                        next_number(old, provenance["commit"], command))
    path = results_json.write("test_suite", keep_newest(results_json.merge(old, table, KEY_COLUMNS)))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
