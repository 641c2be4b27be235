"""Where the tests that run the official PyTorch JEM find it: a checkout of its code and a Python
with torch (never a dependency of jem_tf). Both are optional: without them those tests skip and say why."""

import os
import subprocess

REFERENCE_DIR = os.environ.get("JEM_REFERENCE_DIR", "/work/ref/JEM")
TORCH_PYTHON = os.environ.get("JEM_TORCH_PYTHON", "/work/venv-torch/bin/python")


def torch_and_reference_missing() -> str:
    """Why the real reference cannot run here ('' when it can)."""
    if not os.path.isfile(os.path.join(REFERENCE_DIR, "train_wrn_ebm.py")):
        return f"no checkout of the reference code at {REFERENCE_DIR} (set JEM_REFERENCE_DIR)"
    if not os.access(TORCH_PYTHON, os.X_OK):
        return f"no Python with torch at {TORCH_PYTHON} (set JEM_TORCH_PYTHON)"
    probe = subprocess.run([TORCH_PYTHON, "-c", "import torch, numpy"], capture_output=True)
    return "" if probe.returncode == 0 else f"{TORCH_PYTHON} cannot import torch"
