#!/usr/bin/env bash
# Sets up (./setup.sh, idempotent) and runs the test suite offline on CPU.
#   ./run_tests.sh               # everything, including one end-to-end smoke run of the embedded default
#   ./run_tests.sh -m "not slow" # the fast tier (timed in README.md, "Costs and timings"): no real-model run, and no
#                                # subprocess-heavy check whose promise a faster test also checks
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
case "${1:-}" in -h|--help) source scripts/common.sh ;; esac  # prints the help and exits 0
SETUP_DEV=1 ./setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest tests -q "$@"
