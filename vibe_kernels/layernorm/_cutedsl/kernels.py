"""CuTeDSL LayerNorm kernels: forward (one pass over HBM, row on chip) and backward (persistent, fp32 dw/db partials).

Both kernels take raw pointers plus runtime M and row strides, and build their global tensors inside the JIT
function, so one compiled kernel serves every batch size and row stride of its alignment class.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.memory
from cutlass import Float32, Int32, Int64, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op

from .config import BwdConfig, FwdConfig, RowTiling
from .reduce import row_mean_m2, row_sum


def _tiled_copy(dtype, tiling: RowTiling, num_bits: int | None = None):
    """Threads laid out (rows_per_cta, threads_per_row), row-major, each moving ``vec`` contiguous elements:
    consecutive lanes touch consecutive 16-byte chunks, so a warp's access is fully coalesced."""
    bits = num_bits if num_bits is not None else min(128, tiling.vec * dtype.width)
    atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=bits)
    thr_layout = cute.make_ordered_layout((tiling.rows_per_cta, tiling.threads_per_row), order=(1, 0))
    val_layout = cute.make_layout((1, tiling.vec))
    return cute.make_tiled_copy_tv(atom, thr_layout, val_layout)


def _copy_atom(dtype, vec: int):
    return cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=min(128, vec * dtype.width))


def _async_copy_atom(dtype, vec: int):
    """A cp.async copy of ``vec`` elements from global to shared memory: .cg (L2 only) for 16 bytes, .ca for the
    narrower vectors of a tensor narrower than the widest row tensor (.cg copies 16 bytes only)."""
    bits = min(128, vec * dtype.width)
    mode = cute.nvgpu.LoadCacheMode.GLOBAL if bits == 128 else cute.nvgpu.LoadCacheMode.ALWAYS
    return cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(mode), dtype, num_bits_per_copy=bits)


def _load_atom(dtype, vec: int, l1_priority=None, l2_policy: bool = False):
    """A global load of ``vec`` elements; ``l1_priority`` (a cute.nvgpu.CacheEvictionPriority, or None: no hint) says
    how the L1 keeps the line: NO_ALLOCATE for data read once (the rows), EVICT_LAST for data every row reads again
    (weight, bias). ``l2_policy``: the load takes an L2 cache policy
    (``cute.copy(..., cache_policy=_l2_policy(...))``)."""
    if l1_priority is None and not l2_policy:
        return _copy_atom(dtype, vec)
    hint = {} if l1_priority is None else {"l1c_evict_priority": l1_priority}
    return cute.make_copy_atom(cute.nvgpu.CopyG2ROp(), dtype, num_bits_per_copy=min(128, vec * dtype.width), **hint)


@dsl_user_op
def _l2_policy(kind: str, *, loc=None, ip=None) -> Int64:
    """An L2 cache eviction policy (``createpolicy.fractional.L2::<kind>``, kind "evict_first" or "evict_last", for
    every line) for loads through a ``_load_atom(..., l2_policy=True)`` atom. The DSL's loads take a policy but
    have no op that creates one: inline PTX."""
    if kind not in ("evict_first", "evict_last"):
        raise ValueError(f"unknown L2 eviction policy {kind!r}")
    policy = llvm.inline_asm(T.i64(), [], f"createpolicy.fractional.L2::{kind}.b64 $0, 1.0;", "=l",
                             has_side_effects=False, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT,
                             loc=loc, ip=ip)
    return Int64(policy)


@dsl_user_op
def _nanosleep(ns: int, *, loc=None, ip=None) -> None:
    """``nanosleep.u32`` (a hint: the warp sleeps up to ``ns`` nanoseconds): a spinning thread's back-off."""
    llvm.inline_asm(None, [], f"nanosleep.u32 {int(ns)};", "", has_side_effects=True, is_align_stack=False,
                    asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


def _l2_hint(policy) -> dict:
    """cute.copy's keyword for an L2 policy (none without one)."""
    return {} if policy is None else {"cache_policy": policy}


@cute.jit
def _column_predicate(tXcX: cute.Tensor, hidden: cutlass.Constexpr[int], keep=None) -> cute.Tensor:
    """One flag per vector: its first column is inside the row (vec divides N, so the whole vector is), and
    ``keep`` (a Boolean, None: true) holds."""
    pred = cute.make_rmem_tensor(
        cute.make_layout(
            (cute.size(tXcX, mode=[0, 1]), cute.size(tXcX, mode=[1]), cute.size(tXcX, mode=[2])),
            stride=(cute.size(tXcX, mode=[2]), 0, 1),
        ),
        cutlass.Boolean,
    )
    for v in cutlass.range_constexpr(pred.shape[0]):
        for k in cutlass.range_constexpr(pred.shape[2]):
            inside = cute.elem_less(tXcX[(0, v), 0, k][1], hidden)
            if const_expr(keep is not None):
                inside = inside & keep
            pred[v, 0, k] = inside
    return pred


@cute.jit
def _zero_outside(frag: cute.Tensor, pred: cute.Tensor) -> None:
    """Zeroes the vectors of a register fragment whose predicate is false."""
    zeros = cute.make_rmem_tensor_like(frag[(None, 0), None, 0])
    zeros.fill(0.0)
    for v in cutlass.range_constexpr(frag.shape[0][1]):
        for k in cutlass.range_constexpr(frag.shape[2]):
            if not pred[v, 0, k]:
                cute.autovec_copy(zeros, frag[(None, v), None, k])


def _thread_slots(smem: cutlass.memory.SmemAllocator, dtype, tiling: RowTiling) -> cute.Tensor:
    """Shared memory holding one register fragment (vecs_per_thread vectors of ``vec``) for every thread of the CTA.

    Thread t's values are interleaved with its neighbours' in 16-byte units (unit u of thread t at
    ``(u * num_threads + t) * 16`` bytes), so a warp's 16-byte accesses cover consecutive banks: conflict-free,
    where a copy of the row's own layout (32 bytes a thread for 8 fp32) would take two wavefronts per quarter warp."""
    size = tiling.num_threads * tiling.vec * tiling.vecs_per_thread
    return smem.allocate_tensor(dtype, cute.make_layout(size), byte_alignment=16)


@cute.jit
def _slots_of(slots: cute.Tensor, thread, tiling: cutlass.Constexpr) -> cute.Tensor:
    """Thread ``thread``'s view of ``slots``: the shape of a row fragment ((vec, 1), 1, vecs_per_thread), with the
    same element order, so a fragment's values load/store through ``_load_slots``/``_store_slots``."""
    unit = const_expr(min(tiling.vec, 128 // slots.element_type.width))
    per_vec = const_expr(tiling.vec // unit)
    nt = const_expr(tiling.num_threads)
    layout = cute.make_layout(((unit, per_vec), 1, tiling.vecs_per_thread),
                              stride=((1, nt * unit), 0, per_vec * nt * unit))
    offset = cute.assume(thread * unit, divby=unit)
    return cute.make_tensor(slots.iterator + offset, layout)


@cute.jit
def _stage_slots(slots: cute.Tensor, stage, thread, tiling: cutlass.Constexpr) -> cute.Tensor:
    """Thread ``thread``'s view (as ``_slots_of``) of stage ``stage`` of ``slots``, which holds ``stages`` sets of
    every thread's fragment back to back (``_thread_slots`` per stage)."""
    size = const_expr(tiling.num_threads * tiling.vec * tiling.vecs_per_thread)
    offset = cute.assume(stage * size, divby=size)
    return _slots_of(cute.make_tensor(slots.iterator + offset, cute.make_layout(size)), thread, tiling)


@cute.jit
def _load_slots(view: cute.Tensor, like: cute.Tensor):
    """The values of a thread's slot view, shaped like the fragment ``like``."""
    return view.load().reshape(like.shape)


@cute.jit
def _store_slots(view: cute.Tensor, value) -> None:
    view.store(value.reshape(view.shape))


def _rows_tensor(ptr: cute.Pointer, rows, hidden: int, row_stride, vec: int) -> cute.Tensor:
    """An (M, N) global tensor with unit column stride; the row stride is a runtime value divisible by ``vec``."""
    return cute.make_tensor(ptr, cute.make_layout((rows, hidden), stride=(cute.assume(row_stride, divby=vec), 1)))


def _launch_bounds(min_ctas_per_sm: int) -> dict:
    """Launch keyword arguments asking ptxas to fit ``min_ctas_per_sm`` CTAs per SM in the register file (none for
    one). The L1/shared split stays the driver's choice: the carveout value is given only because the DSL would
    otherwise query the device for it, which a compile without a GPU cannot."""
    if min_ctas_per_sm <= 1:
        return {}
    return {"min_blocks_per_mp": min_ctas_per_sm, "preferred_smem_carveout": -1}


class _RowKernel:
    """What the forward and backward share: the row tiling, shared-memory reduction buffers, cluster setup."""

    def __init__(self, dtype, hidden: int, tiling: RowTiling, num_stages: int):
        self.dtype = dtype
        self.hidden = hidden
        self.tiling = tiling
        self.num_stages = num_stages
        self.even_n = hidden == tiling.tile_n * tiling.cluster_n

    def _reduction_buffers(self, smem: cutlass.memory.SmemAllocator, count: int):
        t = self.tiling
        layout = cute.make_ordered_layout((t.rows_per_cta, t.warps_per_row * t.cluster_n), order=(1, 0))
        return [smem.allocate_tensor(Float32, layout, byte_alignment=16) for _ in range(count)]

    @cute.jit
    def _init_cluster_barriers(self, mbar_ptr: cute.Pointer):
        tidx, _, _ = cute.arch.thread_idx()
        if tidx < self.num_stages:
            cute.arch.mbarrier_init(mbar_ptr + tidx, 1)
        cute.arch.mbarrier_init_fence()
        # Peers may st.async into this CTA only once its barriers exist: arrive now, wait before the first send.
        cute.arch.cluster_arrive_relaxed()


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


class LayerNormFwd(_RowKernel):
    """out = (x - mean) * rstd * w + b, rows of ``hidden`` elements; mean and rstd optionally stored (fp32).

    rms: RMSNorm, out = x * rstd * w + b with rstd = 1 / sqrt(mean(x^2) + eps): one row reduction, no mean (only
    rstd is stored). out_dtype: the output's element type (default x's).

    Fused pre-norm residual (``residual_dtype`` not None): the row normalized is h = x + r, summed in fp32 and
    rounded to x's dtype when ``round_residual`` (so h is exactly an unfused ``x + r`` in x's dtype), else kept in
    fp32; h is written to the residual output when ``residual_out_dtype`` is not None."""

    def __init__(self, dtype, hidden: int, weight_dtype, bias_dtype, store_stats: bool, config: FwdConfig,
                 out_dtype=None, rms: bool = False, residual_dtype=None, residual_out_dtype=None,
                 round_residual: bool = False):
        super().__init__(dtype, hidden, config.tiling, num_stages=2)
        self.weight_dtype = weight_dtype
        self.bias_dtype = bias_dtype
        self.store_stats = store_stats
        self.out_dtype = out_dtype if out_dtype is not None else dtype
        self.rms = rms
        self.affine_after_stats = config.affine_after_stats
        self.min_ctas_per_sm = config.min_ctas_per_sm
        self.merged_stats = config.merged_stats and not rms  # RMSNorm has a single row sum anyway
        if self.merged_stats and not self.even_n:
            raise ValueError(f"merged_stats needs rows that fill the tiling exactly (N = {hidden}, {config.tiling})")
        priority = cute.nvgpu.CacheEvictionPriority
        self.row_l1 = priority.NO_ALLOCATE if config.l1_hints else None
        self.affine_l1 = priority.EVICT_LAST if config.l1_hints else None
        self.l2_hints = config.l2_hints
        if residual_dtype is None and (residual_out_dtype is not None or round_residual):
            raise ValueError("residual_out_dtype and round_residual need a residual_dtype")
        self.residual_dtype = residual_dtype
        self.residual_out_dtype = residual_out_dtype
        self.round_residual = round_residual
        self.persistent = config.persistent
        self.persistent_ctas_per_sm = config.persistent_ctas_per_sm
        # The persistent kernel's weight and bias slots: one row's threads' worth (every row of a CTA has the same
        # columns).
        self.affine_slot_tiling = dataclasses.replace(config.tiling, rows_per_cta=1)
        if self.persistent:
            t = config.tiling
            one_row = t.rows_per_cta == 1 or t.cluster_n == 1
            if not (self.even_n and one_row and residual_dtype is None and (self.merged_stats or rms)):
                raise ValueError(f"the persistent forward needs rows that fill the tiling exactly (one a CTA where "
                                 f"clustered), one exchange of statistics (merged_stats, or RMSNorm) and no residual "
                                 f"(N = {hidden}, {config})")

    @cute.jit
    def __call__(
        self,
        x_ptr: cute.Pointer,
        w_ptr: cute.Pointer,
        b_ptr: cute.Pointer,
        out_ptr: cute.Pointer,
        mean_ptr: cute.Pointer,
        rstd_ptr: cute.Pointer,
        r_ptr: cute.Pointer,
        h_ptr: cute.Pointer,
        rows: Int32,
        x_row_stride: Int64,
        out_row_stride: Int64,
        r_row_stride: Int64,
        h_row_stride: Int64,
        eps: Float32,
        num_clusters: Int32,
        stream: cuda.CUstream,
    ):
        """``num_clusters``: the persistent kernel's grid (clusters, each striding over the rows); unused (one
        cluster a row tile) otherwise."""
        t = self.tiling
        n = self.hidden
        mX = _rows_tensor(x_ptr, rows, n, x_row_stride, t.vec)
        mO = _rows_tensor(out_ptr, rows, n, out_row_stride, t.vec)
        mR = None
        mH = None
        if const_expr(self.residual_dtype is not None):
            mR = _rows_tensor(r_ptr, rows, n, r_row_stride, t.vec)
            if const_expr(self.residual_out_dtype is not None):
                mH = _rows_tensor(h_ptr, rows, n, h_row_stride, t.vec)
        # Weight and bias are broadcast over the CTA's rows with a zero row stride.
        mW = None
        if const_expr(self.weight_dtype is not None):
            mW = cute.make_tensor(w_ptr, cute.make_layout((t.rows_per_cta, n), stride=(0, 1)))
        mB = None
        if const_expr(self.bias_dtype is not None):
            mB = cute.make_tensor(b_ptr, cute.make_layout((t.rows_per_cta, n), stride=(0, 1)))
        mMean = None
        mRstd = None
        if const_expr(self.store_stats):
            if const_expr(not self.rms):
                mMean = cute.make_tensor(mean_ptr, cute.make_layout(rows))
            mRstd = cute.make_tensor(rstd_ptr, cute.make_layout(rows))
        tiled_copy = _tiled_copy(self.dtype, t)
        if const_expr(self.persistent):
            self.kernel_persistent(mX, mW, mB, mO, mMean, mRstd, eps, tiled_copy).launch(
                grid=[num_clusters, t.cluster_n, 1],
                block=[t.num_threads, 1, 1],
                cluster=[1, t.cluster_n, 1] if const_expr(t.cluster_n > 1) else None,
                stream=stream,
                **_launch_bounds(self.persistent_ctas_per_sm),
            )
        else:
            self.kernel(mX, mW, mB, mO, mMean, mRstd, mR, mH, eps, tiled_copy).launch(
                grid=[cute.ceil_div(rows, t.rows_per_cta), t.cluster_n, 1],
                block=[t.num_threads, 1, 1],
                cluster=[1, t.cluster_n, 1] if const_expr(t.cluster_n > 1) else None,
                stream=stream,
                **_launch_bounds(self.min_ctas_per_sm),
            )

    @cute.kernel
    def kernel(
        self,
        mX: cute.Tensor,
        mW,
        mB,
        mO: cute.Tensor,
        mMean,
        mRstd,
        mR,
        mH,
        eps: Float32,
        tiled_copy: cute.TiledCopy,
    ):
        t = self.tiling
        n = self.hidden
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        rank = Int32(0)
        if const_expr(t.cluster_n > 1):
            rank = cute.arch.block_idx_in_cluster()
        tiler = (t.rows_per_cta, t.tile_n)

        smem = cutlass.memory.SmemAllocator()
        buf_mean, buf_var = self._reduction_buffers(smem, 2)
        mbar_ptr = None
        if const_expr(t.cluster_n > 1):
            mbar_ptr = smem.allocate_array(cutlass.Int64, num_elems=self.num_stages)
            self._init_cluster_barriers(mbar_ptr)

        thr_copy = tiled_copy.get_slice(tidx)
        cX = cute.local_tile(cute.make_identity_tensor(mX.shape), tiler, (bidx, rank))
        tXcX = thr_copy.partition_S(cX)
        row = tXcX[0][0]
        tXgX = thr_copy.partition_S(cute.local_tile(mX, tiler, (bidx, rank)))
        tXgO = thr_copy.partition_D(cute.local_tile(mO, tiler, (bidx, rank)))
        tXrX = cute.make_rmem_tensor_like(tXgX)
        pred = None
        if const_expr(not self.even_n):
            pred = _column_predicate(tXcX, n)
            tXrX.fill(0.0)
        # Bind the predicate outside the dynamic branches below (the DSL rewrites names captured by them).
        row_policy = None
        if const_expr(self.l2_hints):
            row_policy = _l2_policy("evict_first")
        copy_x = partial(cute.copy, _load_atom(self.dtype, t.vec, self.row_l1, self.l2_hints), pred=pred,
                         **_l2_hint(row_policy))
        copy_out = partial(cute.copy, _copy_atom(self.out_dtype, t.vec), pred=pred)
        tXrR = None
        copy_r = None
        copy_h = None
        if const_expr(mR is not None):
            tXgR = thr_copy.partition_S(cute.local_tile(mR, tiler, (bidx, rank)))
            tXrR = cute.make_rmem_tensor_like(tXgR)
            if const_expr(not self.even_n):
                tXrR.fill(0.0)
            copy_r = partial(cute.copy, _load_atom(self.residual_dtype, t.vec, self.row_l1, self.l2_hints), pred=pred,
                             **_l2_hint(row_policy))
            if const_expr(mH is not None):
                copy_h = partial(cute.copy, _copy_atom(self.residual_out_dtype, t.vec), pred=pred)
        if row < mX.shape[0]:
            copy_x(tXgX, tXrX)
            if const_expr(mR is not None):
                copy_r(tXgR, tXrR)

        # Weight/bias loads issued before the reductions hide their latency behind them, at the cost of holding them
        # in registers meanwhile; affine_after_stats loads them after (from L2: every row reads the same ones).
        affine = None
        if const_expr(not self.affine_after_stats):
            affine = self._load_affine(mW, mB, thr_copy, tiler, rank, pred)

        if const_expr(t.cluster_n > 1):
            cute.arch.cluster_wait()

        x = tXrX.load().to(Float32)
        if const_expr(mR is not None):
            x = x + tXrR.load().to(Float32)  # out-of-row lanes: 0 + 0
            if const_expr(self.round_residual):
                x = x.to(self.dtype).to(Float32)
            if const_expr(mH is not None):
                tXgH = thr_copy.partition_D(cute.local_tile(mH, tiler, (bidx, rank)))
                tXrH = cute.make_rmem_tensor_like(tXgH)
                tXrH.store(x.to(self.residual_out_dtype))
                if row < mX.shape[0]:
                    copy_h(tXrH, tXgH)
        mean, centered, rstd = self._row_stats(
            x, tXrX, pred, buf_mean, buf_var, mbar_ptr, mbar_ptr + 1 if const_expr(t.cluster_n > 1) else None, 0, eps)

        if const_expr(self.affine_after_stats):
            affine = self._load_affine(mW, mB, thr_copy, tiler, rank, pred)
        tXrW, tXrB = affine
        y = centered * rstd
        if const_expr(mW is not None):
            y = y * tXrW.load().to(Float32)
        if const_expr(mB is not None):
            y = y + tXrB.load().to(Float32)
        tXrO = cute.make_rmem_tensor_like(tXgO)
        tXrO.store(y.to(self.out_dtype))
        if row < mX.shape[0]:
            copy_out(tXrO, tXgO)
        # The statistics last: stored between the reductions and the output, they cost ptxas 78 registers at N = 8192
        # 16-bit with fp32 weight and bias (64 without them), here 75, and 64 without spills under a 4-CTA bound.
        if const_expr(self.store_stats):
            if tXcX[0][1] == 0 and row < mX.shape[0]:
                self._store_stats(mMean, mRstd, row, mean, rstd)

    @cute.kernel
    def kernel_persistent(
        self,
        mX: cute.Tensor,
        mW,
        mB,
        mO: cute.Tensor,
        mMean,
        mRstd,
        eps: Float32,
        tiled_copy: cute.TiledCopy,
    ):
        """``config.persistent``: a grid of at most the clusters the GPU holds at once, each striding over the row
        tiles (one row a cluster at a time; unclustered CTAs may hold several rows). Weight and bias are read once,
        into shared-memory slots, instead of once a row: a wide row's weight and bias slice (fp32: 4x a 16-bit row's
        bytes) does not stay in L1 between rows, so every row read them again from L2. The next tile's x is loaded
        into the fragment as soon as this tile's values are out of it, so the loads are in flight during the exchange
        of statistics and the stores. The exchange's buffers and cluster mbarriers alternate between two slots by
        tile parity, as in the backward.

        Several rows a CTA (``rows_per_cta`` > 1, unclustered): a thread's columns are the same in every row, so the
        slots hold one row's weight and bias, written by the first row's threads and read by every row's; rows past
        M in the last tile are neither loaded nor stored."""
        t = self.tiling
        multi_row = const_expr(t.rows_per_cta > 1)
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        num_clusters, _, _ = cute.arch.grid_dim()
        rank = Int32(0)
        if const_expr(t.cluster_n > 1):
            rank = cute.arch.block_idx_in_cluster()
        tiler = (t.rows_per_cta, t.tile_n)
        num_rows = mX.shape[0]
        num_tiles = cute.ceil_div(num_rows, t.rows_per_cta)

        smem = cutlass.memory.SmemAllocator()
        buf_layout = cute.make_ordered_layout((t.rows_per_cta, t.warps_per_row * t.cluster_n, 2), order=(1, 0, 2))
        buf_mean = smem.allocate_tensor(Float32, buf_layout, byte_alignment=16)
        buf_var = smem.allocate_tensor(Float32, buf_layout, byte_alignment=16)
        mbar_ptr = None
        if const_expr(t.cluster_n > 1):
            mbar_ptr = smem.allocate_array(cutlass.Int64, num_elems=self.num_stages)
            self._init_cluster_barriers(mbar_ptr)

        thr_copy = tiled_copy.get_slice(tidx)
        idX = cute.make_identity_tensor(mX.shape)
        copy_x = partial(cute.copy, _copy_atom(self.dtype, t.vec))
        copy_out = partial(cute.copy, _copy_atom(self.out_dtype, t.vec))
        tXgX = thr_copy.partition_S(cute.local_tile(mX, tiler, (bidx, rank)))
        tXrX = cute.make_rmem_tensor_like(tXgX)
        tXrO = cute.make_rmem_tensor_like(thr_copy.partition_D(cute.local_tile(mO, tiler, (bidx, rank))))
        # The thread's row in tile 0 (its row in tile k is that plus k * rows_per_cta).
        row0 = Int32(0)
        if const_expr(multi_row):
            row0 = thr_copy.partition_S(cute.local_tile(idX, tiler, (0, rank)))[0][0]
        if bidx * t.rows_per_cta + row0 < num_rows:  # the grid has at most one cluster a row tile (one for M = 0)
            copy_x(tXgX, tXrX)

        tXrW, tXrB = self._load_affine(mW, mB, thr_copy, tiler, rank, None)
        # Multi-row CTAs: one row's slots, indexed by the thread's place in its row, written by the first row.
        slot_tiling = const_expr(self.affine_slot_tiling)
        slot_thread = tidx % t.threads_per_row if const_expr(multi_row) else tidx
        sW = None
        sB = None
        if const_expr(mW is not None):
            sW = _slots_of(_thread_slots(smem, mW.element_type, slot_tiling), slot_thread, slot_tiling)
        if const_expr(mB is not None):
            sB = _slots_of(_thread_slots(smem, mB.element_type, slot_tiling), slot_thread, slot_tiling)
        if const_expr(multi_row):
            if tidx < slot_tiling.num_threads:
                self._store_affine_slots(sW, tXrW, sB, tXrB)
            cute.arch.barrier()
        else:
            self._store_affine_slots(sW, tXrW, sB, tXrB)

        if const_expr(t.cluster_n > 1):
            cute.arch.cluster_wait()

        for tile in cutlass.range(bidx, num_tiles, num_clusters, unroll=1):
            it = (tile - bidx) // num_clusters
            slot = it % 2
            phase = (it // 2) % 2
            row = tile * t.rows_per_cta + row0
            x = tXrX.load().to(Float32)
            next_tile = tile + num_clusters
            if next_tile < num_tiles:
                if const_expr(multi_row):
                    if row + num_clusters * t.rows_per_cta < num_rows:
                        copy_x(thr_copy.partition_S(cute.local_tile(mX, tiler, (next_tile, rank))), tXrX)
                else:
                    copy_x(thr_copy.partition_S(cute.local_tile(mX, tiler, (next_tile, rank))), tXrX)
            mbar = None
            if const_expr(t.cluster_n > 1):
                mbar = mbar_ptr + slot
            # Rows past M (multi-row CTAs' last tile) reduce stale values among their own threads: never stored.
            mean, centered, rstd = self._row_stats(x, tXrX, None, buf_mean[None, None, slot],
                                                   buf_var[None, None, slot], mbar, mbar, phase, eps)
            if const_expr(self.store_stats):
                first_column = thr_copy.partition_S(cute.local_tile(idX, tiler, (tile, rank)))[0][1] == 0
                if const_expr(multi_row):
                    if first_column and row < num_rows:
                        self._store_stats(mMean, mRstd, row, mean, rstd)
                elif first_column:
                    self._store_stats(mMean, mRstd, row, mean, rstd)
            y = centered * rstd
            if const_expr(mW is not None):
                y = y * _load_slots(sW, tXrX).to(Float32)
            if const_expr(mB is not None):
                y = y + _load_slots(sB, tXrX).to(Float32)
            tXrO.store(y.to(self.out_dtype))
            if const_expr(multi_row):
                if row < num_rows:
                    copy_out(tXrO, thr_copy.partition_D(cute.local_tile(mO, tiler, (tile, rank))))
            else:
                copy_out(tXrO, thr_copy.partition_D(cute.local_tile(mO, tiler, (tile, rank))))

    @cute.jit
    def _store_affine_slots(self, sW, tXrW, sB, tXrB):
        """The persistent kernel's weight and bias fragments into their shared-memory slots (None: not given)."""
        if const_expr(sW is not None):
            _store_slots(sW, tXrW.load())
        if const_expr(sB is not None):
            _store_slots(sB, tXrB.load())

    @cute.jit
    def _store_stats(self, mMean, mRstd, row, mean, rstd):
        """Row ``row``'s mean (not for RMSNorm) and rstd."""
        if const_expr(mMean is not None):
            mMean[row] = mean
        mRstd[row] = rstd

    @cute.jit
    def _row_stats(self, x, like, pred, buf_mean, buf_var, mbar_mean, mbar_var, phase, eps: Float32):
        """(mean, x - mean, rstd) of the thread's row (RMSNorm: (0, x, rstd)), every thread of the row getting them.

        ``like``: a fragment of x's shape (for ragged rows' predicate ``pred``); ``buf_mean``/``buf_var``: the
        reduction buffers, ``mbar_mean``/``mbar_var`` the cluster mbarriers (None without a cluster) and ``phase``
        their parity, of the mean's exchange and the variance's (merged statistics and RMSNorm exchange once, on
        ``buf_var`` / ``mbar_var`` for RMSNorm's sum of squares, on both buffers and ``mbar_mean`` when merged)."""
        t = self.tiling
        n = self.hidden
        mean = Float32(0.0)
        centered = x  # RMSNorm: out-of-row lanes hold 0 and add nothing to the sum of squares
        sq_total = Float32(0.0)
        if const_expr(self.merged_stats):
            # One exchange for mean and variance: each thread's own mean and M2 (two passes over its registers),
            # merged over the row (row_mean_m2). Only for rows without ragged columns: every thread holds `count`.
            count = const_expr(t.vec * t.vecs_per_thread)
            own_mean = x.reduce(cute.ReductionOp.ADD, init_val=Float32(0.0), reduction_profile=0) * Float32(1.0 / count)
            own_dev = x - own_mean
            own_m2 = (own_dev * own_dev).reduce(cute.ReductionOp.ADD, init_val=Float32(0.0), reduction_profile=0)
            mean, sq_total = row_mean_m2(own_mean, own_m2, count, t.threads_per_row, t.warps_per_row, t.cluster_n,
                                         (buf_mean, buf_var), mbar_mean, phase)
            centered = x - mean
        elif const_expr(not self.rms):
            (row_total,) = row_sum(
                (x.reduce(cute.ReductionOp.ADD, init_val=Float32(0.0), reduction_profile=0),),
                t.threads_per_row, t.warps_per_row, t.cluster_n, (buf_mean,), mbar_mean, phase,
            )
            mean = row_total / n
            centered = x - mean
            if const_expr(not self.even_n):
                # Out-of-row lanes hold 0 - mean: they must not reach the variance.
                tXrC = cute.make_rmem_tensor_like(like, Float32)
                tXrC.store(centered)
                _zero_outside(tXrC, pred)
                centered = tXrC.load()
        if const_expr(not self.merged_stats):
            (sq_total,) = row_sum(
                ((centered * centered).reduce(cute.ReductionOp.ADD, init_val=Float32(0.0), reduction_profile=0),),
                t.threads_per_row, t.warps_per_row, t.cluster_n, (buf_var,), mbar_var, phase,
            )
        rstd = cute.math.rsqrt(sq_total / n + eps, fastmath=False)
        return mean, centered, rstd

    @cute.jit
    def _load_affine(self, mW, mB, thr_copy, tiler: cutlass.Constexpr, rank, pred):
        """This thread's weight and bias vectors (register fragments; None where not given)."""
        t = self.tiling
        policy = None
        if const_expr(self.l2_hints and (mW is not None or mB is not None)):
            policy = _l2_policy("evict_last")
        tXrW = None
        if const_expr(mW is not None):
            tXgW = thr_copy.partition_S(cute.local_tile(mW, tiler, (0, rank)))
            tXrW = cute.make_rmem_tensor_like(tXgW)
            cute.copy(_load_atom(mW.element_type, t.vec, self.affine_l1, self.l2_hints), tXgW, tXrW, pred=pred,
                      **_l2_hint(policy))
        tXrB = None
        if const_expr(mB is not None):
            tXgB = thr_copy.partition_S(cute.local_tile(mB, tiler, (0, rank)))
            tXrB = cute.make_rmem_tensor_like(tXgB)
            cute.copy(_load_atom(mB.element_type, t.vec, self.affine_l1, self.l2_hints), tXgB, tXrB, pred=pred,
                      **_l2_hint(policy))
        return tXrW, tXrB


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------


class LayerNormBwd(_RowKernel):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w; per-CTA fp32 partials of dw = sum dy * xhat
    and db = sum dy over the CTA's rows.

    A persistent grid of ``num_clusters`` CTA groups strides over row tiles, so each CTA accumulates dw/db for many
    rows (in registers, or in shared memory with ``config.column_state_in_smem``, which also keeps w there) and
    writes them once: dw_partial[cluster, :], reduced over clusters by a second pass.
    The two row sums share one reduction pass; its buffers and cluster mbarriers alternate between two slots
    by iteration parity, so a CTA that runs ahead never overwrites a slot its peers are still reading.

    Fused residual: x is then the forward's h; ``dres_dtype`` (not None) adds the gradient flowing into h to dx,
    and ``dres_in_dtype`` (not None) writes dx a second time in that dtype (the residual input's gradient, when its
    dtype differs from dx's). dx's own element type is ``dx_dtype`` (default x's).

    ``config.prefetch``: the loads of a CTA's next row tile (x, dy, the residual's gradient, mean, rstd) are issued
    into the tile's register fragments as soon as this tile's values are read out of them, so they are in flight
    during this tile's reduction and stores.

    ``config.column_tile`` (few rows): the grid's last ``config.column_ctas(N)`` CTAs take no row tile; each sums
    dw and db over every row for its column_tile columns (``_weight_grads_columns``) and writes them in the
    gradients' dtypes, while the row CTAs write dx only. The dw/db pointers are then the gradients themselves.

    ``config.fused_column_sum``: the grid's last ``config.sum_ctas(N)`` CTAs take no row tile either; each waits
    until all row CTAs have written their partial rows (a global arrival counter, two int32 at ``counter_ptr``:
    arrivals, then departures; zero before the launch, and zero again after it: the last sum CTA to leave resets
    both), then sums its columns of the partial rows (``_sum_partial_columns``) and writes dw / db in the gradients'
    dtypes at ``dw_ptr`` / ``db_ptr``.
    """

    def __init__(self, dtype, hidden: int, weight_dtype, want_dw: bool, want_db: bool, config: BwdConfig,
                 dy_dtype=None, rms: bool = False, dx_dtype=None, dres_dtype=None, dres_in_dtype=None):
        super().__init__(dtype, hidden, config.tiling, num_stages=2)
        self.column_state_in_smem = config.column_state_in_smem
        self.ctas_per_sm = config.ctas_per_sm
        self.l2_hints = config.l2_hints
        self.prefetch = config.prefetch
        self.weight_dtype = weight_dtype
        self.want_dw = want_dw
        self.want_db = want_db
        self.column_tiling = config.column_tiling
        self.column_ctas = config.column_ctas(hidden) if want_dw or want_db else 0
        # What the row CTAs accumulate: nothing of dw/db where the column CTAs sum them.
        self.rows_dw = want_dw and self.column_ctas == 0
        self.rows_db = want_db and self.column_ctas == 0
        self.sum_tiling = config.sum_tiling
        self.sum_ctas = config.sum_ctas(hidden) if want_dw or want_db else 0
        self.dy_dtype = dy_dtype if dy_dtype is not None else dtype  # the forward's out dtype
        self.rms = rms  # RMSNorm: xhat = x * rstd, dx = (g - xhat * mean(g * xhat)) * rstd; no mean
        self.dx_dtype = dx_dtype if dx_dtype is not None else dtype
        self.dres_dtype = dres_dtype
        self.dres_in_dtype = dres_in_dtype
        self.stages = config.stages
        self.staged_stats = config.staged_stats
        # cp.async copies 16 bytes of x (.cg) and 4, 8 or 16 of dy and dh (.ca below 16: a narrower out dtype).
        stage_vectors = (config.tiling.vec * dtype.width == 128
                         and all(config.tiling.vec * d.width in (32, 64, 128)
                                 for d in (self.dy_dtype, dres_dtype) if d is not None))
        if self.stages > 1 and not (self.column_ctas == 0 and stage_vectors):
            raise ValueError(f"stages = {self.stages}: only with 16-byte vectors of x and 4-16-byte ones of dy and the "
                             f"residual's gradient (cp.async), not with column CTAs (N = {hidden}, {config})")

    @cute.jit
    def __call__(
        self,
        dy_ptr: cute.Pointer,
        x_ptr: cute.Pointer,
        w_ptr: cute.Pointer,
        mean_ptr: cute.Pointer,
        rstd_ptr: cute.Pointer,
        dx_ptr: cute.Pointer,
        dw_partial_ptr: cute.Pointer,
        db_partial_ptr: cute.Pointer,
        dres_ptr: cute.Pointer,
        dres_in_ptr: cute.Pointer,
        dw_ptr: cute.Pointer,
        db_ptr: cute.Pointer,
        counter_ptr: cute.Pointer,
        rows: Int32,
        dy_row_stride: Int64,
        x_row_stride: Int64,
        dx_row_stride: Int64,
        dres_row_stride: Int64,
        dres_in_row_stride: Int64,
        num_clusters: Int32,
        stream: cuda.CUstream,
    ):
        t = self.tiling
        n = self.hidden
        vec = t.vec
        mDY = _rows_tensor(dy_ptr, rows, n, dy_row_stride, vec)
        mX = _rows_tensor(x_ptr, rows, n, x_row_stride, vec)
        mDX = _rows_tensor(dx_ptr, rows, n, dx_row_stride, vec)
        mDR = None
        if const_expr(self.dres_dtype is not None):
            mDR = _rows_tensor(dres_ptr, rows, n, dres_row_stride, vec)
        mDRin = None
        if const_expr(self.dres_in_dtype is not None):
            mDRin = _rows_tensor(dres_in_ptr, rows, n, dres_in_row_stride, vec)
        mW = None
        if const_expr(self.weight_dtype is not None):
            mW = cute.make_tensor(w_ptr, cute.make_layout((t.rows_per_cta, n), stride=(0, 1)))
        mMean = None
        if const_expr(not self.rms):
            mMean = cute.make_tensor(mean_ptr, cute.make_layout(rows))
        mRstd = cute.make_tensor(rstd_ptr, cute.make_layout(rows))
        # Partials: one fp32 row per cluster; seen by the CTA's rows_per_cta thread rows through a zero row stride.
        # With column CTAs: the (N,) gradients.
        mDWp = None
        mDBp = None
        if const_expr(self.column_ctas > 0):
            if const_expr(self.want_dw):
                mDWp = cute.make_tensor(dw_partial_ptr, cute.make_layout(n))
            if const_expr(self.want_db):
                mDBp = cute.make_tensor(db_partial_ptr, cute.make_layout(n))
        else:
            if const_expr(self.want_dw):
                mDWp = cute.make_tensor(dw_partial_ptr,
                                        cute.make_layout((num_clusters, t.rows_per_cta, n), stride=(n, 0, 1)))
            if const_expr(self.want_db):
                mDBp = cute.make_tensor(db_partial_ptr,
                                        cute.make_layout((num_clusters, t.rows_per_cta, n), stride=(n, 0, 1)))
        # With sum CTAs: the (N,) gradients and the arrival counter.
        mDW = None
        mDB = None
        mCounter = None
        if const_expr(self.sum_ctas > 0):
            if const_expr(self.want_dw):
                mDW = cute.make_tensor(dw_ptr, cute.make_layout(n))
            if const_expr(self.want_db):
                mDB = cute.make_tensor(db_ptr, cute.make_layout(n))
            mCounter = cute.make_tensor(counter_ptr, cute.make_layout(2))
        tiled_copy = _tiled_copy(self.dtype, t)
        column_copy = None  # the column CTAs' (or sum CTAs') tiled copy
        if const_expr(self.column_ctas > 0):
            column_copy = _tiled_copy(self.dtype, self.column_tiling)
        if const_expr(self.sum_ctas > 0):
            column_copy = _tiled_copy(Float32, self.sum_tiling)
        self.kernel(mDY, mX, mW, mMean, mRstd, mDX, mDWp, mDBp, mDR, mDRin, mDW, mDB, mCounter, tiled_copy,
                    column_copy).launch(
            grid=[num_clusters + self.column_ctas + self.sum_ctas, t.cluster_n, 1],
            block=[t.num_threads, 1, 1],
            cluster=[1, t.cluster_n, 1] if const_expr(t.cluster_n > 1) else None,
            stream=stream,
            **_launch_bounds(self.ctas_per_sm),
        )

    @cute.kernel
    def kernel(
        self,
        mDY: cute.Tensor,
        mX: cute.Tensor,
        mW,
        mMean,
        mRstd: cute.Tensor,
        mDX: cute.Tensor,
        mDWp,
        mDBp,
        mDR,
        mDRin,
        mDW,
        mDB,
        mCounter,
        tiled_copy: cute.TiledCopy,
        column_copy,
    ):
        t = self.tiling
        n = self.hidden
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        num_ctas, _, _ = cute.arch.grid_dim()
        # Row CTAs (clusters); the column CTAs or sum CTAs follow them.
        num_clusters = num_ctas - self.column_ctas - self.sum_ctas
        rank = Int32(0)
        if const_expr(t.cluster_n > 1):
            rank = cute.arch.block_idx_in_cluster()
        tiler = (t.rows_per_cta, t.tile_n)
        num_rows = mX.shape[0]

        smem = cutlass.memory.SmemAllocator()
        buf_layout = cute.make_ordered_layout((t.rows_per_cta, t.warps_per_row * t.cluster_n, 2), order=(1, 0, 2))
        buf_gx = smem.allocate_tensor(Float32, buf_layout, byte_alignment=16)
        buf_g = smem.allocate_tensor(Float32, buf_layout, byte_alignment=16)
        mbar_ptr = None
        if const_expr(t.cluster_n > 1):
            mbar_ptr = smem.allocate_array(cutlass.Int64, num_elems=self.num_stages)
            self._init_cluster_barriers(mbar_ptr)
        column_sums = None
        if const_expr(self.column_ctas > 0 or self.sum_ctas > 0):
            ct = self.column_tiling if const_expr(self.column_ctas > 0) else self.sum_tiling
            grads = int(self.want_dw) + int(self.want_db)
            column_sums = smem.allocate_tensor(
                Float32, cute.make_ordered_layout((ct.rows_per_cta, grads * ct.tile_n), order=(1, 0)),
                byte_alignment=16)

        thr_copy = tiled_copy.get_slice(tidx)
        idX = cute.make_identity_tensor(mX.shape)
        tXcX0 = thr_copy.partition_S(cute.local_tile(idX, tiler, (0, rank)))
        pred = None
        if const_expr(not self.even_n):
            pred = _column_predicate(tXcX0, n)
        row_policy = None
        affine_policy = None
        if const_expr(self.l2_hints):
            row_policy = _l2_policy("evict_first")
            if const_expr(mW is not None):
                affine_policy = _l2_policy("evict_last")
        hinted = const_expr(self.l2_hints)
        copy_row = partial(cute.copy, _load_atom(self.dtype, t.vec, None, hinted), pred=pred, **_l2_hint(row_policy))
        copy_dy = partial(cute.copy, _load_atom(self.dy_dtype, t.vec, None, hinted), pred=pred,
                          **_l2_hint(row_policy))
        copy_dx = partial(cute.copy, _copy_atom(self.dx_dtype, t.vec), pred=pred)
        copy_dres = None
        if const_expr(mDR is not None):
            copy_dres = partial(cute.copy, _load_atom(self.dres_dtype, t.vec, None, hinted), pred=pred,
                                **_l2_hint(row_policy))
        copy_dres_in = None
        if const_expr(mDRin is not None):
            copy_dres_in = partial(cute.copy, _copy_atom(self.dres_in_dtype, t.vec), pred=pred)

        in_smem = const_expr(self.column_state_in_smem)
        tXgX0 = thr_copy.partition_S(cute.local_tile(mX, tiler, (0, rank)))
        tXrW = None
        sW = None
        if const_expr(mW is not None):
            tXgW = thr_copy.partition_S(cute.local_tile(mW, tiler, (0, rank)))
            tXrW = cute.make_rmem_tensor_like(tXgW)
            if const_expr(not self.even_n):
                # Out-of-row lanes of w must be finite: g = dy * w feeds the row sums (dy is 0 there).
                tXrW.fill(0.0)
            cute.copy(_load_atom(mW.element_type, t.vec, None, hinted), tXgW, tXrW, pred=pred,
                      **_l2_hint(affine_policy))
            if const_expr(in_smem):
                sW = _slots_of(_thread_slots(smem, mW.element_type, t), tidx, t)
                _store_slots(sW, tXrW.load())

        # dw/db accumulators: register fragments, or this thread's slots in shared memory.
        tXrDW = None
        tXrDB = None
        slots_dw = None
        slots_db = None
        if const_expr(self.rows_dw):
            if const_expr(in_smem):
                slots_dw = _thread_slots(smem, Float32, t)
                _store_slots(_slots_of(slots_dw, tidx, t), cute.full(tXgX0.shape, 0.0, Float32))
            else:
                tXrDW = cute.make_rmem_tensor_like(tXgX0, Float32)
                tXrDW.fill(0.0)
        if const_expr(self.rows_db):
            if const_expr(in_smem):
                slots_db = _thread_slots(smem, Float32, t)
                _store_slots(_slots_of(slots_db, tidx, t), cute.full(tXgX0.shape, 0.0, Float32))
            else:
                tXrDB = cute.make_rmem_tensor_like(tXgX0, Float32)
                tXrDB.fill(0.0)

        tXrX = cute.make_rmem_tensor_like(tXgX0)
        tXrDY = cute.make_rmem_tensor_like(thr_copy.partition_S(cute.local_tile(mDY, tiler, (0, rank))))
        tXrDX = cute.make_rmem_tensor_like(thr_copy.partition_D(cute.local_tile(mDX, tiler, (0, rank))))
        tXrDR = None
        if const_expr(mDR is not None):
            tXrDR = cute.make_rmem_tensor_like(thr_copy.partition_S(cute.local_tile(mDR, tiler, (0, rank))))
        tXrDRin = None
        if const_expr(mDRin is not None):
            tXrDRin = cute.make_rmem_tensor_like(thr_copy.partition_D(cute.local_tile(mDRin, tiler, (0, rank))))

        staged = const_expr(self.stages > 1)
        stage_x = None
        stage_dy = None
        stage_dr = None  # with the fused residual: its gradient dh, staged with x and dy
        g2s_x = None
        g2s_dy = None
        g2s_dr = None
        stage_stats = None  # staged_stats: per stage, each thread's rstd (and mean) slot
        g2s_stat = None
        if const_expr(staged):
            stage_size = const_expr(t.num_threads * t.vec * t.vecs_per_thread)
            stage_x = smem.allocate_tensor(self.dtype, cute.make_layout(self.stages * stage_size), byte_alignment=16)
            stage_dy = smem.allocate_tensor(self.dy_dtype, cute.make_layout(self.stages * stage_size),
                                            byte_alignment=16)
            # cp.async (16-byte .cg, L2 only, where the vectors allow), predicated to the lanes within N.
            g2s_x = partial(cute.copy, _async_copy_atom(self.dtype, t.vec), pred=pred)
            g2s_dy = partial(cute.copy, _async_copy_atom(self.dy_dtype, t.vec), pred=pred)
            if const_expr(mDR is not None):
                stage_dr = smem.allocate_tensor(self.dres_dtype, cute.make_layout(self.stages * stage_size),
                                                byte_alignment=16)
                g2s_dr = partial(cute.copy, _async_copy_atom(self.dres_dtype, t.vec), pred=pred)
            if const_expr(self.staged_stats):
                stage_stats = smem.allocate_tensor(
                    Float32, cute.make_layout(self.stages * self._stats_count() * t.num_threads), byte_alignment=16)
                # 4-byte cp.async (.ca: .cg copies 16 bytes only); a warp's copies of one row's statistic coalesce.
                g2s_stat = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cute.nvgpu.LoadCacheMode.ALWAYS), Float32,
                                               num_bits_per_copy=32)
            if const_expr(not self.even_n):
                # Lanes past N are never copied (the same lanes every tile): zeros once, so they add nothing.
                for k in cutlass.range_constexpr(self.stages):
                    _store_slots(_stage_slots(stage_x, k, tidx, t), cute.full(tXgX0.shape, 0.0, self.dtype))
                    _store_slots(_stage_slots(stage_dy, k, tidx, t), cute.full(tXgX0.shape, 0.0, self.dy_dtype))
                    if const_expr(mDR is not None):
                        _store_slots(_stage_slots(stage_dr, k, tidx, t), cute.full(tXgX0.shape, 0.0, self.dres_dtype))

        if const_expr(t.cluster_n > 1):
            cute.arch.cluster_wait()

        num_tiles = cute.ceil_div(num_rows, t.rows_per_cta)
        first_tile = bidx
        if const_expr(self.column_ctas > 0 or self.sum_ctas > 0):
            if bidx >= num_clusters:
                first_tile = num_tiles  # a column (or sum) CTA: no row tile
        # With prefetch, (mean, rstd) of the tile whose x and dy are in flight in the fragments.
        next_mean = Float32(0.0)
        next_rstd = Float32(0.0)
        if const_expr(self.prefetch):
            next_mean, next_rstd = self._load_tile(first_tile, rank, tiler, num_rows, thr_copy, idX, mX, mDY, mDR,
                                                   mMean, mRstd, tXrX, tXrDY, tXrDR, copy_row, copy_dy, copy_dres)
        if const_expr(staged):
            # The first stages - 1 tiles in flight, one cp.async group each; this tile's statistics a tile ahead.
            for k in cutlass.range_constexpr(self.stages - 1):
                self._issue_stage(first_tile + k * num_clusters, k, rank, tiler, num_rows, thr_copy, idX, mX, mDY,
                                  stage_x, stage_dy, g2s_x, g2s_dy, mMean, mRstd, stage_stats, g2s_stat, mDR,
                                  stage_dr, g2s_dr)
                cute.arch.cp_async_commit_group()
            if const_expr(not self.staged_stats):
                next_mean, next_rstd = self._load_stats(first_tile, rank, tiler, num_rows, thr_copy, idX, mMean,
                                                        mRstd)
        for tile in cutlass.range(first_tile, num_tiles, num_clusters, unroll=1):
            it = (tile - first_tile) // num_clusters
            slot = it % 2
            phase = (it // 2) % 2
            tXcX = thr_copy.partition_S(cute.local_tile(idX, tiler, (tile, rank)))
            row = tXcX[0][0]
            tXgDX = thr_copy.partition_D(cute.local_tile(mDX, tiler, (tile, rank)))
            mean = next_mean
            rstd = next_rstd
            if const_expr(staged):
                # The tile stages - 1 ahead goes into the stage this thread read out last iteration; then this tile's
                # group (the oldest) is waited for, and its stage read into the fragments (zeros past M).
                self._issue_stage(tile + (self.stages - 1) * num_clusters, (it + self.stages - 1) % self.stages,
                                  rank, tiler, num_rows, thr_copy, idX, mX, mDY, stage_x, stage_dy, g2s_x, g2s_dy,
                                  mMean, mRstd, stage_stats, g2s_stat, mDR, stage_dr, g2s_dr)
                cute.arch.cp_async_commit_group()
                cute.arch.cp_async_wait_group(self.stages - 1)
                tXrX.fill(0.0)
                tXrDY.fill(0.0)
                if row < num_rows:
                    tXrX.store(_load_slots(_stage_slots(stage_x, it % self.stages, tidx, t), tXrX))
                    tXrDY.store(_load_slots(_stage_slots(stage_dy, it % self.stages, tidx, t), tXrDY))
                    if const_expr(mDR is not None):
                        tXrDR.store(_load_slots(_stage_slots(stage_dr, it % self.stages, tidx, t), tXrDR))
                    if const_expr(self.staged_stats):  # (past M: mean, rstd stay next_mean, next_rstd = 0)
                        first = (it % self.stages) * self._stats_count()
                        rstd = stage_stats[first * t.num_threads + tidx]
                        if const_expr(mMean is not None):
                            mean = stage_stats[(first + 1) * t.num_threads + tidx]
                if const_expr(not self.staged_stats):  # (staged: this tile's statistics came with its stage)
                    next_mean, next_rstd = self._load_stats(tile + num_clusters, rank, tiler, num_rows, thr_copy,
                                                            idX, mMean, mRstd)
            elif const_expr(not self.prefetch):
                mean, rstd = self._load_tile(tile, rank, tiler, num_rows, thr_copy, idX, mX, mDY, mDR, mMean, mRstd,
                                             tXrX, tXrDY, tXrDR, copy_row, copy_dy, copy_dres)
            x = tXrX.load().to(Float32)
            dy = tXrDY.load().to(Float32)
            dres = None
            if const_expr(mDR is not None and self.prefetch):
                dres = tXrDR.load()  # out of the fragment before the next tile's loads land there
            if const_expr(self.prefetch):
                # This tile's values are out of the fragments: the next tile's loads go in flight now.
                next_mean, next_rstd = self._load_tile(tile + num_clusters, rank, tiler, num_rows, thr_copy, idX, mX,
                                                       mDY, mDR, mMean, mRstd, tXrX, tXrDY, tXrDR, copy_row, copy_dy,
                                                       copy_dres)
            xhat = (x - mean) * rstd
            g = dy
            if const_expr(mW is not None):
                w = _load_slots(sW, tXrX) if const_expr(in_smem) else tXrW.load()
                g = dy * w.to(Float32)
            # dw/db first: dy is then dead before the reduction, which only needs g and xhat.
            if const_expr(self.rows_dw):
                if const_expr(in_smem):
                    acc = _slots_of(slots_dw, tidx, t)
                    _store_slots(acc, _load_slots(acc, tXrX) + dy * xhat)
                else:
                    tXrDW.store(tXrDW.load() + dy * xhat)
            if const_expr(self.rows_db):
                if const_expr(in_smem):
                    acc = _slots_of(slots_db, tidx, t)
                    _store_slots(acc, _load_slots(acc, tXrX) + dy)
                else:
                    tXrDB.store(tXrDB.load() + dy)
            sums = ((g * xhat).reduce(cute.ReductionOp.ADD, init_val=Float32(0.0), reduction_profile=0),)
            buffers = (buf_gx[None, None, slot],)
            if const_expr(not self.rms):
                sums = sums + (g.reduce(cute.ReductionOp.ADD, init_val=Float32(0.0), reduction_profile=0),)
                buffers = buffers + (buf_g[None, None, slot],)
            totals = row_sum(sums, t.threads_per_row, t.warps_per_row, t.cluster_n, buffers,
                             mbar_ptr + slot if const_expr(t.cluster_n > 1) else None, phase)
            mean_gx = totals[0] / n
            if const_expr(self.rms):
                dx = (g - xhat * mean_gx) * rstd
            else:
                dx = (g - totals[1] / n - xhat * mean_gx) * rstd
            if const_expr(mDR is not None):
                if const_expr(not self.prefetch):
                    dres = tXrDR.load()
                dx = dx + dres.to(Float32)  # rows past M / columns past N: never stored
            tXrDX.store(dx.to(self.dx_dtype))
            if const_expr(mDRin is not None):
                tXrDRin.store(dx.to(self.dres_in_dtype))
            if row < num_rows:
                copy_dx(tXrDX, tXgDX)
                if const_expr(mDRin is not None):
                    copy_dres_in(tXrDRin, thr_copy.partition_D(cute.local_tile(mDRin, tiler, (tile, rank))))

        partial_pred = pred
        if const_expr(self.sum_ctas > 0):
            # A sum CTA has no partial row: its (zero) accumulators are not stored.
            partial_pred = _column_predicate(tXcX0, n, bidx < num_clusters)
        self._store_partials(tXrDW, slots_dw, tXrDB, slots_db, tXgX0, mDWp, mDBp, thr_copy, tiler, bidx, rank,
                             partial_pred, smem)
        if const_expr(self.sum_ctas > 0):
            if bidx < num_clusters:
                # This CTA's partial rows are written: announce it (a fence at GPU scope orders every thread's
                # stores, seen by thread 0 through the barrier, before the arrival).
                cute.arch.barrier()
                if tidx == 0:
                    cute.arch.fence_acq_rel_gpu()
                    cute.arch.atomic_add(mCounter.iterator, Int32(1), sem="relaxed", scope="gpu")
            else:
                self._sum_partial_columns(bidx - num_clusters, num_clusters, mDWp, mDBp, mDW, mDB, mCounter,
                                          column_sums, column_copy)
        if const_expr(self.column_ctas > 0):
            if bidx >= num_clusters:
                self._weight_grads_columns(bidx - num_clusters, mDY, mX, mMean, mRstd, mDWp, mDBp, column_sums,
                                           column_copy)

    @cute.jit
    def _weight_grads_columns(self, col_block, mDY, mX, mMean, mRstd, mDW, mDB, column_sums, column_copy):
        """A column CTA: dw[c] = sum over rows of dy * xhat and db[c] = sum of dy for the column_tile columns of
        ``col_block``, in fp32 and in a fixed order (deterministic), written in the gradients' dtypes.

        Each thread holds one vector of columns and strides over the rows with the other thread rows; the thread
        rows' sums then meet in shared memory (``column_sums``: thread rows x column_tile per gradient), where one
        thread per output column adds them up."""
        ct = self.column_tiling
        n = self.hidden
        tidx, _, _ = cute.arch.thread_idx()
        tiler = (ct.rows_per_cta, ct.tile_n)
        num_rows = mX.shape[0]
        thr_copy = column_copy.get_slice(tidx)
        idX = cute.make_identity_tensor(mX.shape)
        tXgX0 = thr_copy.partition_S(cute.local_tile(mX, tiler, (0, col_block)))
        pred = None
        if const_expr(n % ct.tile_n != 0):
            pred = _column_predicate(thr_copy.partition_S(cute.local_tile(idX, tiler, (0, col_block))), n)
        copy_row = partial(cute.copy, _copy_atom(self.dtype, ct.vec), pred=pred)
        copy_dy = partial(cute.copy, _copy_atom(self.dy_dtype, ct.vec), pred=pred)
        tXrX = cute.make_rmem_tensor_like(tXgX0)
        tXrDY = cute.make_rmem_tensor_like(thr_copy.partition_S(cute.local_tile(mDY, tiler, (0, col_block))))
        acc_dw = cute.make_rmem_tensor_like(tXgX0, Float32)
        acc_db = cute.make_rmem_tensor_like(tXgX0, Float32)
        acc_dw.fill(0.0)
        acc_db.fill(0.0)
        for tile in cutlass.range(cute.ceil_div(num_rows, ct.rows_per_cta), unroll=1):
            # Rows past M and columns past N load as zeros (with mean = rstd = 0): they add nothing.
            mean, rstd = self._load_tile(tile, col_block, tiler, num_rows, thr_copy, idX, mX, mDY, None, mMean, mRstd,
                                         tXrX, tXrDY, None, copy_row, copy_dy, None)
            dy = tXrDY.load().to(Float32)
            if const_expr(self.want_dw):
                acc_dw.store(acc_dw.load() + dy * ((tXrX.load().to(Float32) - mean) * rstd))
            if const_expr(self.want_db):
                acc_db.store(acc_db.load() + dy)
        self._write_column_totals(acc_dw, acc_db, mDW, mDB, column_sums, thr_copy, ct, col_block)

    @cute.jit
    def _sum_partial_columns(self, col_block, num_partials, mDWp, mDBp, mDW, mDB, mCounter, column_sums, sum_copy):
        """A sum CTA (``config.fused_column_sum``): waits for the row CTAs' arrivals, then dw[c] = sum over the
        partial rows of dw_partial[p, c] (db likewise) for the sum_tiling.tile_n columns of ``col_block``, in fp32
        in a fixed order, written in the gradients' dtypes.

        Thread 0 polls the arrival counter (acquire loads at GPU scope: the row CTAs' partial rows are then
        visible to the CTA after the barrier), counts this CTA's departure, and the last sum CTA to leave zeroes
        both counters for the next launch (every other sum CTA has stopped polling by then). Each thread then holds
        one vector of columns and strides over the partial rows with the other thread rows, as a column CTA does
        over the rows."""
        st = self.sum_tiling
        n = self.hidden
        tidx, _, _ = cute.arch.thread_idx()
        if tidx == 0:
            arrived = cute.arch.load(mCounter.iterator, Int32, sem="acquire", scope="gpu")
            while arrived < num_partials:
                _nanosleep(100)
                arrived = cute.arch.load(mCounter.iterator, Int32, sem="acquire", scope="gpu")
            departed = cute.arch.atomic_add(mCounter.iterator + 1, Int32(1), sem="relaxed", scope="gpu")
            if departed == self.sum_ctas - 1:
                mCounter[0] = Int32(0)
                mCounter[1] = Int32(0)
        cute.arch.barrier()
        tiler = (st.rows_per_cta, st.tile_n)
        thr_copy = sum_copy.get_slice(tidx)
        layout = cute.make_layout((num_partials, n), stride=(n, 1))
        mP = cute.make_tensor((mDWp if const_expr(self.want_dw) else mDBp).iterator, layout)
        idP = cute.make_identity_tensor(mP.shape)
        tPgP0 = thr_copy.partition_S(cute.local_tile(mP, tiler, (0, col_block)))
        pred = None
        if const_expr(n % st.tile_n != 0):
            pred = _column_predicate(thr_copy.partition_S(cute.local_tile(idP, tiler, (0, col_block))), n)
        load = partial(cute.copy, _copy_atom(Float32, st.vec), pred=pred)
        frag = cute.make_rmem_tensor_like(tPgP0)
        acc_dw = cute.make_rmem_tensor_like(tPgP0, Float32)
        acc_db = cute.make_rmem_tensor_like(tPgP0, Float32)
        acc_dw.fill(0.0)
        acc_db.fill(0.0)
        # Unrolled, so that a thread has several partial rows' loads in flight (from L2: latency-bound otherwise).
        for tile in cutlass.range(cute.ceil_div(num_partials, st.rows_per_cta), unroll=4):
            row = thr_copy.partition_S(cute.local_tile(idP, tiler, (tile, col_block)))[0][0]
            if row < num_partials:
                # Columns past N are not loaded: zeros, so they add nothing (and are never written).
                if const_expr(self.want_dw):
                    frag.fill(0.0)
                    mDWp2 = cute.make_tensor(mDWp.iterator, layout)
                    load(thr_copy.partition_S(cute.local_tile(mDWp2, tiler, (tile, col_block))), frag)
                    acc_dw.store(acc_dw.load() + frag.load())
                if const_expr(self.want_db):
                    frag.fill(0.0)
                    mDBp2 = cute.make_tensor(mDBp.iterator, layout)
                    load(thr_copy.partition_S(cute.local_tile(mDBp2, tiler, (tile, col_block))), frag)
                    acc_db.store(acc_db.load() + frag.load())
        self._write_column_totals(acc_dw, acc_db, mDW, mDB, column_sums, thr_copy, st, col_block)

    @cute.jit
    def _write_column_totals(self, acc_dw, acc_db, mDW, mDB, column_sums, thr_copy, ct: cutlass.Constexpr,
                             col_block):
        """dw / db of the ``ct.tile_n`` columns of ``col_block``: each thread row's accumulators (``acc_dw`` /
        ``acc_db``, one vector of columns a thread, tiled by ``ct``) meet in shared memory (``column_sums``:
        thread rows x tile_n per gradient), where one thread per output column adds them up in thread-row order
        and writes the total in the gradient's dtype (columns past N are skipped)."""
        n = self.hidden
        tidx, _, _ = cute.arch.thread_idx()
        tiler = (ct.rows_per_cta, ct.tile_n)
        grads = []
        if const_expr(self.want_dw):
            grads.append((acc_dw, mDW))
        if const_expr(self.want_db):
            grads.append((acc_db, mDB))
        for g in cutlass.range_constexpr(len(grads)):
            part = cute.local_tile(column_sums, tiler, (0, g))
            thr_copy.partition_D(part).store(grads[g][0].load())
        cute.arch.barrier()
        col0 = col_block * ct.tile_n
        outputs = const_expr(len(grads) * ct.tile_n)
        for base in cutlass.range_constexpr(0, outputs, ct.num_threads):
            o = base + tidx
            if o < outputs:
                total = Float32(0.0)
                for r in cutlass.range(ct.rows_per_cta, unroll=8):
                    total = total + column_sums[r, o]
                for g in cutlass.range_constexpr(len(grads)):
                    col = o - g * ct.tile_n
                    if o >= g * ct.tile_n and col < ct.tile_n and col0 + col < n:
                        grads[g][1][col0 + col] = total.to(grads[g][1].element_type)

    @cute.jit
    def _load_tile(self, tile, rank, tiler: cutlass.Constexpr, num_rows, thr_copy, idX, mX, mDY, mDR, mMean, mRstd,
                   tXrX, tXrDY, tXrDR, copy_row, copy_dy, copy_dres):
        """Row tile ``tile``'s x, dy (and the residual's gradient) into the fragments, zeros where the tile has no
        row (columns past N and rows past M then contribute nothing: dy = 0 makes g and dy * xhat vanish).
        Returns the thread's row's (mean, rstd), zeros past M."""
        row = thr_copy.partition_S(cute.local_tile(idX, tiler, (tile, rank)))[0][0]
        tXrX.fill(0.0)
        tXrDY.fill(0.0)
        if row < num_rows:
            copy_row(thr_copy.partition_S(cute.local_tile(mX, tiler, (tile, rank))), tXrX)
            copy_dy(thr_copy.partition_S(cute.local_tile(mDY, tiler, (tile, rank))), tXrDY)
            if const_expr(mDR is not None):
                copy_dres(thr_copy.partition_S(cute.local_tile(mDR, tiler, (tile, rank))), tXrDR)
        return self._load_stats(tile, rank, tiler, num_rows, thr_copy, idX, mMean, mRstd)

    @cute.jit
    def _load_stats(self, tile, rank, tiler: cutlass.Constexpr, num_rows, thr_copy, idX, mMean, mRstd):
        """The thread's row's (mean, rstd) in row tile ``tile``, zeros past M (RMSNorm: mean 0)."""
        row = thr_copy.partition_S(cute.local_tile(idX, tiler, (tile, rank)))[0][0]
        mean = Float32(0.0)
        rstd = Float32(0.0)
        if row < num_rows:
            if const_expr(mMean is not None):
                mean = mMean[row]
            rstd = mRstd[row]
        return mean, rstd

    def _stats_count(self) -> int:
        """Statistics a row has: rstd, and the mean unless RMSNorm."""
        return 1 if self.rms else 2

    @cute.jit
    def _issue_stage(self, tile, stage, rank, tiler: cutlass.Constexpr, num_rows, thr_copy, idX, mX, mDY, stage_x,
                     stage_dy, g2s_x, g2s_dy, mMean, mRstd, stage_stats, g2s_stat, mDR, stage_dr, g2s_dr):
        """cp.async copies (``g2s_x`` / ``g2s_dy``: cute.copy with the atom and the lanes' predicate) of row tile
        ``tile``'s x and dy (this thread's vectors) into its slots of ``stage``, and of the residual's gradient
        (``mDR``, into ``stage_dr``) with a fused residual; with ``stage_stats`` (staged_stats) also its row's rstd
        and mean (``g2s_stat``: a 4-byte copy atom) into its slots there (rstd first); nothing past M (those rows
        are read as zeros)."""
        tidx, _, _ = cute.arch.thread_idx()
        row = thr_copy.partition_S(cute.local_tile(idX, tiler, (tile, rank)))[0][0]
        if row < num_rows:
            g2s_x(thr_copy.partition_S(cute.local_tile(mX, tiler, (tile, rank))),
                  _stage_slots(stage_x, stage, tidx, self.tiling))
            g2s_dy(thr_copy.partition_S(cute.local_tile(mDY, tiler, (tile, rank))),
                   _stage_slots(stage_dy, stage, tidx, self.tiling))
            if const_expr(mDR is not None):
                g2s_dr(thr_copy.partition_S(cute.local_tile(mDR, tiler, (tile, rank))),
                       _stage_slots(stage_dr, stage, tidx, self.tiling))
            if const_expr(stage_stats is not None):
                nt = const_expr(self.tiling.num_threads)
                first = stage * self._stats_count()
                one = cute.make_layout(1)
                cute.copy(g2s_stat, cute.make_tensor(mRstd.iterator + row, one),
                          cute.make_tensor(stage_stats.iterator + (first * nt + tidx), one))
                if const_expr(mMean is not None):
                    cute.copy(g2s_stat, cute.make_tensor(mMean.iterator + row, one),
                              cute.make_tensor(stage_stats.iterator + ((first + 1) * nt + tidx), one))

    @cute.jit
    def _store_partials(self, tXrDW, slots_dw, tXrDB, slots_db, like, mDWp, mDBp, thr_copy, tiler, bidx, rank, pred,
                        smem):
        """This cluster's dw and db partial rows (those the row CTAs accumulate), see ``_store_partial``."""
        if const_expr(self.rows_dw):
            self._store_partial(tXrDW, slots_dw, like, mDWp, thr_copy, tiler, bidx, rank, pred, smem)
        if const_expr(self.rows_db):
            self._store_partial(tXrDB, slots_db, like, mDBp, thr_copy, tiler, bidx, rank, pred, smem)

    @cute.jit
    def _store_partial(self, acc, slots, like, mPartial, thr_copy, tiler, bidx, rank, pred, smem):
        """Sums the CTA's thread rows of an accumulator and writes the result as this cluster's partial row.

        ``acc``: the accumulator fragment in registers, or None when it is in shared memory (``slots``, every
        thread's accumulator). Several thread rows are summed through shared memory by the first row's threads."""
        t = self.tiling
        tidx, _, _ = cute.arch.thread_idx()
        gP = cute.local_tile(mPartial[bidx, None, None], tiler, (0, rank))
        tXgP = thr_copy.partition_D(gP)
        store = partial(cute.copy, _copy_atom(Float32, t.vec), pred=pred)
        total = cute.make_rmem_tensor_like(like, Float32)
        if const_expr(t.rows_per_cta > 1):
            if const_expr(acc is not None):
                slots = _thread_slots(smem, Float32, t)
                _store_slots(_slots_of(slots, tidx, t), acc.load())
            cute.arch.barrier()
            if tidx < t.threads_per_row:
                total.fill(0.0)
                for r in cutlass.range(t.rows_per_cta, unroll=4):
                    total.store(total.load() + _load_slots(_slots_of(slots, tidx + r * t.threads_per_row, t), like))
                store(total, tXgP)
        else:
            if const_expr(acc is not None):
                store(acc, tXgP)
            else:
                total.store(_load_slots(_slots_of(slots, tidx, t), like))
                store(total, tXgP)
