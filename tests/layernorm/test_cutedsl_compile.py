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

import dataclasses
import re
from functools import partial
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


# A 128-bit global load, with or without cache qualifiers (L1 priority, an L2 cache policy).
LOAD_QUALIFIERS = r"(\.nc)?(\.L1::\w+)?(\.L2::cache_hint)?"
GLOBAL_V4_LOAD = r"ld\.global" + LOAD_QUALIFIERS + r"\.v4\.(b32|f32|u32)"


def _id(case) -> str:
    return "-".join(str(p) for p in case)


def _check_common(ptx: str, tiling: cfg.RowTiling, elem_bytes: int) -> None:
    if tiling.vec * elem_bytes == 16:
        # Every x vector is one 128-bit access (a load, or a 16-byte cp.async into shared memory: the staged
        # backward); no narrower global access of x/out may sneak in.
        staged = _count(ptx, r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16")
        assert _count(ptx, GLOBAL_V4_LOAD) + staged >= tiling.vecs_per_thread
        assert _count(ptx, r"st\.global\.v4\.(b32|f32|u32)") >= tiling.vecs_per_thread
        assert _count(ptx, r"ld\.global" + LOAD_QUALIFIERS + r"\.(b16|u16)\b") == 0
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


@pytest.mark.parametrize("hidden, dtype_name, feature", [(1024, "bf16", "plain"), (8192, "fp16", "plain"),
                                                         (4096, "bf16", "residual"), (4096, "bf16", "rms"),
                                                         (1000, "fp16", "plain"), (65536, "bf16", "plain"),
                                                         (262144, "bf16", "plain"), (4096, "fp32", "no_weight")])
def test_backward_prefetch_compiles(hidden, dtype_name, feature):
    """The prefetch (BwdConfig.prefetch): the next row tile's loads are issued inside the loop, after a first
    tile's loads before it, so the kernel has more 128-bit row loads than the plain one; otherwise the same checks
    (one CTA or a cluster, w and dw/db in registers or shared memory, the residual's gradient, RMSNorm)."""
    elem, dtype = ELEM_BYTES[dtype_name], DTYPES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    plain = dataclasses.replace(cfg.bwd_config(hidden, elem, vec), stages=1, staged_stats=False)  # the register path
    weight = None if feature == "no_weight" else cutlass.Float32
    extra = {"dres_dtype": dtype} if feature == "residual" else {"rms": True} if feature == "rms" else {}
    ptxs = [launch.compile_bwd(dtype, hidden, weight, weight is not None, weight is not None, vec,
                               dataclasses.replace(plain, prefetch=prefetch), ARCH, keep_ptx=True, **extra).__ptx__
            for prefetch in (False, True)]
    _check_common(ptxs[1], plain.tiling, elem)
    assert not re.search(r"\b(red|atom)\.[\w.]*f32", ptxs[1])
    if vec * elem == 16:
        assert _count(ptxs[1], GLOBAL_V4_LOAD) > _count(ptxs[0], GLOBAL_V4_LOAD)
    else:
        assert _count(ptxs[1], r"ld\.global") > _count(ptxs[0], r"ld\.global")


@pytest.mark.parametrize("hidden, rows, dtype_name, feature", [(8192, 4096, "fp16", "rms"), (8192, 4096, "fp16", "plain"),
                                                             (5000, 4095, "bf16", "plain")])
def test_backward_staged_stats_compiles(hidden, rows, dtype_name, feature):
    """BwdConfig.staged_stats: each row tile's rstd (and mean) comes with its x and dy as a 4-byte cp.async copy
    (cp.async.ca, one a statistic) into the stage, so no scalar global load of a statistic is left (the default has
    one a statistic before the loop and one in it); with the column sum fused (its default at 8192 and 5000) and
    separate. The default above 6144 columns (FUSED_COLUMN_SUM_MAX_N) only. Invalid without stages."""
    elem, dtype = ELEM_BYTES[dtype_name], DTYPES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    default = cfg.bwd_config(hidden, elem, vec, rows=rows)
    assert default.stages > 1 and default.staged_stats == (hidden > cfg.FUSED_COLUMN_SUM_MAX_N)
    if hidden > cfg.FUSED_COLUMN_SUM_MAX_N:  # and the column sum separate
        default = dataclasses.replace(default, fused_column_sum=False)
    rms = feature == "rms"
    ptxs = [launch.compile_bwd(dtype, hidden, cutlass.Float32, True, not rms, vec,
                               dataclasses.replace(default, staged_stats=staged), ARCH, keep_ptx=True, rms=rms).__ptx__
            for staged in (False, True)]
    _check_common(ptxs[1], default.tiling, elem)
    scalar_load = r"ld\.global" + LOAD_QUALIFIERS + r"\.(b32|f32)\s"
    stat_copy = r"cp\.async\.ca\.shared\.global(\.L2::\w+)?\s+\[[^]]+\],\s*\[[^]]+\],\s*4\b"
    stats = 1 if rms else 2
    assert _count(ptxs[0], scalar_load) - _count(ptxs[1], scalar_load) == 2 * stats
    assert _count(ptxs[0], stat_copy) == 0 and _count(ptxs[1], stat_copy) == default.stages * stats
    with pytest.raises(ValueError, match="staged_stats"):
        dataclasses.replace(default, stages=1, staged_stats=True)


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
    assert re.search(r"ld\.global" + LOAD_QUALIFIERS + r"\.(v4\.b16|v2\.b32)", ptx)
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


# ----------------------------------------------------------------------------------------------------------------
# Backward: registers, shared-memory column state, workspace bound
# ----------------------------------------------------------------------------------------------------------------

REGISTERS_PER_SM = 65536
H100_SMS = 132


def _ptxas_usage(ptx: str) -> dict:
    """ptxas -v of the PTX for sm_90a (skips when ptxas is not on PATH)."""
    import shutil

    if shutil.which("ptxas") is None:
        pytest.skip("ptxas (CUDA toolkit) is not on PATH: register/spill usage cannot be checked")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from cutedsl_bwd_probe import ptxas_usage

    try:
        return ptxas_usage(ptx)
    except RuntimeError as error:
        if "Unsupported .version" in str(error):  # an older toolkit than the DSL's PTX ISA (the GPU machine's)
            pytest.skip(f"this ptxas cannot read the DSL's PTX version: {str(error).strip()[-120:]}")
        raise


WIDE_BWD = [(n, d, w, want, False) for n in (131072, 262144) for d in ("bf16", "fp16", "fp32")
            for w, want in (("fp32", True), ("same", True), ("none", False))] + [
    (65536, "bf16", "fp32", True, False), (65536, "bf16", "fp32", True, True), (16384, "fp16", "same", True, True)]


@pytest.mark.parametrize("case", WIDE_BWD, ids=_id)
def test_wide_backward_does_not_spill(case):
    """Rows too wide for the register budget even over 16 CTAs keep w and dw/db in shared memory (conflict-free
    16-byte slots); the kernel then fits one 512-thread CTA per SM without local memory. So do 16-bit rows of
    (122880, 131072], in 8-CTA clusters of 64 bytes a thread instead of 16-CTA ones of 32. Clustered rows of 16
    values a thread keep them in registers (one CTA per SM, the next row prefetched: 128 registers, no spills);
    only with the fused residual do they move to shared memory, to fit two CTAs per SM (``residual``)."""
    hidden, dtype_name, weight_name, want, residual = case
    elem = ELEM_BYTES[dtype_name]
    weight = {"fp32": cutlass.Float32, "same": DTYPES[dtype_name], "none": None}[weight_name]
    vec = _aligned_vec(hidden, dtype_name)
    config = cfg.bwd_config(hidden, elem, vec, residual=residual)
    t = config.tiling
    over_budget = t.vec * t.vecs_per_thread * elem > 32
    two_in_smem = residual and not over_budget and t.vec * t.vecs_per_thread == 16 and t.cluster_n >= 2
    assert config.column_state_in_smem == (over_budget or two_in_smem)
    assert config.ctas_per_sm == (2 if two_in_smem or t.vec * t.vecs_per_thread <= 8 else 1)
    assert config.prefetch == (config.ctas_per_sm == 1 and not residual and not (over_budget and elem == 4))
    dres = DTYPES[dtype_name] if residual else None
    ptx = launch.compile_bwd(DTYPES[dtype_name], hidden, weight, want, want, vec, config, ARCH, keep_ptx=True,
                             dres_dtype=dres).__ptx__
    if config.column_state_in_smem and (want or weight is not None):
        # w and the accumulators go through 128-bit shared-memory accesses.
        assert _count(ptx, r"ld\.shared\.v4\.(b32|f32)") >= t.vecs_per_thread
        assert _count(ptx, r"st\.shared\.v4\.(b32|f32)") >= t.vecs_per_thread
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["spill_loads"] == 0 and usage["stack"] == 0, usage
    assert usage["registers"] * t.num_threads * config.ctas_per_sm <= REGISTERS_PER_SM, usage


@pytest.mark.parametrize("dtype_name", ["bf16", "fp32"])
@pytest.mark.parametrize("vec_kind", ["aligned", "scalar"])
def test_clustered_rows_take_the_fewest_ctas_that_cover_them(dtype_name, vec_kind):
    """Every CTA of a cluster owns columns, and a ragged row's cluster is the fewest CTAs that cover it at the
    tiling's vectors a thread (any size up to 16), so a thread never holds more than it would in a full 16-CTA
    cluster: halving the cluster instead left 4 CTAs of 9 vectors at N = 139264 bf16 (thousands of bytes spilled)."""
    elem = ELEM_BYTES[dtype_name]
    for hidden in list(range(8200, cfg.MAX_N + 1, 4104)) + [36864, 139264, 151936, 200000, 65537, 100003, cfg.MAX_N]:
        vec = 1 if vec_kind == "scalar" else 16 // elem
        for config in (cfg.fwd_config(hidden, elem, vec, rows=8192), cfg.bwd_config(hidden, elem, vec)):
            t = config.tiling
            nvec = -(-hidden // vec)
            assert 1 <= t.cluster_n <= cfg.MAX_CLUSTER, (hidden, t)
            assert (t.cluster_n - 1) * t.threads_per_row * t.vecs_per_thread < nvec, (hidden, t)
            assert nvec <= t.cluster_n * t.threads_per_row * t.vecs_per_thread, (hidden, t)
            if t.cluster_n > 1:
                # No fewer vectors a thread would cover the row in this many CTAs.
                assert t.cluster_n * t.threads_per_row * (t.vecs_per_thread - 1) < nvec, (hidden, t)
                # At most what a full cluster of 512-thread CTAs needs, or the config's bytes a thread; the
                # forward's ragged 16-bit rows in clusters of at most 8 (_cluster_of_eight) at most 80 bytes.
                full = -(-nvec // (cfg.MAX_CLUSTER * cfg.MAX_CTA_THREADS))
                eight = isinstance(config, cfg.FwdConfig) and t.cluster_n <= 8 and elem == 2 and vec == 8
                limit = cfg.CLUSTER_OF_EIGHT_MAX_VECS if eight else 64 // (vec * elem)
                assert t.vecs_per_thread <= max(full, limit), (hidden, t)


def test_backward_keeps_16bit_rows_up_to_131072_in_clusters_of_at_most_8():
    """16-bit rows the 32-byte tiling would spread over 9-16 CTAs (N in (65536, 131072]) take 64 bytes a thread in
    clusters of at most 8 CTAs (two fit a GPC), with w and dw/db in shared memory; wider rows, fp32 rows and the fused
    residual keep their tiling."""
    for hidden in range(65536 + 8, 131072 + 1, 1016):
        config = cfg.bwd_config(hidden, 2, 8)
        assert config.tiling.cluster_n <= 8 and config.column_state_in_smem, (hidden, config)
        assert config.tiling.vecs_per_thread * 16 <= 64 and config.prefetch, (hidden, config)
    assert cfg.bwd_config(139264, 2, 8).tiling.cluster_n == 12
    assert cfg.bwd_config(131072, 2, 8, residual=True).tiling.cluster_n == 16
    assert cfg.bwd_config(65536 + 4096, 4, 4).tiling.cluster_n > 8


def test_forward_runs_ragged_16bit_rows_over_9_to_15_ctas_in_clusters_of_at_most_8():
    """16-bit rows the fitted tiling spreads over 9-15 CTAs (N in (131072, 262144) off the powers of two) run the
    forward at M >= 1024 in clusters of at most 8 CTAs of at most 5 vectors a thread, weight and bias after the
    statistics, no launch bound, not persistent; where that would need more vectors, the fitted cluster with weight
    and bias before the statistics. fp32 rows, the fused residual, M < 1024 and the powers of two keep their
    configs."""
    eight = early = 0
    for hidden in range(131072 + 8, 262144, 2056):
        fitted = cfg.fwd_config(hidden, 2, 8, rows=512, affine_bytes=8)
        config = cfg.fwd_config(hidden, 2, 8, rows=8192, affine_bytes=8)
        t = config.tiling
        if not 8 < fitted.tiling.cluster_n < cfg.MAX_CLUSTER:
            assert t == fitted.tiling, hidden
            continue
        assert not config.persistent and config.min_ctas_per_sm == 0 and not config.l2_hints, (hidden, config)
        if t.cluster_n <= 8:
            eight += 1
            assert t.vecs_per_thread <= cfg.CLUSTER_OF_EIGHT_MAX_VECS and config.affine_after_stats, (hidden, config)
            assert t.threads_per_row == 512 and t.rows_per_cta == 1, (hidden, config)
            assert t.cluster_n * 512 * t.vecs_per_thread * 8 >= hidden > (t.cluster_n - 1) * 512 * t.vecs_per_thread * 8
            assert config.merged_stats == (t.tile_n * t.cluster_n == hidden)
        else:
            early += 1
            assert t == fitted.tiling and not config.affine_after_stats, (hidden, config)
            assert -(-hidden // (8 * 512 * 8)) > cfg.CLUSTER_OF_EIGHT_MAX_VECS, hidden
        assert cfg.fwd_config(hidden, 2, 8, rows=8192, affine_bytes=8, residual=True).tiling == fitted.tiling
    assert eight > 5 and early > 5, (eight, early)
    assert cfg.fwd_config(139264, 2, 8, rows=8192).tiling == cfg.RowTiling(8, 512, 5, 1, 7)
    assert cfg.fwd_config(151936, 2, 8, rows=8192).tiling == cfg.RowTiling(8, 512, 5, 1, 8)
    assert cfg.fwd_config(139264, 2, 8, rows=1000).tiling.cluster_n == 12
    assert cfg.fwd_config(100000, 4, 4, rows=8192).tiling.cluster_n == 13  # fp32: the fitted cluster
    assert cfg.fwd_config(262144, 2, 8, rows=8192, affine_bytes=8).persistent  # a full 16-CTA cluster: unchanged


@pytest.mark.parametrize("case", [(139264, "bf16"), (200000, "bf16"), (36864, "fp16"), (151936, "fp32"), (70000, "bf16"),
                                  (100000, "fp16"), (151936, "bf16"), (163840, "fp16")], ids=_id)
def test_ragged_clustered_rows_compile_without_spills(case):
    """Clusters of other sizes than powers of two (N = 139264 bf16: 12 CTAs, the last one ragged): both kernels
    compile with the cluster's shared-memory exchange, without local memory (the halved clusters they replace
    spilled 1-12 KB a thread)."""
    hidden, dtype_name = case
    elem = ELEM_BYTES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    fwd = cfg.fwd_config(hidden, elem, vec, rows=8192, affine_bytes=8)
    bwd = cfg.bwd_config(hidden, elem, vec)
    assert bwd.tiling.cluster_n > 1 and fwd.tiling.cluster_n > 1
    for ptx in (launch.compile_fwd(DTYPES[dtype_name], hidden, cutlass.Float32, cutlass.Float32, True, vec, fwd,
                                   ARCH, keep_ptx=True).__ptx__,
                launch.compile_bwd(DTYPES[dtype_name], hidden, cutlass.Float32, True, True, vec, bwd, ARCH,
                                   keep_ptx=True).__ptx__):
        assert "mapa.shared::cluster" in ptx or "st.async" in ptx or "shared::cluster" in ptx
        usage = _ptxas_usage(ptx)
        assert usage["spill_stores"] == 0 and usage["stack"] == 0, usage


@pytest.mark.parametrize("hidden", [256, 1024, 4096, 8192, 16384, 32768])
def test_backward_registers_fit_the_config(hidden):
    """The default backward configs run ctas_per_sm CTAs of num_threads per SM: their registers must allow it,
    without spills (the one-row 8192 CTA's register prefetch spilled 40 bytes; its default now stages the loads
    through shared memory instead)."""
    config = cfg.bwd_config(hidden, 2, 8)
    ptx = launch.compile_bwd(cutlass.BFloat16, hidden, cutlass.Float32, True, True, 8, config, ARCH,
                             keep_ptx=True).__ptx__
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["stack"] == 0, usage
    assert usage["registers"] * config.tiling.num_threads * config.ctas_per_sm <= REGISTERS_PER_SM, usage


@pytest.mark.parametrize("hidden, dtype_name, grads", [
    (8192, "fp16", "both"), (5000, "fp16", "both"), (4096, "bf16", "dw"), (256, "bf16", "db"), (4096, "fp32", "both"),
    (3072, "bf16", "both bf16"), (6144, "bf16", "dw rms"),
], ids=str)
def test_fused_column_sum_compiles_with_its_handshake(hidden, dtype_name, grads):
    """The default backward of unclustered rows sums its partial rows in its own launch (BwdConfig.fused_column_sum):
    each row CTA's arrival is one fenced atomic add (release at GPU scope), each sum CTA polls with acquire loads
    and a nanosleep back-off, counts its departure, and the last one zeroes both counters; the partial rows are
    read in 16-byte fp32 vectors; the gradients are written in their dtypes. The registers fit as before: no spills
    (ptxas), and one sum CTA per 64 columns. (N = 8192: with the staged statistics, its default.)"""
    elem = ELEM_BYTES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    config = cfg.bwd_config(hidden, elem, vec, rows=4096)
    assert config.fused_column_sum == (hidden <= cfg.FUSED_COLUMN_SUM_MAX_N or config.staged_stats)
    config = dataclasses.replace(config, fused_column_sum=True)
    assert config.sum_ctas(hidden) == -(-hidden // 64)
    want_dw, want_db = "dw" in grads or "both" in grads, "db" in grads or "both" in grads
    grad_dtype = cutlass.BFloat16 if "bf16" in grads else None
    ptx = launch.compile_bwd(DTYPES[dtype_name], hidden, cutlass.Float32, want_dw, want_db, vec, config, ARCH,
                             keep_ptx=True, rms="rms" in grads, dw_dtype=grad_dtype, db_dtype=grad_dtype).__ptx__
    assert _count(ptx, r"fence\.acq_rel\.gpu") == 1
    assert _count(ptx, r"atom\.global\.add\.u32") == 2  # an arrival, a departure
    assert _count(ptx, r"ld\.acquire\.gpu\.global\.b32") >= 1
    assert _count(ptx, r"nanosleep\.u32") == 1
    assert _count(ptx, r"st\.global\.b32\s+\[%rd\d+\], 0;") + _count(ptx, r"st\.global\.b32\s+\[%rd\d+\+4\], 0;") == 2
    assert _count(ptx, r"ld\.global\.v4\.(b32|f32)") >= int(want_dw) + int(want_db)
    if grad_dtype is not None:
        assert _count(ptx, r"st\.global\.b16") >= 1  # dw / db in bf16
    without = launch.compile_bwd(DTYPES[dtype_name], hidden, cutlass.Float32, want_dw, want_db, vec,
                                 dataclasses.replace(config, fused_column_sum=False), ARCH, keep_ptx=True,
                                 rms="rms" in grads).__ptx__
    assert _count(without, r"atom\.global|nanosleep|ld\.acquire") == 0
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["stack"] == 0, usage
    assert usage["registers"] * config.tiling.num_threads * config.ctas_per_sm <= REGISTERS_PER_SM, usage


def test_fused_column_sum_rule():
    """Where the fused column sum is the default: unclustered rows of at most 6144 columns (or staged with the
    statistics in the stage, above) with partial rows in registers, with the fused residual only where it stages
    its 16-bit rows, and not with the register prefetch of 16-bit rows (ptxas spills there);
    never with column CTAs (few rows), clustered rows or the column state in shared memory, which the config
    refuses."""
    assert cfg.bwd_config(4096, 2, 8, rows=4096).fused_column_sum  # staged
    assert cfg.bwd_config(5000, 2, 8, rows=4095).fused_column_sum
    # 8192: with the staged statistics (alone, the fused sum measured slower at 4096x8192 fp16)
    assert cfg.bwd_config(8192, 2, 8, rows=4096).fused_column_sum and cfg.bwd_config(8192, 2, 8).staged_stats
    assert not cfg.bwd_config(5000, 2, 8, rows=4095).staged_stats and not cfg.bwd_config(6144, 2, 8).staged_stats
    assert cfg.bwd_config(256, 2, 8, rows=32768).fused_column_sum  # no prefetch (32 rows a tile)
    assert cfg.bwd_config(1024, 4, 4, rows=32768).fused_column_sum  # fp32, prefetched
    assert not cfg.bwd_config(1024, 2, 8, rows=32768).fused_column_sum  # 16-bit, prefetched
    # The fused residual: only with its staged rows (the unstaged fp32 residual spilled 48 bytes with it).
    assert cfg.bwd_config(4096, 2, 8, rows=4096, residual=True).fused_column_sum
    assert cfg.bwd_config(4096, 4, 4, rows=4096, residual=True).fused_column_sum
    assert not cfg.bwd_config(1024, 4, 4, rows=4096, residual=True).fused_column_sum  # fp32, 4 rows a tile: unstaged
    assert not cfg.bwd_config(1024, 2, 8, rows=4096, residual=True).fused_column_sum  # 8 rows a tile: unstaged
    assert not cfg.bwd_config(16384, 2, 8, rows=4096).fused_column_sum  # clustered
    assert not cfg.bwd_config(4096, 2, 8, rows=128).fused_column_sum  # column CTAs
    clustered = cfg.bwd_config(16384, 2, 8, rows=4096)
    with pytest.raises(ValueError, match="fused_column_sum"):
        dataclasses.replace(clustered, fused_column_sum=True)
    with pytest.raises(ValueError, match="fused_column_sum"):
        dataclasses.replace(cfg.bwd_config(4096, 2, 8, rows=128), fused_column_sum=True)


@pytest.mark.parametrize("hidden", [8192, 16384])
def test_fp32_clustered_backward_fits_two_ctas_per_sm(hidden):
    """fp32 rows of 8192/16384 (8 values a thread, a cluster of 2/4) run two CTAs per SM, still one partial row per
    SM: their registers must allow 1024 threads."""
    config = cfg.bwd_config(hidden, 4, 4)
    assert config.ctas_per_sm == 2 and config.max_partial_rows(H100_SMS) <= H100_SMS
    ptx = launch.compile_bwd(cutlass.Float32, hidden, cutlass.Float32, True, True, 4, config, ARCH,
                             keep_ptx=True).__ptx__
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["stack"] == 0, usage
    assert usage["registers"] * config.tiling.num_threads * config.ctas_per_sm <= REGISTERS_PER_SM, usage


def _bound_ns() -> list[int]:
    ns = {1, 2, 3, 5, 7, 111, 769, 1128, 5000, 100003, cfg.MAX_N}
    for k in range(cfg.MAX_N.bit_length()):
        ns |= {1 << k, (1 << k) + 1, (1 << k) - 1, 3 << k}
    ns |= set(range(1, cfg.MAX_N + 1, 997))
    return sorted(n for n in ns if 1 <= n <= cfg.MAX_N)


@pytest.mark.parametrize("elem_bytes", [2, 4])
def test_backward_workspace_bound_for_every_config(elem_bytes):
    """Issue 8's bound: the fp32 dw/db partials of a default backward config take at most SMs x N x 8 bytes
    (one partial row per SM), for any M, every vector width and N from 1 to MAX_N."""
    for hidden in _bound_ns():
        for vec in (1, 2, 4, 8):
            if vec * elem_bytes > 16 or hidden % vec:
                continue
            config = cfg.bwd_config(hidden, elem_bytes, vec)
            for sms in (1, 16, 114, H100_SMS):
                assert config.max_partial_rows(sms) * hidden * 8 <= sms * hidden * 8, (hidden, vec, sms, config)
                for rows in (1, 7, 1 << 20):
                    assert config.partial_rows(sms, rows) <= config.max_partial_rows(sms)
            assert config.smem_bytes() <= cfg.BWD_SMEM_BUDGET


def test_launcher_grid_stays_within_the_bound(monkeypatch):
    """The launcher's grid (= partial rows) comes from the config, capped by the clusters the GPU holds at once."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: H100_SMS)
    for resident in (None, 7, 100):
        monkeypatch.setattr(launch, "_resident_clusters", lambda index, cluster_n, r=resident: r)
        for hidden in (256, 4096, 8192, 65536, 262144):
            config = cfg.bwd_config(hidden, 2, 8)
            for rows in (1, 5, 32768):
                clusters = launch.bwd_grid_clusters(config, rows, 0)
                # ctas_per_sm CTAs of a cluster's width per SM, and never more partial rows than SMs.
                assert 1 <= clusters <= H100_SMS * config.ctas_per_sm // config.tiling.cluster_n <= H100_SMS
                assert clusters <= -(-rows // config.tiling.rows_per_cta)
                if resident and config.tiling.cluster_n > 1:
                    assert clusters <= resident * config.ctas_per_sm


# The forward's affine_after_stats variant (weight/bias loaded after the row statistics).
LATE_AFFINE_GRID = [(4096, "bf16", "wb_fp32"), (8192, "fp16", "wb_same"), (4097, "bf16", "w"),
                    (4096, "fp32", "wb_fp32"), (5000, "fp16", "wb_fp32"), (2048, "fp32", "none")]


@pytest.mark.parametrize("case", LATE_AFFINE_GRID, ids=_id)
def test_forward_with_affine_after_stats_compiles(case):
    hidden, dtype_name, affine = case
    weight, bias = _affine_dtypes(dtype_name, affine)
    vec = _aligned_vec(hidden, dtype_name)
    config = cfg.fwd_config(hidden, ELEM_BYTES[dtype_name], vec, rows=cfg.AFFINE_AFTER_STATS_MIN_ROWS)
    assert config.affine_after_stats
    ptx = launch.compile_fwd(DTYPES[dtype_name], hidden, weight, bias, True, vec, config, ARCH, keep_ptx=True).__ptx__
    _check_common(ptx, config.tiling, ELEM_BYTES[dtype_name])
    assert "rsqrt" in ptx


@pytest.mark.parametrize("rows, hidden, elem, vec, residual, late, min_ctas", [
    (1024, 4096, 2, 8, False, True, 0), (32768, 8192, 2, 8, False, True, 0),  # one-row CTAs of 128-256 threads
    (4096, 4096, 4, 4, False, True, 0), (4096, 8192, 2, 8, True, True, 0),
    (32768, 16384, 2, 8, False, True, 2), (32768, 32768, 2, 8, False, True, 2),  # 512 threads; a cluster
    (4096, 8192, 4, 4, False, True, 2), (4096, 16384, 4, 4, False, True, 2),
    (1023, 8192, 2, 8, False, False, 0), (128, 4096, 2, 8, False, False, 0),  # too few rows
    (None, 8192, 2, 8, False, False, 0), (128, 16384, 2, 8, False, False, 0),  # (or M not given)
    (32768, 1024, 2, 8, False, False, 0),  # several rows per CTA
    (4095, 5000, 2, 8, False, True, 4), (4096, 4104, 2, 8, False, True, 4),  # 256 threads, <= 48 bytes of x each
    (4096, 6144, 2, 8, False, True, 4), (4096, 6152, 2, 8, False, True, 0),  # (64 bytes: spills under the bound)
    (4096, 5000, 2, 8, True, True, 0), (4096, 5000, 2, 4, False, True, 0), (128, 5000, 2, 8, False, False, 0),
    (4096, 16384, 2, 8, True, False, 0), (4096, 100003, 2, 1, False, False, 0),  # 512 threads: spills
    (4096, 16384, 2, 4, False, False, 0),
])
def test_affine_after_stats_rule(rows, hidden, elem, vec, residual, late, min_ctas):
    config = cfg.fwd_config(hidden, elem, vec, rows=rows, residual=residual)
    assert (config.affine_after_stats, config.min_ctas_per_sm) == (late, min_ctas)


@pytest.mark.parametrize("rows, hidden, elem, vec, residual, prefetch", [
    (4096, 4096, 4, 4, False, True), (32768, 1024, 2, 8, False, True),  # 1 CTA/SM
    (4096, 8192, 2, 8, False, False), (4096, 4096, 2, 8, False, False),  # 16-bit tiles of 1-2 rows: staged instead
    (8192, 262144, 2, 8, False, True), (None, 2048, 4, 4, False, True),  # a 16-CTA cluster; M not given
    (8192, 262144, 4, 4, False, False),  # fp32 with the column state in shared memory: ptxas spills
    (32768, 256, 2, 8, False, False),  # 32 rows a CTA
    (32768, 16384, 2, 8, False, True), (32768, 65536, 2, 8, False, True),  # clustered, registers: one CTA/SM
    (16384, 131072, 2, 8, False, True),  # 8-CTA clusters, w and dw/db in shared memory
    (8192, 8192, 4, 4, False, False), (32768, 16384, 2, 8, True, False),  # two CTAs per SM
    (4096, 8192, 2, 8, True, False), (128, 4096, 2, 8, False, False),  # the fused residual; small M
])
def test_backward_prefetch_rule(rows, hidden, elem, vec, residual, prefetch):
    config = cfg.bwd_config(hidden, elem, vec, residual=residual, rows=rows)
    assert config.prefetch == prefetch
    if prefetch:
        assert config.ctas_per_sm == 1


@pytest.mark.parametrize("hidden, dtype_name, stages", [
    (8192, "bf16", 3), (4096, "fp16", 3), (256, "bf16", 3), (1024, "bf16", 2), (8192, "fp32", 3), (32768, "bf16", 3),
    (5000, "fp16", 3), (1000, "bf16", 2),  # ragged rows: the lanes past N zeroed once, the copies predicated
], ids=str)
def test_staged_backward_compiles_to_cp_async(hidden, dtype_name, stages):
    """BwdConfig.stages: x and dy go through 16-byte cp.async.cg copies into shared memory, one wait_group a tile, no
    128-bit global loads of them left in the loop; without spills, at the default config's CTAs per SM."""
    elem = ELEM_BYTES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    # (the statistics' 4-byte copies, staged_stats, are test_backward_staged_stats_compiles's)
    config = dataclasses.replace(cfg.bwd_config(hidden, elem, vec), prefetch=False, l2_hints=False, stages=stages,
                                 staged_stats=False)
    ptx = launch.compile_bwd(DTYPES[dtype_name], hidden, cutlass.Float32, True, True, vec, config, ARCH,
                             keep_ptx=True).__ptx__
    copies = re.findall(r"cp\.async\.(c[ag])\.shared\.global \[[^]]+\], \[[^]]+\], (\d+)", ptx)
    # Two tensors x vecs_per_thread vectors at each issue site: stages - 1 in the prologue, one in the loop.
    assert len(copies) == 2 * config.tiling.vecs_per_thread * stages, copies
    assert set(copies) == {("cg", "16")}
    assert _count(ptx, r"cp\.async\.wait_group") >= 1 and _count(ptx, r"cp\.async\.commit_group") >= 1
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["stack"] == 0, usage
    assert usage["registers"] * config.tiling.num_threads * config.ctas_per_sm <= REGISTERS_PER_SM, usage


@pytest.mark.parametrize("hidden, dtype_name, stages, grad_name", [
    (4096, "fp16", 2, None), (5000, "fp16", 3, None), (1024, "bf16", 2, None), (4096, "fp32", 2, None),
    (3000, "fp32", 2, "bf16"), (4096, "fp32", 2, "fp16"),
], ids=str)
def test_staged_residual_backward_compiles_to_cp_async(hidden, dtype_name, stages, grad_name):
    """The fused residual's backward staged (BwdConfig.stages; the residual default for rows of one or two a tile,
    with staged statistics and the fused column sum): x, dy and the residual's gradient dh all go through cp.async
    copies into shared memory, 16-byte .cg ones, or 8-byte .ca ones for dy and dh narrower than x (``grad_name``: bf16
    out from fp32 x), without spills at the default's one CTA per SM."""
    elem, dtype = ELEM_BYTES[dtype_name], DTYPES[dtype_name]
    grad_dtype = DTYPES[grad_name or dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    config = dataclasses.replace(cfg.bwd_config(hidden, elem, vec, residual=True, rows=4096), stages=stages,
                                 staged_stats=False, fused_column_sum=False)
    ptx = launch.compile_bwd(dtype, hidden, cutlass.Float32, True, True, vec, config, ARCH, keep_ptx=True,
                             dy_dtype=grad_dtype, dres_dtype=grad_dtype).__ptx__
    copies = re.findall(r"cp\.async\.(c[ag])\.shared\.global \[[^]]+\], \[[^]]+\], (\d+)", ptx)
    assert len(copies) == 3 * config.tiling.vecs_per_thread * stages, copies
    per_tensor = config.tiling.vecs_per_thread * stages
    if grad_name is None:
        assert copies == [("cg", "16")] * len(copies)
    else:  # x's copies 16 bytes (.cg), dy's and dh's 8 (.ca)
        assert sorted(copies) == sorted([("cg", "16")] * per_tensor + [("ca", "8")] * 2 * per_tensor), copies
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["stack"] == 0, usage
    assert usage["registers"] * config.tiling.num_threads * config.ctas_per_sm <= REGISTERS_PER_SM, usage


@pytest.mark.parametrize("rows, hidden, elem, vec, residual, stages", [
    (4096, 8192, 2, 8, False, 2), (4095, 5000, 2, 8, False, 2), (32768, 4096, 2, 8, False, 2),  # 1-2 rows a tile
    (None, 6144, 2, 8, False, 2), (1024, 3000, 2, 8, False, 2),
    (32768, 1024, 2, 8, False, 1), (32768, 256, 2, 8, False, 1),  # 8 and 32 rows a tile: the register path
    (32768, 16384, 2, 8, False, 1), (32768, 32768, 2, 8, False, 1),  # clustered rows (32768²: 94 -> 76% staged)
    (4096, 8192, 4, 4, False, 1), (4096, 8192, 2, 4, False, 1),  # fp32 rows (not measured); 8-byte vectors
    (4096, 8192, 2, 8, True, 2), (128, 8192, 2, 8, False, 1), (1024, 4096, 2, 8, False, 2),  # residual; few rows
    (4096, 4096, 2, 8, True, 2), (4096, 1024, 2, 8, True, 1), (4096, 16384, 2, 8, True, 1),  # residual: 1-2 rows a
    (4096, 4096, 4, 4, True, 2), (4096, 4096, 2, 4, True, 1), (128, 4096, 2, 8, True, 1),  # tile, above 256 rows
    (4096, 3072, 4, 4, True, 2), (4096, 8192, 4, 4, True, 1), (4096, 1024, 4, 4, True, 1),  # fp32 residual
])
def test_backward_stages_rule(rows, hidden, elem, vec, residual, stages):
    config = cfg.bwd_config(hidden, elem, vec, residual=residual, rows=rows)
    assert config.stages == stages
    if stages > 1:
        assert not config.prefetch and not config.column_tile and config.ctas_per_sm == 1
        if residual:  # the statistics staged too, the column sum in the same launch
            assert config.staged_stats and config.fused_column_sum


def test_staged_backward_refuses_what_it_does_not_cover():
    config = cfg.bwd_config(1024, 2, 8)
    with pytest.raises(ValueError, match="prefetch"):
        dataclasses.replace(config, stages=2)  # prefetch is on by default here
    staged = cfg.bwd_config(8192, 2, 8)
    assert staged.stages == 2
    with pytest.raises(ValueError, match="16-byte"):  # a residual gradient of wider vectors than 16 bytes
        launch.compile_bwd(cutlass.BFloat16, 8192, cutlass.Float32, True, True, 8, staged, ARCH,
                           dres_dtype=cutlass.Float32)
    narrow = dataclasses.replace(cfg.bwd_config(769, 2, 1), prefetch=False, stages=2)
    with pytest.raises(ValueError, match="16-byte"):  # 2-byte vectors: cp.async copies 4, 8 or 16 bytes (.cg: 16)
        launch.compile_bwd(cutlass.BFloat16, 769, cutlass.Float32, True, True, 1, narrow, ARCH)


def test_launch_bound_counts_the_widest_row_tensor():
    """bf16 in, fp32 out: 4-element vectors are 16 bytes of out, so the 512-thread forward gets the launch bound
    (and fits it: 63 registers, no spills)."""
    assert cfg.fwd_config(16384, 2, 4, rows=4096).min_ctas_per_sm == 0  # 8-byte vectors of x alone
    config = cfg.fwd_config(16384, 2, 4, rows=4096, widest_elem_bytes=4)
    assert (config.affine_after_stats, config.min_ctas_per_sm) == (True, 2)
    ptx = launch.compile_fwd(cutlass.BFloat16, 16384, cutlass.Float32, cutlass.Float32, True, 4, config, ARCH,
                             keep_ptx=True, out_dtype=cutlass.Float32).__ptx__
    usage = _ptxas_usage(ptx)
    assert usage["registers"] <= 64 and usage["spill_stores"] == 0, usage


@pytest.mark.parametrize("hidden, dtype_name", [(16384, "bf16"), (65536, "bf16"), (16384, "fp32"), (262144, "fp16")])
def test_two_ctas_per_sm_fit_the_registers(hidden, dtype_name):
    """The launch bound of the 512-thread late-affine forward: .minnctapersm 2 in the PTX, and ptxas fits a thread in
    64 registers (two 512-thread CTAs per SM) with at most a few bytes spilled (fp32 weight and bias)."""
    vec = _aligned_vec(hidden, dtype_name)
    config = cfg.fwd_config(hidden, ELEM_BYTES[dtype_name], vec, rows=4096, persistent=False)
    assert config.min_ctas_per_sm == 2 and config.tiling.num_threads == 512
    ptx = launch.compile_fwd(DTYPES[dtype_name], hidden, cutlass.Float32, cutlass.Float32, True, vec, config, ARCH,
                             keep_ptx=True).__ptx__
    assert re.search(r"\.minnctapersm\s+2", ptx)
    _check_common(ptx, config.tiling, ELEM_BYTES[dtype_name])
    usage = _ptxas_usage(ptx)
    assert usage["registers"] <= 64 and usage["spill_stores"] <= 32, usage


@pytest.mark.parametrize("hidden, affine", [(5000, "wb_fp32"), (4608, "wb_fp32"), (6144, "wb_same"), (4104, "none")])
def test_four_256_thread_ctas_per_sm_fit_the_registers(hidden, affine):
    """The launch bound of the 256-thread late-affine forward holding at most 48 bytes of x a thread: .minnctapersm 4
    in the PTX, and ptxas fits a thread in 64 registers (ptxas without it: 78 at N = 5000 with fp32 weight and bias)
    with at most 4 bytes spilled."""
    weight, bias = _affine_dtypes("fp16", affine)
    vec = _aligned_vec(hidden, "fp16")
    config = cfg.fwd_config(hidden, 2, vec, rows=4096)
    assert config.min_ctas_per_sm == 4 and config.tiling.num_threads == 256 and config.affine_after_stats
    ptx = launch.compile_fwd(cutlass.Float16, hidden, weight, bias, True, vec, config, ARCH, keep_ptx=True).__ptx__
    assert re.search(r"\.minnctapersm\s+4", ptx)
    _check_common(ptx, config.tiling, 2)
    usage = _ptxas_usage(ptx)
    assert usage["registers"] <= 64 and usage["spill_stores"] <= 4, usage


def test_affine_after_stats_frees_registers():
    """What the variant is for: with fp32 weight and bias, ~30 fewer registers a thread (64 or fewer: twice the
    CTAs per SM)."""
    import dataclasses

    config = cfg.fwd_config(8192, 2, 8, rows=4096)
    usage = {}
    for late in (False, True):
        variant = dataclasses.replace(config, affine_after_stats=late)
        ptx = launch.compile_fwd(cutlass.BFloat16, 8192, cutlass.Float32, cutlass.Float32, False, 8, variant, ARCH,
                                 keep_ptx=True).__ptx__
        usage[late] = _ptxas_usage(ptx)
    assert usage[True]["registers"] <= 64 < usage[False]["registers"], usage
    assert usage[True]["spill_stores"] == 0, usage


# RMSNorm and out_dtype (the forward's out, the backward's dy in another float dtype than x).
FEATURE_GRID = [  # (N, x dtype, out / dy dtype, rms)
    (4096, "bf16", "bf16", True), (8192, "fp16", "fp32", False), (8192, "bf16", "fp32", True),
    (4096, "fp32", "bf16", False), (65536, "bf16", "fp32", True), (262144, "bf16", "bf16", True),
    (5000, "fp16", "fp32", True), (769, "bf16", "fp32", False), (32768, "fp32", "bf16", True),
    (8192, "bf16", "fp16", False), (5000, "fp16", "bf16", True),  # 16-bit dy of the other kind: the staged backward
]


def _feature_vec(hidden: int, x_name: str, out_name: str) -> int:
    """The launcher's vector width for contiguous aligned tensors: at most 16 bytes of x and of out."""
    widest = max(ELEM_BYTES[x_name], ELEM_BYTES[out_name])
    return launch.vector_width(widest, hidden, (hidden,), ((0x7F0000000000, widest),))


def _check_out_vectors(ptx: str, tiling: cfg.RowTiling, out_name: str) -> None:
    if tiling.vec * ELEM_BYTES[out_name] == 16:
        assert _count(ptx, r"st\.global\.v4\.(b32|f32|u32)") >= tiling.vecs_per_thread


@pytest.mark.parametrize("case", FEATURE_GRID, ids=_id)
def test_feature_forward_compiles(case):
    hidden, x_name, out_name, rms = case
    vec = _feature_vec(hidden, x_name, out_name)
    config = cfg.fwd_config(hidden, ELEM_BYTES[x_name], vec, rows=4096)
    ptx = launch.compile_fwd(DTYPES[x_name], hidden, cutlass.Float32, None, True, vec, config, ARCH, keep_ptx=True,
                             out_dtype=DTYPES[out_name], rms=rms).__ptx__
    assert ".target sm_90a" in ptx and "rsqrt" in ptx
    _check_out_vectors(ptx, config.tiling, out_name)
    assert not re.search(r"\b(ld|st)\.local", ptx)
    if config.tiling.cluster_n > 1:
        assert "st.async.shared::cluster.mbarrier::complete_tx::bytes" in ptx


@pytest.mark.parametrize("case", FEATURE_GRID, ids=_id)
def test_feature_backward_compiles(case):
    hidden, x_name, dy_name, rms = case
    vec = _feature_vec(hidden, x_name, dy_name)
    config = cfg.bwd_config(hidden, ELEM_BYTES[x_name], vec)
    ptx = launch.compile_bwd(DTYPES[x_name], hidden, cutlass.Float32, True, True, vec, config, ARCH, keep_ptx=True,
                             dy_dtype=DTYPES[dy_name], rms=rms).__ptx__
    assert ".target sm_90a" in ptx
    if config.tiling.vec * ELEM_BYTES[dy_name] == 16:  # dy comes in as 16-byte vectors
        assert _count(ptx, GLOBAL_V4_LOAD) >= config.tiling.vecs_per_thread
    if config.stages > 1:  # x and dy staged: 16-byte cp.async copies, one per vector of each at each issue site
        copies = _count(ptx, r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16")
        assert copies == 2 * config.tiling.vecs_per_thread * config.stages, copies
    assert not re.search(r"\b(ld|st)\.local", ptx)


@pytest.mark.parametrize("hidden", [1024, 16384])
def test_rmsnorm_reduces_once(hidden):
    """RMSNorm's forward sums x^2 only: half the warp shuffles of LayerNorm's two row sums (mean, then variance),
    and its backward one row sum instead of two."""
    fwd, bwd = cfg.fwd_config(hidden, 2, 8), cfg.bwd_config(hidden, 2, 8)
    for compile_kernel in (
        lambda rms: launch.compile_fwd(cutlass.BFloat16, hidden, None, None, False, 8, fwd, ARCH, keep_ptx=True,
                                       rms=rms),
        lambda rms: launch.compile_bwd(cutlass.BFloat16, hidden, None, False, False, 8, bwd, ARCH, keep_ptx=True,
                                       rms=rms),
    ):
        shuffles = {rms: _count(compile_kernel(rms).__ptx__, r"shfl\.sync\.bfly") for rms in (False, True)}
        assert 0 < shuffles[True] and 2 * shuffles[True] == shuffles[False], shuffles


@pytest.mark.parametrize("hidden", [32768, 262144])
def test_clustered_forward_exchanges_statistics_once(hidden):
    """Rows split over a cluster merge mean and variance in one exchange between the CTAs (merged_stats): one
    mbarrier wait in the PTX, as RMSNorm's single row sum, against two for the two-pass variance."""
    config = cfg.fwd_config(hidden, 2, 8, rows=8192, persistent=False)
    assert config.tiling.cluster_n > 1 and config.merged_stats

    def waits(config, rms=False):
        ptx = launch.compile_fwd(cutlass.BFloat16, hidden, cutlass.Float32, cutlass.Float32, True, 8, config, ARCH,
                                 keep_ptx=True, rms=rms).__ptx__
        return _count(ptx, r"mbarrier\.(try_wait|test_wait)")

    assert waits(config) == waits(config, rms=True) == 1
    assert waits(dataclasses.replace(config, merged_stats=False)) == 2


@pytest.mark.parametrize("rows, hidden, small", [(1, 1024, True), (128, 1024, True), (256, 512, True),
                                                 (64, 2048, False), (257, 1024, False), (1, 8192, True),
                                                 (2, 4096, False), (1, 16384, False), (128, 4096, False)])
def test_small_m_forward_spreads_a_row_over_more_threads(rows, hidden, small):
    """At small M (rows of at most 2 KB up to M = 256, rows of at most 16 KB at M = 1) each thread holds one 16-byte
    vector of x; the config compiles (a cluster of two at 1 x 8192) and the launch plan tells those M apart."""
    config = cfg.fwd_config(hidden, 2, 8, rows=rows)
    default = cfg.fwd_config(hidden, 2, 8, rows=4096 if hidden > 2048 else 512)
    assert (config.tiling.vecs_per_thread == 1) == small
    if not small:
        assert config.tiling == default.tiling
    if small:
        ptx = launch.compile_fwd(cutlass.BFloat16, hidden, cutlass.Float32, cutlass.Float32, False, 8, config, ARCH,
                                 keep_ptx=True).__ptx__
        _check_common(ptx, config.tiling, 2)
    assert cfg.rows_class(rows) != cfg.rows_class(4096)


@pytest.mark.parametrize("hidden", [256, 1024, 4096])
def test_backward_holds_one_row_a_cta_when_rows_are_fewer(hidden):
    """M below the CTA's thread rows (M = 1): the backward's CTA is one row, which compiles; from M = rows_per_cta
    up the tiling is the M-independent one (only the L2 hints and the prefetch wait for M above SMALL_M_ROWS, and
    the fused column sum follows the prefetch)."""
    default = cfg.bwd_config(hidden, 2, 8)
    assert default.tiling.rows_per_cta > 1
    single = cfg.bwd_config(hidden, 2, 8, rows=1)
    assert single.tiling.rows_per_cta == 1
    assert single.tiling.threads_per_row == default.tiling.threads_per_row
    few = cfg.bwd_config(hidden, 2, 8, rows=default.tiling.rows_per_cta)
    assert dataclasses.replace(few, l2_hints=default.l2_hints, prefetch=default.prefetch, stages=default.stages,
                               fused_column_sum=default.fused_column_sum) == default
    ptx = launch.compile_bwd(cutlass.BFloat16, hidden, cutlass.Float32, True, True, 8, single, ARCH,
                             keep_ptx=True).__ptx__
    _check_common(ptx, single.tiling, 2)


@pytest.mark.parametrize("hidden", [100003, 65537, 4096])
def test_merged_statistics_only_where_rows_fill_the_tiling(hidden):
    """Every thread must hold the same count of in-row values for the merge: ragged rows keep the two-pass
    variance, and forcing the merge on them is refused; unclustered rows keep it too (no gain measured)."""
    config = cfg.fwd_config(hidden, 2, 1 if hidden % 8 else 8, rows=8192)
    assert not config.merged_stats
    if hidden % 8:
        with pytest.raises(ValueError, match="merged_stats"):
            launch.compile_fwd(cutlass.BFloat16, hidden, None, None, False, 1,
                               dataclasses.replace(config, merged_stats=True), ARCH, keep_ptx=True)


# The fused residual: (N, x dtype, residual dtype, h dtype or None (h not stored), rms). h in fp32 means
# residual_in_fp32 (no rounding); h in x's dtype means h rounded to x's dtype before it is normalized.
RESIDUAL_GRID = [
    (8192, "bf16", "bf16", "bf16", False), (8192, "bf16", "fp32", "fp32", True), (4096, "fp16", "fp32", "fp16", False),
    (5000, "fp16", "fp16", None, True), (256, "bf16", "bf16", "bf16", True), (16384, "bf16", "fp32", "fp32", False),
    (65536, "bf16", "bf16", "bf16", True), (262144, "bf16", "fp32", "fp32", False), (8192, "fp32", "fp32", "fp32", False),
    (769, "bf16", "bf16", "bf16", False),
]


def _residual_vec(hidden: int, *names) -> int:
    widest = max(ELEM_BYTES[n] for n in names if n is not None)
    return launch.vector_width(widest, hidden, (hidden,), ((0x7F0000000000, widest),))


def _vector_ops(ptx: str, op: str, vector_bytes: int) -> int | None:
    """Global loads/stores (``op``: "ld" or "st") of ``vector_bytes``-byte vectors; None for narrower vectors,
    which the PTX cannot tell apart from scalar accesses."""
    lanes = {16: "v4", 8: "v2"}.get(vector_bytes)
    return None if lanes is None else _count(ptx, rf"{op}\.global(\.nc)?\.{lanes}\.(b32|f32|u32)")


def _adds_vector_ops(plain: str, fused: str, op: str, vector_bytes: int, count: int) -> None:
    """The fused kernel has at least ``count`` more ``vector_bytes``-byte global ``op``s than the plain one."""
    before, after = _vector_ops(plain, op, vector_bytes), _vector_ops(fused, op, vector_bytes)
    if before is not None:
        assert after >= before + count, (op, vector_bytes, before, after)


def _check_fused(plain: str, fused: str, per_thread: int, load_bytes: int, store_bytes: int | None) -> None:
    """The fused kernel's PTX against the plain one's: one more global load of ``load_bytes``-byte vectors per
    vector a thread holds (and one more store of ``store_bytes``-byte vectors, unless None), rows still in
    registers (no local memory in the PTX, no spills in ptxas)."""
    assert not re.search(r"\b(ld|st)\.local", fused)
    _adds_vector_ops(plain, fused, "ld", load_bytes, per_thread)
    if store_bytes is not None:
        _adds_vector_ops(plain, fused, "st", store_bytes, per_thread)
    usage = _ptxas_usage(fused)
    assert usage["spill_stores"] == 0, usage


@pytest.mark.parametrize("case", RESIDUAL_GRID, ids=_id)
def test_residual_forward_compiles(case):
    """h = x + r in the same pass: r comes in and h goes out in vectors as wide as the alignment allows (one more
    global load and one more store per vector than the plain forward), and the row still fits in registers."""
    hidden, x_name, r_name, h_name, rms = case
    vec = _residual_vec(hidden, x_name, r_name, h_name)
    config = cfg.fwd_config(hidden, ELEM_BYTES[x_name], vec, rows=4096, residual=True)
    compile_one = partial(launch.compile_fwd, DTYPES[x_name], hidden, cutlass.Float32, cutlass.Float32, True, vec,
                          config, ARCH, keep_ptx=True, rms=rms)
    plain = compile_one().__ptx__
    fused = compile_one(residual_dtype=DTYPES[r_name], residual_out_dtype=DTYPES[h_name] if h_name else None,
                        round_residual=h_name == x_name and x_name != "fp32").__ptx__
    _check_fused(plain, fused, config.tiling.vecs_per_thread, vec * ELEM_BYTES[r_name],
                 vec * ELEM_BYTES[h_name] if h_name is not None else None)


@pytest.mark.parametrize("case", RESIDUAL_GRID, ids=_id)
def test_residual_backward_compiles(case):
    """The backward of the fused residual reads h (as x) and the gradient of h, adds it to dx, and writes dx in x's
    dtype plus, where the residual's dtype differs, a second copy in that dtype."""
    hidden, x_name, r_name, h_name, rms = case
    h_name = h_name or x_name
    dres_in = DTYPES[r_name] if r_name != x_name else None
    vec = _residual_vec(hidden, x_name, r_name, h_name)
    # Unstaged: the staged default (16-bit rows of 1-2 rows a tile) copies h, dy and dh with cp.async instead
    # (test_staged_residual_backward_compiles_to_cp_async).
    config = dataclasses.replace(cfg.bwd_config(hidden, ELEM_BYTES[h_name], vec, residual=True), stages=1,
                                 staged_stats=False, fused_column_sum=False)
    compile_one = partial(launch.compile_bwd, DTYPES[h_name], hidden, cutlass.Float32, True, True, vec, config, ARCH,
                          keep_ptx=True, rms=rms, dx_dtype=DTYPES[x_name])
    plain = compile_one().__ptx__
    fused = compile_one(dres_dtype=DTYPES[h_name], dres_in_dtype=dres_in).__ptx__
    assert not re.search(r"\b(red|atom)\.[\w.]*f32", fused)
    _check_fused(plain, fused, config.tiling.vecs_per_thread, vec * ELEM_BYTES[h_name],
                 vec * ELEM_BYTES[r_name] if dres_in is not None else None)


@pytest.mark.parametrize("hidden, dtype_name, hinted", [(256, "bf16", True), (4096, "fp16", True),
                                                        (8192, "bf16", True), (5000, "fp16", True),
                                                        (16384, "bf16", False), (65536, "bf16", False),
                                                        (4096, "fp32", False)])
def test_l2_eviction_hints_on_narrow_16bit_rows(hidden, dtype_name, hinted):
    """16-bit rows held by one CTA load with L2 policies (rows evict_first, weight/bias evict_last), forward and
    backward: every 128-bit row and weight load carries the policy. Wider rows, fp32, small M and the fused
    residual load without one; so does the backward where it stages its loads through shared memory (1-2 rows a
    tile: BwdConfig.stages; it was measured without them). The sum CTAs' loads of the fp32 partial rows
    (BwdConfig.fused_column_sum, unhinted) are left out: the backward is compiled without them here."""
    elem, dtype = ELEM_BYTES[dtype_name], DTYPES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    fwd = cfg.fwd_config(hidden, elem, vec, rows=4096)
    bwd = cfg.bwd_config(hidden, elem, vec, rows=4096)
    assert fwd.l2_hints == hinted
    assert bwd.l2_hints == (hinted and bwd.stages == 1)
    assert not cfg.fwd_config(hidden, elem, vec, rows=4096, residual=True).l2_hints
    assert not cfg.bwd_config(hidden, elem, vec, rows=4096, residual=True).l2_hints
    assert not cfg.fwd_config(hidden, elem, vec, rows=cfg.SMALL_M_ROWS).l2_hints  # small M: none
    assert not cfg.bwd_config(hidden, elem, vec, rows=cfg.SMALL_M_ROWS).l2_hints
    ptxs = (launch.compile_fwd(dtype, hidden, cutlass.Float32, cutlass.Float32, True, vec, fwd, ARCH,
                               keep_ptx=True).__ptx__,
            launch.compile_bwd(dtype, hidden, cutlass.Float32, True, True, vec,
                               dataclasses.replace(bwd, fused_column_sum=False), ARCH, keep_ptx=True).__ptx__)
    for ptx, hinted in zip(ptxs, (fwd.l2_hints, bwd.l2_hints)):
        policies = set(re.findall(r"createpolicy\.fractional\.L2::(evict_\w+)", ptx))
        assert policies == ({"evict_first", "evict_last"} if hinted else set())
        hinted_loads = _count(ptx, r"ld\.global[.\w:]*\.L2::cache_hint\.v4")
        if hinted and vec * elem == 16:
            assert hinted_loads == _count(ptx, GLOBAL_V4_LOAD) > 0
        if not hinted:
            assert hinted_loads == 0


# Few rows: dw/db summed down the columns by CTAs of the backward's own launch (BwdConfig.column_tile).
@pytest.mark.parametrize("rows, hidden, elem, vec, residual, columns", [
    (128, 4096, 2, 8, False, True), (256, 1024, 2, 8, False, True), (3, 2048, 4, 4, False, True),
    (100, 769, 2, 1, False, True), (96, 4096, 2, 8, True, True), (130, 8192, 2, 8, False, True),
    (257, 4096, 2, 8, False, False),  # more rows than WEIGHT_GRADS_FROM_ROWS_MAX_ROWS: partial rows
    (2, 4096, 2, 8, False, False), (1, 4096, 2, 8, False, False),  # one CTA: its partial row is the gradient
    (128, 16384, 2, 8, False, False), (64, 262144, 2, 8, False, False),  # clustered rows
    (None, 4096, 2, 8, False, False),  # M not given
])
def test_backward_column_ctas_rule(rows, hidden, elem, vec, residual, columns):
    config = cfg.bwd_config(hidden, elem, vec, rows=rows, residual=residual)
    assert bool(config.column_tile) == columns
    if not columns:
        assert config.column_tiling is None and config.column_ctas(hidden) == 0
        return
    ct = config.column_tiling
    # A column CTA has the row CTAs' threads, one vector of columns each, in at most COLUMN_MAX_THREAD_ROWS rows.
    assert ct.num_threads == config.tiling.num_threads and ct.vecs_per_thread == 1 and ct.cluster_n == 1
    assert ct.tile_n == config.column_tile and config.column_tile % vec == 0
    assert ct.rows_per_cta <= cfg.COLUMN_MAX_THREAD_ROWS
    assert config.column_ctas(hidden) == -(-hidden // config.column_tile) <= 2 * cfg.COLUMN_CTAS


def test_launcher_leaves_the_column_ctas_their_sms(monkeypatch):
    """Row CTAs and column CTAs together are at most one wave of the GPU's SMs."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: H100_SMS)
    for rows, hidden in ((128, 4096), (256, 8192), (200, 1024), (17, 2048)):
        config = cfg.bwd_config(hidden, 2, 8, rows=rows)
        columns = config.column_ctas(hidden)
        assert columns > 0
        clusters = launch.bwd_grid_clusters(config, rows, 0, columns)
        assert 1 <= clusters <= -(-rows // config.tiling.rows_per_cta)
        assert clusters + columns <= H100_SMS


COLUMN_GRID = [  # (rows, N, x, weight, dw, db, rms, residual)
    (128, 4096, "bf16", "fp32", "fp32", "fp32", False, False),
    (200, 1000, "fp16", "bf16", "bf16", "fp16", False, False),  # ragged last column CTA, 16-bit gradients
    (100, 769, "bf16", "bf16", "bf16", None, False, False),  # scalar accesses; dw only
    (64, 4096, "bf16", "fp32", "fp32", None, True, False),  # RMSNorm
    (96, 4096, "bf16", "fp32", "fp32", "fp32", False, True),  # the fused residual's gradient
    (3, 2048, "fp32", "fp32", "fp32", "fp32", False, False),
]


@pytest.mark.parametrize("case", COLUMN_GRID, ids=_id)
def test_backward_column_ctas_compile(case):
    """The column CTAs read x and dy with the rows' vectors, keep fp32 sums, and write each gradient one element at
    a time in its own dtype: scalar stores of the gradients' widths appear, and no fp32 partial row is written
    (every vector store is dx's), no atomics."""
    rows, hidden, x_name, w_name, dw_name, db_name, rms, residual = case
    vec = _aligned_vec(hidden, x_name)
    config = cfg.bwd_config(hidden, ELEM_BYTES[x_name], vec, rows=rows, residual=residual)
    assert config.column_tile
    kwargs = dict(keep_ptx=True, rms=rms, dres_dtype=DTYPES[x_name] if residual else None,
                  dw_dtype=DTYPES[dw_name], db_dtype=DTYPES[db_name] if db_name else None)
    ptx = launch.compile_bwd(DTYPES[x_name], hidden, DTYPES[w_name], True, db_name is not None, vec, config, ARCH,
                             **kwargs).__ptx__
    partial_rows = launch.compile_bwd(DTYPES[x_name], hidden, DTYPES[w_name], True, db_name is not None, vec,
                                      dataclasses.replace(config, column_tile=0), ARCH, **kwargs).__ptx__
    widths = {ELEM_BYTES[name] * 8 for name in (dw_name, db_name) if name}
    for bits in widths:
        assert _count(ptx, rf"st\.global\.(b|f|u){bits}\b") >= 1
    assert not re.search(r"\b(red|atom)\.", ptx)
    assert not re.search(r"\b(ld|st)\.local", ptx)
    vector_stores = r"st\.global\.v\d\."
    # The same dx stores as the kernel with partial rows, less its partial-row stores.
    assert 0 < _count(ptx, vector_stores) < _count(partial_rows, vector_stores) or vec == 1
    _check_common(ptx, config.tiling, ELEM_BYTES[x_name])


PERSISTENT_GRID = [  # (N, x, weight/bias, rms)
    (65536, "bf16", "wb_fp32", False), (262144, "bf16", "wb_fp32", False), (131072, "fp16", "wb_same", False),
    (262144, "fp32", "wb_fp32", False), (65536, "bf16", "w", True), (32768, "bf16", "none", False),
    (16384, "bf16", "wb_fp32", False),  # one CTA a row (no cluster)
]


@pytest.mark.parametrize("case", PERSISTENT_GRID, ids=_id)
def test_persistent_forward_compiles(case):
    """The persistent forward: weight and bias go to shared memory once (16-byte slots, before the row loop), the
    row loop loads x with 128-bit accesses, exchanges the statistics through the cluster on alternating mbarriers,
    and fits one 512-thread CTA per SM without local memory."""
    hidden, dtype_name, affine, rms = case
    weight, bias = _affine_dtypes(dtype_name, affine)
    elem = ELEM_BYTES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    default = cfg.fwd_config(hidden, elem, vec, rows=8192)
    config = dataclasses.replace(default, persistent=True, merged_stats=True, affine_after_stats=False,
                                 min_ctas_per_sm=0, l2_hints=False)
    ptx = launch.compile_fwd(DTYPES[dtype_name], hidden, weight, bias, True, vec, config, ARCH, keep_ptx=True,
                             rms=rms).__ptx__
    _check_common(ptx, config.tiling, elem)
    slots = (weight is not None) + (bias is not None)
    if slots:
        assert _count(ptx, r"st\.shared\.v4") >= slots * config.tiling.vecs_per_thread
    if config.tiling.cluster_n > 1:
        # One exchange a row: one expect_tx and one parity wait in the loop (on the row's slot's mbarrier).
        assert _count(ptx, r"mbarrier\.arrive\.expect_tx") == 1
        assert _count(ptx, r"mbarrier\.try_wait\.parity") == 1
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["registers"] <= 128, usage


def test_persistent_forward_refuses_what_it_cannot_run():
    config = dataclasses.replace(cfg.fwd_config(100003, 2, 1, rows=8192), persistent=True)
    with pytest.raises(ValueError, match="persistent"):
        launch.compile_fwd(cutlass.BFloat16, 100003, None, None, False, 1, config, ARCH, keep_ptx=True)
    config = dataclasses.replace(cfg.fwd_config(65536, 2, 8, rows=8192), persistent=True)
    with pytest.raises(ValueError, match="persistent"):
        launch.compile_fwd(cutlass.BFloat16, 65536, None, None, False, 8, config, ARCH, keep_ptx=True,
                           residual_dtype=cutlass.BFloat16)


def test_occupancy_query_binds_the_primary_context_where_none_is_current(monkeypatch):
    """Autograd's backward thread may have no current CUDA context when the launcher first asks how many clusters fit
    at once: the query binds the device's primary context (torch's) first, and leaves a current one alone."""
    import types

    calls = []
    ok = object()

    def fake_driver(current: int):
        return types.SimpleNamespace(
            CUresult=types.SimpleNamespace(CUDA_SUCCESS=ok),
            cuCtxGetCurrent=lambda: (ok, current),
            cuDeviceGet=lambda index: calls.append(("get", index)) or (ok, f"dev{index}"),
            cuDevicePrimaryCtxRetain=lambda device: calls.append(("retain", device)) or (ok, f"primary-{device}"),
            cuCtxSetCurrent=lambda ctx: calls.append(("set", ctx)) or (ok,))

    monkeypatch.setattr(launch, "cuda", fake_driver(0))
    launch._bind_primary_context(1)
    assert calls == [("get", 1), ("retain", "dev1"), ("set", "primary-dev1")]
    calls.clear()
    monkeypatch.setattr(launch, "cuda", fake_driver(0x7F00))
    launch._bind_primary_context(1)
    assert calls == []


def test_persistent_forward_grid(monkeypatch):
    """One cluster a row up to the clusters resident at once (the occupancy query, else SMs / cluster size); the
    other forward kernels ignore the argument (1)."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: H100_SMS)
    config = cfg.fwd_config(262144, 2, 8, rows=8192, persistent=True)
    for resident, rows, want in ((7, 8192, 7), (7, 3, 3), (None, 8192, H100_SMS // 16), (None, 0, 1)):
        monkeypatch.setattr(launch, "_resident_clusters", lambda index, cluster_n, r=resident: r)
        assert launch._fwd_grid_clusters(config, rows, 0) == want
    assert launch._fwd_grid_clusters(dataclasses.replace(config, persistent=False), 8192, 0) == 1


def test_persistent_forward_over_unclustered_rows_at_several_ctas_per_sm(monkeypatch):
    """``persistent_ctas_per_sm`` (opt-in): the persistent kernel over unclustered rows with that many CTAs per SM in
    the grid and as the launch bound (.minnctapersm); refused for the other kernels and for clusters."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: H100_SMS)
    two = cfg.fwd_config(8192, 2, 8, rows=4096, affine_bytes=8)  # the default there (PERSISTENT_UNCLUSTERED_N)
    assert two.persistent and two.persistent_ctas_per_sm == 2 and two.tiling.cluster_n == 1
    base = dataclasses.replace(two, persistent_ctas_per_sm=1)
    assert launch._fwd_grid_clusters(base, 4096, 0) == H100_SMS
    assert launch._fwd_grid_clusters(two, 4096, 0) == 2 * H100_SMS
    assert launch._fwd_grid_clusters(two, 100, 0) == 100
    ptx = launch.compile_fwd(cutlass.Float16, 8192, cutlass.Float32, cutlass.Float32, True, 8, two, ARCH,
                             keep_ptx=True).__ptx__
    assert re.search(r"\.minnctapersm\s+2", ptx)
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0 and usage["registers"] <= 128, usage
    # One CTA per SM (the default): no launch bound.
    plain = launch.compile_fwd(cutlass.Float16, 8192, cutlass.Float32, cutlass.Float32, True, 8, base, ARCH,
                               keep_ptx=True).__ptx__
    assert not re.search(r"\.minnctapersm", plain)
    with pytest.raises(ValueError, match="persistent_ctas_per_sm"):
        dataclasses.replace(base, persistent=False, persistent_ctas_per_sm=2)
    clustered = cfg.fwd_config(262144, 2, 8, rows=8192, persistent=True)
    with pytest.raises(ValueError, match="persistent_ctas_per_sm"):
        dataclasses.replace(clustered, persistent_ctas_per_sm=2)


# (64 bytes a thread at N = 1024 / 2048: the multi-row tilings that were the default before MID_ROW_BYTES.)
@pytest.mark.parametrize("hidden, bytes_per_thread, ctas, rms", [(1024, 64, 2, False), (256, None, 4, True),
                                                                  (2048, 64, 4, False), (1024, 32, 4, False),
                                                                  (1024, 16, 8, False)], ids=str)
def test_persistent_forward_over_several_rows_a_cta(monkeypatch, hidden, bytes_per_thread, ctas, rms):
    """The persistent kernel over unclustered CTAs of several rows (opt-in, twenty-third session): one row's weight
    and bias slots, written by the first row's threads behind a CTA barrier and read by every row's; the row loop
    strides over row tiles (the grid: at most one CTA a tile), and rows past M in the last tile load and store
    nothing (guarded: predicated stores in the loop). No spills at these CTAs per SM (bf16, fp32 weight and bias,
    statistics stored)."""
    monkeypatch.setattr(launch, "_sm_count", lambda index: H100_SMS)
    kwargs = {} if bytes_per_thread is None else {"bytes_per_thread": bytes_per_thread}
    per_row = cfg.fwd_config(hidden, 2, 8, rows=32768, affine_bytes=8, **kwargs)
    config = dataclasses.replace(per_row, persistent=True, merged_stats=True, affine_after_stats=False,
                                 min_ctas_per_sm=0, l2_hints=False, persistent_ctas_per_sm=ctas)
    rows_per_cta = config.tiling.rows_per_cta
    assert config.tiling.cluster_n == 1 and (rows_per_cta > 1 or bytes_per_thread == 16)
    assert launch._fwd_grid_clusters(config, 32768, 0) == ctas * H100_SMS
    assert launch._fwd_grid_clusters(config, 9 * rows_per_cta + 1, 0) == 10  # a partial last tile
    ptx = launch.compile_fwd(cutlass.BFloat16, hidden, cutlass.Float32, None if rms else cutlass.Float32, True, 8,
                             config, ARCH, keep_ptx=True, rms=rms).__ptx__
    _check_common(ptx, config.tiling, 2)
    slots = 1 if rms else 2
    if rows_per_cta > 1:
        assert _count(ptx, r"bar\.sync") >= 1
    # One row's slots: its threads' vectors, 16 bytes at a time, whatever the rows a CTA.
    assert _count(ptx, r"st\.shared\.v4") >= slots * config.tiling.vecs_per_thread * 2
    assert re.search(rf"\.minnctapersm\s+{ctas}", ptx)
    usage = _ptxas_usage(ptx)
    assert usage["spill_stores"] == 0, usage
    assert usage["registers"] * config.tiling.num_threads * ctas <= 65536, usage


@pytest.mark.parametrize("hidden, dtype", [(4096, cutlass.Float16), (8192, cutlass.BFloat16),
                                           (16384, cutlass.Float16)])
def test_persistent_unclustered_defaults_compile_without_spills(hidden, dtype):
    """The unclustered persistent defaults (4 / 2 / 1 CTAs of 128 / 256 / 512 threads per SM at N = 4096 / 8192 /
    16384, fp32 weight and bias) compile with their launch bound and spill nothing, with and without the statistics;
    outside their M range, with other weight bytes or other N the rule leaves the per-row kernel."""
    config = cfg.fwd_config(hidden, 2, 8, rows=4096, affine_bytes=8)
    assert config.persistent and config.merged_stats
    assert config.persistent_ctas_per_sm * config.tiling.num_threads == cfg.MAX_CTA_THREADS
    for store_stats in (False, True):
        ptx = launch.compile_fwd(dtype, hidden, cutlass.Float32, cutlass.Float32, store_stats, 8, config, ARCH,
                                 keep_ptx=True).__ptx__
        if config.persistent_ctas_per_sm > 1:
            assert re.search(rf"\.minnctapersm\s+{config.persistent_ctas_per_sm}", ptx)
        usage = _ptxas_usage(ptx)
        assert usage["spill_stores"] == 0, usage
        assert usage["registers"] * config.tiling.num_threads * config.persistent_ctas_per_sm <= 65536, usage
    for rows, affine in ((512, 8), (16384, 8), (4096, 4), (4096, 0)):
        assert not cfg.fwd_config(hidden, 2, 8, rows=rows, affine_bytes=affine).persistent
    assert not cfg.fwd_config(hidden, 2, 8, rows=4096, affine_bytes=8, residual=True).persistent
    assert not cfg.fwd_config(hidden, 2, 4, rows=4096, affine_bytes=8, widest_elem_bytes=4).persistent
    assert not cfg.fwd_config(hidden * 3 // 4, 2, 8, rows=4096, affine_bytes=8).persistent
    assert cfg.rows_class(8192) != cfg.rows_class(8193)


@pytest.mark.parametrize("rows, hidden, elem, vec, affine, residual, persistent", [
    (32768, 65536, 2, 8, 8, False, True), (16384, 131072, 2, 8, 8, False, True), (8192, 262144, 2, 8, 8, False, True),
    (32768, 32768, 2, 8, 8, False, True), (4096, 65536, 4, 4, 8, False, True), (None, 262144, 2, 8, 8, False, True),
    (32768, 65536, 2, 8, 4, False, True), (8192, 262144, 2, 8, 2, False, True),  # 16-bit weight (and bias)
    (32768, 32768, 2, 8, 4, False, False),  # 128 KB of weight and bias a row: one cluster a row
    (32768, 65536, 2, 8, 0, False, False), (8192, 262144, 2, 8, 0, False, False),  # no weight or bias
    (32768, 16384, 2, 8, 8, False, False),  # one CTA a row
    (16384, 36864, 2, 8, 8, False, False),  # a 3-CTA cluster: one cluster a row (measured faster there)
    (8192, 262144, 2, 8, 8, True, False),  # the fused residual
    (4096, 100003, 2, 1, 8, False, False),  # a ragged row (two-pass statistics)
    (256, 65536, 2, 8, 8, False, False), (1, 262144, 2, 8, 8, False, False),  # small M
])
def test_persistent_forward_rule(rows, hidden, elem, vec, affine, residual, persistent):
    """The persistent forward where a row's weight and bias (re-read from L2 for every row by the one-cluster-a-row
    kernel) take at least PERSISTENT_MIN_AFFINE_ROW_BYTES (the probe's measurements in config.py)."""
    config = cfg.fwd_config(hidden, elem, vec, rows=rows, residual=residual, affine_bytes=affine)
    assert config.persistent == persistent
    if persistent:
        assert config.merged_stats and config.tiling.cluster_n > 1 and config.tiling.rows_per_cta == 1
        assert not config.affine_after_stats and config.min_ctas_per_sm == 0 and not config.l2_hints
        assert not cfg.fwd_config(hidden, elem, vec, rows=rows, affine_bytes=affine, persistent=False).persistent
    elif residual or hidden % 8 or hidden in (16384, 36864):
        with pytest.raises(ValueError, match="persistent"):
            cfg.fwd_config(hidden, elem, vec, rows=rows, residual=residual, persistent=True)


@pytest.mark.parametrize("rows, hidden, elem, vec, affine, residual, widest, mid", [
    (32768, 1024, 2, 8, 8, False, None, True), (4096, 1024, 2, 8, 8, False, None, True),  # 2 KB rows
    (32768, 1024, 2, 8, 4, False, None, True), (8192, 1024, 2, 8, 2, False, 2, True),  # bf16 affine; a bf16 weight
    (32768, 1152, 2, 8, 8, False, None, True), (32768, 1536, 2, 8, 8, False, None, True),  # ragged 128-thread rows
    (4096, 2048, 2, 8, 8, False, None, True), (32768, 512, 4, 4, 8, False, None, True),  # 4 KB; fp32 x, 2 KB
    (32768, 1024, 4, 4, 8, False, None, True),
    (4095, 1024, 2, 8, 8, False, None, False), (2048, 2048, 2, 8, 8, False, None, False),  # too few rows
    (32768, 1024, 2, 8, 0, False, None, False),  # no weight or bias
    (32768, 1024, 2, 8, 8, True, None, False), (32768, 1024, 2, 4, 8, False, 4, False),  # residual; out fp32
    (32768, 1024, 2, 4, 8, False, None, False),  # 8-byte vectors (misaligned rows)
    (32768, 896, 2, 8, 8, False, None, False), (32768, 2056, 2, 8, 8, False, None, False),  # below / above 2-4 KB
])
def test_mid_row_forward_rule(rows, hidden, elem, vec, affine, residual, widest, mid):
    """Rows of 2-4 KB with weight and/or bias at M >= MID_ROW_MIN_ROWS: one row a 128-thread CTA, weight and bias after
    the statistics (config.py's measurements); everything else keeps 64 bytes of x a thread."""
    config = cfg.fwd_config(hidden, elem, vec, rows=rows, residual=residual, widest_elem_bytes=widest,
                            affine_bytes=affine)
    old = cfg.fwd_config(hidden, elem, vec, rows=rows, residual=residual, widest_elem_bytes=widest,
                         affine_bytes=affine, bytes_per_thread=64)
    t = config.tiling
    if mid:
        assert (t.threads_per_row, t.rows_per_cta, t.cluster_n) == (cfg.MIN_CTA_THREADS, 1, 1)
        assert t.tile_n >= hidden > t.tile_n // 2  # the fewest vectors a thread that cover the row
        assert config.affine_after_stats and not config.persistent
        assert old.tiling.rows_per_cta > 1 and old != config
    else:
        assert config == old
    assert cfg.rows_class(cfg.MID_ROW_MIN_ROWS - 1) != cfg.rows_class(cfg.MID_ROW_MIN_ROWS)


@pytest.mark.parametrize("case", [(1024, "bf16", "wb_fp32"), (1536, "fp16", "wb_fp32"), (2048, "bf16", "wb_same"),
                                  (1024, "fp32", "w"), (512, "fp32", "wb_fp32")], ids=_id)
def test_mid_row_forward_compiles(case):
    """The one-row 128-thread CTA of the mid-row rule compiles for sm_90a with and without the statistics stored:
    128-bit accesses of x and out, a cross-warp reduction (_check_common), no local memory, and at most 64 registers
    a thread (ptxas: 32-55 against 59-127 for the multi-row CTAs of 64 bytes a thread, so at least twice the CTAs an
    SM)."""
    hidden, dtype_name, affine = case
    weight, bias = _affine_dtypes(dtype_name, affine)
    elem = ELEM_BYTES[dtype_name]
    vec = _aligned_vec(hidden, dtype_name)
    affine_bytes = sum(4 if t is cutlass.Float32 else elem for t in (weight, bias) if t is not None)
    config = cfg.fwd_config(hidden, elem, vec, rows=32768, affine_bytes=affine_bytes)
    assert config.tiling.threads_per_row == 128 and config.affine_after_stats
    for store_stats in (False, True):
        ptx = launch.compile_fwd(DTYPES[dtype_name], hidden, weight, bias, store_stats, vec, config, ARCH,
                                 keep_ptx=True).__ptx__
        _check_common(ptx, config.tiling, elem)
        usage = _ptxas_usage(ptx)
        assert usage["spill_stores"] == 0 and usage["registers"] <= 64, usage
