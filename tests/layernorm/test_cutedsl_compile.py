"""CPU-only checks of the CuTeDSL backend: every kernel variant compiles for Hopper (sm_90a) against placeholder
pointers with a runtime M, and its PTX has the instructions the design relies on.

No GPU is needed: ``cute.compile`` targets sm_90a explicitly. What runs on a GPU is checked by
``tests/layernorm/gpu_check_cutedsl.py``.

The compile grid is trimmed to stay well under three minutes on two cores (a compile takes 0.1-0.3 s): every dtype
with each weight/bias mode at one aligned N; then N across every config bucket (sub-warp rows, one warp, several
warps, 512 threads, clusters of 2..16) and the ragged N (1, 111, 769, 1128, 5000) with one dtype/affine combination
per N, rotating dtypes so each dtype meets small, ragged and clustered rows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cutlass")
torch = pytest.importorskip("torch")

from vibe_kernels.layernorm._cutedsl import config as cfg  # noqa: E402
from vibe_kernels.layernorm._cutedsl import launch  # noqa: E402

import cutlass  # noqa: E402

ARCH = "sm_90a"
DTYPES = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16, "fp32": cutlass.Float32}
ELEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# (N, dtype, affine) where affine is "none", "w" (weight only), "wb_fp32" or "wb_same".
AFFINE_GRID = [(4096, d, a) for d in DTYPES for a in ("none", "w", "wb_fp32", "wb_same")]
N_GRID = [
    (1, "fp32", "wb_fp32"),
    (111, "bf16", "wb_same"),
    (256, "bf16", "wb_fp32"),
    (769, "fp16", "none"),
    (1024, "fp16", "wb_fp32"),
    (1128, "bf16", "wb_fp32"),
    (5000, "fp16", "wb_same"),
    (8192, "fp32", "wb_fp32"),
    (16384, "bf16", "wb_fp32"),
    (32768, "bf16", "wb_same"),
    (32768, "fp32", "wb_fp32"),
    (65536, "fp16", "wb_fp32"),
    (131072, "bf16", "none"),
    (262144, "bf16", "wb_fp32"),
    (262144, "fp32", "wb_same"),
    (100003, "bf16", "wb_fp32"),  # prime N: scalar accesses, clustered
]
GRID = AFFINE_GRID + N_GRID


def _affine_dtypes(dtype_name: str, affine: str):
    same = DTYPES[dtype_name]
    weight = {"none": None, "w": same, "wb_fp32": cutlass.Float32, "wb_same": same}[affine]
    bias = {"none": None, "w": None, "wb_fp32": cutlass.Float32, "wb_same": same}[affine]
    return weight, bias


def _aligned_vec(hidden: int, dtype_name: str) -> int:
    """The vector width the launcher picks for contiguous, 16-byte-aligned tensors."""
    return launch.vector_width(ELEM_BYTES[dtype_name], hidden, (hidden,), ((0x7F0000000000, ELEM_BYTES[dtype_name]),))


def _count(ptx: str, pattern: str) -> int:
    return len(re.findall(pattern, ptx))


def _id(case) -> str:
    return "-".join(str(p) for p in case)


def _check_common(ptx: str, tiling: cfg.RowTiling, elem_bytes: int) -> None:
    if tiling.vec * elem_bytes == 16:
        # Every x vector is one 128-bit access; no narrower global access of x/out may sneak in.
        assert _count(ptx, r"ld\.global(\.nc)?\.v4\.(b32|f32|u32)") >= tiling.vecs_per_thread
        assert _count(ptx, r"st\.global\.v4\.(b32|f32|u32)") >= tiling.vecs_per_thread
        assert _count(ptx, r"ld\.global(\.nc)?\.(b16|u16)\b") == 0
    if tiling.cluster_n > 1:
        assert "mapa.shared::cluster" in ptx
        assert "st.async.shared::cluster.mbarrier::complete_tx::bytes" in ptx
        assert "mbarrier.init" in ptx
        assert re.search(r"mbarrier\.(try_wait|test_wait)", ptx)
        assert "barrier.cluster.arrive" in ptx and "barrier.cluster.wait" in ptx
    else:
        assert "st.async" not in ptx and "mapa" not in ptx
    if tiling.warps_per_row > 1 and tiling.cluster_n == 1:
        assert re.search(r"\bbar(rier)?\.sync", ptx), "a multi-warp row needs a CTA barrier for its reduction"
    if tiling.threads_per_row > 1:
        assert "shfl.sync.bfly" in ptx
    # Rows live in registers: no local-memory traffic in the PTX.
    assert not re.search(r"\b(ld|st)\.local", ptx)


@pytest.mark.parametrize("case", GRID, ids=_id)
def test_forward_compiles(case):
    hidden, dtype_name, affine = case
    weight, bias = _affine_dtypes(dtype_name, affine)
    vec = _aligned_vec(hidden, dtype_name)
    config = cfg.fwd_config(hidden, ELEM_BYTES[dtype_name], vec)
    compiled = launch.compile_fwd(DTYPES[dtype_name], hidden, weight, bias, weight is not None, vec, config, ARCH, keep_ptx=True)
    ptx = compiled.__ptx__
    assert ".target sm_90a" in ptx
    _check_common(ptx, config.tiling, ELEM_BYTES[dtype_name])
    if weight is not None:
        # mean and rstd are stored as one fp32 each per row.
        assert _count(ptx, r"st\.global\.(b32|f32)\b") >= 2
    # rsqrt for rstd, computed in fp32.
    assert "rsqrt" in ptx


@pytest.mark.parametrize("case", GRID, ids=_id)
def test_backward_compiles(case):
    hidden, dtype_name, affine = case
    weight, bias = _affine_dtypes(dtype_name, affine)
    vec = _aligned_vec(hidden, dtype_name)
    config = cfg.bwd_config(hidden, ELEM_BYTES[dtype_name], vec)
    want_dw, want_db = weight is not None, bias is not None
    compiled = launch.compile_bwd(DTYPES[dtype_name], hidden, weight, want_dw, want_db, vec, config, ARCH, keep_ptx=True)
    ptx = compiled.__ptx__
    _check_common(ptx, config.tiling, ELEM_BYTES[dtype_name])
    # Deterministic by construction: dw/db go out as plain stores of per-CTA partials, never float atomics.
    assert not re.search(r"\b(red|atom)\.[\w.]*f32", ptx)
    # Persistent: the CTA loops over row tiles.
    assert re.search(r"bra(\.uni)?\s", ptx)


def test_dx_only_backward_compiles():
    """No weight, no dw/db wanted: only dx is written."""
    config = cfg.bwd_config(2048, 2, 8)
    ptx = launch.compile_bwd(cutlass.BFloat16, 2048, None, False, False, 8, config, ARCH, keep_ptx=True).__ptx__
    _check_common(ptx, config.tiling, 2)


def test_strided_and_misaligned_rows_pick_narrower_vectors():
    """A row stride or base address that is not 16-byte aligned lowers the vector width (a different compiled
    variant), and that variant compiles with the narrower accesses."""
    base = 0x7F0000000000
    assert launch.vector_width(2, 4096, (4096, 4096), ((base, 2), (base, 2))) == 8
    assert launch.vector_width(2, 4096, (4100, 4096), ((base, 2), (base, 2))) == 4  # big[:, :4096] of a 4100-wide
    assert launch.vector_width(2, 4096, (4096,), ((base + 2, 2),)) == 1  # x[:, 1:] style offset
    assert launch.vector_width(2, 4096, (4096,), ((base, 2), (base + 8, 4))) == 2  # fp32 weight at +8 bytes
    config = cfg.fwd_config(4096, 2, 4)
    ptx = launch.compile_fwd(cutlass.BFloat16, 4096, None, None, False, 4, config, ARCH, keep_ptx=True).__ptx__
    # 4 bf16 = 64-bit accesses (spelled v4.b16 or v2.b32), never 128-bit ones.
    assert re.search(r"ld\.global(\.nc)?\.(v4\.b16|v2\.b32)", ptx)
    assert re.search(r"st\.global\.(v4\.b16|v2\.b32)", ptx)
    assert not re.search(r"(ld|st)\.global(\.nc)?\.v4\.b32", ptx)


@pytest.mark.parametrize("hidden", [1, 2, 7, 64, 111, 256, 769, 1128, 5000, 8192, 16384, 32768, 65536, 100003, 262144])
@pytest.mark.parametrize("elem_bytes", [2, 4])
def test_config_covers_row(hidden, elem_bytes):
    for vec in (1, 2, 4, 8):
        if vec * elem_bytes > 16 or hidden % vec:
            continue
        for config in (cfg.fwd_config(hidden, elem_bytes, vec), cfg.bwd_config(hidden, elem_bytes, vec)):
            t = config.tiling
            assert t.tile_n * t.cluster_n >= hidden, "the cluster must cover the row"
            assert (t.cluster_n - 1) * t.tile_n < hidden, "every CTA of a cluster must own columns"
            assert t.threads_per_row & (t.threads_per_row - 1) == 0
            assert 1 <= t.cluster_n <= cfg.MAX_CLUSTER and t.num_threads <= cfg.MAX_CTA_THREADS
            assert t.num_threads >= min(cfg.MIN_CTA_THREADS, t.threads_per_row)


def test_package_import_does_not_import_cutlass():
    code = "import sys, vibe_kernels.layernorm._cutedsl as m; m.is_available(); assert 'cutlass' not in sys.modules"
    repo_root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


def test_too_wide_rows_raise_not_implemented():
    from vibe_kernels.layernorm import _cutedsl

    x = torch.empty((1, cfg.MAX_N + 1))
    with pytest.raises(NotImplementedError, match=r"N=262145 is not supported yet \(max 262144\)"):
        _cutedsl.layernorm_fwd(x, None, None, 1e-5, x, None, None)


def test_tvm_ffi_variants_compile():
    """The low-overhead call path (raw addresses and stream as integers through Apache TVM FFI) compiles too."""
    pytest.importorskip("tvm_ffi")
    config = cfg.fwd_config(1024, 2, 8)
    fwd = launch.compile_fwd(cutlass.BFloat16, 1024, cutlass.Float32, None, True, 8, config, ARCH, tvm_ffi=True)
    assert fwd is not None
    bwd_cfg = cfg.bwd_config(65536, 2, 8)
    bwd = launch.compile_bwd(cutlass.BFloat16, 65536, cutlass.Float32, True, True, 8, bwd_cfg, ARCH, tvm_ffi=True)
    assert bwd is not None
