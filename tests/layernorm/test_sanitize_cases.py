"""CPU checks of the compute-sanitizer sweep (benchmarks/sanitize_cases.py, run by benchmarks/sanitize.sh on the GPU
machine): its case list covers every kernel variant of both backends -- every row of the Triton ladders and the
variants derived from them, every CuTeDSL config bucket and vector width -- the driver runs (--list, and tiny cases
under the Triton interpreter), and sanitize.sh's summary turns a sanitizer error into a failing exit status."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# --cpu-smoke runs the Triton interpreter: a CPU CI check (triton 3.6's interpreter on the GPU machine fails on the
# persistent kernels' loop bounds; the real sanitizer run covers that machine).
INTERPRETER_ONLY = "Triton-interpreter smoke run: a CPU CI test"

from vibe_kernels.layernorm import _triton
from vibe_kernels.layernorm._cutedsl import config as cute_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = REPO_ROOT / "benchmarks" / "sanitize_cases.py"
SCRIPT = REPO_ROOT / "benchmarks" / "sanitize.sh"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ELEM = {"bf16": 2, "fp16": 2, "fp32": 4}


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("vk_sanitize_cases", DRIVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cases(driver):
    return driver.build_cases()


def _selected(driver, cases, tool, backend, tier=None):
    return [c for c in driver.select(cases, tool, (backend,)) if tier is None or c.tier == tier]


# ----------------------------------------------------------------------------------------------------------------
# Triton: every ladder row, every derived variant
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ladder_name", ["_FWD_LADDER", "_BWD_LADDER"])
@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
def test_every_triton_ladder_row_for_both_dtype_sizes(driver, cases, ladder_name, tool):
    ladder = getattr(_triton, ladder_name)
    core = _selected(driver, cases, tool, "triton", tier=0)
    for size, names in (("2-byte", ("bf16", "fp16")), ("fp32", ("fp32",))):
        hit = {_triton._ladder_row(ladder, c.hidden, DTYPES[c.dtype]) for c in core if c.dtype in names}
        missing = [row for row in ladder if row not in hit]
        assert not missing, f"{tool}: {ladder_name} rows with no tier-0 {size} case: {missing}"


@pytest.mark.parametrize("ladder_name", ["_FWD_LADDER", "_BWD_LADDER"])
def test_racecheck_meets_every_ladder_row(driver, cases, ladder_name):
    ladder = getattr(_triton, ladder_name)
    race = _selected(driver, cases, "racecheck", "triton")
    hit = {_triton._ladder_row(ladder, c.hidden, DTYPES[c.dtype]) for c in race}
    assert [row for row in ladder if row not in hit] == []


def test_triton_derived_variants(driver, cases):
    core = _selected(driver, cases, "memcheck", "triton", tier=0)
    fwd = {(c.hidden, c.dtype): _triton.fwd_config(c.hidden, DTYPES[c.dtype]) for c in core}
    bwd = {(c.hidden, c.dtype): _triton.bwd_config(c.hidden, DTYPES[c.dtype]) for c in core}
    assert any(cfg.tail_n for cfg in fwd.values()), "no resident head + tail forward (N = 5000)"
    assert any(not cfg.tail_n and not cfg.chunked for cfg in fwd.values())
    ladder_pps = {row[5] for row in _triton._FWD_LADDER if row[4]}
    assert {cfg.programs_per_sm for cfg in fwd.values() if cfg.chunked} == ladder_pps, "a chunked forward grid kind"
    assert any(cfg.chunked for cfg in bwd.values()) and any(not cfg.chunked for cfg in bwd.values())
    # the fp32 fallback: a row of the re-read backward ladder entry held in registers instead
    fallback = [key for key, cfg in bwd.items()
                if _triton._ladder_row(_triton._BWD_LADDER, key[0], DTYPES[key[1]])[7] and not cfg.reread]
    assert fallback, "no backward case on the fp32 resident fallback"
    # odd and extreme Ns
    assert {1, 7, 769, 5000, driver.LARGEST_N} <= {c.hidden for c in core}


def test_triton_persistent_grids_loop(driver, cases):
    """Loop cases: one per backward ladder row, and the forward's chunked rows with a persistent grid."""
    loops = [c for c in _selected(driver, cases, "memcheck", "triton") if "loop" in c.rows]
    bwd_rows = {_triton._ladder_row(_triton._BWD_LADDER, c.hidden, DTYPES[c.dtype]) for c in loops}
    assert set(_triton._BWD_LADDER) <= bwd_rows
    fwd_rows = {_triton._ladder_row(_triton._FWD_LADDER, c.hidden, DTYPES[c.dtype]) for c in loops}
    assert {row for row in _triton._FWD_LADDER if row[4] and row[5]} <= fwd_rows
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    for c in loops:
        assert driver.loop_rows(c, device) > 3


# ----------------------------------------------------------------------------------------------------------------
# CuTeDSL: every config bucket and vector width
# ----------------------------------------------------------------------------------------------------------------


def _contig_vec(hidden, elem):
    vec = 16 // elem
    while hidden % vec:
        vec //= 2
    return vec


def _buckets(make, hidden, elem):
    config = make(hidden, elem, _contig_vec(hidden, elem))
    t = config.tiling
    return t.threads_per_row, t.cluster_n, getattr(config, "column_state_in_smem", False)


def _all_buckets(make, elem):
    """Every (threads per row, cluster size, backward column state in smem) that some N <= MAX_N lands in (the
    tiling changes only at powers of two of the vector count, so powers of two, their neighbours and 3 * 2^k find
    them all)."""
    ns = set()
    for k in range(cute_config.MAX_N.bit_length()):
        ns |= {1 << k, (1 << k) + 1, max(1, (1 << k) - 1), 3 << k}
    return {_buckets(make, n, elem) for n in ns if n <= cute_config.MAX_N}


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("elem", [2, 4])
@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
def test_every_cutedsl_bucket(driver, cases, kind, elem, tool):
    make = cute_config.fwd_config if kind == "fwd" else cute_config.bwd_config
    expected = _all_buckets(make, elem)
    assert len(expected) >= 10  # sub-warp .. 512 threads, clusters 2..16
    core = [c for c in _selected(driver, cases, tool, "cutedsl", tier=0) if ELEM[c.dtype] == elem]
    covered = {_buckets(make, c.hidden, elem) for c in core}
    assert expected <= covered, f"{tool}: {kind} buckets for {elem}-byte dtypes with no case: {expected - covered}"


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_racecheck_meets_every_cutedsl_bucket(driver, cases, kind):
    make = cute_config.fwd_config if kind == "fwd" else cute_config.bwd_config
    race = [c for c in _selected(driver, cases, "racecheck", "cutedsl") if ELEM[c.dtype] == 2]
    assert _all_buckets(make, 2) <= {_buckets(make, c.hidden, 2) for c in race}


def test_every_cutedsl_vector_width(driver, cases):
    core = _selected(driver, cases, "memcheck", "cutedsl", tier=0)
    for elem in (2, 4):
        widths = {_contig_vec(c.hidden, elem) for c in core if ELEM[c.dtype] == elem}
        assert widths == {1, 2, 4, 8} if elem == 2 else widths == {1, 2, 4}, (elem, widths)
    # misaligned (offset) and padded (strided) rows force narrower vectors: present for both backends
    layouts = {(c.backend, c.layout) for c in _selected(driver, cases, "memcheck", "cutedsl")}
    assert {("cutedsl", "offset"), ("cutedsl", "strided")} <= layouts


# ----------------------------------------------------------------------------------------------------------------
# Flags, layouts and shapes
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "cutedsl"])
def test_flags_layouts_and_rows(driver, cases, backend):
    chosen = _selected(driver, cases, "memcheck", backend)
    assert {c.affine for c in chosen} == set(driver.AFFINES)
    assert {c.grads for c in chosen} == set(driver.GRADS)
    assert {c.layout for c in chosen} == set(driver.LAYOUTS)
    assert {c.dtype for c in chosen} == {"bf16", "fp16", "fp32"}
    assert {c.stats for c in chosen if c.grads == "none"} == {True, False}
    rows = {r for c in chosen for r in c.rows}
    assert 1 in rows and "loop" in rows and any(isinstance(r, int) and r > 1 and r % 2 for r in rows)
    # ordering: tier 0 first, backends alternating
    tiers = [c.tier for c in driver.select(cases, "memcheck", ("triton", "cutedsl"))]
    assert tiers == sorted(tiers)


def test_compare_catches_garbage(driver):
    ref = torch.linspace(-3, 3, 64, dtype=torch.float64)
    assert driver._compare("out", ref.to(torch.bfloat16), ref, driver.TOL["bf16"]) is None
    unwritten = ref.clone()
    unwritten[7] = float("nan")
    assert "non-finite" in driver._compare("out", unwritten, ref, 1e-3)
    off = ref.clone()
    off[9] += 0.5
    assert "1/64 elements off; worst at flat index 9" in driver._compare("out", off, ref, 1e-3)


# ----------------------------------------------------------------------------------------------------------------
# The driver and the script run
# ----------------------------------------------------------------------------------------------------------------


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "initcheck"])
def test_list(tool):
    proc = subprocess.run([sys.executable, str(DRIVER), "--list", "--tool", tool], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(rf"(\d+) cases for {tool} \(\d+ in all; backends triton,cutedsl\)", lines[-1]), lines[-1]
    assert int(lines[-1].split()[0]) == len(lines) - 1 > 20


@pytest.mark.skipif(torch.cuda.is_available(), reason=INTERPRETER_ONLY)
def test_cpu_smoke():
    proc = subprocess.run([sys.executable, str(DRIVER), "--cpu-smoke"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"sanitize_cases: tool=memcheck ran=(\d+) failed=0 skipped_budget=0", last), last
    assert int(re.search(r"ran=(\d+)", last).group(1)) >= 15


STUB_SANITIZER = r"""#!/usr/bin/env bash
# Stands in for compute-sanitizer: runs the program, then writes an ERROR SUMMARY with $STUB_ERRORS errors.
log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --log-file) log=$2; shift 2 ;;
    --tool|--target-processes|--error-exitcode|--print-limit|--report-api-errors) shift 2 ;;
    *) break ;;
  esac
done
"$@"
rc=$?
[ "${STUB_ERRORS:-0}" -gt 0 ] && echo "========= Invalid __global__ read of size 4 bytes" >> "$log"
echo "========= ERROR SUMMARY: ${STUB_ERRORS:-0} errors" >> "$log"
[ "${STUB_ERRORS:-0}" -gt 0 ] && exit 86
exit $rc
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason=INTERPRETER_ONLY)
@pytest.mark.parametrize("stub_errors", [0, 2])
def test_script_summary_and_exit_status(tmp_path, stub_errors):
    stub = tmp_path / "compute-sanitizer"
    stub.write_text(STUB_SANITIZER)
    stub.chmod(0o755)
    env = _env()
    env.update(SANITIZER=str(stub), PYTHON=sys.executable, OUT=str(tmp_path / "out"), TOOLS="memcheck racecheck",
               DRIVER_ARGS="--cpu-smoke --limit 1", STUB_ERRORS=str(stub_errors))
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.strip().splitlines()
    summary = {line.split()[0]: line for line in lines if line.split()[0] in ("memcheck", "racecheck")}
    assert set(summary) == {"memcheck", "racecheck"}, proc.stdout + proc.stderr
    for tool, line in summary.items():
        verdict = "ok  " if stub_errors == 0 else "FAIL"
        assert line.startswith(f"{tool:<9} {verdict} ERROR SUMMARY: {stub_errors} errors"), line
        assert "ran=1 failed=0" in line, line
        assert (tmp_path / "out" / "sanitize" / f"{tool}.driver.log").exists()
    assert proc.returncode == (0 if stub_errors == 0 else 1), proc.stdout
    if stub_errors:
        assert "Invalid __global__ read" in proc.stdout  # the error headline is shown under the summary line
