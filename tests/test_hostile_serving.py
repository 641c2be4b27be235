"""The hostile-input sweep (tests/hostile_inputs.py) refuses or correctly answers everything, through
the TensorFlow-only Python path and the C++ loader, under its memory and time limits."""

import hostile_inputs
import pytest


@pytest.mark.slow
def test_every_hostile_serving_input_is_refused_cleanly_or_answered(tmp_path):
    report = hostile_inputs.sweep(str(tmp_path), warm=True)
    failures = {path: {case["name"]: case[path] for case in report["cases"] if case[path].startswith("failed")}
                for path in report["counts"]}
    assert not any(failures.values()), failures
    for path, counts in report["counts"].items():
        assert counts["tried"] == counts["refused_cleanly"] + counts["answered"], (path, counts)
        # The issue-15 inputs are among them, and the only answered one is the valid refinement.
        assert counts["answered"] == 1, (path, counts)
    names = {case["name"] for case in report["cases"]}
    for required in ("bad_bytes_webp_16000x16000", "bomb_webp_16000x16000_x4", "bomb_lying_png_400mb",
                     "bad_bytes_request_over_max_request_bytes", "bad_bytes_scalar_string",
                     "bad_refine_steps_vector_of_one", "valid_refine_at_every_bound", "bad_classify_wrong_dtype",
                     "bad_classify_nan", "bad_bytes_truncated_png", "bad_bytes_header_20000x20000_png"):
        assert required in names
    # A wrong dtype cannot be sent from Python; the C++ path sends it.
    dtype_case = next(case for case in report["cases"] if case["name"] == "bad_classify_wrong_dtype")
    assert dtype_case[hostile_inputs.PYTHON_PATH].startswith("skipped")
    if hostile_inputs.CPP_PATH in dtype_case:
        assert dtype_case[hostile_inputs.CPP_PATH] == "refused"


def test_the_sweeps_counts_become_the_docs_table():
    report = {"counts": {"tensorflow_only_python": dict(tried=3, refused_cleanly=2, answered=1, failed=0,
                                                        not_sendable=1),
                         "cpp_loader": dict(tried=4, refused_cleanly=3, answered=0, failed=1, not_sendable=0)}}
    table = hostile_inputs.table_of(report)
    assert table["rows"] == [["C++ SavedModel loader (TF Serving's)", 4, 3, 0, 1, 0],
                             ["TensorFlow-only Python", 3, 2, 1, 0, 1]]
    assert len(table["columns"]) == len(table["align"]) == 6
