#!/usr/bin/env bash
# Runs the test suite (CPU: Triton interpreter + ahead-of-time sm_90 compiles + CuTeDSL compile-only tests;
# GPU machine: the same tests on CUDA tensors plus the tests marked gpu). Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
workers=$("$VK_PYTHON" -c "import os; print(min(4, os.cpu_count() or 1))")
exec "$VK_PYTHON" -m pytest tests -q -n "$workers" --durations=10 "$@"
