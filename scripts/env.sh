# Sourced by the scripts in this folder: makes a Python with torch, triton and this package importable.
# Uses the current python3 when it already has torch and triton (e.g. the GPU machine); otherwise builds .venv/
# (torch 2.13.0 CPU where its wheel lies on disk, triton, nvidia-cutlass-dsl, test tools) once and reuses it.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
if [ -z "${VK_PYTHON:-}" ]; then
  if python3 -c "import torch, triton, pytest" >/dev/null 2>&1; then
    VK_PYTHON=python3
  else
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import torch, triton, pytest, xdist, hypothesis" >/dev/null 2>&1; then
      echo "setting up .venv (torch, triton, nvidia-cutlass-dsl, pytest) ..." >&2
      python3 -m venv .venv
      .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
      .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
      .venv/bin/python -m pip install -q triton nvidia-cutlass-dsl numpy pytest pytest-xdist hypothesis
      # Optional: CuTeDSL's low-overhead launch path (its compile test skips without it).
      .venv/bin/python -m pip install -q apache-tvm-ffi || echo "apache-tvm-ffi not installed" >&2
    fi
    VK_PYTHON=$repo_root/.venv/bin/python
  fi
fi
export VK_PYTHON
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
