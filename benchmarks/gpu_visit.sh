#!/usr/bin/env bash
# A GPU-machine visit, in two parts that each fit one 10-minute device call:
#   bash benchmarks/gpu_visit.sh checks   # test suite on CUDA tensors, CuTeDSL check, validation against Quack
#   bash benchmarks/gpu_visit.sh bench    # the benchmark over every shape of anchors.md, JSON + plot
# Logs and JSON go under $OUT (default benchmarks/results/latest); a short summary is printed last.
# Run from the repository root after `source .gpu/env.sh` (the GPU kit: CuTeDSL, Quack, Liger).
set -uo pipefail
part=${1:?usage: gpu_visit.sh checks|bench}
out=${OUT:-benchmarks/results/latest}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  date -u
} > "$out/device-$part.txt" 2>&1
case "$part" in
  checks)
    timeout 300 python -m pytest tests -q -n 8 -p no:cacheprovider -rfEs > "$out/gpu-tests.log" 2>&1
    echo "tests: rc=$? $(tail -1 "$out/gpu-tests.log")"
    timeout 170 python tests/layernorm/gpu_check_cutedsl.py --no-bench --budget 120 > "$out/cutedsl-check.log" 2>&1
    echo "cutedsl check: rc=$? $(tail -1 "$out/cutedsl-check.log")"
    timeout 120 python -m vibe_kernels.layernorm.validate > "$out/validate.txt" 2>&1
    echo "validate: rc=$?"
    grep -E "^\|" "$out/validate.txt" | cut -c1-150 | tail -30
    ;;
  bench)
    timeout 560 python -m vibe_kernels.layernorm.bench --shapes all --json "$out/bench.json" --plot "$out/bench.png" \
      > "$out/bench.txt" 2> "$out/bench.err"
    echo "bench: rc=$?"
    grep -E "^\| +[0-9]+ \||^###|^\| [A-Z]" "$out/bench.txt" | cut -c1-150 | tail -45
    ;;
esac
