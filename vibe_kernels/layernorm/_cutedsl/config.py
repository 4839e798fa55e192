"""Launch configurations for the CuTeDSL LayerNorm kernels: frozen dataclasses chosen by a heuristic.

Pure Python (no cutlass import), so the API layer and tests can inspect a config without the DSL.

Every kernel holds whole rows on chip. A row of N elements is cut into 16-byte vectors; a CTA row-slice is
``threads_per_row`` threads x ``vecs_per_thread`` vectors, and a row wider than one CTA is split across a
thread-block cluster of ``cluster_n`` CTAs (reductions then go through distributed shared memory). The heuristic
keeps a fixed number of bytes of x per thread (the registers a thread can afford), and fills a CTA with several
rows when one row needs fewer threads than a CTA should have.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

from .._backends import WEIGHT_GRADS_FROM_ROWS_MAX_ROWS

MAX_N = 262144
MAX_CLUSTER = 16  # Hopper's non-portable cluster limit (needs the non-portable attribute above 8)
MAX_CTA_THREADS = 512
MIN_CTA_THREADS = 128
# Threads of a sum CTA (BwdConfig.fused_column_sum) side by side across its columns: 64 fp32 columns a CTA, so
# N / 64 sum CTAs (128 at N = 8192) each read the partial rows' 256-byte column slices.
SUM_THREADS_PER_ROW = 16


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class RowTiling:
    """How one CTA covers its rows.

    vec: elements per global access (16 bytes of x where alignment allows, fewer otherwise).
    threads_per_row: threads sharing one row inside a CTA (power of two).
    vecs_per_thread: vectors each thread holds per row.
    rows_per_cta: rows a CTA processes at once (num_threads = rows_per_cta * threads_per_row).
    cluster_n: CTAs sharing one row (1 = no cluster).
    """

    vec: int
    threads_per_row: int
    vecs_per_thread: int
    rows_per_cta: int
    cluster_n: int

    def __post_init__(self):
        if self.threads_per_row > 32 and self.rows_per_cta > 15:
            raise ValueError(f"{self}: multi-warp rows synchronize on named barriers 1..rows_per_cta (at most 15)")

    @property
    def num_threads(self) -> int:
        return self.rows_per_cta * self.threads_per_row

    @property
    def tile_n(self) -> int:
        """Columns one CTA covers (the row is cluster_n such tiles, the last one possibly ragged)."""
        return self.vec * self.threads_per_row * self.vecs_per_thread

    @property
    def warps_per_row(self) -> int:
        return max(1, self.threads_per_row // 32)


@dataclass(frozen=True)
class FwdConfig:
    """affine_after_stats: load weight and bias after the row statistics instead of before them (fewer registers
    held across the reductions, their load latency exposed).

    l1_hints: the rows (x, the residual) are loaded without allocating in L1 and weight/bias with evict-last, so
    the weight and bias that every row reads again stay in L1 instead of being evicted by rows read once.

    min_ctas_per_sm: a launch bound (0: none) telling ptxas to fit this many CTAs per SM in the register file.

    merged_stats: LayerNorm's mean and variance in one exchange between the row's warps (and cluster CTAs): each
    thread's own mean and sum of squared deviations, merged by Chan's formula, instead of the row sum and then the
    sum of squares about the mean (two exchanges). Only where N fills the tiling exactly.

    l2_hints: L2 eviction policies on the loads: the rows (read once) evict_first, weight and bias (read by every
    CTA) evict_last.

    persistent: a grid of at most the clusters the GPU holds at once (one CTA per SM), each striding over the rows,
    with weight and bias read once into shared memory and the next row's x loaded while this row is reduced and
    written (LayerNormFwd.kernel_persistent). Needs rows that fill the tiling exactly (one a CTA where clustered;
    unclustered CTAs of several rows keep one row's weight and bias, opt-in only), merged statistics (or RMSNorm) and
    no residual; affine_after_stats, min_ctas_per_sm and the hints do not apply.

    persistent_ctas_per_sm: the persistent grid's CTAs per SM for unclustered rows (opt-in, 1 by default; clusters
    keep one CTA per SM), with a launch bound of that many CTAs."""

    tiling: RowTiling
    affine_after_stats: bool = False
    l1_hints: bool = False
    min_ctas_per_sm: int = 0
    merged_stats: bool = False
    l2_hints: bool = False
    persistent: bool = False
    persistent_ctas_per_sm: int = 1

    def __post_init__(self):
        if self.persistent_ctas_per_sm != 1 and (not self.persistent or self.tiling.cluster_n != 1):
            raise ValueError(f"persistent_ctas_per_sm needs the persistent kernel over unclustered rows: {self}")


@dataclass(frozen=True)
class BwdConfig:
    """ctas_per_sm: the persistent grid's occupancy target (the grid is ctas_per_sm * SMs / cluster_n clusters, each
    writing one fp32 dw and one db partial row).

    column_state_in_smem: the per-column state a CTA keeps across its rows -- the weight and the fp32 dw/db
    accumulators -- lives in shared memory (each thread its own slots) instead of registers, leaving the registers
    to x and dy. For rows too wide to spread over the register budget even with a 16-CTA cluster.
    """

    tiling: RowTiling
    ctas_per_sm: int
    column_state_in_smem: bool = False
    l2_hints: bool = False  # L2 eviction policies: x, dy (and the residual's gradient) evict_first, w evict_last
    # The next row tile's x, dy (residual gradient), mean and rstd loaded into registers as soon as this tile's are
    # read out, so the loads overlap this tile's reductions (see bwd_config for where it is on).
    prefetch: bool = False
    # Few rows (see bwd_config): dw / db are summed straight from the rows by extra CTAs of the same launch, each
    # over column_tile columns and every row, and written in the gradients' dtypes; no partial rows, no second
    # launch. 0: partial rows. Only without a cluster.
    column_tile: int = 0
    # Software pipelining through shared memory (1: off): x and dy of the next ``stages - 1`` row tiles are in flight
    # as cp.async copies into per-thread shared-memory slots while this tile computes (each thread reads back only
    # what it copied: no barrier); with the fused residual its gradient dh too. Instead of ``prefetch``; only with
    # 16-byte vectors of x (cp.async.cg) and 4-16-byte ones of dy and dh (.ca below 16), not with column CTAs or the
    # column state in shared memory (bwd_config says where it is on).
    stages: int = 1
    # The column sum of the partial rows in the same launch (no second kernel): ``sum_ctas(N)`` CTAs follow the row
    # CTAs in the grid; each waits until every row CTA has written its partial rows and announced it on a global
    # arrival counter, then sums its ``sum_tiling.tile_n`` columns over the partial rows in a fixed order and writes
    # dw / db in the gradients' dtypes. The sum CTAs wait only for CTAs of lower index (dispatched before them), so
    # the grid never waits on a CTA that cannot start. Unclustered rows with partial rows in registers only; the
    # launcher falls back to the second launch where it cannot use it (one partial row, CUDA graph capture).
    fused_column_sum: bool = False
    # With stages > 1: each tile's mean and rstd travel with its x and dy, as 4-byte cp.async copies into the stage
    # (each thread its own row's, into its own slots), read back after the stage wait. No plain load of a statistic
    # in the loop then, so nothing for a warp to wait on at the loop's end (fifteenth session: the fp16 RMSNorm
    # kernel at N = 8192, 80% of the add against bf16's 90%, waits on the long scoreboard 8.0 cycles an instruction
    # against 4.5, and its only global loads in the loop are the statistics'). The default where bwd_config says.
    # (A register pair loading the statistics two tiles ahead, ``stats_ahead``, was removed unmeasured in the
    # seventeenth session: its registers rotate, so each iteration still waits on a load.)
    staged_stats: bool = False

    def __post_init__(self):
        if self.staged_stats and self.stages == 1:
            raise ValueError(f"staged_stats needs stages > 1: {self}")
        if self.stages > 1 and (self.prefetch or self.column_tile or self.column_state_in_smem):
            raise ValueError(f"stages = {self.stages} replaces prefetch and excludes column CTAs and the column state "
                             f"in shared memory: {self}")
        if self.fused_column_sum and (self.tiling.cluster_n > 1 or self.column_tile or self.column_state_in_smem):
            raise ValueError(f"fused_column_sum needs unclustered rows, partial rows (no column CTAs) and the column "
                             f"state in registers: {self}")
        if self.fused_column_sum and self.tiling.num_threads < SUM_THREADS_PER_ROW:
            raise ValueError(f"fused_column_sum needs at least {SUM_THREADS_PER_ROW} threads a CTA: {self}")

    @property
    def column_tiling(self) -> RowTiling | None:
        """How a column CTA covers its columns (None without column CTAs): threads laid out as thread rows x
        ``column_tile / vec`` vectors, one vector a thread, the thread rows striding over the rows."""
        if not self.column_tile:
            return None
        t = self.tiling
        per_row = self.column_tile // t.vec
        return RowTiling(t.vec, per_row, 1, t.num_threads // per_row, 1)

    def column_ctas(self, hidden: int) -> int:
        """The column CTAs after the row CTAs in the grid (0 without ``column_tile``)."""
        return _ceil_div(hidden, self.column_tile) if self.column_tile else 0

    @property
    def sum_tiling(self) -> RowTiling | None:
        """How a sum CTA (``fused_column_sum``) covers its columns of the fp32 partial rows: 16-byte vectors (fewer
        elements where x's vectors are narrower, so the vector divides N), SUM_THREADS_PER_ROW threads across the
        columns, the CTA's other threads as thread rows striding over the partial rows. None without it."""
        if not self.fused_column_sum:
            return None
        t = self.tiling
        return RowTiling(min(4, t.vec), SUM_THREADS_PER_ROW, 1, t.num_threads // SUM_THREADS_PER_ROW, 1)

    def sum_ctas(self, hidden: int) -> int:
        """The sum CTAs after the row CTAs in the grid (0 without ``fused_column_sum``)."""
        return _ceil_div(hidden, self.sum_tiling.tile_n) if self.fused_column_sum else 0

    def max_partial_rows(self, num_sms: int) -> int:
        """Partial rows (each N fp32 for dw and N for db) the launcher allocates at most, whatever M is."""
        return max(1, num_sms * self.ctas_per_sm // self.tiling.cluster_n)

    def partial_rows(self, num_sms: int, rows: int) -> int:
        """Partial rows for M = ``rows``: one per cluster of the persistent grid, never more clusters than row tiles."""
        return min(_ceil_div(rows, self.tiling.rows_per_cta), self.max_partial_rows(num_sms))

    def smem_bytes(self, weight_bytes: int = 4) -> int:
        """Shared memory of the column state (0 in registers): dw and db accumulators and the weight, per CTA."""
        if not self.column_state_in_smem:
            return 0
        t = self.tiling
        return t.num_threads * t.vec * t.vecs_per_thread * (2 * 4 + weight_bytes)


# What the backward's column state may use (Hopper: 227 KB per CTA; the rest is left to the reduction buffers),
# and what two CTAs' column state may use together (228 KB per SM).
BWD_SMEM_BUDGET = 200 * 1024
TWO_CTAS_SMEM_BUDGET = 216 * 1024


def _row_tiling(hidden: int, vec: int, bytes_per_thread: int, elem_bytes: int, max_cta_threads: int,
                min_cta_threads: int) -> RowTiling:
    """Smallest power-of-two thread count per row that keeps about ``bytes_per_thread`` of x per thread."""
    nvec = _ceil_div(hidden, vec)
    vecs_target = max(1, bytes_per_thread // (vec * elem_bytes))
    threads = _next_pow2(_ceil_div(nvec, vecs_target))
    cluster_n = 1
    if threads > max_cta_threads:
        cluster_n = threads // max_cta_threads
        threads = max_cta_threads
        # Past the largest cluster, each thread holds more instead.
        cluster_n = min(cluster_n, MAX_CLUSTER)
    vecs_per_thread = _ceil_div(nvec, threads * cluster_n)
    # Every CTA of the cluster must own at least one column: where the last ones would hold none, the fewest CTAs
    # that cover the row at this many vectors a thread (a cluster of any size: 12 CTAs of 3 vectors at N = 139264
    # 16-bit). Halving the cluster instead (until the eighteenth session) left 4 CTAs of 9 vectors a thread there,
    # which spilled thousands of bytes. Measured (the probes' "fitc" variants, since removed, H100, 2026-12-07,
    # eighteenth session, h100-2026-12-07-i/probes-i/, % of the add / copy, halved -> fitted): backward bf16
    # 16384x36864 5 -> 90, 8192 x 139264 / 151936 / 200000 4 / 7 / 3 -> 58 / 62 / 64; forward 20 -> 76, 10 / 20 / 6
    # -> 30 / 30 / 35.
    cluster_n = _ceil_div(nvec, threads * vecs_per_thread)
    rows_per_cta = max(1, min_cta_threads // threads)
    return RowTiling(vec, threads, vecs_per_thread, rows_per_cta, cluster_n)


# affine_after_stats pays where it doubles the CTAs an SM holds and there are rows enough to fill them: M >= this
# and a one-row CTA of at most 256 threads (benchmarks/cutedsl_fwd_probe.py, H100, 2026-11-25).
AFFINE_AFTER_STATS_MIN_ROWS = 1024


# Rows of at most this many bytes get 32 bytes of x a thread instead of 64 (twice the threads on a row, half the
# rows a CTA): 32768x256 bf16 89 -> 93% of a copy; at N = 1024 it loses (94 -> 74%) (cutedsl_fwd_probe.py, H100,
# 2026-11-25, probes/probe-l1.txt: the ``t1024`` and ``late32`` variants, the same tiling at N = 256).
NARROW_ROW_BYTES = 512


# Small M (one wave of CTAs: a row's latency sets the time), 16 bytes of x a thread, so more threads share each row:
# for rows of at most SMALL_M_NARROW_ROW_BYTES at M <= SMALL_M_ROWS, and at M = 1 for rows of at most
# SINGLE_ROW_MAX_BYTES. Measured (cutedsl_fwd_probe.py --only 16B, H100, 2026-11-25, fifth session, % of a copy):
# 1x1024 bf16 74 -> 88%, 128x1024 76 -> 92%, 1x4096 85 -> 86%, 1x8192 77 -> 82%; at 128x4096 and 256x4096 it
# lost (89 -> 87%, 90 -> 88%), at 128x8192 even.
SMALL_M_ROWS = 256
SMALL_M_NARROW_ROW_BYTES = 2048
SINGLE_ROW_MAX_BYTES = 16384

# Rows of MID_ROW_BYTES (2-4 KB of 16-byte vectors) with weight and/or bias, at M >= MID_ROW_MIN_ROWS: one row a
# 128-thread CTA (16 or 32 bytes of x a thread), so weight and bias load after the statistics, instead of 64 bytes a
# thread, which packs 2-4 rows of 32 or 64 threads into a CTA and holds weight and bias across the reductions.
# Measured (cutedsl_fwd_probe.py --only 16B,32B, H100, 2026-12-07, twenty-fifth session,
# h100-2026-12-07-q/probes-adhoc/, % of a copy, fp32 weight and bias, old -> one row of 128 threads, without / with
# the statistics stored): bf16 32768x1024 96 -> 98 / 94 -> 97, 8192x1024 91 -> 98 / 90 -> 96, 4096x1024 95 -> 99,
# 16384x1024 93 -> 99, 131072x1024 97 -> 98 / 96 -> 96; 32768 rows of 1152 / 1280 / 1536 / 1792 / 2048: 73 / 76 /
# 83 / 92 / 93 -> 84 / 87 / 93 / 94 / 99 (2048 with the statistics 92 -> 98); 4096x2048 90 -> 98; fp16 32768x1024
# 96 -> 99; fp32 x 32768x512 98 -> 99, 32768x1024 98 -> 100; bf16 weight and bias 32768x1024 98 -> 99, a weight
# alone 96 -> 97. Not below: 2048x1024 even, 1024x2048 93 -> 89; nor without weight and bias (8192x1024 101 -> 98);
# nor narrower rows (768 / 896 bf16 at 128 threads: 96 -> 83 / 89) or wider ones (the default already gives 2304+
# one row of 128+ threads). Not measured with a fused residual or with out wider than x: left out. After the change
# (probes-u/, old tiling "64B" beside the default in one process): 32768x1024 96 -> 99, 32768x2048 92 -> 98; the
# bench at 32768x1024 bf16 + bias (bench-1024/): 98% forward, 94% forward+backward.
MID_ROW_BYTES = (2048, 4096)
MID_ROW_MIN_ROWS = 4096
# L2 eviction policies (FwdConfig.l2_hints / BwdConfig.l2_hints: rows evict_first, weight/bias evict_last) for 16-bit
# rows of at most this many bytes held by one CTA (no cluster), at M above SMALL_M_ROWS, without the fused residual
# (not measured with it).
# Probes on the H100 (2026-11-25, sixth session, cutedsl_fwd_probe.py --only l2 and cutedsl_bwd_probe.py
# --host-hidden; benchmarks/results/h100-2026-11-25-f/probes), % of a copy (forward) / an add (backward), default
# -> hints: forward 4096x4096 fp16 91 -> 96, 32768x256 92 -> 96, 4096x8192 fp16 / bf16 94 / 95 -> 96 / 96,
# 32768x1024 95 -> 96, 4095x5000 92 -> 93, small M (1 and 128 rows) within a point, 32768x4096 / 8192 98 / 101 ->
# 97 / 100; backward 4096x4096 75 -> 78, 32768x256 76 -> 80, 4096x8192 fp16 76 -> 79, 4095x5000 59 -> 64,
# 32768x1024 87 -> 88, 32768x4096 / 8192 86 / 85 -> 86 / 84. Not at small M: backward 128x4096 52 -> 50, and in
# the bench fwd+bwd at 128x4096 75 -> 71% (1x4096 99 -> 89%, cells that move by 10 points between runs). Not for
# wider rows: forward 4096x16384 94 -> 93, clustered rows 92 / 87 / 79 / 70 -> 90 / 81 / 77 / 68 (N = 32768 ..
# 262144); backward 32768x16384 94 -> 93. Nor fp32: 8192x8192 forward 99 -> 98, backward 94 -> 93.
L2_HINTS_MAX_ROW_BYTES = 16384


# Ragged 16-bit rows that the fitted tiling (_row_tiling) spreads over 9-15 CTAs of 512 threads (N in (131072, 262144)
# off the powers of two) run the forward in clusters of at most 8 CTAs of up to this many 16-byte vectors a thread
# (80 bytes): two such clusters fit a GPC, where one of 9-15 CTAs leaves the rest of it idle. Measured
# (cutedsl_fwd_probe.py "c8", H100, 2026-12-07, twentieth session, h100-2026-12-07-k/probes-k, -m and -n, % of a
# copy, bf16 x, fp32 weight and bias): 8192x139264 (12 -> 7 CTAs of 5 vectors) 31 / 30 / 30 -> 49 / 49 / 49,
# 8192x151936 (13 -> 8 CTAs of 5) 31 / 30 / 30 -> 51 / 50 / 50, 8192x163840 30 -> 54, 4096x139264 fp16 30 -> 50. At
# 6 vectors a thread (180000) 31 -> 37, at 7 (200000: ptxas spills) 35 -> 14; 1024-thread CTAs of half the bytes
# ("c8t1024") 10-34; fp32 rows of 5 and 7 vectors 76 -> 64 (75000) and 67 -> 71 (100000): not for fp32. With weight
# and bias before the statistics these clusters read 53-60 (one sample, statistics not stored), but ptxas spills
# 40-112 bytes there (more with the statistics stored): not adopted untimed.
CLUSTER_OF_EIGHT_MAX_VECS = 5


def _cluster_of_eight(tiling: RowTiling, hidden: int) -> RowTiling | None:
    """The tiling of at most 8 CTAs a row for a ragged row the fitted tiling spreads over 9-15 CTAs (or None)."""
    if not 8 < tiling.cluster_n < MAX_CLUSTER or tiling.rows_per_cta != 1:
        return None
    nvec = _ceil_div(hidden, tiling.vec)
    vecs = _ceil_div(nvec, tiling.threads_per_row * 8)
    if vecs > CLUSTER_OF_EIGHT_MAX_VECS:
        return None
    return RowTiling(tiling.vec, tiling.threads_per_row, vecs, 1, _ceil_div(nvec, tiling.threads_per_row * vecs))


def _l2_hints(tiling: RowTiling, hidden: int, elem_bytes: int, residual: bool, rows: int | None) -> bool:
    return (elem_bytes == 2 and tiling.cluster_n == 1 and hidden * elem_bytes <= L2_HINTS_MAX_ROW_BYTES
            and not residual and (rows is None or rows > SMALL_M_ROWS))


def _mid_row(hidden: int, elem_bytes: int, vec: int, rows: int | None, residual: bool,
             widest_elem_bytes: int | None, affine_bytes: int) -> bool:
    """Whether the forward holds a row of ``MID_ROW_BYTES`` in one 128-thread CTA (see there)."""
    return (MID_ROW_BYTES[0] <= hidden * elem_bytes <= MID_ROW_BYTES[1] and vec * elem_bytes == 16
            and (widest_elem_bytes or elem_bytes) == elem_bytes and not residual and affine_bytes > 0
            and rows is not None and rows >= MID_ROW_MIN_ROWS)


def rows_class(rows: int) -> tuple:
    """What of M the forward config depends on (a launch plan keyed on it may serve any M of the same class)."""
    return (rows == 1, rows <= SMALL_M_ROWS, rows >= AFFINE_AFTER_STATS_MIN_ROWS,
            rows <= PERSISTENT_UNCLUSTERED_MAX_ROWS, rows >= MID_ROW_MIN_ROWS)


# The persistent forward (FwdConfig.persistent): for clustered rows whose weight and bias take at least this many
# bytes (above small M). Why: a wide row's weight/bias slice misses L1 between rows (each SM runs CTAs of every
# cluster rank), so the one-cluster-a-row kernel reads it again from L2 for every row: with fp32 weight and bias
# 4x a 16-bit row's own bytes. Measured (cutedsl_fwd_probe.py, H100, 2026-12-06, ninth session, probes/
# fwd-persist.txt; % of a copy, one-cluster-a-row -> persistent), bf16 x at N = 32768 / 65536 / 131072 / 262144:
# fp32 weight and bias (8 bytes a column) 92 / 85 / 78 / 70 -> 95 / 95 / 96 / 91; bf16 ones (4 bytes) 97 / 93 / 89
# / 81 -> 95 / 95 / 96 / 89; none 100 / 100 / 99 / 94 -> 96 / 95 / 96 / 94. So the L2 bytes a row re-reads decide:
# persistent from 256 KB of weight and bias a row (fp32 from N = 32768, 16-bit from 65536), never without them.
PERSISTENT_MIN_AFFINE_ROW_BYTES = 256 * 1024

# The persistent forward over unclustered rows too, 512 threads' worth of CTAs per SM (persistent_ctas_per_sm: 4 of
# 128 threads at N = 4096, 2 of 256 at 8192, 1 of 512 at 16384), for 16-bit x of those N with fp32 weight and bias
# (8 bytes a column re-read for every row, against the row's own 4), at AFFINE_AFTER_STATS_MIN_ROWS to this many rows.
# Measured (cutedsl_fwd_probe.py "persist2".."persist4", NVIDIA H200, 2026-12-07, twenty-second session,
# h200-2026-12-07-n/probes-r/, one sample, % of a copy, default -> persistent): 4096x8192 fp16 / bf16 90 / 91 -> 91 /
# 91 without the statistics stored and 85 / 84 -> 91 / 91 with them (the training forward); 4096² fp16 91 -> 92 and
# 90 -> 92; 4096x16384 fp16 84 -> 87 and 81 -> 88; but 32768x4096 bf16 91 -> 90 either way, hence the bound on M.
# Three CTAs of 256 threads spill (ptxas: 24 bytes) and read 80-85%; one 128- or 256-thread CTA per SM 53-73%.
# On the H100 (twenty-third session, h100-2026-12-07-o/, one sample): 4096² fp16 95 -> 97 without the statistics and
# 95 -> 96 with them (probe); the bench's forward+backward 4096x8192 fp16 92 -> 93%, 4096² 91 -> 93% against the
# twenty-first session's run. Not yet measured at other M; not for other N (unmeasured) nor 16-bit weight and bias.
PERSISTENT_UNCLUSTERED_MAX_ROWS = 8192
PERSISTENT_UNCLUSTERED_N = (4096, 8192, 16384)


# Cached: the launchers ask for the default config on every call (5-10 µs of rules each time).
@functools.lru_cache(maxsize=1024)
def fwd_config(hidden: int, elem_bytes: int, vec: int, *, rows: int | None = None, bytes_per_thread: int | None = None,
               max_cta_threads: int = MAX_CTA_THREADS, min_cta_threads: int = MIN_CTA_THREADS,
               residual: bool = False, widest_elem_bytes: int | None = None, affine_bytes: int = 0,
               persistent: bool | None = None) -> FwdConfig:
    """Forward: 64 bytes of x per thread (32 bf16 / 16 fp32 values; 32 bytes for rows of at most
    ``NARROW_ROW_BYTES``; 16 bytes at small M, see ``SMALL_M_ROWS``; one 128-thread row a CTA for rows of
    ``MID_ROW_BYTES`` with weight or bias at M >= ``MID_ROW_MIN_ROWS``), up to 512 threads per CTA, then clusters.

    Weight and bias load after the row statistics (``affine_after_stats``) when ``rows`` >= 1024 and one row takes
    a whole CTA: holding fp32 weight and bias across the reductions costs ~30 registers a thread (ptxas: 92-128
    instead of 63-64), which halves the CTAs per SM. A 256-thread CTA then got 64 registers by itself (when
    measured; ptxas now gives it 78 at N = 5000 16-bit: a launch bound of four CTAs per SM where it fits, below); a
    512-thread one (N >= 16384, clusters included) also needs a launch bound of two CTAs per SM (``min_ctas_per_sm``;
    without it ptxas takes 77 registers and one CTA fits, which only exposes the loads' latency). Measured on the
    H100 (% of a copy, bf16 x, fp32 weight and bias, cutedsl_fwd_probe.py): 4096x8192 83 -> 94%, 4095x5000 78 ->
    94%, 32768x8192 86 -> 100%; with the launch bound 4096x16384 81 -> 95%, 32768x16384 84 -> 100%, 32768x32768 72
    -> 90%, 65536 65 -> 82%, 131072 55 -> 73%, 262144 40 -> 63%. Not at M = 128 or M = 1 (one wave: occupancy cannot
    help, the exposed latency stays), and the launch bound only with 16-byte vectors (of the widest of x and out,
    ``widest_elem_bytes``) and without a fused residual (ptxas spills there: 108 bytes at N = 100003 with scalar
    accesses; 8-24 with a residual).

    ``affine_bytes``: the bytes of weight and bias a column (8 for fp32 weight and bias, 0 without; any for the
    mid-row tiling): clustered rows
    whose weight and bias take ``PERSISTENT_MIN_AFFINE_ROW_BYTES`` or more run the persistent kernel, and so do
    unclustered 16-bit rows of ``PERSISTENT_UNCLUSTERED_N`` with fp32 weight and bias at 1024 to
    ``PERSISTENT_UNCLUSTERED_MAX_ROWS`` rows, several CTAs per SM (``persistent`` None: by those rules; True / False:
    forced; a forced one runs one CTA per SM).

    Rows split over a cluster get LayerNorm's mean and variance in one exchange (``merged_stats``) where N fills the
    tiling: each exchange between a cluster's CTAs is a round of distributed shared memory stores and an mbarrier
    wait. Measured (cutedsl_fwd_probe.py, H100, 2026-11-25, fifth session; % of a copy): 32768x32768 91 -> 92%,
    32768x65536 82 -> 86%, 16384x131072 73 -> 78%, 8192x262144 64 -> 70% (RMSNorm, one row sum, with the same
    config: 94 / 84 / 80 / 72%); without a cluster within one point either way, so left as it was.

    >>> fwd_config(4096, 2, 8).tiling
    RowTiling(vec=8, threads_per_row=128, vecs_per_thread=4, rows_per_cta=1, cluster_n=1)
    >>> fwd_config(262144, 2, 8).tiling
    RowTiling(vec=8, threads_per_row=512, vecs_per_thread=4, rows_per_cta=1, cluster_n=16)
    >>> fwd_config(262144, 2, 8).merged_stats
    True
    >>> [fwd_config(n, 2, 8, rows=16384, affine_bytes=8).persistent for n in (16384, 32768, 262144)]
    [False, True, True]
    >>> fwd_config(32768, 2, 8, rows=8192, affine_bytes=4).persistent, fwd_config(262144, 2, 8, rows=8192).persistent
    (False, False)
    >>> [fwd_config(n, 2, 8, rows=4096, affine_bytes=8).persistent_ctas_per_sm for n in (4096, 8192, 16384)]
    [4, 2, 1]
    >>> [fwd_config(8192, 2, 8, rows=m, affine_bytes=8).persistent for m in (512, 1024, 8192, 8193)]
    [False, True, True, False]
    >>> fwd_config(256, 2, 8).tiling
    RowTiling(vec=8, threads_per_row=16, vecs_per_thread=2, rows_per_cta=8, cluster_n=1)
    >>> fwd_config(1024, 2, 8, rows=128).tiling
    RowTiling(vec=8, threads_per_row=128, vecs_per_thread=1, rows_per_cta=1, cluster_n=1)
    >>> fwd_config(1024, 2, 8, rows=32768).tiling, fwd_config(1024, 2, 8, rows=32768, affine_bytes=8).tiling
    (RowTiling(vec=8, threads_per_row=32, vecs_per_thread=4, rows_per_cta=4, cluster_n=1), \
RowTiling(vec=8, threads_per_row=128, vecs_per_thread=1, rows_per_cta=1, cluster_n=1))
    >>> fwd_config(16384, 2, 8, rows=4096)
    FwdConfig(tiling=RowTiling(vec=8, threads_per_row=512, vecs_per_thread=4, rows_per_cta=1, cluster_n=1), \
affine_after_stats=True, l1_hints=False, min_ctas_per_sm=2, merged_stats=False, l2_hints=False, \
persistent=False, persistent_ctas_per_sm=1)
    """
    if bytes_per_thread is None:
        row_bytes = hidden * elem_bytes
        small_m = rows is not None and ((rows <= SMALL_M_ROWS and row_bytes <= SMALL_M_NARROW_ROW_BYTES)
                                        or (rows == 1 and row_bytes <= SINGLE_ROW_MAX_BYTES))
        bytes_per_thread = 16 if small_m else 32 if row_bytes <= NARROW_ROW_BYTES else 64
        if _mid_row(hidden, elem_bytes, vec, rows, residual, widest_elem_bytes, affine_bytes):
            bytes_per_thread = 16 * _ceil_div(row_bytes, 16 * MIN_CTA_THREADS)
    tiling = _row_tiling(hidden, vec, bytes_per_thread, elem_bytes, max_cta_threads, min_cta_threads)
    many_rows = rows is not None and rows >= AFFINE_AFTER_STATS_MIN_ROWS and tiling.rows_per_cta == 1
    fits_alone = tiling.cluster_n == 1 and tiling.num_threads <= 256
    # 16-byte vectors of the widest row tensor (x, or out in another dtype: bf16 -> fp32 moves 4 elements).
    full_vectors = vec * max(elem_bytes, widest_elem_bytes or 0) == 16
    bounded = tiling.num_threads == 512 and full_vectors and not residual
    late = many_rows and (fits_alone or bounded)
    # Ragged 16-bit rows over 9-15 CTAs: at most 8 CTAs of more bytes a thread (CLUSTER_OF_EIGHT_MAX_VECS), as measured:
    # weight and bias after the statistics, no launch bound, never persistent. Where that would take more vectors,
    # weight and bias load before the statistics (probe "previous", same runs, % of a copy): 8192x180000 bf16 31 ->
    # 40, 8192x200000 35 -> 35; 139264 / 151936 30-31 -> 33-36 (there the 8-CTA clusters do better still). Not for
    # fp32 rows (75000 / 100000: 76 / 67 -> 65 / 48).
    ragged_wide = (8 < tiling.cluster_n < MAX_CLUSTER and elem_bytes == 2 and late and bounded
                   and bytes_per_thread == 64 and not persistent)
    eight = _cluster_of_eight(tiling, hidden) if ragged_wide else None
    if eight is not None:
        return FwdConfig(eight, affine_after_stats=True, merged_stats=eight.tile_n * eight.cluster_n == hidden)
    if ragged_wide:
        late = False
    fills_tiling = tiling.tile_n * tiling.cluster_n == hidden
    # Clusters of powers of two only: at N = 36864 16-bit (3 CTAs of 3 vectors, _row_tiling) the persistent kernel
    # measured 60% of a copy against 79% for one cluster a row (cutedsl_fwd_probe.py "rows2", H100, 2026-12-07,
    # eighteenth session, h100-2026-12-07-i/probes-j/cutedsl-fwd-fitted.txt).
    pow2_cluster = tiling.cluster_n & (tiling.cluster_n - 1) == 0
    can_persist = (tiling.cluster_n > 1 and pow2_cluster and fills_tiling and tiling.rows_per_cta == 1
                   and not residual)
    unclustered_persist = (persistent is None and tiling.cluster_n == 1 and fills_tiling and tiling.rows_per_cta == 1
                           and hidden in PERSISTENT_UNCLUSTERED_N and elem_bytes == 2 and affine_bytes == 8
                           and full_vectors and (widest_elem_bytes or elem_bytes) == elem_bytes and not residual
                           and rows is not None
                           and AFFINE_AFTER_STATS_MIN_ROWS <= rows <= PERSISTENT_UNCLUSTERED_MAX_ROWS)
    if unclustered_persist:
        return FwdConfig(tiling, merged_stats=True, persistent=True,
                         persistent_ctas_per_sm=MAX_CTA_THREADS // tiling.num_threads)
    if persistent is None:
        persistent = (can_persist and hidden * affine_bytes >= PERSISTENT_MIN_AFFINE_ROW_BYTES
                      and (rows is None or rows > SMALL_M_ROWS))
    if persistent:
        if not can_persist:
            raise ValueError(f"no persistent forward for N = {hidden} ({tiling}, residual={residual})")
        # Weight and bias live in shared memory: nothing to load late, one CTA per SM (no launch bound), no hints.
        return FwdConfig(tiling, merged_stats=True, persistent=True)
    # Four 256-thread late-affine CTAs per SM (a 64-register bound) where a thread holds at most 48 bytes of x (16-bit
    # N in (4096, 6144]): ptxas gives them 78 registers at N = 5000 with fp32 weight and bias (three CTAs per SM), 64
    # under the bound with at most 4 bytes spilled; with 64 bytes (N in (6144, 8192]) it spills up to ~390 bytes.
    # Measured (cutedsl_fwd_probe.py "+64r", H100, 2026-12-06, eleventh session, probes/cutedsl-fwd-64r.txt, % of a
    # copy): 4095x5000 fp16 89 -> 99%; 4096x8192 (64 bytes, 80 registers -> 64 with 8 spilled) 96 -> 95-96%: not there.
    four_alone = (late and fits_alone and tiling.num_threads == 256 and elem_bytes == 2 and vec * elem_bytes == 16
                  and not residual and (widest_elem_bytes or elem_bytes) == elem_bytes
                  and tiling.vecs_per_thread * vec * elem_bytes <= 48)
    # The launch bound not for clusters of other sizes than powers of two (ragged rows, _row_tiling): ptxas spills
    # under it there (148 bytes at N = 139264 bf16 with fp32 weight and bias); measured without it.
    two_bound = late and bounded and pow2_cluster
    return FwdConfig(tiling, affine_after_stats=late,
                     min_ctas_per_sm=2 if two_bound else 4 if four_alone else 0,
                     merged_stats=tiling.cluster_n > 1 and fills_tiling,
                     l2_hints=_l2_hints(tiling, hidden, elem_bytes, residual, rows))


# Cached: the launchers ask for the default config on every call (5-10 µs of rules each time).
@functools.lru_cache(maxsize=1024)
def bwd_config(hidden: int, elem_bytes: int, vec: int, *, bytes_per_thread: int = 32,
               max_cta_threads: int = MAX_CTA_THREADS, min_cta_threads: int = MAX_CTA_THREADS,
               ctas_per_sm: int | None = None, column_state_in_smem: bool | None = None,
               residual: bool = False, rows: int | None = None) -> BwdConfig:
    """Backward holds x, dy, w and two fp32 accumulators per element: half the forward's bytes per thread.

    One 512-thread CTA per SM (several rows per CTA when a row needs fewer threads), so the grid has one dw/db
    partial row per SM at most (one per cluster: SMs / cluster_n for wide rows), the workspace bound
    SMs x N x 8 bytes. A thread needs ~120-128 registers here, so 512 threads is what an SM holds anyway.
    Where a thread must hold more than ``bytes_per_thread`` of x (rows wider than 16 CTAs x 512 threads x
    ``bytes_per_thread``, and some ragged N whose cluster had to shrink), w and dw/db move to shared memory, if
    they fit in ``BWD_SMEM_BUDGET``. Clustered rows of 8 values a thread run two CTAs per SM (registers allow it),
    those of 16 one CTA with the next row prefetched (two, with the column state in shared memory, under the fused
    residual; below), still one partial row per SM at most. With fewer ``rows`` than a CTA's thread rows, a CTA holds one
    row (1x4096 bf16: 0.0071 -> 0.0065 ms for the backward and its column sum, cutedsl_bwd_probe.py --host-hidden,
    H100, 2026-11-25, fifth session; at 128x4096 the two-row CTAs stay faster, 0.0124 against 0.0136 ms).

    >>> bwd_config(8192, 2, 8)
    BwdConfig(tiling=RowTiling(vec=8, threads_per_row=512, vecs_per_thread=2, rows_per_cta=1, cluster_n=1), \
ctas_per_sm=1, column_state_in_smem=False, l2_hints=False, prefetch=False, column_tile=0, stages=2, \
fused_column_sum=True, staged_stats=True)
    >>> bwd_config(4096, 4, 4).prefetch, bwd_config(1024, 2, 8).prefetch
    (True, True)
    >>> bwd_config(1024, 2, 8).tiling
    RowTiling(vec=8, threads_per_row=64, vecs_per_thread=2, rows_per_cta=8, cluster_n=1)
    >>> bwd_config(1024, 2, 8, rows=1).tiling
    RowTiling(vec=8, threads_per_row=64, vecs_per_thread=2, rows_per_cta=1, cluster_n=1)
    >>> bwd_config(262144, 2, 8)
    BwdConfig(tiling=RowTiling(vec=8, threads_per_row=512, vecs_per_thread=4, rows_per_cta=1, cluster_n=16), \
ctas_per_sm=1, column_state_in_smem=True, l2_hints=False, prefetch=True, column_tile=0, stages=1, \
fused_column_sum=False, staged_stats=False)
    >>> bwd_config(131072, 2, 8)
    BwdConfig(tiling=RowTiling(vec=8, threads_per_row=512, vecs_per_thread=4, rows_per_cta=1, cluster_n=8), \
ctas_per_sm=1, column_state_in_smem=True, l2_hints=False, prefetch=True, column_tile=0, stages=1, \
fused_column_sum=False, staged_stats=False)
    >>> bwd_config(16384, 2, 8)
    BwdConfig(tiling=RowTiling(vec=8, threads_per_row=512, vecs_per_thread=2, rows_per_cta=1, cluster_n=2), \
ctas_per_sm=1, column_state_in_smem=False, l2_hints=False, prefetch=True, column_tile=0, stages=1, \
fused_column_sum=False, staged_stats=False)
    >>> bwd_config(16384, 2, 8, residual=True).ctas_per_sm
    2
    >>> bwd_config(4096, 2, 8, rows=128).column_tile
    64
    """
    tiling = _row_tiling(hidden, vec, bytes_per_thread, elem_bytes, max_cta_threads, min_cta_threads)
    if rows is not None and rows < tiling.rows_per_cta:
        # Fewer rows than a CTA holds (M = 1): a CTA of one row, instead of one whose other thread rows idle.
        tiling = _row_tiling(hidden, vec, bytes_per_thread, elem_bytes, max_cta_threads, tiling.threads_per_row)
    # 16-bit rows the 32-byte tiling spreads over more than 8 CTAs (N in (65536, 131072]) take 64 bytes a thread in
    # clusters of at most 8, with w and dw/db in shared memory: two such clusters fit a GPC, where one of 9-16 CTAs
    # leaves the rest of it idle (16 clusters of 8 run at once on the H100, 128 SMs, against 7 of 16 CTAs, 112 SMs).
    # Measured (cutedsl_bwd_probe.py "64Bs", H100, 2026-12-07, eighteenth session, h100-2026-12-07-i/
    # cutedsl-bwd-131072.txt, two samples, % of the add): 16384x131072 bf16 77 / 77 -> 99 / 99; the 12-13-CTA
    # clusters of wider ragged rows read 57-64 (probes-j). Below 122880 this is the tiling the cluster halving gave
    # before the eighteenth session (8 CTAs of 48-64 bytes). Not for fp32 rows (no prefetch with shared-memory column
    # state there) nor with the fused residual: unmeasured.
    if (tiling.cluster_n > 8 and bytes_per_thread == 32 and elem_bytes == 2 and not residual
            and column_state_in_smem is None and ctas_per_sm is None):
        wider = _row_tiling(hidden, vec, 64, elem_bytes, max_cta_threads, min_cta_threads)
        if (wider.cluster_n <= 8 and wider.vec * elem_bytes == 16
                and BwdConfig(wider, 1, True).smem_bytes() <= BWD_SMEM_BUDGET):
            tiling, column_state_in_smem = wider, True
    column_state_in_smem_given = column_state_in_smem
    # Shared-memory column state only with 16-byte vectors: racecheck reported shared-memory write-write hazards in
    # the one narrower-vector config that took this path (N = 65537 bf16, 1-element vectors, cluster of 8;
    # 2026-11-25 visit, benchmarks/results/h100-2026-11-25/sanitize/), cause not yet found; 16-byte ones are clean.
    full_vectors = tiling.vec * elem_bytes == 16
    if column_state_in_smem is None:
        over_budget = tiling.vecs_per_thread * vec * elem_bytes > bytes_per_thread
        column_state_in_smem = (over_budget and full_vectors
                                and BwdConfig(tiling, 1, True).smem_bytes() <= BWD_SMEM_BUDGET)
    if ctas_per_sm is None:
        # A cluster of c CTAs writes one partial row, so up to c CTAs per SM stay within one row per SM. Two where
        # registers allow it: a thread holding 8 values needs ~60 registers (ptxas: 59 at 8192 and 16384 fp32),
        # 16 values ~120, so two 512-thread CTAs fit only at 8 (8192 fp32, a cluster of 2: 91% of the add
        # against 83% with one; probe, 2026-11-25). With 16 values, two fit once w and dw/db move to shared
        # memory (63 registers under the launch bound, 96 KB of column state a CTA): clustered 16-bit rows,
        # 32768x16384 bf16 83 -> 94% of the add, 4096x16384 fp16 76 -> 83%, N 32768-131072 +1-3 points
        # (cutedsl_bwd_probe.py, 2026-11-25, third session).
        # Not with the fused residual's extra gradient tensors in registers: ptxas spills under the launch bound
        # (12 bytes at 8192 fp32).
        # Without the residual, though, one CTA per SM with w and dw/db in registers and the next row prefetched
        # (below) beats two with them in shared memory (H100, 2026-12-06, tenth session, cutedsl_bwd_probe.py "1r",
        # probes/cutedsl-bwd-1cta*.txt, % of the add, two CTAs -> one): bf16 32768 x 16384 / 32768 / 65536 92 / 82 /
        # 80 -> 93 / 93 / 94, 16384 x 131072 68 -> 77; fp16 4096x16384 87 -> 90, 32768x32768 84 -> 95 (ptxas: 128
        # registers, no spills). So two CTAs in shared memory only with the residual (not measured there).
        fits_two = tiling.vec * tiling.vecs_per_thread <= 8 and not column_state_in_smem and not residual
        two_in_smem = (not fits_two and residual and tiling.cluster_n >= 2 and not column_state_in_smem
                       and full_vectors and column_state_in_smem_given is None
                       and 2 * BwdConfig(tiling, 2, True).smem_bytes() <= TWO_CTAS_SMEM_BUDGET)
        if two_in_smem:
            column_state_in_smem = True
        ctas_per_sm = min(tiling.cluster_n, 2) if fits_two or two_in_smem else 1
    # Prefetch the next row tile where one CTA per SM has nothing else to overlap its loads with (H100, 2026-11-25,
    # eighth session, cutedsl_bwd_probe.py --host-hidden, % of the add, default -> prefetch): 4096x8192 fp16 77 -> 84,
    # 4096² 77 -> 82, 8192x262144 bf16 60 -> 79, 32768 x 1024 / 4096 88 / 85 -> 89 / 86, x 8192 83 -> 83; not at
    # 32 rows a CTA (32768x256 79 -> 78) nor with two CTAs per SM (clustered 16-bit rows and 8192² fp32: -1 to 0).
    # Not measured with the fused residual (more live registers) or at small M: off there. Nor for fp32 rows with the
    # column state in shared memory (N >= 131072): ptxas spills there (56-byte stack), unlike 16-bit rows. At 8192
    # 16-bit (one 512-thread row) ptxas spills 40 bytes too, yet it measured faster (above): kept.
    prefetch = (ctas_per_sm == 1 and tiling.rows_per_cta <= 8 and not residual
                and (rows is None or rows > SMALL_M_ROWS) and not (column_state_in_smem and elem_bytes == 4))
    # Few rows over more than one CTA: about one partial row per row tile, whose fp32 bytes (written, then read by a
    # second launch) outweigh the rows themselves; column CTAs in the same launch read the rows again instead.
    few_rows = rows is not None and tiling.rows_per_cta < rows <= WEIGHT_GRADS_FROM_ROWS_MAX_ROWS
    column_tile = _column_tile(hidden, tiling) if few_rows and tiling.cluster_n == 1 else 0
    # Staged loads (``stages``: x and dy of the next tile in flight as cp.async copies into shared memory) instead of
    # the register prefetch, for unclustered 16-bit tiles of one or two rows. Measured (cutedsl_bwd_probe.py, H100,
    # 2026-12-06, eleventh session, probes/cutedsl-bwd-stages.txt, % of the add, prefetch -> 2 stages): 4096x8192
    # fp16 84 -> 87, 4095x5000 fp16 72 -> 76, 32768 x 4096 / 8192 bf16 92 / 88 -> 97 / 95, 4096² fp16 86 -> 85;
    # 3 stages within a point of 2. Not at 8 rows a tile (32768x1024: 90 either way), 32 (32768x256: 79 with L2
    # hints either way) or clustered rows (32768² bf16: 94 -> 76).
    staged = (prefetch and column_tile == 0 and tiling.cluster_n == 1 and tiling.rows_per_cta <= 2
              and elem_bytes == 2 and full_vectors and not column_state_in_smem)
    # The partial rows' column sum in the same launch (``fused_column_sum``) for unclustered rows with partial rows
    # in registers: one kernel boundary less. Measured (cutedsl_bwd_probe.py "new" against "sep", three interleaved
    # repeats, H100, 2026-12-06, twelfth session, probes/cutedsl-bwd-fused.txt, backward alone, % of the add, second
    # launch -> fused): 4096² fp16 85 -> 87, 4095x5000 fp16 76 -> 78, 32768x4096 bf16 97 -> 98, 32768x8192 bf16 95
    # -> 96, 8192x4096 fp32 86 -> 90, 32768x256 bf16 78 -> 78; but 4096x8192 fp16 87 -> 83 (the bench's forward +
    # backward there: 91 -> 88%; its bf16 twin without a bias 93 -> 94%; not understood), so not above 6144 columns.
    # Not with the register prefetch of 16-bit rows (4-8 rows a tile): ptxas spills 20-24 bytes there with the sum
    # CTAs' code (1024 and 2048 bf16), none elsewhere (N 256-8192, 16-bit and fp32). Not with the fused residual
    # (4096 fp32: 48 bytes spilled).
    # Above 6144 columns the staged rows copy each tile's mean and rstd into the stage with its x and dy
    # (``staged_stats``) and sum their partial rows in the same launch. The fp16 RMSNorm backward there
    # waited on a plain load of the next tile's rstd that ptxas issued after the stage wait (SASS, fifteenth
    # session). Measured (cutedsl_bwd_probe.py, H100, 2026-12-07, sixteenth session,
    # h100-2026-12-07-g/probes-f/, two samples each, % of the add, default -> staged_stats -> staged_stats + fused):
    # 4096x8192 RMSNorm fp16 80 / 80 -> 89 / 89 -> 90 / 91, bf16 91 / 90 -> 90 / 90 -> 92 / 91; LayerNorm fp16 87 /
    # 87 -> 87 / 87 -> 87 / 88. Not at 6144 columns or fewer: 4095x5000 fp16 (fused) 76 / 77 -> 70 / 70 with it;
    # 4096² 84 -> 84.
    staged_stats = staged and hidden > FUSED_COLUMN_SUM_MAX_N
    fused = (tiling.cluster_n == 1 and column_tile == 0 and not column_state_in_smem and not residual
             and (hidden <= FUSED_COLUMN_SUM_MAX_N or staged_stats) and (staged or not prefetch or elem_bytes == 4))
    if staged:
        return BwdConfig(tiling, ctas_per_sm, column_state_in_smem, stages=2, fused_column_sum=fused,
                         staged_stats=staged_stats)
    # The fused residual's backward (its default until then: no prefetch, which spills 96-144 bytes with the residual,
    # no stages) stages x, dy and the residual's gradient dh with each tile's statistics, and sums its partial rows
    # in the same launch, for unclustered rows of one or two a tile above small M (16-bit; fp32 since the twenty-first
    # session, its dy and dh in 4-8-byte cp.async.ca copies where narrower than x). Measured
    # (cutedsl_bwd_probe.py --residual, H100, 2026-12-07, twentieth session, h100-2026-12-07-k/probes-n/
    # cutedsl-bwd-residual-staged.txt, two samples, % of a copy of the same bytes, default -> this): 4096² fp16 81 /
    # 81 -> 86 / 85, 4096x8192 fp16 85 / 85 -> 90 / 90, 4095x5000 fp16 74 / 74 -> 85 / 85, 32768x4096 bf16 96 / 96
    # -> 100 / 100 (two stages alone 81 / 87 / 85 / 101, three 84-85 / 87 / 84 / 98-99); fp32 rows 4096² 89 -> 93 / 94
    # (fp32 dy). A narrower dy or dh than x (bf16 out from fp32 x) is staged in 8-byte cp.async.ca copies.
    staged_residual = (residual and tiling.cluster_n == 1 and tiling.rows_per_cta <= 2
                       and full_vectors and not column_state_in_smem and column_tile == 0 and ctas_per_sm == 1
                       and (rows is None or rows > SMALL_M_ROWS))
    if staged_residual:
        return BwdConfig(tiling, ctas_per_sm, False, stages=2, fused_column_sum=True, staged_stats=True)
    return BwdConfig(tiling, ctas_per_sm, column_state_in_smem,
                     _l2_hints(tiling, hidden, elem_bytes, residual, rows), prefetch, column_tile,
                     fused_column_sum=fused)


# The widest rows whose backward sums its partial rows in its own launch by default without staged statistics
# (bwd_config, above; the staged rows above it take both).
FUSED_COLUMN_SUM_MAX_N = 6144

# Column CTAs (BwdConfig.column_tile): about this many of them, beside the row CTAs of a few-rows backward, and at
# most this many thread rows each (each output column is a serial sum over the thread rows, from shared memory).
COLUMN_CTAS = 64
COLUMN_MAX_THREAD_ROWS = 64


def _column_tile(hidden: int, tiling: RowTiling) -> int:
    """Columns per column CTA: a power of two number of vectors, for about ``COLUMN_CTAS`` CTAs over the row, with
    at most ``COLUMN_MAX_THREAD_ROWS`` thread rows and at least one.

    >>> _column_tile(4096, RowTiling(8, 256, 2, 2, 1))
    64
    >>> _column_tile(8192, RowTiling(8, 512, 2, 1, 1))
    128
    >>> _column_tile(256, RowTiling(8, 16, 2, 32, 1))
    64
    """
    nvec = _ceil_div(hidden, tiling.vec)
    threads = tiling.num_threads
    per_row = max(_next_pow2(_ceil_div(nvec, COLUMN_CTAS)), _ceil_div(threads, COLUMN_MAX_THREAD_ROWS))
    return min(per_row, threads) * tiling.vec
