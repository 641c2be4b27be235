"""Writes tests/file_seconds.json: how long each test file took in a measured run of the suite.
tests/conftest.py hands the xdist workers the longest files first, from this file, so that the
session does not end with one worker alone on a long file that happened to come last.

    python -m pytest --durations=0 -p no:cacheprovider > LOG
    python -m tools.suite_file_seconds --log=LOG --commit=SHA

A file's seconds are the sum of its tests' setup, call and teardown lines in pytest's
`--durations=0` report, averaged over the logs given (`--log` repeated); every test file is listed.
Rerun it after adding, renaming or much lengthening a test file: a file it does not list is handed
out first (it may be long), so a stale record costs balance, never a test.
Exit codes: 0 written; 2 bad arguments or a log without `--durations=0` lines.
"""

import argparse
import collections
import json
import os
import re
import sys

from benchmarks import results_json

OUTPUT = results_json.REPO / "tests" / "file_seconds.json"
DURATION = re.compile(r"^(?P<seconds>[\d.]+)s (?:setup|call|teardown)\s+(?P<file>[^\s:]+)::", re.MULTILINE)


def file_seconds(log_text: str) -> dict:
    """{test file: seconds} summed from the `--durations=0` lines of a pytest log."""
    totals = collections.Counter()
    for match in DURATION.finditer(log_text):
        totals[match["file"]] += float(match["seconds"])
    return dict(totals)


def mean_file_seconds(logs: list, test_files: list) -> dict:
    """The mean over `logs` of each file's seconds, longest first; every one of `test_files` is listed
    (0 where no test of it took the 5 ms pytest's report starts at)."""
    runs = [file_seconds(text) for text in logs]
    paths = set(test_files).union(*runs)
    means = {path: sum(run.get(path, 0.0) for run in runs) / len(runs) for path in paths}
    return {path: round(means[path], 1) for path in sorted(paths, key=lambda path: (-means[path], path))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", action="append", required=True,
                        help="a finished `python -m pytest --durations=0` run's output; repeat it to average runs")
    parser.add_argument("--commit", required=True, help="the commit those runs tested")
    parser.add_argument("--output", default=str(OUTPUT), help="where to write (default: tests/file_seconds.json)")
    args = parser.parse_args(argv)
    logs = []
    for path in args.log:
        with open(path) as f:
            logs.append(f.read())
        if not file_seconds(logs[-1]):
            sys.stderr.write(f"suite_file_seconds: {path} has no `--durations=0` lines ('1.23s call tests/...'); "
                             "run pytest with --durations=0.\n")
            return 2
    tests = results_json.REPO / "tests"
    test_files = sorted(path.relative_to(results_json.REPO).as_posix() for path in tests.glob("test_*.py"))
    seconds = mean_file_seconds(logs, test_files)
    command = f"python -m pytest --durations=0, per file: setup + call + teardown, mean of {len(logs)} run(s)"
    record = dict(commit=args.commit, command=command, seconds=seconds)
    partial = f"{args.output}.partial"  # renamed into place whole: a reader never sees half a file
    with open(partial, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    os.replace(partial, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
