#!/usr/bin/env bash
# Create .venv and install the pinned dependencies from requirements.lock, then m6rec itself (editable).
# Idempotent: a second run only checks. Works offline-ish (PyPI only) and on machines with full internet.
#
# torch is pinned to the CPU build (2.13.0+cpu). Where a local wheel folder holds it (pip's find-links, e.g. on the
# project's build machines, or $M6REC_WHEELS), it is taken from there; otherwise from PyTorch's CPU wheel index.
# Set M6REC_TORCH_INDEX to another PyTorch index (e.g. https://download.pytorch.org/whl/cu126) for a CUDA build
# (then also relax the +cpu pin in requirements.lock).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$(command -v "$cand")"; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "setup_env: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

stamp=.venv/.m6rec-installed
lock_sum="$(sha256sum requirements.lock pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_sum" ]; then
  echo "setup_env: .venv is up to date"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv resolves and installs in seconds; pip would take many minutes for this set.
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install --quiet "$(grep -E '^uv==' requirements.lock)"
fi

wheels="${M6REC_WHEELS:-${PIP_FIND_LINKS:-}}"
if [ -z "$wheels" ]; then
  wheels="$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)"
fi
torch_src=()
if [ -n "$wheels" ] && ls "$wheels"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  echo "setup_env: torch CPU wheel from $wheels"
  torch_src=(--find-links "$wheels")
else
  index="${M6REC_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  echo "setup_env: torch from $index"
  torch_src=(--extra-index-url "$index" --index-strategy unsafe-best-match)
fi
.venv/bin/uv pip install --python .venv/bin/python -r requirements.lock "${torch_src[@]}"
.venv/bin/uv pip install --python .venv/bin/python --no-deps -e .
# Bytecode for every installed module, once. Where PYTHONDONTWRITEBYTECODE is set (as on the project's machines)
# Python never caches it, so each process would compile mlflow, torch & co. from source: 10.6 s against 4.4 s to
# import torch + mlflow on the 2-core box, in each of the pipeline's ~13 stage processes. A few modules written for
# other Python versions do not compile (torch's py312 test helpers): they are never imported, so that is ignored.
echo "setup_env: compiling bytecode"
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3.11/site-packages src > /dev/null 2>&1 || true
echo "$lock_sum" > "$stamp"
echo "setup_env: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
