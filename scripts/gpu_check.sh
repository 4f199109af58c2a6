#!/usr/bin/env bash
# GPU check for a machine with one CUDA GPU (not part of CI): CUDA vLLM generation, bf16 FSDP SFT with
# packing and flash attention (sdpa when flash-attn is not installed, said so), export + reload; prints
# tokens/s, MFU and peak memory. About 5 minutes on one H100/H200. Options: benchmarks/gpu_check.py --help.
#
#   scripts/gpu_check.sh              # needs the gpu extra: pip install -e '.[gpu]' (flash-attn optional)
#   scripts/gpu_check.sh --dry-run    # the plan and the training config only
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
