#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py for the steps and exit codes):
#   benchmarks/gpu_check.sh [--output_dir=runs/gpu_check]   # needs a GPU; < 8 minutes on one H200
#   benchmarks/gpu_check.sh --smoke                         # CPU-sized dry run of every step
# Writes OUTPUT/gpu_check.json and OUTPUT/gpu_check.md; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
