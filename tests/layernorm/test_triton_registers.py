"""CPU check of benchmarks/triton_registers.py (the register and occupancy pre-screen for Triton forward probes): it
compiles the launcher's default and an explicit config for sm_90 in a fresh interpreter and reports numbers that agree
with the configs it was given."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "triton_registers.py"
LINE = re.compile(r"^(\S+) +(\w+) warps=(\d+) registers=(\d+) local=(\d+) shared=(\d+) CTAs/SM=(\d+) warps/SM=(\d+) "
                  r"chunk-bytes/SM=(\d+)KB$")


def test_reports_registers_and_occupancy_of_default_and_given_configs():
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, str(SCRIPT), "--shape", "4096x16384xfloat16", "--configs",
                           "default,c2048w8h", "--bias", "none"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        found = LINE.match(line)
        assert found, f"unexpected line: {line!r}\n{done.stdout}"
        rows[found.group(1)] = [found.group(2)] + [int(v) for v in found.groups()[2:]]
    assert set(rows) == {"default", "c2048w8h"}, done.stdout
    kernel, warps, registers, local, _, ctas, warps_an_sm, chunk_kb = rows["c2048w8h"]
    assert kernel == "_layernorm_fwd_chunked_kernel" and warps == 8
    assert 0 < registers <= 255 and local == 0
    # The occupancy follows from the registers: 64K a SM, 256 threads a CTA, at most 2048 threads.
    assert ctas == min(65536 // (registers * 256), 8) and warps_an_sm == 8 * ctas
    assert chunk_kb == ctas * 2048 * 2 // 1024  # one row of 2048 fp16 elements a CTA
    # The default at N = 16384 (16-bit x, more rows than one wave) is two-row blocks of 8192 columns at 16 warps.
    kernel, warps, *_, chunk_kb = rows["default"]
    assert kernel == "_layernorm_fwd_chunked_kernel" and warps == 16 and chunk_kb % 32 == 0
