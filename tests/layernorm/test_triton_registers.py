"""CPU checks of benchmarks/triton_registers.py (the register and occupancy pre-screen for Triton probes): it compiles
the launchers' defaults and explicit configs for sm_90 in a fresh interpreter and reports numbers that agree with the
configs it was given, forward and backward."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "triton_registers.py"
LINE = re.compile(r"^(\S+) +(\w+) warps=(\d+) registers=(\d+) local=(\d+) shared=(\d+) CTAs/SM=(\d+) warps/SM=(\d+) "
                  r"chunk-bytes/SM=(\d+KB|-)$")


def _report(*args: str) -> dict:
    """The script's report: {(config, kernel): [warps, registers, local, shared, CTAs/SM, warps/SM, chunk KB or
    None]}, a line for each kernel a config launches (the backward's column sum is a second one)."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        found = LINE.match(line)
        assert found, f"unexpected line: {line!r}\n{done.stdout}"
        spec, kernel, *numbers, chunk = found.groups()
        rows[(spec, kernel)] = [int(v) for v in numbers] + [None if chunk == "-" else int(chunk[:-2])]
    return rows


def test_reports_registers_and_occupancy_of_default_and_given_configs():
    rows = _report("--shape", "4096x16384xfloat16", "--configs", "default,c2048w8h", "--bias", "none")
    chunked = "_layernorm_fwd_chunked_kernel"
    assert set(rows) == {("default", chunked), ("c2048w8h", chunked)}, rows
    warps, registers, local, _, ctas, warps_an_sm, chunk_kb = rows[("c2048w8h", chunked)]
    assert warps == 8 and 0 < registers <= 255 and local == 0
    # The occupancy follows from the registers: 64K a SM, 256 threads a CTA, at most 2048 threads.
    assert ctas == min(65536 // (registers * 256), 8) and warps_an_sm == 8 * ctas
    assert chunk_kb == ctas * 2048 * 2 // 1024  # one row of 2048 fp16 elements a CTA
    # The default at N = 16384 (16-bit x, more rows than one wave) is two-row blocks of 8192 columns at 16 warps.
    warps, *_, chunk_kb = rows[("default", chunked)]
    assert warps == 16 and chunk_kb % 32 == 0


def test_reports_the_backward_and_its_column_sum():
    rows = _report("--backward", "--shape", "32768x256", "--configs", "16x256w8p2")
    kernels = {kernel for _, kernel in rows}
    assert kernels == {"_layernorm_bwd_resident_kernel", "_sum_partials_kernel"}, rows
    warps, registers, local, _, ctas, warps_an_sm, chunk_kb = rows[("16x256w8p2", "_layernorm_bwd_resident_kernel")]
    assert warps == 8 and 0 < registers <= 255 and local == 0 and warps_an_sm == 8 * ctas
    assert chunk_kb == ctas * 16 * 256 * 2 // 1024
    assert rows[("16x256w8p2", "_sum_partials_kernel")][-1] is None  # reads partial rows, not x
