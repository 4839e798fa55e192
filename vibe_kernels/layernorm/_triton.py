"""Triton backend: LayerNorm forward and backward kernels, their configs, and launchers into preallocated outputs.

Floors (H100, bf16, M x N elements of s bytes): the forward must move 2*M*N*s bytes (read x, write out), the
backward 3*M*N*s (read x and dy, write dx); the arithmetic is a handful of flops per element, far below the memory
time. So every kernel is organised around reading each input once from HBM:

* rows that fit in registers (the common case) are loaded once, reduced on chip (corrected two-pass variance), and
  written once; several rows per program for small N so each program has enough bytes in flight;
* rows too wide for registers stream through chunks: a statistics pass (sums around a pivot, the first chunk's
  mean), then a second pass that re-reads the row in reverse chunk order, so the most recently loaded chunks are
  still in L2;
* the backward's dw/db are accumulated in fp32 registers by a persistent grid and written as per-program partials
  [programs, N], summed by a small column-parallel kernel: deterministic, no atomics; its row loop is
  software-pipelined (the next row tiles' loads land in shared memory while this one computes), and 16-bit rows
  too wide to hold x, dy and the accumulators in registers (up to 16384) load x and dy twice per row, the second
  time from L1/L2; at few rows (about one partial row each) dw/db are summed straight from the rows instead, by
  column programs in the same launch; opt-in (``BwdConfig.fused_sum``), the partial rows are summed by the same
  launch's last programs once the row programs have announced theirs on a per-stream counter;
* where measured faster, loads carry L2 eviction policies: a row's last read evict_first, a chunked row's first
  read (read again by the second pass) and the weight and bias evict_last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import threading
from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl
from triton import knobs as _triton_knobs
from triton.runtime.errors import OutOfResources

from ._backends import WEIGHT_GRADS_FROM_ROWS_MAX_ROWS, repeat_fwd_plans, rows_launcher, sum_counter

# Widest row (elements, power of two) that one program handles whole (the backward's widest rows load x and dy
# twice instead of holding them in registers): above this, chunked kernels.
MAX_RESIDENT_FWD = 32768
MAX_RESIDENT_BWD = 16384  # fp16/bf16; fp32 rows: 8192 (the ladder's rows are for 2-byte elements)
MAX_HELD_CHUNKS = 4  # FwdConfig.held_chunks: the chunked forward's kernel spells out each held chunk

# Forward launch plans (layernorm_fwd): a forward call's signature -> (grid, compiled kernel entry). A repeated
# call skips the config lookup, the grid arithmetic and ``_launch_key`` (about half the launcher's host time). The
# signature holds every input of those: the device, M, N, dtypes, which optional tensors are given, the flags, the
# row strides and each pointer's 16-byte alignment. Bounded: a workload with ever-new M clears it, never grows it.
_fwd_plans: dict = {}
MAX_FWD_PLANS = 256


# ----------------------------------------------------------------------------------------------------------------
# Configs (data, chosen by heuristics; overridable)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FwdConfig:
    """block_m: rows per program (resident) or per row block (chunked). Resident: a row is a block_n head (the whole
    padded row when tail_n == 0) plus a tail_n tail. Chunked: block_m rows x block_n columns per step, each weight /
    bias chunk loaded once for the block_m rows."""

    block_m: int
    block_n: int
    num_warps: int
    chunked: bool
    tail_n: int = 0
    programs_per_sm: int = 0  # chunked only: 0 = one program per row block; k = a persistent grid of k x SMs
    affine_first: bool = False  # resident only: weight/bias loaded with the rows, before the statistics
    # Resident only: weight and bias loaded at the tile's own [block_m, block_n] column offsets, straight into the
    # rows' register layout, instead of as one row expanded to the tile. With weight and bias wider than x (fp32
    # with 16-bit x) Triton gives the one-row load a layout of its own and converts it through shared memory in every
    # program (the PTX figures and the H100 timings are at AFFINE_TILE_MAX_ROWS); the cost is one L1-hit load of each
    # weight / bias element per row of the tile.
    affine_tile: bool = False
    l2_hints: bool = False  # L2 eviction hints: rows read twice kept (evict_last), last reads evict_first
    # Chunked only: each row's first held_chunks (0-4) block_n chunks are loaded once and held in registers through
    # both passes (in x's dtype); only the rest is streamed twice: the row's first chunks are re-read last, the
    # likeliest to have left L2. The default for 16-bit rows of (16384, 32768] (FWD_HELD_16BIT); it lost at N >=
    # 131072, where holding costs the occupancy that keeps the bandwidth up.
    held_chunks: int = 0

    def __post_init__(self):
        if self.held_chunks and not (self.chunked and 0 < self.held_chunks <= MAX_HELD_CHUNKS):
            raise ValueError(f"held_chunks must be 0, or 1 to {MAX_HELD_CHUNKS} with chunked=True: {self}")


@dataclass(frozen=True)
class BwdConfig:
    """Resident: block_m rows x block_n (whole row) per step, persistent over row tiles.
    Chunked: a row-statistics pass, then a (row group x column chunk) grid of block_m x block_n tiles."""

    block_m: int
    block_n: int
    num_warps: int
    chunked: bool
    programs_per_sm: int = 2
    l2_hints: bool = False  # L2 eviction hints: x, dy (their last read) evict_first, the weight evict_last
    # Resident only: x and dy loaded twice per row tile, for the row sums and again for dx, instead of held in
    # registers across the row reduction (wide rows: without it a 16384-wide row spills).
    reread: bool = False
    # Software pipelining of the persistent row loop (Triton's num_stages): the loads of the next stages - 1 row tiles
    # go to shared memory while this one computes. 1: none. The launcher lowers it to fit shared memory.
    stages: int = 1
    # Resident only: the partial rows' column sum in the backward's own launch instead of a second one (each launch
    # costs ~3 µs of GPU time, against a backward of 40-80 µs at M = 4096): cdiv(N, FUSED_SUM_BLOCK_N) sum programs
    # follow the row programs in the grid, wait on a per-stream arrival counter until every row program has written
    # its partial rows, then sum their columns (see _layernorm_bwd_resident_kernel). Opt-in: 1-3 points of the add
    # slower than the second launch at M = 4096-32768 (H100, twelfth session, benchmarks/triton_bwd_probe.py "f",
    # h100-2026-12-06-d/probes). The launcher falls back to the second launch where it cannot use it.
    fused_sum: bool = False
    # Resident, single-stage, not re-read only: the next row tile's x, dy, mean and rstd are loaded (into registers)
    # before this tile's reductions, so that with one program per SM a tile's loads are in flight while the previous
    # tile computes (the CuTeDSL backward's BwdConfig.prefetch, done by hand: Triton's own pipelining, ``stages``,
    # goes through shared memory).
    prefetch: bool = False

    def __post_init__(self):
        if self.fused_sum and self.chunked:
            raise ValueError(f"fused_sum is for the resident backward only, not the chunked one: {self}")
        if self.prefetch and (self.chunked or self.reread or self.stages > 1):
            raise ValueError(f"prefetch is for the resident backward without reread or stages: {self}")


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


# Host-side integer helpers. triton.cdiv / triton.next_power_of_2 are constexpr functions in recent Triton: callable
# from Python, but through a wrapper that costs microseconds per call on the launch path.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


# Ladders measured on an H100 (docs/perf-notes.md; candidates as in vibe_kernels.layernorm.tune): for rows of up to
# `max_n` elements (bf16/fp16), the config that came closest to a same-size copy. fp32 rows take the entry for 2N.
_FWD_LADDER = (
    # max_n, block_m, block_n (None: whole padded row), num_warps, chunked, programs_per_sm (chunked; 0: a row each)
    (256, 8, None, 2, False, 0),
    (512, 8, None, 4, False, 0),
    (1024, 4, None, 8, False, 0),
    (2048, 2, None, 8, False, 0),
    (4096, 2, None, 8, False, 0),
    (8192, 4, None, 16, False, 0),
    (16384, 1, 8192, 8, True, 0),  # 8 warps: 86% / 93% of copy at 4096 / 32768 rows (16 warps: 84% / 89%), tuner
    (32768, 1, 4096, 16, True, 0),
    # With L2 hints (below), H100, 2026-11-25, sixth session, % of a copy: 65536 84 -> 85% (16384-wide chunks);
    # 131072 68 -> 70% and 262144 65 -> 66% against one 32-warp program per SM / four (the previous rows).
    (65536, 1, 8192, 32, True, 0),
    (None, 1, 8192, 8, True, 0),
)
# Backward stages / reread (H100, 2026-11-25, seventh session, benchmarks/results/h100-2026-11-25-g/probes, % of the
# add, stages 1 -> 3): 32768 x 512 70-72 -> 75%, x 1024 76-79 -> 85%, x 2048 81-82 -> 90%, x 4096 85 -> 91%, x 8192
# 83 -> 94%; 4096x4096 fp16 66-68 -> 72%, 4096x8192 fp16 76-79 -> 88%, 4095x5000 fp16 60-63 -> 73%; 4 stages within a
# point of 3 or below it; 32768 x 256 61-62% either way (1 kept). N = 16384 (x and dy re-read, 16 warps): 60 / 64%
# (4096 / 32768 rows) unpipelined, 77 / 78% with 2 stages, against 56 / 59% for the chunked path.
# One program per SM of twice the rows and warps, pipelined (H100, 2026-11-25, eighth session,
# benchmarks/results/h100-2026-11-25-h/probes/triton-bwd-{4096,buckets}.txt, % of the add, two runs): 4096 x 4096
# fp16 70 -> 83-85%, 8192 x 4096 81 -> 88-90%, 32768 x 4096 91 -> 94%; 32768 x 2048 89 -> 93%, 4096 x 2048 fp16 70 ->
# 80-83%; 32768 x 1024 85 -> 87%, 4096 x 1024 fp16 60 -> 68%. (The tuner found the 4096 tile first: 71 -> 83%.)
_BWD_LADDER = (
    # max_n, block_m, block_n (None: whole padded row), num_warps, chunked, programs_per_sm, stages, reread
    (256, 32, None, 16, False, 1, 1, False),  # tuner: 62% of the add, as 8 rows x 4 warps x 4 per SM, 1/4 the workspace
    (512, 8, None, 4, False, 2, 3, False),
    (1024, 8, None, 8, False, 1, 3, False),
    (2048, 4, None, 8, False, 1, 3, False),
    (4096, 2, None, 8, False, 1, 3, False),
    (8192, 1, None, 16, False, 1, 3, False),
    (16384, 1, None, 16, False, 1, 2, True),
    (None, 2, 1024, 4, True, 4, 1, False),
)


def _ladder_row(ladder, hidden: int, dtype: torch.dtype):
    effective = hidden * 2 if dtype == torch.float32 else hidden
    for row in ladder:
        if row[0] is None or effective <= row[0]:
            return row
    raise AssertionError("ladders end with a catch-all row")


# fp16/bf16 rows of (4096, 8192] elements stream in chunks instead of the resident tile (tuner, 2026-11-25, H100:
# 4096x8192 92% / 32768x8192 99% of copy against 86% / 94% for 4 rows x 16 warps; 4095x5000 93% with 1024-element
# chunks against 80% for the best head + tail tile). fp32 rows of the same bytes keep their ladder entry (not
# re-measured).
FWD_STREAMED_16BIT = (4096, 8192)
# Within that range, rows of [6144, 8192] elements (more rows than one wave, no residual, out in x's dtype) stream
# in blocks of two rows of 8192 columns, 8 warps, instead of one row in 4096-element chunks (triton_fwd_probe.py,
# H100, % of a copy): 4096x8192 fp16 93 -> 96%, bf16 92 -> 95% (2026-12-06, thirteenth session,
# benchmarks/results/h100-2026-12-06-e/probes/triton-fwd-rows-narrow.txt; 16 warps: 67-68%, one resident row of
# 4-16 warps: 79-83%); bf16 8192 / 16384 / 32768 rows of 8192: 95 / 97 / 99 -> 97 / 99 / 101%, 4096x6144 fp16 78 ->
# 93%, 4096x7680 fp16 88 -> 94% (2026-12-07, fourteenth session, benchmarks/results/h100-2026-12-07-f/probes/
# triton-fwd-8192-rows.txt, three samples each). Rows of (4096, 6144) keep 1024-element chunks (4095x5000: 96% in
# the bench). Rows between one wave and 4096 are unmeasured.
# With a fused residual, fp16/bf16 rows of (8192, 16384] elements stay resident (one row a program, 16 warps) instead
# of the ladder's 8192-element chunks, whose second pass re-reads the h the first pass wrote (probe, H100,
# 2026-11-25, fourth session, benchmarks/results/h100-2026-11-25-d/probes/triton-residual-probe.txt, 4096x16384
# fp16, % of the variant's SOL: RMSNorm + residual 77 -> 100%, LayerNorm + residual 95 -> 99%).
FWD_RESIDUAL_RESIDENT_16BIT = 16384
# fp16/bf16 rows of (8192, 16384] elements (no residual, more rows than one wave) stream in blocks of two rows, each
# weight/bias chunk loaded once for both, 16 warps, instead of one row and 8 warps (triton_fwd_probe.py, H100,
# 2026-12-06, eleventh session, benchmarks/results/h100-2026-12-06-c/probes/triton-fwd-rows.txt, % of a copy):
# 4096x16384 88 -> 91%, 32768x16384 94 -> 95%. Wider rows measured slower in row blocks (32768 x 32768 / 65536: 90 /
# 85 -> 89 / 76%; 131072, 262144: 70 / 66 -> 67 / 65% at best), and blocks of four rows slower everywhere.
FWD_ROW_BLOCK_16BIT = (8192, 16384)
# Rows of (16384, 32768] (same conditions) stream in those two-row blocks with each row's first 8192 columns held in
# registers through both passes (FwdConfig.held_chunks): only three quarters of a 32768-wide row is read twice.
# Measured (triton_fwd_probe.py, H100, 2026-12-07, sixteenth session, h100-2026-12-07-g/probes-f/
# triton-fwd-held-16k-32k.txt, two samples, % of a copy): 32768x32768 bf16 84 / 84 (the default then: one row a
# program in 4096-element chunks; 90% in the fourteenth session's bench) -> 94 / 94; one 4096 chunk held in the
# one-row config 90 / 91, two or four 62-71. At 16384 columns holding lost (32768x16384 94 -> 77%).
FWD_HELD_16BIT = (16384, 32768)
# fp32 out from fp16/bf16 x (wide_out), no residual, more rows than one wave: rows of (4096, 8192] take the plain
# rows' two-row 8192-element blocks (1024-element chunks where 4096 would leave most of a chunk idle, as there), and
# rows of (8192, 16384] two-row blocks of 4096-element chunks with the first chunk held in registers, instead of one
# row a program in 4096- / 8192-element chunks. Measured (triton_residual_probe.py --out-dtype float32
# --two-row-and-held, H100, 2026-12-07, eighteenth session, h100-2026-12-07-i/triton-fwd-out-fp32.txt, one sample, %
# of the variant's SOL): 4096x8192 bf16 93 -> 95%, 4096x16384 bf16 90 -> 93% (two held chunks 92%, one-row held 91%).
# With out wider than x (fp16/bf16 in, fp32 out), two things measured the other way round (triton_residual_probe.py
# --out-dtype float32, same run, triton-out-fp32.txt, % of the same-bytes SOL; no residual): resident rows load weight
# and bias with the rows (affine_first: 4096x4096 bf16 -> fp32 96 -> 105-106%), and (8192, 16384] keeps one row a
# program of 8 warps instead of FWD_ROW_BLOCK_16BIT's two-row blocks (4096x16384 87 -> 90%). Measured at those two
# shapes only.

# Weight and bias at the tile's own offsets (FwdConfig.affine_tile) in the resident forward, where every given one is
# fp32 with 16-bit x (fwd_config's wide_affine), for whole padded rows of at most this many rows a program (and
# one-wave launches). Found on the CPU (twenty-fourth session, sm_90 PTX and ptxas, the same with Triton 3.6 (the GPU
# machine's) and 3.9, bf16 x, fp32 weight and bias, one-row load -> tile offsets): the one-row loads got a layout of
# their own and went through shared memory in every program. At 4096, 2 rows x 8 warps: 16 -> 8 bar.sync (Triton
# 3.6), 8 KB -> 64 B of shared memory, 80 -> 64 registers (three CTAs an SM -> four); 2048 x 2: 12 -> 8 bar.sync, 8
# KB -> 64 B; one wave (a row a program) at 2048 / 4096 / 8192: 12-16 -> 8 bar.sync, 8-16 KB -> 32-64 B. The price
# is one load (an L1 hit) of each weight / bias element per row of the tile: 4 -> 8 loads a thread at 4096 x 2 rows,
# 6 -> 20 at 256 x 8 rows, hence the bound. Nothing to gain, so not taken: with a 16-bit weight or bias (their
# layout is x's, or the compiler already matched it: bf16 weight + fp32 bias at 4096 has 8 bar.sync and 64 B either
# way), with fp32 x, and for head + tail rows (one wave at 3000 / 5000: 21 -> 25 / 29 bar.sync; 6000: 29 -> 17).
# Timed (triton_fwd_probe.py, H100, 2026-12-07, twenty-fourth session, h100-2026-12-07-p/probes-t/triton-fwd-4096.txt,
# three samples each, one-row load -> tile offsets, ms): 32768x4096 bf16 0.1877 -> 0.1855 (Liger 0.1821 in the
# benches; the API without statistics 0.1843), 8192x4096 0.0523 -> 0.0514, 4096x4096 fp16 0.0295 -> 0.0286; one
# row a program of 8 warps at 32768x4096 0.2070 -> 0.1882. One wave: 128x4096 0.0063 -> 0.0060, 1x4096 0.0054 ->
# 0.0051, 128x8192 0.0075 -> 0.0070. (Without the L2 hints the tile path read 0.1836 / 0.0509 at 32768 / 8192 rows but
# 0.0293 at 4096² fp16: left as they are.)
AFFINE_TILE_MAX_ROWS = 2

# L2 eviction hints (FwdConfig.l2_hints / BwdConfig.l2_hints) where they measured faster (H100, 2026-11-25, sixth
# session, benchmarks/results/h100-2026-11-25-f/probes, % of a copy / an add). Forward, chunked rows (statistics pass
# evict_last, normalizing pass evict_first): 4096x8192 fp16 91 -> 93%, 4096x16384 fp16 86 -> 89%, 32768x16384 92 ->
# 94%, 32768x32768 88 -> 90%, 4095x5000 86 -> 88%, bf16 -> fp32 out 4096x16384 88 -> 90%; forward, 16-bit resident
# rows (read once: evict_first): 32768x256 94 -> 98%, 32768x1024 96 -> 98%, 4096x4096 90 -> 94%, 32768x4096 98 ->
# 97%; fp32 resident 8192x8192 99 -> 97-98% (so not there). Backward, 16-bit resident rows (three runs each):
# 32768x1024 76 -> 78%, 4096x4096 67 -> 69%, 4096x8192 fp16 76 -> 79%, 4095x5000 59 -> 64%, 32768x4096 / 8192 85
# -> 85 / 84%; not for fp32 (95 -> 93%) nor the chunked backward (32768x16384 59 -> 57%, 32768x32768 58 -> 51%).
# Not at small M (one wave of forward programs; a backward of at most WEIGHT_GRADS_FROM_ROWS_MAX_ROWS rows): the
# bench with hints there measured 128x4096 forward 88 -> 85% and fwd+bwd 74 -> 71% against the previous session.
# Not in the forward with a fused residual: the feature bench with hints (h100-2026-11-25-f/features) measured the
# Triton residual forward 2-6 points below the fourth session's (LayerNorm + residual 4096x16384 98 -> 92%,
# RMSNorm + residual 99-100 -> 96-98%).
def _fwd_l2_hints(config: FwdConfig, dtype: torch.dtype, one_wave: bool, residual: bool) -> bool:
    return (config.chunked or dtype != torch.float32) and not one_wave and not residual


def _bwd_l2_hints(config: BwdConfig, dtype: torch.dtype, few_rows: bool) -> bool:
    return not config.chunked and dtype != torch.float32 and not few_rows


# Opt-in tuned configs (python -m vibe_kernels.layernorm.tune): {("fwd"|"bwd", hidden, dtype name): config}. They
# override the ladders for exactly those (N, dtype); loaded by load_tuned_configs() or, at import, from the JSON file
# named by $VIBE_KERNELS_TRITON_CONFIGS.
_TUNED: dict = {}
TUNED_CONFIGS_ENV = "VIBE_KERNELS_TRITON_CONFIGS"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def save_tuned_configs(path: str, configs: dict) -> None:
    """Writes {("fwd"|"bwd", hidden, dtype name): FwdConfig | BwdConfig} as JSON (the tuner's output format)."""
    entries = [{"kind": kind, "hidden": hidden, "dtype": dtype, "config": asdict(cfg)}
               for (kind, hidden, dtype), cfg in sorted(configs.items())]
    with open(path, "w") as f:
        json.dump({"format": "vibe_kernels.triton_configs/1", "configs": entries}, f, indent=1)


def load_tuned_configs(path: str) -> int:
    """Makes the configs in ``path`` (written by the tuner) override the heuristic for their (N, dtype); returns how
    many were loaded. Raises ValueError on a file that is not in the tuner's format."""
    with open(path) as f:
        document = json.load(f)
    if not isinstance(document, dict) or document.get("format") != "vibe_kernels.triton_configs/1":
        raise ValueError(f"{path} is not a vibe_kernels Triton config file (format vibe_kernels.triton_configs/1)")
    loaded = {}
    for entry in document["configs"]:
        cls = {"fwd": FwdConfig, "bwd": BwdConfig}[entry["kind"]]
        loaded[(entry["kind"], int(entry["hidden"]), entry["dtype"])] = cls(**entry["config"])
    _TUNED.update(loaded)
    fwd_config.cache_clear()
    _fwd_plans.clear()
    repeat_fwd_plans.clear()  # the API's repeat-call launchers hold the old configs' kernels and grids
    bwd_config.cache_clear()
    return len(loaded)


@functools.lru_cache(maxsize=1024)
def fwd_config(hidden: int, dtype: torch.dtype, residual: bool = False, one_wave: bool = False,
               wide_out: bool = False, wide_affine: bool = False) -> FwdConfig:
    """Forward config for rows of ``hidden`` elements of ``dtype``, from the measured ladder (or the tuned configs).

    one_wave: the rows are few enough for one program each, all at once (M at most the SM count). Latency then
    sets the time, not bandwidth: weight and bias load with the rows (``affine_first``) instead of after the
    statistics, and 16-bit rows of (4096, 8192] stay resident instead of streaming in two passes. Measured (H100,
    2026-11-25, fifth session, triton_residual_probe.py --out-dtype bfloat16, % of a copy): 1x1024 78 -> 86%,
    1x4096 72 -> 80%, 128x4096 78 -> 84%, 1x8192 56 -> 71%, 128x8192 74 -> 85%; at 4096x4096 and 32768x1024,
    weight/bias first moved 93 -> 94% and 97 -> 98% (not adopted there). L2 eviction hints where they measured
    faster (``_fwd_l2_hints``); residual: the config for a forward with a fused residual. wide_out: out's elements
    are wider than x's (fp32 out from fp16/bf16 x). wide_affine: weight and bias (those given) have wider elements
    than x (fp32 with fp16/bf16 x, as under autocast): resident configs of whole padded rows (no tail) with at most
    ``AFFINE_TILE_MAX_ROWS`` rows a program, or of one wave (narrowed to a row a program by the launcher), load them
    at the tile's offsets (``FwdConfig.affine_tile``; see AFFINE_TILE_MAX_ROWS).

    >>> fwd_config(256, torch.bfloat16)
    FwdConfig(block_m=8, block_n=256, num_warps=2, chunked=False, tail_n=0, programs_per_sm=0, affine_first=False, \
affine_tile=False, l2_hints=True, held_chunks=0)
    >>> fwd_config(5000, torch.float16)
    FwdConfig(block_m=1, block_n=1024, num_warps=4, chunked=True, tail_n=0, programs_per_sm=0, affine_first=False, \
affine_tile=False, l2_hints=True, held_chunks=0)
    >>> fwd_config(8192, torch.bfloat16)
    FwdConfig(block_m=2, block_n=8192, num_warps=8, chunked=True, tail_n=0, programs_per_sm=0, affine_first=False, \
affine_tile=False, l2_hints=True, held_chunks=0)
    >>> fwd_config(16384, torch.bfloat16)
    FwdConfig(block_m=2, block_n=8192, num_warps=16, chunked=True, tail_n=0, programs_per_sm=0, affine_first=False, \
affine_tile=False, l2_hints=True, held_chunks=0)
    >>> fwd_config(16384, torch.float16, residual=True)
    FwdConfig(block_m=1, block_n=16384, num_warps=16, chunked=False, tail_n=0, programs_per_sm=0, affine_first=False, \
affine_tile=False, l2_hints=False, held_chunks=0)
    >>> fwd_config(8192, torch.bfloat16, one_wave=True)
    FwdConfig(block_m=4, block_n=8192, num_warps=16, chunked=False, tail_n=0, programs_per_sm=0, affine_first=True, \
affine_tile=False, l2_hints=False, held_chunks=0)
    >>> fwd_config(8192, torch.bfloat16, wide_out=True)
    FwdConfig(block_m=2, block_n=8192, num_warps=8, chunked=True, tail_n=0, programs_per_sm=0, affine_first=False, \
affine_tile=False, l2_hints=True, held_chunks=0)
    >>> fwd_config(4096, torch.bfloat16, wide_out=True).affine_first, fwd_config(16384, torch.bfloat16, wide_out=True)
    (True, FwdConfig(block_m=2, block_n=4096, num_warps=8, chunked=True, tail_n=0, programs_per_sm=0, \
affine_first=False, affine_tile=False, l2_hints=True, held_chunks=1))
    >>> [fwd_config(n, torch.bfloat16, wide_affine=True).affine_tile for n in (1024, 4096, 16384)]
    [False, True, False]
    >>> fwd_config(1024, torch.bfloat16, one_wave=True, wide_affine=True).affine_tile
    True
    """
    tuned = _TUNED.get(("fwd", hidden, _dtype_name(dtype)))
    if tuned is not None:
        return tuned
    config = _ladder_fwd_config(hidden, dtype, residual, streamed=not one_wave, wide_out=wide_out)
    if (one_wave or (wide_out and not residual)) and not config.chunked:
        config = dataclasses.replace(config, affine_first=True)
    whole_rows = not config.chunked and config.tail_n == 0
    if wide_affine and whole_rows and (config.block_m <= AFFINE_TILE_MAX_ROWS or one_wave):
        config = dataclasses.replace(config, affine_tile=True)
    return dataclasses.replace(config, l2_hints=_fwd_l2_hints(config, dtype, one_wave, residual))


def _ladder_fwd_config(hidden: int, dtype: torch.dtype, residual: bool, streamed: bool,
                       wide_out: bool = False) -> FwdConfig:
    streamed_16bit = streamed and dtype != torch.float32 and not residual
    row_blocks = streamed_16bit and not wide_out
    if streamed_16bit and wide_out and FWD_ROW_BLOCK_16BIT[0] < hidden <= FWD_ROW_BLOCK_16BIT[1]:
        # fp32 out from 16-bit x (the comment below FWD_HELD_16BIT): two rows a program in 4096-element chunks, the
        # first held in registers through both passes.
        return FwdConfig(block_m=2, block_n=4096, num_warps=8, chunked=True, held_chunks=1)
    if streamed_16bit and FWD_STREAMED_16BIT[0] < hidden <= FWD_STREAMED_16BIT[1]:
        # One row per program in two passes over 1024-element chunks (the second from L1/L2) where 4096-element ones
        # would leave most of the last chunk idle (N = 5000); else two rows a program in one 8192-element chunk
        # (FWD_STREAMED_16BIT's comment; for fp32 out, the comment below FWD_HELD_16BIT). Not with a residual: both
        # passes would read x and r (measured resident there, 94-95% at 4096x8192).
        if -hidden % 4096 > 2048:
            return FwdConfig(block_m=1, block_n=1024, num_warps=4, chunked=True)
        return FwdConfig(block_m=2, block_n=8192, num_warps=8, chunked=True)
    if dtype != torch.float32 and residual and FWD_STREAMED_16BIT[1] < hidden <= FWD_RESIDUAL_RESIDENT_16BIT:
        return FwdConfig(block_m=1, block_n=_next_power_of_2(hidden), num_warps=16, chunked=False)
    if row_blocks and FWD_ROW_BLOCK_16BIT[0] < hidden <= FWD_ROW_BLOCK_16BIT[1]:
        return FwdConfig(block_m=2, block_n=8192, num_warps=16, chunked=True)
    if row_blocks and FWD_HELD_16BIT[0] < hidden <= FWD_HELD_16BIT[1]:
        return FwdConfig(block_m=2, block_n=8192, num_warps=16, chunked=True, held_chunks=1)
    _, block_m, block_n, num_warps, chunked, programs_per_sm = _ladder_row(_FWD_LADDER, hidden, dtype)
    padded = _next_power_of_2(hidden)
    if not chunked or padded <= block_n:
        # A whole row per program step; wide fp32 rows land here with the 2x-N entry.
        head = padded // 2
        tail = _next_power_of_2(hidden - head) if hidden > head else 0
        if hidden >= 1024 and head + tail < padded:  # > 25% padding: hold a head + tail instead (N = 5000: 4096 + 1024)
            _, block_m, _, num_warps, _, _ = _ladder_row(_FWD_LADDER, head, dtype)
            return FwdConfig(block_m=block_m, block_n=head, num_warps=num_warps, chunked=False, tail_n=tail)
        return FwdConfig(block_m=block_m, block_n=padded, num_warps=num_warps, chunked=False)
    return FwdConfig(block_m=1, block_n=block_n, num_warps=num_warps, chunked=True, programs_per_sm=programs_per_sm)


@functools.lru_cache(maxsize=1024)
def bwd_config(hidden: int, dtype: torch.dtype, few_rows: bool = False) -> BwdConfig:
    """Backward config, from the measured ladder. few_rows: at most WEIGHT_GRADS_FROM_ROWS_MAX_ROWS rows (no L2
    eviction hints).

    >>> config = bwd_config(1024, torch.bfloat16)
    >>> config.block_m, config.num_warps, config.programs_per_sm, config.stages, config.reread, config.l2_hints
    (8, 8, 1, 3, False, True)
    """
    tuned = _TUNED.get(("bwd", hidden, _dtype_name(dtype)))
    if tuned is not None:
        return tuned
    _, block_m, block_n, num_warps, chunked, programs_per_sm, stages, reread = _ladder_row(_BWD_LADDER, hidden, dtype)
    padded = _next_power_of_2(hidden)
    if reread and dtype == torch.float32:
        # fp32 rows of (4096, 8192] elements: one row of 16 warps a program, held in registers (H100, 2026-11-25,
        # seventh session, 8192x8192: 95% of the add; 75-81% re-read; 94% with 3 stages).
        config = BwdConfig(1, padded, 16, False, 1)
    elif not chunked:
        config = BwdConfig(block_m, padded, num_warps, False, programs_per_sm, reread=reread, stages=stages)
    else:
        config = BwdConfig(block_m, block_n, num_warps, True, programs_per_sm)
    return dataclasses.replace(config, l2_hints=_bwd_l2_hints(config, dtype, few_rows))


if os.environ.get(TUNED_CONFIGS_ENV):
    load_tuned_configs(os.environ[TUNED_CONFIGS_ENV])


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _rows_per_program(block_m: int, rows: int, slots: int) -> int:
    """The config's rows per program, halved while that leaves fewer programs than SMs: at small M (128 rows of
    8192) four rows a program would keep only 32 of 132 SMs busy, and latency, not bandwidth, sets the time."""
    while block_m > 1 and _cdiv(rows, block_m) < slots:
        block_m //= 2
    return block_m


def _row_align(*strides) -> int:
    """The largest power of two (at most 16) that divides every given row stride (None: not passed), in elements:
    the kernels' ROW_ALIGN. With 16-byte aligned base pointers, rows then start on 16-byte boundaries wherever
    ROW_ALIGN elements are 16 bytes or more."""
    common = 0
    for stride in strides:
        if stride is not None:
            common = math.gcd(common, stride)
    return min(16, common & -common) if common else 16


def _program_slots(device: torch.device) -> int:
    # Under the interpreter (CPU tensors) a handful of programs still exercises the persistent loops.
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else 4


# ----------------------------------------------------------------------------------------------------------------
# Forward kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _aligned_stride(stride, ROW_ALIGN: tl.constexpr):
    """A row stride declared a multiple of ROW_ALIGN elements (the launcher checked it: ``_row_align``). Triton
    only knows a stride's divisibility by 16; a row of 5000 fp16 (10000 bytes) still starts 16-byte aligned, and
    without this hint its rows would be read and written 2 bytes at a time instead of 16."""
    if ROW_ALIGN > 1:
        stride = tl.multiple_of(stride.to(tl.int64), ROW_ALIGN)
    return stride


@triton.jit
def _load_row_input(x_ptrs, r_ptrs, h_ptrs, mask,
                    HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr, RESIDUAL_IN_FP32: tl.constexpr,
                    EVICTION: tl.constexpr):
    """The rows to normalize, in fp32: x, or with a residual h = x + r, rounded to x's dtype unless
    RESIDUAL_IN_FP32 (so h is exactly what an unfused ``x + r`` in x's dtype would give), and stored through
    ``h_ptrs`` when STORE_RESIDUAL. Lanes outside ``mask`` are 0. ``r_ptrs``/``h_ptrs`` are None when unused.
    EVICTION: the loads' L2 eviction policy ("", "evict_first", "evict_last")."""
    x = tl.load(x_ptrs, mask=mask, other=0.0, eviction_policy=EVICTION).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(r_ptrs, mask=mask, other=0.0, eviction_policy=EVICTION).to(tl.float32)
        if not RESIDUAL_IN_FP32:
            x = x.to(x_ptrs.dtype.element_ty).to(tl.float32)
        if STORE_RESIDUAL:
            tl.store(h_ptrs, x.to(h_ptrs.dtype.element_ty), mask=mask)
    return x


@triton.jit
def _load_affine(P, cols, N: tl.constexpr, EVICTION: tl.constexpr):
    """A weight or bias at ``cols`` in fp32 (0 past N), loaded with the L2 eviction policy EVICTION."""
    return tl.load(P + cols, mask=cols < N, other=0.0, eviction_policy=EVICTION).to(tl.float32)


@triton.jit
def _affine_offsets(cols, BLOCK_M: tl.constexpr, AFFINE_TILE: tl.constexpr):
    """The offsets the resident forward loads weight and bias at, for its columns ``cols`` ([n]): the tile's
    [BLOCK_M, n] with AFFINE_TILE, else the one row."""
    if AFFINE_TILE:
        offsets = tl.broadcast_to(cols[None, :], (BLOCK_M, cols.shape[0]))
    else:
        offsets = cols
    return offsets


@triton.jit
def _as_tile(affine, AFFINE_TILE: tl.constexpr):
    """A weight or bias loaded by the resident forward, ready to combine with its [BLOCK_M, n] tile: as loaded
    with AFFINE_TILE (already at the tile's offsets), else its one row expanded to [1, n]."""
    if AFFINE_TILE:
        tile = affine
    else:
        tile = affine[None, :]
    return tile


@triton.jit
def _layernorm_fwd_resident_kernel(
    X, Y, W, B, Mean, Rstd, R, H,
    stride_x_row, stride_y_row, stride_r_row, stride_h_row, rows, eps,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_MEAN: tl.constexpr, STORE_RSTD: tl.constexpr,
    IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr, RESIDUAL_IN_FP32: tl.constexpr,
    ROW_ALIGN: tl.constexpr, AFFINE_FIRST: tl.constexpr = False, L2_HINTS: tl.constexpr = False,
    AFFINE_TILE: tl.constexpr = False,
):
    """BLOCK_M whole rows per program. Rows far from a power of two (N = 5000) are held as a BLOCK_N head plus a
    TAIL_N tail instead of one padded 8192-wide tile, so fewer lanes sit idle.

    AFFINE_FIRST: load the weight and bias with the rows, before the statistics (their latency then overlaps the
    row's; they stay in registers meanwhile) instead of after them. AFFINE_TILE: load them at the tile's
    [BLOCK_M, BLOCK_N] offsets (``FwdConfig.affine_tile``) instead of as one row expanded to the tile.

    L2_HINTS: the rows (read once) load evict_first, the weight and bias (read by every program) evict_last.

    IS_RMS: RMSNorm (no centering, no mean). HAS_RESIDUAL: normalize h = x + R (see _load_row_input), written to H
    when STORE_RESIDUAL. The output's dtype is Y's."""
    stride_x_row = _aligned_stride(stride_x_row, ROW_ALIGN)
    stride_y_row = _aligned_stride(stride_y_row, ROW_ALIGN)
    if HAS_RESIDUAL:
        stride_r_row = _aligned_stride(stride_r_row, ROW_ALIGN)
    if STORE_RESIDUAL:
        stride_h_row = _aligned_stride(stride_h_row, ROW_ALIGN)
    ROW_EVICTION: tl.constexpr = "evict_first" if L2_HINTS else ""
    AFFINE_EVICTION: tl.constexpr = "evict_last" if L2_HINTS else ""
    row_idx = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = row_idx < rows
    row_off = row_idx.to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_N)
    mask = row_ok[:, None] & (cols < N)[None, :]
    x = _load_row_input(
        X + row_off * stride_x_row + cols[None, :],
        R + row_off * stride_r_row + cols[None, :] if HAS_RESIDUAL else None,
        H + row_off * stride_h_row + cols[None, :] if STORE_RESIDUAL else None,
        mask, HAS_RESIDUAL, STORE_RESIDUAL, RESIDUAL_IN_FP32, ROW_EVICTION,
    )
    affine_cols = _affine_offsets(cols, BLOCK_M, AFFINE_TILE)
    if AFFINE_FIRST:
        if HAS_W:
            w = _load_affine(W, affine_cols, N, AFFINE_EVICTION)
        if HAS_B:
            b = _load_affine(B, affine_cols, N, AFFINE_EVICTION)
    if not IS_RMS:
        row_sum = tl.sum(x, axis=1)
    if TAIL_N > 0:
        tail_cols = BLOCK_N + tl.arange(0, TAIL_N)
        tail_mask = row_ok[:, None] & (tail_cols < N)[None, :]
        x_tail = _load_row_input(
            X + row_off * stride_x_row + tail_cols[None, :],
            R + row_off * stride_r_row + tail_cols[None, :] if HAS_RESIDUAL else None,
            H + row_off * stride_h_row + tail_cols[None, :] if STORE_RESIDUAL else None,
            tail_mask, HAS_RESIDUAL, STORE_RESIDUAL, RESIDUAL_IN_FP32, ROW_EVICTION,
        )
        if not IS_RMS:
            row_sum += tl.sum(x_tail, axis=1)
    if IS_RMS:
        # Mean of squares; padded lanes hold 0 and add nothing.
        sq_sum = tl.sum(x * x, axis=1)
        if TAIL_N > 0:
            sq_sum += tl.sum(x_tail * x_tail, axis=1)
            centered_tail = x_tail
        rstd = tl.math.rsqrt(sq_sum / N + eps)
        centered = x
    else:
        # Corrected two-pass statistics: the fp32 mean of rows with a large common offset (1000 + noise) is a few
        # ulps off, which would add (error)^2 to the variance; the mean of the centered row measures that error
        # exactly enough to remove it from both the mean and the variance.
        mean = row_sum / N
        centered = x - mean[:, None]
        if BLOCK_N > N:  # padded lanes must not add (0 - mean)^2 to the variance
            centered = tl.where(mask, centered, 0.0)
        centered_sum = tl.sum(centered, axis=1)
        sq_sum = tl.sum(centered * centered, axis=1)
        if TAIL_N > 0:
            centered_tail = tl.where(tail_mask, x_tail - mean[:, None], 0.0)
            centered_sum += tl.sum(centered_tail, axis=1)
            sq_sum += tl.sum(centered_tail * centered_tail, axis=1)
        correction = centered_sum / N
        mean += correction
        rstd = tl.math.rsqrt(sq_sum / N - correction * correction + eps)
        centered = centered - correction[:, None]
        if BLOCK_N > N:
            centered = tl.where(mask, centered, 0.0)
        if TAIL_N > 0:
            centered_tail = centered_tail - correction[:, None]
    y = centered * rstd[:, None]
    if HAS_W:
        if not AFFINE_FIRST:
            w = _load_affine(W, affine_cols, N, AFFINE_EVICTION)
        y = y * _as_tile(w, AFFINE_TILE)
    if HAS_B:
        if not AFFINE_FIRST:
            b = _load_affine(B, affine_cols, N, AFFINE_EVICTION)
        y = y + _as_tile(b, AFFINE_TILE)
    tl.store(Y + row_off * stride_y_row + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    if TAIL_N > 0:
        y_tail = centered_tail * rstd[:, None]
        affine_tail_cols = _affine_offsets(tail_cols, BLOCK_M, AFFINE_TILE)
        if HAS_W:
            y_tail = y_tail * _as_tile(_load_affine(W, affine_tail_cols, N, AFFINE_EVICTION), AFFINE_TILE)
        if HAS_B:
            y_tail = y_tail + _as_tile(_load_affine(B, affine_tail_cols, N, AFFINE_EVICTION), AFFINE_TILE)
        tl.store(Y + row_off * stride_y_row + tail_cols[None, :], y_tail.to(Y.dtype.element_ty), mask=tail_mask)
    if STORE_MEAN:
        tl.store(Mean + row_idx, mean, mask=row_ok)
    if STORE_RSTD:
        tl.store(Rstd + row_idx, rstd, mask=row_ok)


@triton.jit
def _row_mean_var(x_rows, r_rows, row_ok, pivot, held_sum, held_sq, N: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                  RESIDUAL_IN_FP32: tl.constexpr, EVICTION: tl.constexpr, START: tl.constexpr = 0):
    """Mean and biased variance of each of a block of rows of N elements (of h = x + r with a residual), streamed in
    BLOCK_N chunks from column START; for RMSNorm (IS_RMS), 0 and the mean of squares. ``x_rows`` / ``r_rows``:
    [BLOCK_M, 1] row pointers; ``row_ok``: [BLOCK_M, 1], the rows that exist (the others read nothing). Returns
    [BLOCK_M] each. START > 0: the caller has read the columns before START (``_held_chunk``) and passes their pivot
    and sums (``held_sum`` / ``held_sq``, [BLOCK_M]); START == 0: those three are unused.

    Sums of (x - p) and (x - p)^2 with the pivot p = the mean of the row's first chunk: p is within a few standard
    deviations of the row mean, so var = E[(x-p)^2] - E[x-p]^2 cancels little, and a large common offset (1000 +
    noise) never enters the sums. From START == 0 the first chunk is read twice; the second read hits L1/L2.
    EVICTION: the loads' L2 eviction policy."""
    cols = tl.arange(0, BLOCK_N)[None, :]
    if IS_RMS:
        lane_sq = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(START, N, BLOCK_N):
            offs = start + cols
            in_row = row_ok & (offs < N)
            x = _load_row_input(x_rows + offs, r_rows + offs if HAS_RESIDUAL else None, None, in_row,
                                HAS_RESIDUAL, False, RESIDUAL_IN_FP32, EVICTION)
            lane_sq += x * x
        sum_sq = tl.sum(lane_sq, axis=1)
        if START > 0:
            sum_sq += held_sq
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        var = sum_sq / N
    else:
        if START == 0:
            FIRST_COUNT: tl.constexpr = BLOCK_N if BLOCK_N < N else N
            first = _load_row_input(x_rows + cols, r_rows + cols if HAS_RESIDUAL else None, None,
                                    row_ok & (cols < N), HAS_RESIDUAL, False, RESIDUAL_IN_FP32, EVICTION)
            pivot = tl.sum(first, axis=1) / FIRST_COUNT
        lane_sum = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        lane_sq = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(START, N, BLOCK_N):
            offs = start + cols
            in_row = row_ok & (offs < N)
            x = _load_row_input(x_rows + offs, r_rows + offs if HAS_RESIDUAL else None, None, in_row,
                                HAS_RESIDUAL, False, RESIDUAL_IN_FP32, EVICTION)
            shifted = tl.where(in_row, x - pivot[:, None], 0.0)
            lane_sum += shifted
            lane_sq += shifted * shifted
        shifted_sum = tl.sum(lane_sum, axis=1)
        sum_sq = tl.sum(lane_sq, axis=1)
        if START > 0:
            shifted_sum += held_sum
            sum_sq += held_sq
        shift_mean = shifted_sum / N
        mean = pivot + shift_mean
        var = sum_sq / N - shift_mean * shift_mean
    return mean, var


@triton.jit
def _held_chunk(x_rows, r_rows, h_rows, row_ok, offs, pivot, held_sum, held_sq, FIRST: tl.constexpr,
                X_DTYPE: tl.constexpr, IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr,
                RESIDUAL_IN_FP32: tl.constexpr, EVICTION: tl.constexpr):
    """One held chunk of the chunked forward (``offs``: [BLOCK_M, BLOCK_N], all inside the row): loaded once (h
    stored with a residual), its (x - pivot) sums added to ``held_sum`` / ``held_sq`` (RMSNorm: pivot 0); the FIRST
    chunk sets the pivot, its mean. Returns the chunk to hold, in x's dtype (exact: h is rounded to it; fp32 with
    RESIDUAL_IN_FP32; ``_unheld`` gives it back in fp32), the pivot and the two sums."""
    x = _load_row_input(x_rows + offs, r_rows + offs if HAS_RESIDUAL else None,
                        h_rows + offs if STORE_RESIDUAL else None, row_ok, HAS_RESIDUAL, STORE_RESIDUAL,
                        RESIDUAL_IN_FP32, EVICTION)
    if IS_RMS:
        held_sq += tl.sum(x * x, axis=1)
    else:
        if FIRST:
            pivot = tl.sum(x, axis=1) / x.shape[1]
        shifted = tl.where(row_ok, x - pivot[:, None], 0.0)
        held_sum += tl.sum(shifted, axis=1)
        held_sq += tl.sum(shifted * shifted, axis=1)
    if HAS_RESIDUAL and RESIDUAL_IN_FP32:
        held = x
    else:
        held = x.to(X_DTYPE)
    return held, pivot, held_sum, held_sq


@triton.jit
def _unheld(held, stride, OPAQUE_ASM: tl.constexpr):
    """A held chunk (``_held_chunk``) in fp32, for its normalizing. With OPAQUE_ASM (compiled for a GPU; the
    interpreter runs no asm) a 16-bit chunk first passes through a byte permute whose selector the compilers cannot
    know: 0x3210 (the identity) plus ``stride >> 62``, a row stride's top bits (0: strides are below 2**62; the
    row count would not do, LLVM bounds it by the row loop). Without it this conversion is the statistics' own
    conversion of the same loaded registers, the compilers merge the two and hold the fp32 values through the
    passes instead of the 16-bit ones, twice the registers."""
    if OPAQUE_ASM and held.dtype.primitive_bitwidth == 16:
        selector = tl.full(held.shape, 0x3210, tl.int16) + (stride >> 62).to(tl.int16)
        bits = tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r",
                                         [held.to(tl.int16, bitcast=True), selector], dtype=tl.int16, is_pure=True,
                                         pack=2)
        held = bits.to(held.dtype, bitcast=True)
    return held.to(tl.float32)


@triton.jit
def _normalize_chunk(x, mean, rstd, W, B, y_ptrs, offs, mask, N: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, IS_RMS: tl.constexpr, AFFINE_EVICTION: tl.constexpr):
    """Stores y = (x - mean) * rstd (x * rstd for RMSNorm), times the weight and plus the bias at ``offs``, through
    ``y_ptrs`` (x: [BLOCK_M, n] fp32; mean, rstd: [BLOCK_M]; offs: x's full [BLOCK_M, n] column offsets, so that x,
    weight / bias and y share one layout: loaded as one [1, n] row, weight / bias went through shared memory to
    meet x's layout at BLOCK_M > 1; the block's rows read the same weight / bias lines, from L1 after the first)."""
    if IS_RMS:
        y = x * rstd[:, None]
    else:
        y = (x - mean[:, None]) * rstd[:, None]
    if HAS_W:
        y = y * _load_affine(W, offs, N, AFFINE_EVICTION)
    if HAS_B:
        y = y + _load_affine(B, offs, N, AFFINE_EVICTION)
    tl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _layernorm_fwd_chunked_kernel(
    X, Y, W, B, Mean, Rstd, R, H,
    stride_x_row, stride_y_row, stride_r_row, stride_h_row, rows, eps,
    N: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_MEAN: tl.constexpr, STORE_RSTD: tl.constexpr,
    IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr, RESIDUAL_IN_FP32: tl.constexpr,
    ROW_ALIGN: tl.constexpr, L2_HINTS: tl.constexpr = False, BLOCK_M: tl.constexpr = 1,
    HELD_CHUNKS: tl.constexpr = 0, OPAQUE_ASM: tl.constexpr = False,
):
    """Row blocks pid, pid + P, ... of BLOCK_M rows: a statistics pass (_row_mean_var), then a normalizing pass that
    loads each weight/bias chunk once for the block's rows. The grid size P bounds the rows in flight, so that the
    second pass finds its rows in L2 instead of HBM. With a residual, both passes read x and r (the second from L2)
    and the second writes h.

    HELD_CHUNKS > 0: each row's first HELD_CHUNKS chunks (all inside the row) are loaded once (h written then, with
    a residual), held in registers through both passes and normalized last; the passes stream only the columns
    after them. OPAQUE_ASM: see _unheld.

    L2_HINTS: the statistics pass loads evict_last (its lines are read again), the normalizing pass evict_first
    (their last read), the weight and bias evict_last."""
    FIRST_EVICTION: tl.constexpr = "evict_last" if L2_HINTS else ""
    LAST_EVICTION: tl.constexpr = "evict_first" if L2_HINTS else ""
    stride_x_row = _aligned_stride(stride_x_row, ROW_ALIGN)
    stride_y_row = _aligned_stride(stride_y_row, ROW_ALIGN)
    if HAS_RESIDUAL:
        stride_r_row = _aligned_stride(stride_r_row, ROW_ALIGN)
    if STORE_RESIDUAL:
        stride_h_row = _aligned_stride(stride_h_row, ROW_ALIGN)
    # Column offsets as a [1, BLOCK_N] row: weight and bias then load straight into the 2D tile's layout (loaded 1D
    # and expanded, each chunk went through shared memory: 16 st/ld.shared.v4 and 16 bar.sync more in the PTX).
    cols = tl.arange(0, BLOCK_N)[None, :]
    block_rows = tl.arange(0, BLOCK_M)
    HELD_N: tl.constexpr = HELD_CHUNKS * BLOCK_N
    NUM_CHUNKS: tl.constexpr = (N - HELD_N + BLOCK_N - 1) // BLOCK_N
    for first_row in range(tl.program_id(0) * BLOCK_M, rows, tl.num_programs(0) * BLOCK_M):
        row = first_row + block_rows
        row_ok = (row < rows)[:, None]
        row64 = tl.cast(row, tl.int64)[:, None]
        x_rows = X + row64 * stride_x_row
        y_rows = Y + row64 * stride_y_row
        r_rows = R + row64 * stride_r_row if HAS_RESIDUAL else None
        h_rows = H + row64 * stride_h_row if STORE_RESIDUAL else None
        # Held chunks (HELD_CHUNKS, spelled out: Triton cannot index a list of tensors).
        pivot, held_sum, held_sq = 0.0, 0.0, 0.0  # without held chunks: unused
        if HELD_CHUNKS > 0:
            offs0 = tl.broadcast_to(cols, (BLOCK_M, BLOCK_N))
            zero = tl.zeros((BLOCK_M,), dtype=tl.float32)
            pivot, held_sum, held_sq = zero, zero, zero
            held0, pivot, held_sum, held_sq = _held_chunk(
                x_rows, r_rows, h_rows, row_ok, offs0, pivot, held_sum, held_sq, True, X.dtype.element_ty, IS_RMS,
                HAS_RESIDUAL, STORE_RESIDUAL, RESIDUAL_IN_FP32, LAST_EVICTION)
        if HELD_CHUNKS > 1:
            held1, pivot, held_sum, held_sq = _held_chunk(
                x_rows, r_rows, h_rows, row_ok, offs0 + BLOCK_N, pivot, held_sum, held_sq, False, X.dtype.element_ty,
                IS_RMS, HAS_RESIDUAL, STORE_RESIDUAL, RESIDUAL_IN_FP32, LAST_EVICTION)
        if HELD_CHUNKS > 2:
            held2, pivot, held_sum, held_sq = _held_chunk(
                x_rows, r_rows, h_rows, row_ok, offs0 + 2 * BLOCK_N, pivot, held_sum, held_sq, False,
                X.dtype.element_ty, IS_RMS, HAS_RESIDUAL, STORE_RESIDUAL, RESIDUAL_IN_FP32, LAST_EVICTION)
        if HELD_CHUNKS > 3:
            held3, pivot, held_sum, held_sq = _held_chunk(
                x_rows, r_rows, h_rows, row_ok, offs0 + 3 * BLOCK_N, pivot, held_sum, held_sq, False,
                X.dtype.element_ty, IS_RMS, HAS_RESIDUAL, STORE_RESIDUAL, RESIDUAL_IN_FP32, LAST_EVICTION)
        mean, var = _row_mean_var(x_rows, r_rows, row_ok, pivot, held_sum, held_sq, N, BLOCK_M, BLOCK_N, IS_RMS,
                                  HAS_RESIDUAL, RESIDUAL_IN_FP32, FIRST_EVICTION, HELD_N)
        rstd = tl.math.rsqrt(var + eps)
        # Reverse order: the chunks read last by the statistics pass are the likeliest to still be in L2.
        for back in range(NUM_CHUNKS):
            offs = tl.broadcast_to(HELD_N + (NUM_CHUNKS - 1 - back) * BLOCK_N + cols, (BLOCK_M, BLOCK_N))
            mask = row_ok & (offs < N)
            x = _load_row_input(x_rows + offs, r_rows + offs if HAS_RESIDUAL else None,
                                h_rows + offs if STORE_RESIDUAL else None, mask, HAS_RESIDUAL,
                                STORE_RESIDUAL, RESIDUAL_IN_FP32, LAST_EVICTION)
            _normalize_chunk(x, mean, rstd, W, B, y_rows + offs, offs, mask, N, HAS_W, HAS_B, IS_RMS, FIRST_EVICTION)
        # The held chunks last (their order does not matter: no loads).
        if HELD_CHUNKS > 3:
            _normalize_chunk(_unheld(held3, stride_x_row, OPAQUE_ASM), mean, rstd, W, B, y_rows + offs0 + 3 * BLOCK_N,
                             offs0 + 3 * BLOCK_N, row_ok, N, HAS_W, HAS_B, IS_RMS, FIRST_EVICTION)
        if HELD_CHUNKS > 2:
            _normalize_chunk(_unheld(held2, stride_x_row, OPAQUE_ASM), mean, rstd, W, B, y_rows + offs0 + 2 * BLOCK_N,
                             offs0 + 2 * BLOCK_N, row_ok, N, HAS_W, HAS_B, IS_RMS, FIRST_EVICTION)
        if HELD_CHUNKS > 1:
            _normalize_chunk(_unheld(held1, stride_x_row, OPAQUE_ASM), mean, rstd, W, B, y_rows + offs0 + BLOCK_N,
                             offs0 + BLOCK_N, row_ok, N, HAS_W, HAS_B, IS_RMS, FIRST_EVICTION)
        if HELD_CHUNKS > 0:
            _normalize_chunk(_unheld(held0, stride_x_row, OPAQUE_ASM), mean, rstd, W, B, y_rows + offs0, offs0,
                             row_ok, N, HAS_W, HAS_B, IS_RMS, FIRST_EVICTION)
        if STORE_MEAN:
            tl.store(Mean + row, mean, mask=row < rows)
        if STORE_RSTD:
            tl.store(Rstd + row, rstd, mask=row < rows)


# ----------------------------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_bwd_raw(DY, X, Mean, Rstd, stride_dy_row, stride_x_row, row_idx, row_ok, cols, col_ok,
                  IS_RMS: tl.constexpr, EVICTION: tl.constexpr):
    """A BLOCK_M x BLOCK_N tile of x and dy as stored (0 outside the rows and columns) and its rows' mean and rstd
    (RMSNorm: rstd in place of the mean, unused). EVICTION: the L2 eviction policy of the x and dy loads."""
    mask = row_ok[:, None] & col_ok[None, :]
    row_off = row_idx.to(tl.int64)[:, None]
    x = tl.load(X + row_off * stride_x_row + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICTION)
    dy = tl.load(DY + row_off * stride_dy_row + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICTION)
    if not IS_RMS:
        mean = tl.load(Mean + row_idx, mask=row_ok, other=0.0)
    rstd = tl.load(Rstd + row_idx, mask=row_ok, other=0.0)
    if IS_RMS:
        mean = rstd
    return x, dy, mean, rstd


@triton.jit
def _bwd_tile_values(x, dy, mean, rstd, w, mask, HAS_W: tl.constexpr, IS_RMS: tl.constexpr):
    """From a tile's x, dy, mean and rstd (``_load_bwd_raw``): dy, xhat = (x - mean) * rstd (x * rstd for RMSNorm)
    and g = dy * w in fp32 (xhat zero outside ``mask``), and rstd."""
    x = x.to(tl.float32)
    dy = dy.to(tl.float32)
    if IS_RMS:
        xhat = tl.where(mask, x * rstd[:, None], 0.0)
    else:
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    if HAS_W:
        g = dy * w[None, :]
    else:
        g = dy
    return dy, xhat, g, rstd


@triton.jit
def _load_bwd_tile(DY, X, Mean, Rstd, w, stride_dy_row, stride_x_row, row_idx, row_ok, cols, col_ok,
                   HAS_W: tl.constexpr, IS_RMS: tl.constexpr, EVICTION: tl.constexpr):
    """A BLOCK_M x BLOCK_N tile of dy, xhat = (x - mean) * rstd (x * rstd for RMSNorm) and g = dy * w in fp32
    (zero outside the rows and columns), and the tile's rstd. ``w`` is the tile's columns of the weight, loaded
    once by the caller. EVICTION: the L2 eviction policy of the x and dy loads."""
    x, dy, mean, rstd = _load_bwd_raw(DY, X, Mean, Rstd, stride_dy_row, stride_x_row, row_idx, row_ok, cols, col_ok,
                                      IS_RMS, EVICTION)
    return _bwd_tile_values(x, dy, mean, rstd, w, row_ok[:, None] & col_ok[None, :], HAS_W, IS_RMS)


@triton.jit
def _load_dresidual(DRES, stride_dres_row, row_idx, row_ok, cols, col_ok, HAS_DRESIDUAL: tl.constexpr,
                    EVICTION: tl.constexpr):
    """The tile of the gradient that flows into the residual output h (fp32), or None without one."""
    if HAS_DRESIDUAL:
        mask = row_ok[:, None] & col_ok[None, :]
        row_off = row_idx.to(tl.int64)[:, None]
        dres = tl.load(DRES + row_off * stride_dres_row + cols[None, :], mask=mask, other=0.0,
                       eviction_policy=EVICTION).to(tl.float32)
    else:
        dres = None
    return dres


@triton.jit
def _store_dx_accumulate(DX, DRES_IN, stride_dx_row, stride_dres_in_row, row_idx, row_ok, cols, col_ok, dy, xhat, g,
                         rstd, mean_gx, mean_g, dres, dw_acc, db_acc, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
                         IS_RMS: tl.constexpr, HAS_DRESIDUAL: tl.constexpr, STORE_DRESIDUAL_IN: tl.constexpr):
    """dx = rstd * (g - xhat * mean(g * xhat) - mean(g)) for the tile (no mean(g) term for RMSNorm), plus the
    residual output's gradient when HAS_DRESIDUAL; also written to DRES_IN (the residual input's gradient, in its
    own dtype) when STORE_DRESIDUAL_IN. dy * xhat and dy are added to the accumulators."""
    mask = row_ok[:, None] & col_ok[None, :]
    if IS_RMS:
        dx = (g - xhat * mean_gx[:, None]) * rstd[:, None]
    else:
        dx = (g - xhat * mean_gx[:, None] - mean_g[:, None]) * rstd[:, None]
    if HAS_DRESIDUAL:
        dx += dres
    row_off = row_idx.to(tl.int64)[:, None]
    tl.store(DX + row_off * stride_dx_row + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    if STORE_DRESIDUAL_IN:
        tl.store(DRES_IN + row_off * stride_dres_in_row + cols[None, :], dx.to(DRES_IN.dtype.element_ty), mask=mask)
    if NEED_DW:
        dw_acc += dy * xhat
    if NEED_DB:
        db_acc += dy
    return dw_acc, db_acc


@triton.jit
def _store_partials(DW_partial, DB_partial, slot, cols, col_ok, dw_acc, db_acc, N: tl.constexpr,
                    NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, ADD: tl.constexpr):
    """Row ``slot`` of the [rows, N] fp32 partials: the accumulators summed over their rows, stored, or added
    atomically when ADD (a row shared by two programs). Relaxed atomics: nothing in this kernel reads the row
    back before the row program's arrival (the sum over rows is the next launch, or the fused sum programs, which
    wait for the arrival's release), so no ordering fences are needed here."""
    if NEED_DW:
        if ADD:
            tl.atomic_add(DW_partial + slot * N + cols, tl.sum(dw_acc, axis=0), mask=col_ok, sem="relaxed")
        else:
            tl.store(DW_partial + slot * N + cols, tl.sum(dw_acc, axis=0), mask=col_ok)
    if NEED_DB:
        if ADD:
            tl.atomic_add(DB_partial + slot * N + cols, tl.sum(db_acc, axis=0), mask=col_ok, sem="relaxed")
        else:
            tl.store(DB_partial + slot * N + cols, tl.sum(db_acc, axis=0), mask=col_ok)


@triton.jit
def _layernorm_bwd_resident_kernel(
    DY, X, W, Mean, Rstd, DX, DW_partial, DB_partial, DRES, DRES_IN, DW, DB, Counter,
    stride_dy_row, stride_x_row, stride_dx_row, stride_dres_row, stride_dres_in_row, rows, partial_rows,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_W: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    IS_RMS: tl.constexpr, HAS_DRESIDUAL: tl.constexpr, STORE_DRESIDUAL_IN: tl.constexpr,
    ROW_ALIGN: tl.constexpr, SHARED_PARTIALS: tl.constexpr, L2_HINTS: tl.constexpr = False,
    REREAD: tl.constexpr = False, NUM_STAGES: tl.constexpr = 1, PREFETCH: tl.constexpr = False,
    COLUMN_BLOCK_M: tl.constexpr = 0, COLUMN_BLOCK_N: tl.constexpr = 0, COLUMN_DW: tl.constexpr = False,
    COLUMN_DB: tl.constexpr = False, SUM_BLOCK_P: tl.constexpr = 0, SUM_BLOCK_N: tl.constexpr = 0,
):
    """Persistent: program p handles row tiles p, p + P, ...; its dw/db partials stay in registers until the end,
    then go to partial row p. SHARED_PARTIALS (P = 2 x partial_rows at most): programs p and p + partial_rows add
    into the same zeroed row p instead, so the workspace stays one row per SM. Exactly two fp32 atomic adds onto
    0.0 give the same bits in either order (0 + a is exact and a + b = b + a), so the result stays
    deterministic. L2_HINTS: x, dy and the residual's gradient (read once) load evict_first, the weight
    evict_last.

    REREAD: x, dy and the weight are loaded twice per tile: first (evict_last) for dw/db and the row sums, then
    (evict_first, from L1/L2) for dx, so that a wide row need not stay in registers across the row reduction. Same
    arithmetic, same bits. NUM_STAGES: Triton's software pipelining of the row-tile loop (1: none).

    COLUMN_BLOCK_N > 0 (few rows, no partial rows): the last cdiv(N, COLUMN_BLOCK_N) programs of the grid compute
    dw / db (COLUMN_DW / COLUMN_DB) straight from the rows into DW / DB (``_weight_grads_columns``) while the others
    write dx: one launch instead of a dx kernel followed by a column-sum kernel.

    SUM_BLOCK_N > 0 (``BwdConfig.fused_sum``; partial rows, no column programs): the last cdiv(N, SUM_BLOCK_N)
    programs of the grid sum the partial rows into DW / DB (NEED_DW / NEED_DB), SUM_BLOCK_P x SUM_BLOCK_N tiles at a
    time (``_sum_partial_columns``), instead of a second launch (``sum_partials``). Each row program, once its
    partial rows are written, adds 1 to Counter[0] (release); each sum program waits until Counter[0] counts every
    row program (acquire), counts its departure on Counter[1], and the last to leave sets both back to 0 for the next
    launch (``_await_row_programs``). The sum programs wait only for programs of lower index, dispatched before
    them, so the grid never waits on a program that cannot start; the row programs never wait."""
    # Aligned before the branch: a variable may not change type inside one.
    stride_dy_row = _aligned_stride(stride_dy_row, ROW_ALIGN)
    stride_x_row = _aligned_stride(stride_x_row, ROW_ALIGN)
    stride_dx_row = _aligned_stride(stride_dx_row, ROW_ALIGN)
    if HAS_DRESIDUAL:
        stride_dres_row = _aligned_stride(stride_dres_row, ROW_ALIGN)
    if STORE_DRESIDUAL_IN:
        stride_dres_in_row = _aligned_stride(stride_dres_in_row, ROW_ALIGN)
    pid = tl.program_id(0)
    if COLUMN_BLOCK_N > 0:
        row_programs = tl.num_programs(0) - (N + COLUMN_BLOCK_N - 1) // COLUMN_BLOCK_N
        if pid >= row_programs:
            _weight_grads_columns(DY, X, Mean, Rstd, DW, DB, stride_dy_row, stride_x_row, rows, pid - row_programs, N,
                                  COLUMN_BLOCK_M, COLUMN_BLOCK_N, COLUMN_DW, COLUMN_DB, IS_RMS, ROW_ALIGN)
        else:
            _bwd_resident_rows(DY, X, W, Mean, Rstd, DX, DW_partial, DB_partial, DRES, DRES_IN, stride_dy_row,
                               stride_x_row, stride_dx_row, stride_dres_row, stride_dres_in_row, rows, partial_rows,
                               pid, row_programs, N, BLOCK_M, BLOCK_N, HAS_W, NEED_DW, NEED_DB, IS_RMS,
                               HAS_DRESIDUAL, STORE_DRESIDUAL_IN, SHARED_PARTIALS, L2_HINTS, REREAD, NUM_STAGES,
                               PREFETCH)
    elif SUM_BLOCK_N > 0:
        SUM_PROGRAMS: tl.constexpr = (N + SUM_BLOCK_N - 1) // SUM_BLOCK_N
        row_programs = tl.num_programs(0) - SUM_PROGRAMS
        if pid >= row_programs:
            _await_row_programs(Counter, row_programs, SUM_PROGRAMS)
            _sum_partial_columns(DW_partial, DB_partial, DW, DB, partial_rows, pid - row_programs, N, SUM_BLOCK_P,
                                 SUM_BLOCK_N, NEED_DW, NEED_DB)
        else:
            _bwd_resident_rows(DY, X, W, Mean, Rstd, DX, DW_partial, DB_partial, DRES, DRES_IN, stride_dy_row,
                               stride_x_row, stride_dx_row, stride_dres_row, stride_dres_in_row, rows, partial_rows,
                               pid, row_programs, N, BLOCK_M, BLOCK_N, HAS_W, NEED_DW, NEED_DB, IS_RMS,
                               HAS_DRESIDUAL, STORE_DRESIDUAL_IN, SHARED_PARTIALS, L2_HINTS, REREAD, NUM_STAGES,
                               PREFETCH)
            # Every thread's stores and atomic adds of the partial rows come before the barrier, and the barrier
            # before the one release add (Triton runs a scalar atomic in one thread of the program): the sum
            # programs that see the count see the rows.
            tl.debug_barrier()
            tl.atomic_add(Counter, 1, sem="release", scope="gpu")
    else:
        _bwd_resident_rows(DY, X, W, Mean, Rstd, DX, DW_partial, DB_partial, DRES, DRES_IN, stride_dy_row,
                           stride_x_row, stride_dx_row, stride_dres_row, stride_dres_in_row, rows, partial_rows, pid,
                           tl.num_programs(0), N, BLOCK_M, BLOCK_N, HAS_W, NEED_DW, NEED_DB, IS_RMS, HAS_DRESIDUAL,
                           STORE_DRESIDUAL_IN, SHARED_PARTIALS, L2_HINTS, REREAD, NUM_STAGES, PREFETCH)


@triton.jit
def _bwd_resident_rows(DY, X, W, Mean, Rstd, DX, DW_partial, DB_partial, DRES, DRES_IN, stride_dy_row, stride_x_row,
                       stride_dx_row, stride_dres_row, stride_dres_in_row, rows, partial_rows, pid, row_programs,
                       N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       HAS_W: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
                       IS_RMS: tl.constexpr, HAS_DRESIDUAL: tl.constexpr, STORE_DRESIDUAL_IN: tl.constexpr,
                       SHARED_PARTIALS: tl.constexpr, L2_HINTS: tl.constexpr, REREAD: tl.constexpr,
                       NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr = False):
    """The resident backward's row tiles pid, pid + row_programs, ... (strides already aligned): see
    _layernorm_bwd_resident_kernel. PREFETCH (not with REREAD or NUM_STAGES > 1): each iteration first loads the
    next tile's x, dy, mean and rstd (masked off past the last tile), then computes on the ones loaded by the
    iteration before."""
    ROW_EVICTION: tl.constexpr = "evict_first" if L2_HINTS else ""
    AFFINE_EVICTION: tl.constexpr = "evict_last" if L2_HINTS else ""
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if REREAD:
        w = 0.0  # loaded per tile by _bwd_tile_loop
    else:
        w = _load_affine(W, cols, N, AFFINE_EVICTION) if HAS_W else 0.0
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH:
        block_rows = tl.arange(0, BLOCK_M)
        row_idx = pid * BLOCK_M + block_rows
        x_next, dy_next, mean_next, rstd_next = _load_bwd_raw(DY, X, Mean, Rstd, stride_dy_row, stride_x_row,
                                                              row_idx, row_idx < rows, cols, col_ok, IS_RMS,
                                                              ROW_EVICTION)
        for tile in range(pid, tl.cdiv(rows, BLOCK_M), row_programs):
            row_idx = tile * BLOCK_M + block_rows
            row_ok = row_idx < rows
            x, dy, mean, rstd = x_next, dy_next, mean_next, rstd_next
            next_idx = row_idx + row_programs * BLOCK_M
            x_next, dy_next, mean_next, rstd_next = _load_bwd_raw(DY, X, Mean, Rstd, stride_dy_row, stride_x_row,
                                                                  next_idx, next_idx < rows, cols, col_ok, IS_RMS,
                                                                  ROW_EVICTION)
            dy, xhat, g, rstd = _bwd_tile_values(x, dy, mean, rstd, w, row_ok[:, None] & col_ok[None, :], HAS_W,
                                                 IS_RMS)
            mean_gx = tl.sum(g * xhat, axis=1) / N
            mean_g = None if IS_RMS else tl.sum(g, axis=1) / N
            dres = _load_dresidual(DRES, stride_dres_row, row_idx, row_ok, cols, col_ok, HAS_DRESIDUAL, ROW_EVICTION)
            dw_acc, db_acc = _store_dx_accumulate(DX, DRES_IN, stride_dx_row, stride_dres_in_row, row_idx, row_ok,
                                                  cols, col_ok, dy, xhat, g, rstd, mean_gx, mean_g, dres, dw_acc,
                                                  db_acc, NEED_DW, NEED_DB, IS_RMS, HAS_DRESIDUAL, STORE_DRESIDUAL_IN)
    else:
        dw_acc, db_acc = _bwd_tile_loop(DY, X, W, Mean, Rstd, DX, DRES, DRES_IN, stride_dy_row, stride_x_row,
                                        stride_dx_row, stride_dres_row, stride_dres_in_row, rows, pid, row_programs,
                                        w, cols, col_ok, dw_acc, db_acc, N, BLOCK_M, HAS_W, NEED_DW, NEED_DB, IS_RMS,
                                        HAS_DRESIDUAL, STORE_DRESIDUAL_IN, L2_HINTS, REREAD, NUM_STAGES)
    _store_partials(DW_partial, DB_partial, pid % partial_rows, cols, col_ok, dw_acc, db_acc, N, NEED_DW, NEED_DB,
                    SHARED_PARTIALS)


@triton.jit
def _bwd_tile_loop(DY, X, W, Mean, Rstd, DX, DRES, DRES_IN, stride_dy_row, stride_x_row, stride_dx_row,
                   stride_dres_row, stride_dres_in_row, rows, pid, row_programs, w, cols, col_ok, dw_acc, db_acc,
                   N: tl.constexpr, BLOCK_M: tl.constexpr, HAS_W: tl.constexpr, NEED_DW: tl.constexpr,
                   NEED_DB: tl.constexpr, IS_RMS: tl.constexpr, HAS_DRESIDUAL: tl.constexpr,
                   STORE_DRESIDUAL_IN: tl.constexpr, L2_HINTS: tl.constexpr, REREAD: tl.constexpr,
                   NUM_STAGES: tl.constexpr):
    """_bwd_resident_rows's row-tile loop without PREFETCH; returns the accumulators. ``w``: the weight's columns
    (unused with REREAD, which loads them per tile)."""
    ROW_EVICTION: tl.constexpr = "evict_first" if L2_HINTS else ""
    AFFINE_EVICTION: tl.constexpr = "evict_last" if L2_HINTS else ""
    # Two distinct policies also keep the compiler from merging the two loads of a REREAD tile into one.
    FIRST_EVICTION: tl.constexpr = "evict_last" if REREAD else ROW_EVICTION
    LAST_EVICTION: tl.constexpr = "evict_first" if REREAD else ROW_EVICTION
    for tile in tl.range(pid, tl.cdiv(rows, BLOCK_M), row_programs, num_stages=NUM_STAGES):
        row_idx = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = row_idx < rows
        if REREAD:
            tile_w = _load_affine(W, cols, N, AFFINE_EVICTION) if HAS_W else 0.0
        else:
            tile_w = w
        dy, xhat, g, rstd = _load_bwd_tile(DY, X, Mean, Rstd, tile_w, stride_dy_row, stride_x_row, row_idx, row_ok,
                                           cols, col_ok, HAS_W, IS_RMS, FIRST_EVICTION)
        if REREAD:
            if NEED_DW:
                dw_acc += dy * xhat
            if NEED_DB:
                db_acc += dy
        mean_gx = tl.sum(g * xhat, axis=1) / N
        mean_g = None if IS_RMS else tl.sum(g, axis=1) / N
        if REREAD:
            tile_w = _load_affine(W, cols, N, AFFINE_EVICTION) if HAS_W else 0.0
            dy, xhat, g, rstd = _load_bwd_tile(DY, X, Mean, Rstd, tile_w, stride_dy_row, stride_x_row, row_idx, row_ok,
                                               cols, col_ok, HAS_W, IS_RMS, LAST_EVICTION)
        dres = _load_dresidual(DRES, stride_dres_row, row_idx, row_ok, cols, col_ok, HAS_DRESIDUAL, ROW_EVICTION)
        dw_acc, db_acc = _store_dx_accumulate(DX, DRES_IN, stride_dx_row, stride_dres_in_row, row_idx, row_ok, cols,
                                              col_ok, dy, xhat, g, rstd, mean_gx, mean_g, dres, dw_acc, db_acc,
                                              NEED_DW and not REREAD, NEED_DB and not REREAD, IS_RMS,
                                              HAS_DRESIDUAL, STORE_DRESIDUAL_IN)
    return dw_acc, db_acc


@triton.jit
def _layernorm_bwd_row_coefs_kernel(
    DY, X, W, Mean, Rstd, MeanGX, MeanG,
    stride_dy_row, stride_x_row,
    N: tl.constexpr, BLOCK_N: tl.constexpr, HAS_W: tl.constexpr, IS_RMS: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Wide rows, step 1: per row, mean(g * xhat) and mean(g) (not for RMSNorm) with g = dy * w, streamed in
    chunks."""
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * _aligned_stride(stride_x_row, ROW_ALIGN)
    dy_row = DY + row.to(tl.int64) * _aligned_stride(stride_dy_row, ROW_ALIGN)
    if not IS_RMS:
        mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    cols = tl.arange(0, BLOCK_N)
    acc_gx = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if not IS_RMS:
        acc_g = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        in_row = offs < N
        x = tl.load(x_row + offs, mask=in_row, other=0.0).to(tl.float32)
        g = tl.load(dy_row + offs, mask=in_row, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + offs, mask=in_row, other=0.0).to(tl.float32)
        if IS_RMS:
            acc_gx += g * tl.where(in_row, x * rstd, 0.0)
        else:
            acc_gx += g * tl.where(in_row, (x - mean) * rstd, 0.0)
            acc_g += g
    tl.store(MeanGX + row, tl.sum(acc_gx, axis=0) / N)
    if not IS_RMS:
        tl.store(MeanG + row, tl.sum(acc_g, axis=0) / N)


@triton.jit
def _layernorm_bwd_tiled_kernel(
    DY, X, W, Mean, Rstd, MeanGX, MeanG, DX, DW_partial, DB_partial, DRES, DRES_IN,
    stride_dy_row, stride_x_row, stride_dx_row, stride_dres_row, stride_dres_in_row, rows, rows_per_group,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_W: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    IS_RMS: tl.constexpr, HAS_DRESIDUAL: tl.constexpr, STORE_DRESIDUAL_IN: tl.constexpr, ROW_ALIGN: tl.constexpr,
    L2_HINTS: tl.constexpr = False,
):
    """Wide rows, step 2: program (group, chunk) writes dx for its rows x columns and one dw/db partial row.
    L2_HINTS: as for the resident kernel."""
    ROW_EVICTION: tl.constexpr = "evict_first" if L2_HINTS else ""
    AFFINE_EVICTION: tl.constexpr = "evict_last" if L2_HINTS else ""
    stride_dy_row = _aligned_stride(stride_dy_row, ROW_ALIGN)
    stride_x_row = _aligned_stride(stride_x_row, ROW_ALIGN)
    stride_dx_row = _aligned_stride(stride_dx_row, ROW_ALIGN)
    if HAS_DRESIDUAL:
        stride_dres_row = _aligned_stride(stride_dres_row, ROW_ALIGN)
    if STORE_DRESIDUAL_IN:
        stride_dres_in_row = _aligned_stride(stride_dres_in_row, ROW_ALIGN)
    group = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = _load_affine(W, cols, N, AFFINE_EVICTION) if HAS_W else 0.0
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first_row = group * rows_per_group
    last_row = tl.minimum(first_row + rows_per_group, rows)
    for start in range(first_row, last_row, BLOCK_M):
        row_idx = start + tl.arange(0, BLOCK_M)
        row_ok = row_idx < last_row
        dy, xhat, g, rstd = _load_bwd_tile(DY, X, Mean, Rstd, w, stride_dy_row, stride_x_row, row_idx, row_ok,
                                           cols, col_ok, HAS_W, IS_RMS, ROW_EVICTION)
        dres = _load_dresidual(DRES, stride_dres_row, row_idx, row_ok, cols, col_ok, HAS_DRESIDUAL, ROW_EVICTION)
        mean_gx = tl.load(MeanGX + row_idx, mask=row_ok, other=0.0)
        mean_g = None if IS_RMS else tl.load(MeanG + row_idx, mask=row_ok, other=0.0)
        dw_acc, db_acc = _store_dx_accumulate(DX, DRES_IN, stride_dx_row, stride_dres_in_row, row_idx, row_ok, cols,
                                              col_ok, dy, xhat, g, rstd, mean_gx, mean_g, dres, dw_acc, db_acc,
                                              NEED_DW, NEED_DB, IS_RMS, HAS_DRESIDUAL, STORE_DRESIDUAL_IN)
    _store_partials(DW_partial, DB_partial, group, cols, col_ok, dw_acc, db_acc, N, NEED_DW, NEED_DB, False)


@triton.jit
def _store_column_sums(DW, DB, cols, col_ok, dw_acc, db_acc, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr):
    """dw/db at ``cols``: the column sums of the (rows x columns) fp32 accumulators, in DW's / DB's dtype."""
    if NEED_DW:
        tl.store(DW + cols, tl.sum(dw_acc, axis=0).to(DW.dtype.element_ty), mask=col_ok)
    if NEED_DB:
        tl.store(DB + cols, tl.sum(db_acc, axis=0).to(DB.dtype.element_ty), mask=col_ok)


@triton.jit
def _weight_grads_columns(DY, X, Mean, Rstd, DW, DB, stride_dy_row, stride_x_row, rows, col_block,
                          N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NEED_DW: tl.constexpr,
                          NEED_DB: tl.constexpr, IS_RMS: tl.constexpr, ROW_ALIGN: tl.constexpr):
    """Few rows: dw[n] = sum_m dy[m, n] * xhat[m, n] and db[n] = sum_m dy[m, n] for the BLOCK_N columns of
    ``col_block``, straight from the rows, in fp32, in a fixed order (deterministic), written in the gradients'
    dtypes. No partial rows, whose fp32 bytes outweigh the 16-bit rows themselves when there is about one per row."""
    stride_dy_row = _aligned_stride(stride_dy_row, ROW_ALIGN)
    stride_x_row = _aligned_stride(stride_x_row, ROW_ALIGN)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, rows, BLOCK_M):
        row_idx = start + tl.arange(0, BLOCK_M)
        dy, xhat, _, _ = _load_bwd_tile(DY, X, Mean, Rstd, 0.0, stride_dy_row, stride_x_row, row_idx, row_idx < rows,
                                        cols, col_ok, False, IS_RMS, "")
        if NEED_DW:
            dw_acc += dy * xhat
        if NEED_DB:
            db_acc += dy
    _store_column_sums(DW, DB, cols, col_ok, dw_acc, db_acc, NEED_DW, NEED_DB)


@triton.jit
def _weight_grads_from_rows_kernel(
    DY, X, Mean, Rstd, DW, DB, stride_dy_row, stride_x_row, rows,
    N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    IS_RMS: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """dw / db from the rows (``_weight_grads_columns``), one program per BLOCK_N columns: after a backward kernel
    that wrote dx only (the CuTeDSL backward at few rows)."""
    _weight_grads_columns(DY, X, Mean, Rstd, DW, DB, stride_dy_row, stride_x_row, rows, tl.program_id(0), N, BLOCK_M,
                          BLOCK_N, NEED_DW, NEED_DB, IS_RMS, ROW_ALIGN)


@triton.jit
def _await_row_programs(Counter, row_programs, SUM_PROGRAMS: tl.constexpr):
    """A sum program of the fused column sum (see _layernorm_bwd_resident_kernel): waits until Counter[0] counts
    ``row_programs`` arrivals (acquire: their partial rows are visible after it), then counts its departure on
    Counter[1]; the last of the SUM_PROGRAMS to leave resets both to 0 (every other sum program has stopped polling
    by then, and every row program has arrived). Polls with an acquire add of 0: Triton's read-only atomics
    (atomic_load, atomic_poll) are newer than the Triton 3.6 of the GPU machine."""
    arrived = tl.atomic_add(Counter, 0, sem="acquire", scope="gpu")
    while arrived < row_programs:
        arrived = tl.atomic_add(Counter, 0, sem="acquire", scope="gpu")
    departed = tl.atomic_add(Counter + 1, 1, sem="relaxed", scope="gpu")
    if departed == SUM_PROGRAMS - 1:
        tl.store(Counter, 0)
        tl.store(Counter + 1, 0)


@triton.jit
def _sum_partial_columns(DW_partial, DB_partial, DW, DB, num_partials, col_block,
                         N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, NEED_DW: tl.constexpr,
                         NEED_DB: tl.constexpr):
    """dw[n] = sum_p DW_partial[p, n] (and db likewise) for the BLOCK_N columns of ``col_block``, in fp32 in a fixed
    order (deterministic), written in the gradients' dtypes."""
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    dw_acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for start in range(0, num_partials, BLOCK_P):
        part = start + tl.arange(0, BLOCK_P)
        mask = (part < num_partials)[:, None] & col_ok[None, :]
        offs = part.to(tl.int64)[:, None] * N + cols[None, :]
        if NEED_DW:
            dw_acc += tl.load(DW_partial + offs, mask=mask, other=0.0)
        if NEED_DB:
            db_acc += tl.load(DB_partial + offs, mask=mask, other=0.0)
    _store_column_sums(DW, DB, cols, col_ok, dw_acc, db_acc, NEED_DW, NEED_DB)


@triton.jit
def _sum_partials_kernel(
    DW_partial, DB_partial, DW, DB, num_partials,
    N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
):
    """dw[n] = sum_p DW_partial[p, n] (and db likewise) in fp32 in a fixed order (deterministic), one launch for both:
    ``_sum_partial_columns``, one program per BLOCK_N columns."""
    _sum_partial_columns(DW_partial, DB_partial, DW, DB, num_partials, tl.program_id(0), N, BLOCK_P, BLOCK_N,
                         NEED_DW, NEED_DB)


# ----------------------------------------------------------------------------------------------------------------
# Fast launch: the compiled kernel per specialization, launched without the JIT's per-call argument binding
# ----------------------------------------------------------------------------------------------------------------

# ``kernel[grid](...)`` binds every argument, computes Triton's specialization key and looks the compiled kernel up
# on each call: 20-33 µs of host time per launch on the H100 machine, several times the kernel at small shapes.
# ``_launch`` keys its own cache on everything that key depends on -- each pointer's dtype and 16-byte alignment,
# each integer's type range, ``== 1`` and divisibility by 16, the constexpr values, num_warps and the device -- so
# two calls with equal keys would have compiled the same kernel, and calls the compiled kernel's launcher directly.
# The first call of each key goes through ``kernel[grid]`` (compiling if needed) and records what it returned.
FAST_LAUNCH_ENV = "VIBE_KERNELS_TRITON_FAST_LAUNCH"
_fast_launch_on = os.environ.get(FAST_LAUNCH_ENV, "1") != "0"
_compiled_kernels: dict = {}  # launch key -> (compiled kernel, its constexpr values in parameter order)
_compile_lock = threading.Lock()


def _int_spec(value: int):
    return (value == 1, value % 16 == 0, -(2**31) <= value < 2**31, 0 <= value < 2**64)


def _launch_key(kernel_id: int, device_index: int, num_warps: int, args: tuple, constexprs: dict) -> tuple:
    """Everything Triton specializes a compiled kernel on. ``kernel_id`` is id(kernel): a JITFunction hashes
    through its source-derived cache_key (slow). Built with as few temporary objects as possible: this runs on
    every launch, and allocations there also make Python's cyclic GC run more often."""
    specs = []
    for arg in args:
        if arg is None:
            specs.append(None)
        elif isinstance(arg, torch.Tensor):
            specs.append((arg.dtype, arg.data_ptr() % 16 == 0))
        elif isinstance(arg, float):
            specs.append(float)
        elif isinstance(arg, bool):
            specs.append(arg)
        elif isinstance(arg, int):
            specs.append(_int_spec(arg))
        else:
            raise TypeError(f"unsupported kernel argument type {type(arg).__name__}")
    return kernel_id, device_index, num_warps, tuple(constexprs), tuple(constexprs.values()), tuple(specs)


def _profiler_hooks_installed() -> bool:
    hooks = _triton_knobs.runtime
    return bool(getattr(hooks.launch_enter_hook, "calls", True) or getattr(hooks.launch_exit_hook, "calls", True))


def _launch(kernel, grid: tuple, num_warps: int, *args, **constexprs):
    """``kernel[grid](*args, **constexprs, num_warps=num_warps)`` with the runtime arguments positional (in the
    kernel's order, before its constexprs) and every constexpr by name. Returns the compiled kernel's entry
    (for ``_run_compiled``) when the fast path has one, else None."""
    if not _fast_launch_on or not isinstance(kernel, triton.runtime.jit.JITFunction):  # interpreter: plain call
        _jit_call(kernel, grid, num_warps, args, constexprs)
        return None
    device_index = torch.cuda.current_device()
    key = _launch_key(id(kernel), device_index, num_warps, args, constexprs)
    entry = _compiled_kernels.get(key)
    if entry is None:
        # First call of this key: through the JIT (compiling if needed), under a lock so that threads making the
        # same first call at once compile once; those that waited find the kernel cached and launch it.
        with _compile_lock:
            entry = _compiled_kernels.get(key)
            if entry is None:
                compiled, constexprs = _jit_call(kernel, grid, num_warps, args, constexprs)
                if getattr(compiled, "function", None) is not None and callable(getattr(compiled, "run", None)):
                    # The key fixes every constexpr value: store them once, in the kernel's parameter order. (With
                    # NUM_STAGES lowered to fit, the key stays the requested one: later calls skip the retry.)
                    names = [p.name for p in kernel.params if p.is_constexpr]
                    _compiled_kernels[key] = (compiled, tuple(constexprs[name] for name in names))
                return _compiled_kernels.get(key)
    if _profiler_hooks_installed():
        # Profiler hooks installed: the JIT path, with the constexprs the cached kernel was compiled with.
        names = [p.name for p in kernel.params if p.is_constexpr]
        kernel[grid](*args, num_warps=num_warps, **dict(zip(names, entry[1])))
        return entry
    _run_compiled(entry, grid, device_index, args)
    return entry


def _jit_call(kernel, grid: tuple, num_warps: int, args: tuple, constexprs: dict):
    """``kernel[grid](...)``. A kernel whose software pipelining needs more shared memory than the device has
    (Triton raises OutOfResources at its first launch; the buffers per stage depend on the Triton version) is retried
    with NUM_STAGES one lower, down to 1. Returns (what the call returned, the constexprs it ran with)."""
    while True:
        try:
            return kernel[grid](*args, num_warps=num_warps, **constexprs), constexprs
        except OutOfResources:
            if constexprs.get("NUM_STAGES", 1) <= 1:
                raise
            constexprs = dict(constexprs, NUM_STAGES=constexprs["NUM_STAGES"] - 1)


def _run_compiled(entry, grid: tuple, device_index: int, args: tuple) -> None:
    compiled, constexpr_values = entry
    stream = triton.runtime.driver.active.get_current_stream(device_index)
    grid_y = grid[1] if len(grid) > 1 else 1
    grid_z = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *args, *constexpr_values)


def _alignment_bits(tensors) -> int:
    """One bit per tensor: set when it is given and its data pointer is 16-byte aligned (Triton's pointer
    specialization)."""
    bits = 0
    for tensor in tensors:
        bits = (bits << 1) | (tensor is not None and tensor.data_ptr() % 16 == 0)
    return bits


def _dtype_of(tensor):
    return None if tensor is None else tensor.dtype


# ----------------------------------------------------------------------------------------------------------------
# Launchers: take preallocated outputs, allocate only workspace, return nothing
# ----------------------------------------------------------------------------------------------------------------


def _fwd_plan_key(tensors: tuple, row_strides: tuple, residual_in_fp32: bool, rms: bool) -> tuple | None:
    """The forward plan signature (see ``_fwd_plans``) of a call with ``tensors`` = (x, out, weight, bias, mean,
    rstd, residual, residual_out) and the row strides of x, out, residual, residual_out; its first item is the
    current device's index. None when calls are not planned (fast launch off, or CPU tensors)."""
    x, out, weight, bias, mean, rstd, residual, residual_out = tensors
    if not (_fast_launch_on and x.is_cuda):
        return None
    return (torch.cuda.current_device(), x.shape[0], x.shape[1], x.dtype, out.dtype, _dtype_of(weight),
            _dtype_of(bias), mean is None, rstd is None, _dtype_of(residual), _dtype_of(residual_out),
            bool(residual_in_fp32), bool(rms), _alignment_bits(tensors)) + tuple(row_strides)


def fwd_launcher(x, weight, bias, out, mean, rstd, rms: bool = False):
    """After a plain ``layernorm_fwd(x, weight, bias, eps, out, mean, rstd)`` (LayerNorm, or RMSNorm with ``rms``;
    no residual, out in x's dtype, default config) ran: a function ``launch(x, weight, bias, out, mean, rstd, eps)``
    that launches the same compiled kernel and grid again for tensors of the same plan signature (x and out may
    have any leading dims that flatten to these rows), skipping every lookup. Without a plan (the interpreter, fast
    launch off) it calls ``layernorm_fwd`` on 2-D views. The caller guarantees the signature matches."""
    rows, hidden = x.shape
    tensors = (x, out, weight, bias, mean, rstd, None, None)
    row_strides = (x.stride(0), out.stride(0), None, None)
    key = _fwd_plan_key(tensors, row_strides, False, rms)
    plan = _fwd_plans.get(key) if key is not None else None
    launch_2d = rows_launcher(layernorm_fwd, rows, hidden, rms)
    if plan is None:
        return launch_2d
    grid, entry = plan
    index = key[0]

    def launch(x, weight, bias, out, mean, rstd, eps):
        if _profiler_hooks_installed():  # a profiler wants the JIT's launch hooks
            launch_2d(x, weight, bias, out, mean, rstd, eps)
        else:
            _run_compiled(entry, grid, index, (x, out, weight, bias, mean, rstd, None, None) + row_strides
                          + (rows, eps))

    return launch


def layernorm_fwd(x, weight, bias, eps, out, mean, rstd, config: FwdConfig | None = None, *, residual=None,
                  residual_out=None, residual_in_fp32: bool = False, rms: bool = False) -> None:
    """x (M, N) with unit column stride; out (M, N) in any float dtype; mean/rstd (M,) fp32 or None; weight/bias
    (N,) or None.

    rms: RMSNorm (mean must be None). residual (M, N), unit column stride: normalize h = x + residual instead, h
    rounded to x's dtype unless ``residual_in_fp32``; residual_out (M, N) (or None): where h is written (fp32 when
    residual_in_fp32, else x's dtype)."""
    rows, hidden = x.shape
    if rms and mean is not None:
        raise ValueError("RMSNorm has no mean: pass mean=None")
    if residual is None and residual_out is not None:
        raise ValueError("residual_out needs a residual")
    has_residual = residual is not None
    tensors = (x, out, weight, bias, mean, rstd, residual, residual_out)
    args = tensors + (x.stride(0), out.stride(0), residual.stride(0) if has_residual else None,
                      residual_out.stride(0) if residual_out is not None else None, rows, eps)
    plan_key = None
    if config is None:
        plan_key = _fwd_plan_key(tensors, args[8:12], residual_in_fp32, rms)
        plan = _fwd_plans.get(plan_key) if plan_key is not None else None
        if plan is not None and not _profiler_hooks_installed():
            _run_compiled(plan[1], plan[0], plan_key[0], args)
            return
    cfg = config or fwd_config(hidden, x.dtype, has_residual, rows <= _program_slots(x.device),
                               out.element_size() > x.element_size(),
                               _wider_affine(x, weight, bias))
    flags = dict(
        HAS_W=weight is not None, HAS_B=bias is not None, STORE_MEAN=mean is not None, STORE_RSTD=rstd is not None,
        IS_RMS=bool(rms), HAS_RESIDUAL=has_residual, STORE_RESIDUAL=residual_out is not None,
        # Rounding h to fp32 x's dtype is a no-op: one variant for both.
        RESIDUAL_IN_FP32=has_residual and (bool(residual_in_fp32) or x.dtype == torch.float32),
    )
    flags["ROW_ALIGN"] = _row_align(*args[8:12])
    if cfg.chunked:
        if cfg.held_chunks * cfg.block_n >= hidden:
            raise ValueError(f"held_chunks x block_n ({cfg.held_chunks} x {cfg.block_n}) must be below the row's "
                             f"{hidden} elements (the resident kernel holds whole rows): {cfg}")
        row_blocks = _cdiv(rows, cfg.block_m)
        programs = (row_blocks if cfg.programs_per_sm == 0
                    else min(row_blocks, cfg.programs_per_sm * _program_slots(x.device)))
        grid = (programs,)
        entry = _launch(_layernorm_fwd_chunked_kernel, grid, cfg.num_warps, *args,
                        N=hidden, BLOCK_N=cfg.block_n, L2_HINTS=cfg.l2_hints, BLOCK_M=cfg.block_m,
                        HELD_CHUNKS=cfg.held_chunks, OPAQUE_ASM=cfg.held_chunks > 0 and x.device.type == "cuda",
                        **flags)
    else:
        block_m = _rows_per_program(cfg.block_m, rows, _program_slots(x.device)) if config is None else cfg.block_m
        grid = (_cdiv(rows, block_m),)
        entry = _launch(_layernorm_fwd_resident_kernel, grid, cfg.num_warps, *args,
                        N=hidden, BLOCK_M=block_m, BLOCK_N=cfg.block_n, TAIL_N=cfg.tail_n,
                        AFFINE_FIRST=cfg.affine_first, L2_HINTS=cfg.l2_hints, AFFINE_TILE=cfg.affine_tile, **flags)
    if plan_key is not None and entry is not None:
        if len(_fwd_plans) >= MAX_FWD_PLANS:
            _fwd_plans.clear()
        _fwd_plans[plan_key] = (grid, entry)


def _wider_affine(x, weight, bias) -> bool:
    """fwd_config's wide_affine: a weight or bias is given, and each given one has wider elements than x."""
    given = [t for t in (weight, bias) if t is not None]
    return bool(given) and all(t.element_size() > x.element_size() for t in given)


def sum_partials(dw_partial, db_partial, dweight, dbias) -> None:
    """dweight = dw_partial.sum(0) and dbias = db_partial.sum(0) ((P, N) fp32 partial rows, contiguous; either pair
    may be None) in a fixed order, in the gradients' own dtypes, in one launch. Also the CuTeDSL backward's column
    sum."""
    num_partials, hidden = (dw_partial if dw_partial is not None else db_partial).shape
    # Narrow column blocks and all partial rows at once: enough programs and bytes in flight even for small N.
    block_n = min(_next_power_of_2(hidden), 32)
    block_p = min(_next_power_of_2(num_partials), 256)
    _launch(
        _sum_partials_kernel, (_cdiv(hidden, block_n),), 4,
        dw_partial, db_partial, dweight, dbias, num_partials,
        N=hidden, BLOCK_P=block_p, BLOCK_N=block_n, NEED_DW=dweight is not None, NEED_DB=dbias is not None,
    )


# Columns of a sum program of the fused column sum (BwdConfig.fused_sum): 256-byte slices of each fp32 partial row,
# as the CuTeDSL backend's sum CTAs read, so N / 64 sum programs (128 at N = 8192).
FUSED_SUM_BLOCK_N = 64


def _fused_sum_tile(partial_rows: int, hidden: int, num_warps: int) -> tuple[int, int]:
    """(partial rows, columns) of the tiles that a sum program of the fused column sum adds up per step: 16 fp32 a
    thread of each gradient's partial rows (four 16-byte loads in flight), so that the sum needs few registers beside
    the row programs' (one kernel: its register count is the larger of the two). Under the interpreter (at most 8
    partial rows) the same single step over all partial rows as ``sum_partials``: the same sums in the same order.

    >>> _fused_sum_tile(132, 8192, 16), _fused_sum_tile(132, 1000, 8), _fused_sum_tile(3, 40, 4)
    ((128, 64), (64, 64), (4, 64))
    """
    block_n = min(_next_power_of_2(hidden), FUSED_SUM_BLOCK_N)
    return min(_next_power_of_2(partial_rows), max(1, 16 * 32 * num_warps // block_n)), block_n


def _sum_counter(device: torch.device) -> torch.Tensor | None:
    """The fused column sum's arrival counter pair for a launch on ``device``'s current stream (the stream Triton
    launches on; ``_backends.sum_counter``: shared with the CuTeDSL backend's launches there), or None under CUDA
    graph capture, where a graph could replay on another stream beside eager launches sharing the pair. Under the
    interpreter (CPU tensors) one pair: its programs and calls run one after another."""
    if device.type != "cuda":
        return sum_counter(device, -1, 0)
    if torch.cuda.is_current_stream_capturing():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return sum_counter(device, index, triton.runtime.driver.active.get_current_stream(index))


def _weight_grads_tile(rows: int, hidden: int) -> tuple[int, int]:
    """(rows, columns) of the tiles of dw / db summed straight from the rows. 32-column programs (64 from N = 16384):
    N / 32 >= 128 programs from N = 4096 up; tiles of up to 2048 elements (16 a thread of each of x and dy at 4
    warps), so 128 rows take two steps."""
    block_n = min(_next_power_of_2(hidden), 32 if hidden < 16384 else 64)
    return min(_next_power_of_2(max(rows, 1)), 2048 // block_n), block_n


def weight_grads_from_rows(dy, x, mean, rstd, dweight, dbias) -> None:
    """dweight = sum over rows of dy * xhat, dbias = sum of dy (either may be None), xhat = (x - mean) * rstd (x *
    rstd when mean is None: RMSNorm), in fp32 in a fixed order, in one launch, written in the gradients' dtypes.
    For few rows (_backends.WEIGHT_GRADS_FROM_ROWS_MAX_ROWS)."""
    rows, hidden = x.shape
    block_m, block_n = _weight_grads_tile(rows, hidden)
    _launch(
        _weight_grads_from_rows_kernel, (_cdiv(hidden, block_n),), 4,
        dy, x, mean, rstd, dweight, dbias, dy.stride(0), x.stride(0), rows,
        N=hidden, BLOCK_M=block_m, BLOCK_N=block_n, NEED_DW=dweight is not None, NEED_DB=dbias is not None,
        IS_RMS=mean is None, ROW_ALIGN=_row_align(dy.stride(0), x.stride(0)),
    )


@dataclass(frozen=True)
class BwdPlan:
    """How a backward launch covers M rows: its grid, rows per step (block_m), rows per program group (chunked
    path), and the fp32 dw/db partial rows it allocates (shared_partials: two programs add into each row)."""

    grid: tuple
    block_m: int
    rows_per_group: int
    partial_rows: int
    shared_partials: bool


def bwd_plan(rows: int, hidden: int, cfg: BwdConfig, sms: int, shrink_rows: bool = True) -> BwdPlan:
    """The backward's launch plan for ``rows`` x ``hidden`` on ``sms`` SMs. The dw/db workspace is partial_rows x
    hidden x 8 bytes: at most one row per SM for every ladder config (issue 8's bound).

    Resident: a persistent grid of up to programs_per_sm x SMs programs; beyond one per SM, two programs share
    each partial row. Chunked: (row groups x column chunks) programs, each writing one partial row segment, with
    at most programs_per_sm x SMs / column chunks groups.

    >>> bwd_plan(32768, 4096, BwdConfig(1, 4096, 8, False, 2), 132)
    BwdPlan(grid=(264,), block_m=1, rows_per_group=0, partial_rows=132, shared_partials=True)
    """
    slots = sms * cfg.programs_per_sm
    if cfg.chunked:
        col_chunks = _cdiv(hidden, cfg.block_n)
        groups = _clamp(slots // col_chunks, 1, _cdiv(rows, cfg.block_m))
        rows_per_group = _cdiv(_cdiv(rows, groups), cfg.block_m) * cfg.block_m
        groups = _cdiv(rows, rows_per_group)
        return BwdPlan((groups, col_chunks), cfg.block_m, rows_per_group, groups, False)
    block_m = _rows_per_program(cfg.block_m, rows, sms) if shrink_rows else cfg.block_m
    programs = min(slots, _cdiv(rows, block_m))
    # More programs than SMs: programs p and p + partial_rows add into row p (atomic adds onto zeros: exactly two
    # adds per row, deterministic), so up to 2 programs per SM keep one partial row per SM.
    shared = programs > sms
    return BwdPlan((programs,), block_m, 0, _cdiv(programs, 2) if shared else programs, shared)


def _partial_rows(grad, plan: BwdPlan, hidden: int):
    """The fp32 dw (or db) partial rows of ``plan``; with a single partial row written by plain stores (small M), an
    fp32 contiguous gradient is its own partial row: the kernel writes it and the column-sum launch is skipped."""
    if grad is None:
        return None
    if (plan.partial_rows == 1 and not plan.shared_partials and grad.dtype == torch.float32
            and grad.is_contiguous()):
        return grad
    new_partials = torch.zeros if plan.shared_partials else torch.empty
    return new_partials((plan.partial_rows, hidden), dtype=torch.float32, device=grad.device)


def layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, config: BwdConfig | None = None, *,
                  rms: bool = False, dresidual=None, dresidual_in=None) -> None:
    """dy, x (M, N) unit column stride (x: the normalized input, h with a residual); dx (M, N); dweight/dbias (N,)
    or None (not wanted). dy, x and dx may each have their own float dtype.

    rms: RMSNorm (mean is None). dresidual (M, N) or None: the gradient flowing into the residual output h, added
    to dx. dresidual_in (M, N) or None: a second copy of dx in another dtype (the residual input's gradient)."""
    rows, hidden = x.shape
    cfg = config or bwd_config(hidden, x.dtype, rows <= WEIGHT_GRADS_FROM_ROWS_MAX_ROWS)
    plan = bwd_plan(rows, hidden, cfg, _program_slots(x.device), shrink_rows=config is None)
    # Few rows, about one fp32 partial row each: no partial rows; dw/db are summed straight from the rows, by the
    # same launch's last programs while the others write dx (H100, 2026-11-25, eighth session, fwd+bwd ms, separate
    # -> fused: 128x4096 0.0159 -> 0.0126, 256x1024 0.0165 -> 0.0112, 200x2048 0.0170 -> 0.0133, 8x1024 0.0118 ->
    # 0.0092, 128x8192 0.0201 -> 0.0192), or by a second launch for the re-read 16-warp rows (64x16384 0.0244 ->
    # 0.0262 fused).
    from_rows = (config is None and not cfg.chunked and plan.partial_rows > 1
                 and rows <= WEIGHT_GRADS_FROM_ROWS_MAX_ROWS and (dweight is not None or dbias is not None))
    fused_from_rows = from_rows and not cfg.reread
    weight_grads = (dweight, dbias)
    column_flags = dict(COLUMN_BLOCK_M=0, COLUMN_BLOCK_N=0, COLUMN_DW=False, COLUMN_DB=False)
    if fused_from_rows:
        column_block_m, column_block_n = _weight_grads_tile(rows, hidden)
        column_flags = dict(COLUMN_BLOCK_M=column_block_m, COLUMN_BLOCK_N=column_block_n,
                            COLUMN_DW=dweight is not None, COLUMN_DB=dbias is not None)
        plan = dataclasses.replace(plan, grid=(plan.grid[0] + _cdiv(hidden, column_block_n),))
    if from_rows:
        dweight = dbias = None
    # The partial rows' column sum in this launch (BwdConfig.fused_sum): not for one partial row (written as the
    # gradient itself, or summed by a launch that also converts it), the column programs, strided gradients (the
    # sum programs write unit-stride rows) or CUDA graph capture (no counter).
    sum_flags = dict(SUM_BLOCK_P=0, SUM_BLOCK_N=0)
    counter = None
    if (cfg.fused_sum and not cfg.chunked and not from_rows and plan.partial_rows > 1
            and (dweight is not None or dbias is not None)
            and all(g.is_contiguous() for g in weight_grads if g is not None)):
        counter = _sum_counter(x.device)
    if counter is not None:
        sum_block_p, sum_block_n = _fused_sum_tile(plan.partial_rows, hidden, cfg.num_warps)
        sum_flags = dict(SUM_BLOCK_P=sum_block_p, SUM_BLOCK_N=sum_block_n)
        plan = dataclasses.replace(plan, grid=(plan.grid[0] + _cdiv(hidden, sum_block_n),))
    flags = dict(HAS_W=weight is not None, NEED_DW=dweight is not None, NEED_DB=dbias is not None, IS_RMS=bool(rms),
                 HAS_DRESIDUAL=dresidual is not None, STORE_DRESIDUAL_IN=dresidual_in is not None)
    residual_args = (dresidual, dresidual_in, dy.stride(0), x.stride(0), dx.stride(0),
                     dresidual.stride(0) if dresidual is not None else None,
                     dresidual_in.stride(0) if dresidual_in is not None else None, rows)
    row_align = _row_align(*residual_args[2:7])
    if cfg.chunked:
        mean_gx = torch.empty((rows,), dtype=torch.float32, device=x.device)
        mean_g = None if rms else torch.empty((rows,), dtype=torch.float32, device=x.device)
        _launch(
            _layernorm_bwd_row_coefs_kernel, (rows,), 8,
            dy, x, weight, mean, rstd, mean_gx, mean_g, dy.stride(0), x.stride(0),
            N=hidden, BLOCK_N=4096, HAS_W=weight is not None, IS_RMS=bool(rms),
            ROW_ALIGN=_row_align(dy.stride(0), x.stride(0)),
        )
    dw_partial = _partial_rows(dweight, plan, hidden)
    db_partial = _partial_rows(dbias, plan, hidden)
    if cfg.chunked:
        _launch(
            _layernorm_bwd_tiled_kernel, plan.grid, cfg.num_warps,
            dy, x, weight, mean, rstd, mean_gx, mean_g, dx, dw_partial, db_partial, *residual_args,
            plan.rows_per_group, N=hidden, BLOCK_M=plan.block_m, BLOCK_N=cfg.block_n, ROW_ALIGN=row_align,
            L2_HINTS=cfg.l2_hints, **flags,
        )
    else:
        _launch(
            _layernorm_bwd_resident_kernel, plan.grid, cfg.num_warps,
            dy, x, weight, mean, rstd, dx, dw_partial, db_partial, residual_args[0], residual_args[1],
            *(weight_grads if fused_from_rows or counter is not None else (None, None)), counter, *residual_args[2:],
            plan.partial_rows, N=hidden, BLOCK_M=plan.block_m, BLOCK_N=cfg.block_n, ROW_ALIGN=row_align,
            SHARED_PARTIALS=plan.shared_partials, L2_HINTS=cfg.l2_hints, REREAD=cfg.reread,
            NUM_STAGES=cfg.stages, PREFETCH=cfg.prefetch, **flags, **column_flags, **sum_flags,
        )
    if from_rows:
        if not fused_from_rows:
            weight_grads_from_rows(dy, x, mean, rstd, *weight_grads)
        return
    if counter is not None:  # the sum programs wrote dw / db
        return
    dw_partial = None if dw_partial is dweight else dw_partial
    db_partial = None if db_partial is dbias else db_partial
    if dw_partial is not None or db_partial is not None:
        sum_partials(dw_partial, db_partial, dweight if dw_partial is not None else None,
                     dbias if db_partial is not None else None)
