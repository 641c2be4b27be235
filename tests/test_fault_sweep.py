"""Every fault of the project's fault sweep (tests/fault_sweep.py, issue #15) as a test: the run
directory, the reference importer and the commands' exit codes survive each one (nothing lost, the
documented exit code, no traceback). `python tests/fault_sweep.py` runs the same faults and writes
the counts to docs/results/hostile_faults.json."""

import os
import shutil

import fault_sweep
import pytest


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_run):
    """The sweep's reference is a copy of the session's tiny run (a fault may write beside it). Its
    commands run in this process (one at a time here); `python tests/fault_sweep.py` runs them as
    processes, and test_a_command_fault_ends_the_same_in_a_process_of_its_own checks the two agree."""
    root = str(tmp_path_factory.mktemp("fault_sweep"))
    reference = os.path.join(root, "reference")
    shutil.copytree(tiny_run, reference)
    return fault_sweep.Sweep(root, reference=reference, in_process=True)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if group == "commands" or "command" in name else [])
    for name, (group, _) in fault_sweep.FAULTS.items()])
def test_the_fault_is_survived(sweep, name):
    outcome, detail, _ = fault_sweep.run_fault(sweep, name)
    if outcome == "skipped":
        pytest.skip(detail)
    assert outcome == "survived", detail


def test_the_sweeps_counts_become_the_docs_table():
    summary = {"faults_tried": 3, "faults_survived": 2,
               "by_group": {"run directory": {"tried": 2, "survived": 2}, "importer": {"tried": 1, "survived": 0}}}
    table = fault_sweep.table_of(summary)
    assert table["columns"] == ["faults", "tried", "survived"]
    assert table["rows"] == [["run directory", 2, 2], ["importer", 1, 0], ["all", 3, 2]]


@pytest.mark.slow
def test_a_command_fault_ends_the_same_in_a_process_of_its_own(tmp_path):
    """The sweep's commands run in process in the tests: one of them as a real process ends alike."""
    args = ("jem_tf.evaluate", "--workdir=")
    in_process = fault_sweep.Sweep(str(tmp_path), in_process=True).command(*args)
    process = fault_sweep.Sweep(str(tmp_path)).command(*args)
    assert in_process[0] == process[0] == 2
    assert "--workdir='' is empty" in in_process[1] and "--workdir='' is empty" in process[1]
    assert "Traceback" not in in_process[1] + process[1]
