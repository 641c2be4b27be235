"""End to end: a checkpoint written by the official PyTorch JEM code is imported, exported for TF
Serving, and served by TF Serving's C++ loading path (export/serving_check); the served `classify`
logits equal the reference's own logits (tests/data/reference, made by the reference code)."""

import os

import numpy as np
import pytest

from export import client, savedmodel
from export import signatures as sig
from export.serving_check import builder, request_cases, runner
from trainers import from_reference

pytestmark = pytest.mark.slow  # builds and runs the C++ serving check

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference")
RTOL = 1e-5


@pytest.fixture(scope="module")
def checker_binary():
    if builder.find_compiler() is None:
        pytest.skip("No C++ compiler ($CXX, c++, g++ or clang++) to build export/serving_check; the C++ "
                    "serving proof cannot run on this machine.")
    return builder.build()


def test_reference_checkpoint_imports_exports_and_serves_the_reference_logits(checker_binary, tmp_path):
    workdir = tmp_path / "imported"
    from_reference.import_checkpoint(os.path.join(DATA, "wrn10x1_zip.pt"), "cifar10", str(workdir))
    export_dir = savedmodel.export_run(str(workdir), str(tmp_path / "models" / "jem"), version=1)

    # Capped: the bad inputs include decoding bombs.
    result, _, _ = runner.check_export(export_dir, str(tmp_path / "check"), bad_inputs=True,
                                              memory_limit_bytes=4 << 30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "ALL PASSED" in result.stdout

    expected = np.load(os.path.join(DATA, "wrn10x1_outputs.npz"))
    images = np.ascontiguousarray(np.transpose(expected["inputs"], (0, 2, 3, 1)))  # NCHW -> NHWC, [-1, 1]
    case = request_cases.Case("reference_inputs", client.build_request(sig.CLASSIFY, {sig.IMAGES: images}))
    # The checker insists that every signature answers a request; the others get the usual valid ones.
    others = request_cases.valid_cases(client.signature_defs_from_export(export_dir), (32, 32, 3), batch_sizes=(1,))
    paths = request_cases.write_cases([case, *others], str(tmp_path / "reference"))
    served = runner.run(checker_binary, export_dir, paths)
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    logits = runner.read_response(paths[0])[sig.LOGITS]
    error = np.max(np.abs(logits - expected["logits"])) / np.max(np.abs(expected["logits"]))
    assert error <= RTOL, f"served logits differ from the reference's by {error:.3g} (relative) > {RTOL}"
    np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(expected["logits"], -1))
