"""``python -m vibe_kernels.layernorm.bench`` (console script ``vibe-layernorm-bench``): LayerNorm kernel times per
shape, against each shape's speed of light (SOL), for our backends and the third-party anchors.

Prints the seed's two tables (Forward-only; Forward + Backward) with its columns, plus GB/s and % SOL per backend;
a separate table of host dispatch cost; optionally JSON (``--json``), a PNG (``--plot``), a baseline
(``--save-baseline``), and a performance regression check against a baseline (``--check``, exit 1 on regression).

Variants: ``--op rmsnorm`` (RMSNorm instead of LayerNorm; no bias unless --bias), ``--residual`` (the fused pre-norm
residual: out, h = norm(x + r), both differentiated) and ``--out-dtype`` (out in another dtype). Their byte counts
include the residual read, the h write and its gradient read, and the out/dy dtype; their SOL is a copy of the same
number of bytes (see ``bytes_moved`` and ``measure_sol``).

Method (as in /work/shared/anchors.md): every provider is timed with CUDA-event medians (warm-up, L2 flushed before
each call, as ``triton.testing.do_bench``); by default a spin kernel queued before each timed call hides the host's
dispatch, so the tables are GPU time for every provider alike and host cost has its own table (``--no-hide-host``:
plain ``do_bench``, as anchors.md was measured, where host-bound calls are timed at the host's pace); SOL is a same-size ``y.copy_(x)`` (forward) plus
``torch.add(x, dy, out=dx)`` (backward), timed in the same run. Before a provider is timed at a shape its output
(and grads) are checked against the fp32 reference. Without a GPU the command runs tiny shapes on CPU and times
with ``time.perf_counter``: NOT PERFORMANCE FIGURES.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import math
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from ._anchors import (
    EPS,
    MODES,
    OPS,
    PLAIN,
    PROVIDERS,
    Case,
    StepOutput,
    Variant,
    dtype_name,
    make_inputs,
    variant_inputs,
)
from .reference import layernorm_ref, rmsnorm_ref
from .validate import Discrepancy, compare, error_text, out_allowance, render_table

# ----------------------------------------------------------------------------------------------------------------
# Shapes, modes, byte counts
# ----------------------------------------------------------------------------------------------------------------

_bf16, _fp16, _fp32 = torch.bfloat16, torch.float16, torch.float32

SEED_CASES = (
    Case(4096, 8192, _fp16, True),
    Case(4096, 8192, _bf16, False),
    Case(4096, 16384, _fp16, False),
    Case(4096, 4096, _fp16, True),
)
# Every other shape of anchors.md (all with bias), then its small-M latency rows.
SWEEP_CASES = (
    *(Case(32768, hidden, _bf16, True) for hidden in (256, 1024, 4096, 8192, 16384, 32768, 65536)),
    Case(16384, 131072, _bf16, True),
    Case(8192, 262144, _bf16, True),
    Case(8192, 8192, _fp32, True),
    Case(4095, 5000, _fp16, True),
    Case(1, 4096, _bf16, True),
    Case(128, 4096, _bf16, True),
)
# What the no-GPU run uses by default: seconds on a CPU, even with the Triton interpreter.
TINY_CASES = (
    Case(4, 64, _fp16, True),
    Case(8, 256, _bf16, False),
    Case(3, 100, _fp32, True),
)
PRESETS = {"seed": SEED_CASES, "sweep": SWEEP_CASES, "all": SEED_CASES + SWEEP_CASES, "tiny": TINY_CASES}
# An explicit MxN takes these unless --dtype / --bias say otherwise (as anchors.md's non-seed rows).
EXPLICIT_SHAPE_DTYPE = _bf16
EXPLICIT_SHAPE_BIAS = True

DTYPES = {"float16": _fp16, "fp16": _fp16, "half": _fp16, "bfloat16": _bf16, "bf16": _bf16,
          "float32": _fp32, "fp32": _fp32, "float": _fp32}

DEFAULT_MODES = ("fwd", "fwdbwd")
MODE_TITLES = {"fwd": "Forward-only (no gradients)", "fwdbwd": "Forward + Backward", "bwd": "Backward-only"}
# Minimal HBM traffic, in units of M*N*element_size: forward reads x and writes out; the backward reads x and dy and
# writes dx. Weight, bias and the per-row mean/rstd are ignored (at most a few % at the smallest M).
ELEMENT_PASSES = {"fwd": 2, "fwdbwd": 5, "bwd": 3}

# The seed's table columns; other providers get their own columns after its ratio column.
SEED_BACKENDS = ("torch", "cutedsl", "triton")

HOST_CASE = Case(8, 1024, _bf16, True)
HOST_WARMUP_CALLS = 20
GPU_HOST_CALLS, CPU_HOST_CALLS = 2000, 20
CPU_TIMED_CALLS = 5

# The output check runs the fp32 reference over row chunks of at most this many elements (bounded memory at the
# largest shapes); the gradients get a little more room than the forward, dw/db a factor sqrt(M) more (M-row sums).
REFERENCE_CHUNK_ELEMENTS = 1 << 25
GRAD_SLACK = 2.0

NOT_PERFORMANCE_BANNER = "NOT PERFORMANCE FIGURES (no GPU)"
JSON_FORMAT = "vibe-layernorm-bench/1"


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def bytes_moved(case: Case, mode: str, variant: Variant = PLAIN) -> int:
    """Minimal bytes a ``mode`` step must move: 2 (fwd), 5 (fwdbwd) or 3 (bwd) x M*N*element size for LayerNorm or
    RMSNorm. With the fused residual the forward also reads r and writes h, and the backward also reads dh (dx and
    dr are one tensor); with out_dtype, out and dy are in that dtype.

    >>> bytes_moved(Case(4096, 8192, torch.float16, True), "fwd")
    134217728
    >>> bytes_moved(Case(1, 1024, torch.bfloat16, True), "fwdbwd", Variant("rmsnorm", residual=True))
    16384
    >>> bytes_moved(Case(1, 1024, torch.bfloat16, True), "fwd", Variant(out_dtype=torch.float32))
    6144
    """
    s = _element_size(case.dtype)
    if not variant.same_bytes_sol:
        return ELEMENT_PASSES[mode] * case.rows * case.hidden * s
    s_out = _element_size(variant.out_dtype) if variant.out_dtype is not None else s
    fwd = s + s_out + (2 * s if variant.residual else 0)  # x, out (+ r, h)
    bwd = s + s_out + s + (s if variant.residual else 0)  # x (h), dy, dx (+ dh)
    per_element = {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]
    return per_element * case.rows * case.hidden


def gb_per_s(nbytes: int, ms: float) -> float:
    """Bytes moved in ``ms`` milliseconds, as GB/s (1e9 bytes per second).

    >>> gb_per_s(3_000_000, 1.0)
    3.0
    """
    return nbytes / (ms * 1e-3) / 1e9


def percent_of_sol(sol_ms: float, ms: float) -> float:
    """% SOL = SOL time / provider time (above 100% is within noise of the copy).

    >>> percent_of_sol(0.05, 0.1)
    50.0
    """
    return 100.0 * sol_ms / ms


# ----------------------------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------------------------

ShapeRequest = Union[str, tuple[int, int]]  # a preset name or an explicit (rows, hidden)


def _comma_tokens(text: str) -> list[str]:
    return [token for token in re.split(r"[,\s]+", text.strip()) if token]


def parse_shape_list(text: str) -> tuple[ShapeRequest, ...]:
    """"seed", "sweep", "all", "tiny" or MxN items, comma separated: "seed,1024x4096" -> ("seed", (1024, 4096))."""
    requests: list[ShapeRequest] = []
    for token in _comma_tokens(text):
        match = re.fullmatch(r"(\d+)[xX](\d+)", token)
        if token in PRESETS:
            requests.append(token)
        elif match and int(match[1]) > 0 and int(match[2]) > 0:
            requests.append((int(match[1]), int(match[2])))
        else:
            raise argparse.ArgumentTypeError(
                f"expected MxN with positive integers (e.g. 4096x8192) or a preset ({', '.join(PRESETS)}); "
                f"got {token!r}"
            )
    if not requests:
        raise argparse.ArgumentTypeError("expected at least one shape or preset")
    return tuple(requests)


def parse_dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPES)}; got {text!r}") from None


def _choice_list(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = _comma_tokens(text)
        unknown = [name for name in names if name not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma list of {what} from {', '.join(choices)}; got {text!r}")
        return tuple(dict.fromkeys(names))

    return parse


parse_mode_list = _choice_list(MODES, "modes")
parse_backend_list = _choice_list(tuple(PROVIDERS), "backends")


def _positive_int(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}")
    return value


def resolve_cases(requests: Iterable[ShapeRequest], dtype: Optional[torch.dtype], bias: Optional[bool]) -> list[Case]:
    """Expands presets, applies --dtype/--bias overrides (None: each shape's own), drops duplicates, keeps order."""
    cases: list[Case] = []
    for request in requests:
        if isinstance(request, str):
            base = PRESETS[request]
        else:
            base = (Case(request[0], request[1], EXPLICIT_SHAPE_DTYPE, EXPLICIT_SHAPE_BIAS),)
        for case in base:
            case = replace(case, dtype=dtype or case.dtype, bias=case.bias if bias is None else bias)
            if case not in cases:
                cases.append(case)
    return cases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vibe_kernels.layernorm.bench",
        description="LayerNorm benchmark: ms, GB/s and % of the speed of light per shape and backend.",
    )
    parser.add_argument("--backends", type=parse_backend_list, default=None,
                        help=f"comma list of {', '.join(PROVIDERS)}; default: every available one")
    parser.add_argument("--shapes", type=parse_shape_list, default=None,
                        help="presets seed, sweep, all, tiny and/or MxN items, comma separated "
                             "(default: seed on a GPU, tiny without one)")
    parser.add_argument("--dtype", type=parse_dtype, default=None,
                        help="float16, bfloat16 or float32 for every shape (default: each shape's own; "
                             f"{dtype_name(EXPLICIT_SHAPE_DTYPE)} for MxN)")
    parser.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                        help="with or without a bias for every shape (default: each shape's own; with for MxN)")
    parser.add_argument("--op", choices=OPS, default=None,
                        help="layernorm (default) or rmsnorm (RMSNorm: no bias unless --bias is given)")
    parser.add_argument("--residual", action="store_true", default=None,
                        help="the fused pre-norm residual: out, h = norm(x + r) with h returned and differentiated "
                             "(r in x's dtype)")
    parser.add_argument("--residual-inputs", choices=("computed", "leaves"), default=None,
                        help="with --residual: x and r as outputs of an upstream op, as in a model (default), or as "
                             "autograd leaves, whose two .grad tensors take a second write of the gradient (not "
                             "counted in the bytes)")
    parser.add_argument("--out-dtype", type=parse_dtype, default=None,
                        help="write out in this dtype (float16, bfloat16 or float32) instead of x's")
    parser.add_argument("--mode", type=parse_mode_list, default=None,
                        help=f"comma list of {', '.join(MODES)} (default: {','.join(DEFAULT_MODES)})")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="do_bench medians per cell; the cell reports their median (default 1, 3 with --check)")
    parser.add_argument("--warmup-ms", type=_positive_float, default=25.0, help="do_bench warm-up budget (ms)")
    parser.add_argument("--rep-ms", type=_positive_float, default=100.0,
                        help="do_bench timing budget per median (ms); a slow provider gets fewer calls, not more time")
    parser.add_argument("--hide-host", action=argparse.BooleanOptionalAction, default=None,
                        help="time GPU work only: queue a spin kernel before each timed call so the host's dispatch "
                             "is not timed (default: on; with --check: as the baseline was timed; --no-hide-host times as plain do_bench, where a call "
                             "whose host dispatch outlasts its kernels is timed at the host's pace)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every result as JSON")
    parser.add_argument("--plot", type=Path, default=None, metavar="PATH",
                        help="write a PNG of GB/s against N per backend, one panel per mode (needs matplotlib)")
    parser.add_argument("--save-baseline", type=Path, default=None, metavar="PATH",
                        help="write this run as a baseline for --check")
    parser.add_argument("--check", type=Path, default=None, metavar="BASELINE.json",
                        help="re-measure the baseline's shapes, modes and backends; exit 1 if any is slower than "
                             "the baseline by more than --tolerance")
    parser.add_argument("--tolerance", type=_non_negative_float, default=0.07,
                        help="allowed slowdown for --check, as a fraction (default 0.07)")
    parser.add_argument("--host-overhead", action=argparse.BooleanOptionalAction, default=None,
                        help="measure host dispatch cost per call (default: on, off with --check)")
    parser.add_argument("--host-calls", type=_positive_int, default=None,
                        help=f"calls per host-overhead figure (default {GPU_HOST_CALLS}; {CPU_HOST_CALLS} without "
                             "a GPU)")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


class Timer:
    """Median ms of one call of ``fn``.

    On a GPU, CUDA events around each call with the L2 flushed before it, as ``triton.testing.do_bench``; with
    ``hide_host`` (the default) a spin kernel is queued between the flush and the start event, long enough for the
    host to queue the whole call behind it, so the events time the GPU's work and not the host's dispatch (which
    ``measure_host_overhead`` reports on its own). Without it, a call whose host dispatch takes longer than its
    kernels is timed at the host's pace. Without a GPU: ``time.perf_counter`` around single calls."""

    def __init__(self, on_gpu: bool, warmup_ms: float, rep_ms: float, hide_host: bool = True):
        self.on_gpu, self.warmup_ms, self.rep_ms, self.hide_host = on_gpu, warmup_ms, rep_ms, hide_host

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.on_gpu and self.hide_host:
            return gpu_ms_host_hidden(fn, self.warmup_ms, self.rep_ms)
        if self.on_gpu:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
        fn()
        times = []
        for _ in range(CPU_TIMED_CALLS):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def describe(self) -> str:
        if self.on_gpu and self.hide_host:
            return (f"CUDA-event median of GPU time per call (L2 flushed before every call, as do_bench; a spin "
                    f"kernel of {HOST_STALL_FACTOR:g}x the call's host dispatch time + {HOST_STALL_MARGIN_MS * 1e3:g} "
                    f"µs is queued before the start event, so host dispatch is not timed: it has its own table; "
                    f"warm-up {self.warmup_ms:g} ms, rep {self.rep_ms:g} ms)")
        if self.on_gpu:
            return (f"triton.testing.do_bench median (CUDA events; L2 flushed before every call; warm-up "
                    f"{self.warmup_ms:g} ms, rep {self.rep_ms:g} ms; host dispatch not hidden)")
        return f"time.perf_counter median of {CPU_TIMED_CALLS} calls"


# The spin kernel before each timed call lasts HOST_STALL_FACTOR x the call's slowest measured host time + a margin
# (for the event records), capped; repeats fit rep_ms (spin included) with at least MIN_TIMED_CALLS.
HOST_STALL_FACTOR = 2.0
HOST_STALL_MARGIN_MS = 0.05
MAX_HOST_STALL_MS = 20.0
MIN_TIMED_CALLS = 10
L2_FLUSH_BYTES = 256 << 20  # as triton.testing.do_bench


def stall_ms_for(host_ms: float) -> float:
    """How long the GPU spins before a timed call whose host dispatch takes ``host_ms``.

    >>> stall_ms_for(0.1)
    0.25
    >>> stall_ms_for(100.0)
    20.0
    """
    return min(MAX_HOST_STALL_MS, HOST_STALL_FACTOR * host_ms + HOST_STALL_MARGIN_MS)


def timed_call_count(rep_ms: float, call_ms: float, stall_ms: float) -> int:
    """Calls that fit rep_ms when each also spins stall_ms; at least MIN_TIMED_CALLS.

    >>> timed_call_count(100.0, 0.01, 0.24)
    400
    >>> timed_call_count(100.0, 40.0, 0.5)
    10
    """
    return max(MIN_TIMED_CALLS, int(rep_ms / max(call_ms + stall_ms, 1e-3)))


_l2_flush_buffers: dict = {}
_spin_cycles_per_ms: dict = {}


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    key = torch.cuda.current_device() if device.index is None else device.index
    if key not in _l2_flush_buffers:
        _l2_flush_buffers[key] = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    return _l2_flush_buffers[key]


def _spin_rate(device: torch.device) -> float:
    """GPU clock cycles per ms of ``torch.cuda._sleep``, measured once per device with CUDA events."""
    key = torch.cuda.current_device() if device.index is None else device.index
    if key not in _spin_cycles_per_ms:
        cycles = 2_000_000
        torch.cuda._sleep(cycles // 10)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _spin_cycles_per_ms[key] = cycles / start.elapsed_time(end)
    return _spin_cycles_per_ms[key]


def _spin_then_time(fn: Callable[[], object], flush: torch.Tensor, spin_cycles: int, calls: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    for start, end in zip(starts, ends):
        flush.zero_()
        torch.cuda._sleep(spin_cycles)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def gpu_ms_host_hidden(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    """Median GPU ms of one call of ``fn`` on the current CUDA device, L2 flushed before each call and the host's
    dispatch hidden behind a spin kernel queued before the start event (see ``Timer``)."""
    device = torch.device("cuda", torch.cuda.current_device())
    fn()
    torch.cuda.synchronize()
    flush = _l2_flush_buffer(device)
    host_ms = 0.0
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        host_ms = max(host_ms, (time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    stall_ms = stall_ms_for(host_ms)
    spin_cycles = int(stall_ms * _spin_rate(device))
    estimate_ms = statistics.median(_spin_then_time(fn, flush, spin_cycles, 5))
    for _ in range(max(1, int(warmup_ms / max(estimate_ms, host_ms, 1e-3)))):
        fn()
    times = _spin_then_time(fn, flush, spin_cycles, timed_call_count(rep_ms, estimate_ms, stall_ms))
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------

ResultKey = tuple[int, int, str, bool, str, str]  # rows, hidden, dtype name, bias, mode, backend


@dataclass
class Result:
    """One table cell: ``backend`` running ``mode`` at ``case``."""

    case: Case
    mode: str
    backend: str
    sol_ms: Optional[float] = None
    repeat_ms: list[float] = field(default_factory=list)
    mismatch: str = ""  # what differed from the fp32 reference; empty when within tolerance
    error: str = ""  # why the provider failed at this shape; empty when it ran
    variant: Variant = PLAIN

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.repeat_ms) if self.repeat_ms and not self.error else None

    @property
    def gbps(self) -> Optional[float]:
        ms = self.median_ms
        return gb_per_s(bytes_moved(self.case, self.mode, self.variant), ms) if ms else None

    @property
    def pct_sol(self) -> Optional[float]:
        ms = self.median_ms
        return percent_of_sol(self.sol_ms, ms) if ms and self.sol_ms else None

    @property
    def key(self) -> ResultKey:
        return (self.case.rows, self.case.hidden, dtype_name(self.case.dtype), self.case.bias, self.mode, self.backend)

    def to_json(self) -> dict:
        return {
            "rows": self.case.rows, "hidden": self.case.hidden, "dtype": dtype_name(self.case.dtype),
            "bias": self.case.bias, "mode": self.mode, "backend": self.backend,
            "median_ms": self.median_ms, "repeat_ms": self.repeat_ms, "gbps": self.gbps, "pct_sol": self.pct_sol,
            "sol_ms": self.sol_ms, "mismatch": bool(self.mismatch), "mismatch_detail": self.mismatch or None,
            "error": self.error or None, **self.variant.to_json(),
        }


def record_key(record: dict) -> ResultKey:
    """The key of a JSON result record (see Result.to_json)."""
    return (int(record["rows"]), int(record["hidden"]), str(record["dtype"]), bool(record["bias"]),
            str(record["mode"]), str(record["backend"]))


def key_label(key: ResultKey) -> str:
    rows, hidden, dtype, bias, mode, backend = key
    return f"{rows}x{hidden} {dtype} {'+bias' if bias else 'no bias'} {mode} {backend}"


# ----------------------------------------------------------------------------------------------------------------
# Output check against the fp32 reference
# ----------------------------------------------------------------------------------------------------------------


def reference_mismatch(x, weight, bias, dy, output: StepOutput, variant: Variant = PLAIN, residual=None,
                       dh=None) -> str:
    """Compares a step's out (and h, and grads) with the fp32 reference and its autograd, row chunk by row chunk.

    weight/bias are the parameters the provider actually used (cast to x's dtype for torch and Liger), so the
    reference computes the same function. The residual variant's reference normalizes h = x + r rounded to x's
    dtype (straight through for the gradient) and backpropagates dy into out and dh into h. Returns "" when
    everything is within tolerance, else what differed.
    """
    rows, hidden = x.shape
    with_grads = output.grads is not None
    reference = rmsnorm_ref if variant.op == "rmsnorm" else layernorm_ref
    out_dtype = variant.out_dtype or x.dtype
    params = [p.detach().float().requires_grad_(with_grads) if p is not None else None for p in (weight, bias)]
    out_diff, dx_diff, h_diff, dr_diff = Discrepancy(), Discrepancy(), Discrepancy(), Discrepancy()
    chunk_rows = max(1, REFERENCE_CHUNK_ELEMENTS // hidden)
    for start in range(0, rows, chunk_rows):
        chunk = slice(start, start + chunk_rows)
        x_chunk = x[chunk].detach().float().requires_grad_(with_grads)
        r_chunk = residual[chunk].detach().float().requires_grad_(with_grads) if residual is not None else None
        with torch.set_grad_enabled(with_grads):
            h = x_chunk
            if r_chunk is not None:
                h = x_chunk + r_chunk
                h = h + (h.to(x.dtype).float() - h).detach()
            ref = reference(h, *params, EPS)
        if output.out is not None:
            out_diff = out_diff.merged(compare(output.out[chunk], ref.detach(), out_allowance(ref.detach(), out_dtype)))
        h_out = getattr(output, "h", None)
        if h_out is not None and r_chunk is not None:
            h_diff = h_diff.merged(compare(h_out[chunk], h.detach(), out_allowance(h.detach(), x.dtype)))
        if with_grads:
            if r_chunk is None:
                ref.backward(dy[chunk].float())
            else:
                torch.autograd.backward([ref, h], [dy[chunk].float(), dh[chunk].float()])
            dx_diff = dx_diff.merged(
                compare(output.grads.dx[chunk], x_chunk.grad, out_allowance(x_chunk.grad, x.dtype, GRAD_SLACK))
            )
            if r_chunk is not None and output.grads.dresidual is not None:
                dr_diff = dr_diff.merged(compare(output.grads.dresidual[chunk], r_chunk.grad,
                                                 out_allowance(r_chunk.grad, residual.dtype, GRAD_SLACK)))
    problems = []
    if output.out is not None and not out_diff.within_tolerance:
        problems.append(f"out max|Δ| {out_diff.max_abs:.3g} ({out_diff.worst_ratio:.1f}x the tolerance)")
    if not h_diff.within_tolerance:
        problems.append(f"h max|Δ| {h_diff.max_abs:.3g} ({h_diff.worst_ratio:.1f}x the tolerance)")
    if with_grads:
        checks = [("dx", dx_diff)]
        if residual is not None:
            if output.grads.dresidual is None:
                problems.append("dresidual missing")
            checks.append(("dresidual", dr_diff))
        param_slack = GRAD_SLACK * math.sqrt(rows)
        param_grads = (("dweight", output.grads.dweight, params[0]), ("dbias", output.grads.dbias, params[1]))
        for name, grad, param in param_grads:
            if param is None:
                continue
            if grad is None:
                problems.append(f"{name} missing")
                continue
            checks.append((name, compare(grad, param.grad, out_allowance(param.grad, grad.dtype, param_slack))))
        problems += [f"{name} max|Δ| {diff.max_abs:.3g} ({diff.worst_ratio:.1f}x the tolerance)"
                     for name, diff in checks if not diff.within_tolerance]
    return "; ".join(problems)


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------


def measure_sol(x, dy, modes: Sequence[str], timer: Timer, repeats: int, case: Optional[Case] = None,
                variant: Variant = PLAIN) -> dict[str, float]:
    """SOL ms per mode at x's size: fwd = y.copy_(x); bwd = torch.add(x, dy, out=dx); fwdbwd = the two summed.
    For the residual and out_dtype variants (``variant.same_bytes_sol``), each of fwd and bwd is a copy between
    two buffers of half its bytes_moved each (same bytes, one kernel)."""
    if variant.same_bytes_sol:
        sol = {}
        for direction in ("fwd", "bwd"):
            if direction == "bwd" and all(mode == "fwd" for mode in modes):
                continue
            elements = max(1, bytes_moved(case, direction, variant) // 4)  # fp16 elements: half the bytes a side
            src = torch.empty(elements, dtype=torch.float16, device=x.device).normal_()
            dst = torch.empty_like(src)
            sol[direction] = statistics.median(timer(lambda: dst.copy_(src)) for _ in range(repeats))
            del src, dst
        if "bwd" in sol:
            sol["fwdbwd"] = sol["fwd"] + sol["bwd"]
        return {mode: sol[mode] for mode in modes}
    y = torch.empty_like(x)
    copy_ms = statistics.median(timer(lambda: y.copy_(x)) for _ in range(repeats))
    del y
    sol = {"fwd": copy_ms}
    if any(mode != "fwd" for mode in modes):
        dx = torch.empty_like(x)
        add_ms = statistics.median(timer(lambda: torch.add(x, dy, out=dx)) for _ in range(repeats))
        sol.update(fwdbwd=copy_ms + add_ms, bwd=add_ms)
    return {mode: sol[mode] for mode in modes}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_case(case: Case, modes: Sequence[str], backends: Sequence[str], timer: Timer, repeats: int,
                 device: torch.device, variant: Variant = PLAIN) -> list[Result]:
    """Times every backend in every mode at ``case`` after checking its output; failures become "fails" cells."""
    x, weight, bias, dy = make_inputs(case, device)
    residual, dh, dy = variant_inputs(case, variant, dy) if not variant.plain_layernorm else (None, None, dy)
    sol = measure_sol(x, dy, modes, timer, repeats, case, variant)
    results = []
    for backend in backends:
        cells = [Result(case, mode, backend, sol_ms=sol[mode], variant=variant) for mode in modes]
        try:
            runner = PROVIDERS[backend].runner(x, weight, bias, dy, variant, residual, dh)
        except Exception as error:  # noqa: BLE001 - a provider that refuses gets "fails" cells
            for cell in cells:
                cell.error = error_text(error)
        else:
            for cell in cells:
                _measure_cell(cell, runner, timer, repeats, x, dy, variant, residual, dh)
            del runner
        for cell in cells:
            if cell.error:
                _log(f"  fails: {backend} {cell.mode} at {case.label}: {cell.error}")
            elif cell.mismatch:
                _log(f"  MISMATCH: {backend} {cell.mode} at {case.label}: {cell.mismatch}")
        results.extend(cells)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _measure_cell(cell: Result, runner, timer: Timer, repeats: int, x, dy, variant: Variant = PLAIN,
                  residual=None, dh=None) -> None:
    try:
        step = runner.step(cell.mode)
        # The first call is also the warm-up.
        cell.mismatch = reference_mismatch(x, runner.weight, runner.bias, dy, step(), variant, residual, dh)
        cell.repeat_ms = [timer(step) for _ in range(repeats)]
    except Exception as error:  # noqa: BLE001
        cell.error = error_text(error)
        cell.repeat_ms = []


def run_benchmark(cases: Sequence[Case], modes: Sequence[str], backends: Sequence[str], timer: Timer, repeats: int,
                  device: torch.device, variant: Variant = PLAIN) -> list[Result]:
    results = []
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        _log(f"[{index}/{len(cases)}] {case.label}: {','.join(modes)} x {','.join(backends)} "
             f"({time.perf_counter() - started:.0f} s elapsed)")
        results.extend(measure_case(case, modes, backends, timer, repeats, device, variant))
    return results


@dataclass
class HostOverhead:
    """CPU µs per forward call, autograd off (no_grad) and on (inputs require grad), and per forward+backward step
    (the fwdbwd mode's step); None when it failed."""

    backend: str
    us_no_grad: Optional[float] = None
    us_grad: Optional[float] = None
    us_fwdbwd: Optional[float] = None
    error: str = ""

    def to_json(self) -> dict:
        return {"backend": self.backend, "us_no_grad": self.us_no_grad, "us_grad": self.us_grad,
                "us_fwdbwd": self.us_fwdbwd, "error": self.error or None}


def host_us_per_call(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Wall time of ``calls`` back-to-back calls without synchronizing, per call, after a warm-up."""
    for _ in range(HOST_WARMUP_CALLS):
        fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    _synchronize(device)
    return elapsed / calls * 1e6


def measure_host_overhead(backends: Sequence[str], device: torch.device, calls: int,
                          variant: Variant = PLAIN) -> list[HostOverhead]:
    x, weight, bias, dy = make_inputs(HOST_CASE, device)
    residual, dh, dy = variant_inputs(HOST_CASE, variant, dy) if not variant.plain_layernorm else (None, None, dy)
    overheads = []
    for backend in backends:
        entry = HostOverhead(backend)
        try:
            runner = PROVIDERS[backend].runner(x, weight, bias, dy, variant, residual, dh)
            entry.us_no_grad = host_us_per_call(runner.step("fwd"), calls, device)
            entry.us_grad = host_us_per_call(runner.forward_tracking_grad, calls, device)
            entry.us_fwdbwd = host_us_per_call(runner.step("fwdbwd"), max(1, calls // 4), device)
        except Exception as error:  # noqa: BLE001
            entry.error = error_text(error)
        overheads.append(entry)
    return overheads


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def time_cell(result: Optional[Result]) -> str:
    """ms with 4 decimals, "!" appended on a reference mismatch; "fails" if it raised; "N/A" if not run."""
    if result is None:
        return "N/A"
    if result.error:
        return "fails"
    return f"{result.median_ms:.4f}" + ("!" if result.mismatch else "")


def ratio_cell(numerator: Optional[Result], denominator: Optional[Result]) -> str:
    times = [r.median_ms if r is not None else None for r in (numerator, denominator)]
    if None in times:
        return "N/A"
    return f"{times[0] / times[1]:.2f}×"


def format_mode_table(mode: str, cases: Sequence[Case], backends: Sequence[str], results: Sequence[Result]) -> str:
    """The seed's table (Rows | Hidden | Dtype | Bias | Torch | CuTeDSL | Triton (ms) | Torch/CuTeDSL), then the
    other backends' ms, the SOL ms, and GB/s and % SOL for every backend that ran."""
    by_key = {result.key: result for result in results}
    extra = [backend for backend in backends if backend not in SEED_BACKENDS]
    title = lambda backend: PROVIDERS[backend].title  # noqa: E731
    header = (["Rows", "Hidden", "Dtype", "Bias"] + [f"{title(b)} (ms)" for b in SEED_BACKENDS] + ["Torch/CuTeDSL"]
              + [f"{title(b)} (ms)" for b in extra] + ["SOL (ms)"]
              + [column for b in backends for column in (f"{title(b)} GB/s", f"{title(b)} % SOL")])
    align = ["r", "r", "l", "c"] + ["r"] * (len(header) - 4)
    body = []
    for case in cases:
        cell = {b: by_key.get((case.rows, case.hidden, dtype_name(case.dtype), case.bias, mode, b))
                for b in PROVIDERS}
        sol_ms = next((r.sol_ms for r in cell.values() if r is not None and r.sol_ms), None)
        row = [str(case.rows), str(case.hidden), dtype_name(case.dtype), "✅" if case.bias else "❌"]
        row += [time_cell(cell[b]) for b in SEED_BACKENDS] + [ratio_cell(cell["torch"], cell["cutedsl"])]
        row += [time_cell(cell[b]) for b in extra] + [f"{sol_ms:.4f}" if sol_ms else "N/A"]
        for b in backends:
            result = cell[b]
            ok = result is not None and result.median_ms is not None
            row += [f"{result.gbps:.0f}" if ok else "-", f"{result.pct_sol:.0f}%" if ok and result.pct_sol else "-"]
        body.append(row)
    return render_table(header, align, body)


def format_host_table(overheads: Sequence[HostOverhead]) -> str:
    fmt = lambda us, entry: f"{us:.1f}" if us is not None else ("fails" if entry.error else "N/A")  # noqa: E731
    body = [[PROVIDERS[o.backend].title, fmt(o.us_no_grad, o), fmt(o.us_grad, o), fmt(o.us_fwdbwd, o)]
            for o in overheads]
    return render_table(["Backend", "no_grad (µs/call)", "inputs require grad (µs/call)", "fwd+bwd step (µs)"],
                        ["l", "r", "r", "r"], body)


def variant_lines(variant: Variant) -> list[str]:
    """What the tables measure when the variant is not plain LayerNorm, and its bytes and SOL."""
    if variant.plain_layernorm:
        return []
    lines = [f"Variant: {variant.label}."]
    if variant.op == "rmsnorm":
        lines.append("RMSNorm: out = x * rstd * w (+ b), rstd = 1/sqrt(mean(x^2) + eps); torch = F.rms_norm, "
                     "quack = quack.rmsnorm.rmsnorm, liger = LigerRMSNormFunction (no bias), compile = "
                     "torch.compile(rmsnorm_ref).")
    if variant.residual:
        lines.append("Fused residual: out, h = norm(x + r) with h = x + r in x's dtype returned; fwd+bwd sends dy "
                     "into out and dh into h (x and r both get dh_total). torch/compile = the unfused x + r then the "
                     "norm; quack = rmsnorm(residual=r, prenorm=True). Bytes: fwd reads x, r and writes out, h; "
                     "bwd reads h, dy, dh and writes dx (= dr).")
        lines.append("x and r are autograd leaves: x.grad and r.grad are two tensors, so the gradient is written "
                     "(or copied) twice; the second write is not counted in the bytes." if variant.leaf_inputs else
                     "x and r are outputs of an upstream op, as in a model (an autograd Function whose backward "
                     "takes the gradient without a copy or a kernel), not leaves: one gradient tensor serves both.")
    if variant.out_dtype is not None:
        lines.append(f"out_dtype {dtype_name(variant.out_dtype)}: out and dy in that dtype, dx in x's; torch = the "
                     "norm then .to(out_dtype).")
    if variant.same_bytes_sol:
        lines.append("SOL of this variant: fwd and bwd are each a copy between two fp16 buffers of half their bytes "
                     "(one kernel moving the same bytes); fwd+bwd = the sum.")
    return lines


def header_lines(env: dict, timer: Timer, repeats: int, unavailable: dict[str, str],
                 variant: Variant = PLAIN) -> list[str]:
    on_gpu = env["gpu"]
    versions = " · ".join(f"{name} {version}" for name, version in env["versions"].items() if version)
    lines = []
    if not on_gpu:
        lines += [f"**{NOT_PERFORMANCE_BANNER}**: CPU tensors, tiny shapes, wall-clock timing; the figures only show "
                  "that the command runs.", ""]
    lines += [
        "# vibe_kernels LayerNorm benchmark",
        f"Device: {env['device']} · {versions}",
        f"Timing: {timer.describe()}; a cell is the median of {repeats} repeat(s).",
        "The seed's \"VibeTensor (Adapter)\" 0.0251 ms figure timed asynchronous dispatch (the call returned before "
        "the kernel ran), not kernel time. "
        + ("These tables are kernel time from CUDA events; " if on_gpu
           else "With a GPU these tables are kernel time from CUDA events; ")
        + "host dispatch cost per call is a separate table below, never mixed in.",
        "GB/s counts the minimal bytes: fwd 2·M·N·s (read x, write out); fwd+bwd 5·M·N·s (also read x and dy, "
        "write dx); bwd 3·M·N·s; s = element size; weight, bias, mean and rstd not counted.",
        "% SOL = SOL time / backend time, SOL timed in this run at the same size: fwd = y.copy_(x); "
        "fwd+bwd = that copy + torch.add(x, dy, out=dx); bwd = the add.",
        "fwd+bwd step = forward, then out.backward(dy) with x, weight, bias requiring grad (grads set to None inside "
        "the step); quack = layernorm_fwd then layernorm_bwd with its stats. torch and liger get weight/bias in x's "
        "dtype, the others fp32.",
        "Cells: \"fails\" = the provider raised at this shape; \"!\" = output differs from the fp32 reference "
        "(MISMATCH); \"N/A\" = not run.",
    ]
    lines += variant_lines(variant)
    lines += [f"Unavailable: {name} ({reason})" for name, reason in unavailable.items()]
    return lines


def report_text(cases, modes, backends, results, overheads, host_calls, on_gpu, variant: Variant = PLAIN) -> str:
    sections = []
    suffix = "" if on_gpu else f" — {NOT_PERFORMANCE_BANNER}"
    what = "" if variant.plain_layernorm else f" — {variant.label}"
    for mode in modes:
        sections.append(f"### {MODE_TITLES[mode]}{what}{suffix}\n\n"
                        f"{format_mode_table(mode, cases, backends, results)}")
    if overheads:
        shape = f"{HOST_CASE.rows}×{HOST_CASE.hidden} {dtype_name(HOST_CASE.dtype)} +bias"
        sections.append(
            f"### Host dispatch overhead (CPU µs per forward call, {shape}, {host_calls} calls back to back without "
            f"sync, after warm-up; the fwd+bwd step: {max(1, host_calls // 4)} steps){suffix}\n\n{format_host_table(overheads)}"
        )
    mismatches = [r for r in results if r.mismatch]
    if mismatches:
        sections.append("\n".join(f"MISMATCH: {r.backend} {r.mode} at {r.case.label}: {r.mismatch}"
                                  for r in mismatches))
    return "\n\n".join(sections)


# ----------------------------------------------------------------------------------------------------------------
# JSON, baseline and the regression check
# ----------------------------------------------------------------------------------------------------------------


def _package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info(device: torch.device, argv: Sequence[str]) -> dict:
    triton_version = _package_version("triton")
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (no GPU)",
        "gpu": device.type == "cuda",
        "versions": {
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "quack-kernels": _package_version("quack-kernels"), "liger-kernel": _package_version("liger-kernel"),
            "nvidia-cutlass-dsl": _package_version("nvidia-cutlass-dsl"),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "vibe_kernels.layernorm.bench", *argv]),
    }


def results_document(environment, timer, repeats, results, overheads, unavailable, variant: Variant = PLAIN) -> dict:
    return {
        "format": JSON_FORMAT,
        "environment": environment,
        "timing": timer.describe(),
        "host_hidden": timer.on_gpu and timer.hide_host,
        "repeats": repeats,
        "variant": variant.to_json(),
        "bytes_model": ("fwd 2*M*N*s, fwdbwd 5*M*N*s, bwd 3*M*N*s (s = element size)" if not variant.same_bytes_sol
                        else "fwd M*N*(s + s_out (+ 2 s with the residual)), bwd M*N*(2 s + s_out (+ s)); "
                             "SOL: a copy of the same bytes"),
        "results": [result.to_json() for result in results],
        "host_overhead": [entry.to_json() for entry in overheads],
        "unavailable": unavailable,
    }


def variant_from_json(document: Optional[dict]) -> Variant:
    """The run-level variant of a bench JSON (plain LayerNorm for documents written before variants existed)."""
    if not document:
        return PLAIN
    out_dtype = document.get("out_dtype")
    residual = bool(document.get("residual", False))
    # Before leaf_inputs existed, the residual variant's x and r were leaves.
    return Variant(document.get("op", "layernorm"), residual, DTYPES[out_dtype] if out_dtype else None,
                   bool(document.get("leaf_inputs", residual)))


def load_baseline(path: Path) -> dict:
    """Reads a bench JSON written by --json or --save-baseline; ValueError says what is wrong with it."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read baseline {path}: {error}") from None
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list) or not results:
        raise ValueError(f"baseline {path} has no 'results' list (write one with --save-baseline)")
    try:
        for record in results:
            record_key(record)
            if record["dtype"] not in DTYPES or record["mode"] not in MODES or record["backend"] not in PROVIDERS:
                raise ValueError(f"unknown dtype, mode or backend in {record}")
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"baseline {path} has a malformed result record: {error}") from None
    return document


def baseline_plan(records: Sequence[dict]) -> tuple[list[Case], tuple[str, ...], tuple[str, ...]]:
    """The cases, modes and backends a baseline holds, in first-seen order."""
    cases = list(dict.fromkeys(Case(r["rows"], r["hidden"], DTYPES[r["dtype"]], r["bias"]) for r in records))
    modes = tuple(dict.fromkeys(r["mode"] for r in records))
    backends = tuple(dict.fromkeys(r["backend"] for r in records))
    return cases, modes, backends


@dataclass(frozen=True)
class Regression:
    key: ResultKey
    baseline_ms: float
    current_ms: Optional[float]  # None: the backend now fails at this shape

    @property
    def slowdown(self) -> float:
        """Fractional slowdown (0.1 = 10% slower); inf when it now fails."""
        return math.inf if self.current_ms is None else self.current_ms / self.baseline_ms - 1.0


@dataclass(frozen=True)
class CheckReport:
    tolerance: float
    compared: int
    regressions: tuple[Regression, ...]
    not_measured: tuple[ResultKey, ...]  # timed in the baseline, absent from this run

    @property
    def passed(self) -> bool:
        return self.compared > 0 and not self.regressions


def compare_with_baseline(baseline: Iterable[dict], current: Iterable[dict], tolerance: float) -> CheckReport:
    """Pure: compares the current run's median ms with the baseline's, cell by cell (JSON result records).

    A cell regresses when it is more than ``tolerance`` slower, or fails now where the baseline had a time.
    Baseline cells without a time (they failed then) are skipped; cells absent from the current run (backend not
    installed now) are listed as not measured, and do not fail the check by themselves.
    """
    current_by_key = {record_key(record): record for record in current}
    compared, regressions, not_measured = 0, [], []
    for record in baseline:
        baseline_ms = record.get("median_ms")
        if not baseline_ms:
            continue
        key = record_key(record)
        now = current_by_key.get(key)
        if now is None:
            not_measured.append(key)
            continue
        compared += 1
        current_ms = now.get("median_ms")
        if current_ms is None or current_ms > baseline_ms * (1.0 + tolerance):
            regressions.append(Regression(key, baseline_ms, current_ms))
    return CheckReport(tolerance, compared, tuple(regressions), tuple(not_measured))


def format_check_report(report: CheckReport, baseline_path: Path) -> str:
    lines = [f"### Performance check against {baseline_path} (tolerance {100 * report.tolerance:g}% slower)", ""]
    lines.append(f"{report.compared} cell(s) compared.")
    for regression in sorted(report.regressions, key=lambda r: -r.slowdown):
        if regression.current_ms is None:
            lines.append(f"REGRESSION {key_label(regression.key)}: {regression.baseline_ms:.4f} ms -> fails now")
        else:
            lines.append(f"REGRESSION {key_label(regression.key)}: {regression.baseline_ms:.4f} ms -> "
                         f"{regression.current_ms:.4f} ms (+{100 * regression.slowdown:.1f}%)")
    for key in report.not_measured:
        lines.append(f"not measured in this run (not compared): {key_label(key)}")
    if report.passed:
        lines.append("PASS: no backend is more than the tolerance slower than the baseline.")
    elif not report.compared:
        lines.append("FAIL: nothing was compared (no baseline cell was measured in this run).")
    else:
        lines.append(f"FAIL: {len(report.regressions)} regression(s).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------------


def write_plot(path: Path, results: Sequence[Result], modes: Sequence[str], backends: Sequence[str]) -> str:
    """Writes GB/s against N per backend (and the SOL copy), one panel per mode; returns a message for the user."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (f"--plot: matplotlib is not installed (pip install matplotlib, or the package's [bench] extra); "
                f"{path} not written")
    figure, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, mode in zip(axes[0], modes):
        mode_results = [r for r in results if r.mode == mode]
        series = [("SOL", "k", "--",
                   lambda r: gb_per_s(bytes_moved(r.case, mode, r.variant), r.sol_ms) if r.sol_ms else None)]
        series += [(PROVIDERS[b].title, colors[i % len(colors)], "-",
                    lambda r, b=b: r.gbps if r.backend == b else None) for i, b in enumerate(backends)]
        for label, color, style, rate in series:
            # One line per (M, dtype), so shapes that differ only in M are not joined; one legend entry per series.
            points = sorted({(r.case.rows, dtype_name(r.case.dtype), r.case.hidden, rate(r)) for r in mode_results
                             if rate(r)})
            groups = dict.fromkeys((rows, dtype) for rows, dtype, _, _ in points)
            for index, group in enumerate(groups):
                hidden = [p[2] for p in points if p[:2] == group]
                rates = [p[3] for p in points if p[:2] == group]
                axis.plot(hidden, rates, linestyle=style, color=color, marker="o", markersize=4,
                          label=label if index == 0 else None)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("N (hidden)")
        axis.set_ylabel("GB/s (minimal bytes)")
        axis.set_title(MODE_TITLES[mode])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"wrote {path}"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    _log(f"wrote {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    environment = environment_info(device, sys.argv[1:] if argv is None else argv)

    baseline_records, baseline_hid_host = None, False
    if args.check is not None:
        given = [flag for flag, value in (("--shapes", args.shapes), ("--mode", args.mode), ("--dtype", args.dtype),
                                          ("--bias/--no-bias", args.bias), ("--op", args.op),
                                          ("--residual", args.residual), ("--out-dtype", args.out_dtype),
                                          ("--residual-inputs", args.residual_inputs))
                 if value is not None]
        if given:
            parser.error(f"--check takes the shapes and modes from the baseline; drop {', '.join(given)}")
        try:
            baseline = load_baseline(args.check)
        except ValueError as error:
            parser.error(str(error))
        baseline_records = baseline["results"]
        baseline_hid_host = bool(baseline.get("host_hidden", False))
        if args.backends:
            baseline_records = [r for r in baseline_records if r["backend"] in args.backends]
        cases, modes, requested = baseline_plan(baseline_records)
        variant = variant_from_json(baseline.get("variant"))
        baseline_device = baseline.get("environment", {}).get("device")
        if baseline_device != environment["device"]:
            _log(f"warning: the baseline was measured on {baseline_device!r}, this run is on "
                 f"{environment['device']!r}")
    else:
        if args.residual_inputs is not None and not args.residual:
            parser.error("--residual-inputs needs --residual")
        variant = Variant(args.op or "layernorm", bool(args.residual), args.out_dtype,
                          args.residual is True and args.residual_inputs == "leaves")
        if variant.out_dtype is not None and args.dtype == variant.out_dtype:
            variant = replace(variant, out_dtype=None)
        bias = args.bias if args.bias is not None or variant.op != "rmsnorm" else False  # RMSNorm: no bias by default
        cases = resolve_cases(args.shapes or (("seed",) if on_gpu else ("tiny",)), args.dtype, bias)
        modes = args.mode or DEFAULT_MODES
        requested = args.backends or tuple(PROVIDERS)

    unavailable = {name: PROVIDERS[name].unavailable_reason(device) for name in requested}
    unavailable = {name: reason for name, reason in unavailable.items() if reason}
    backends = [name for name in requested if name not in unavailable]
    checking = baseline_records is not None
    repeats = args.repeats or (3 if checking else 1)
    host_calls = args.host_calls or (GPU_HOST_CALLS if on_gpu else CPU_HOST_CALLS)
    measure_host = args.host_overhead if args.host_overhead is not None else not checking
    hide_host = args.hide_host if args.hide_host is not None else (baseline_hid_host if checking else True)
    timer = Timer(on_gpu, args.warmup_ms, args.rep_ms, hide_host)

    print("\n".join(header_lines(environment, timer, repeats, unavailable, variant)) + "\n", flush=True)
    if not backends:
        print("No requested backend is available here; nothing to measure.")
        return 1
    results = run_benchmark(cases, modes, backends, timer, repeats, device, variant)
    overheads = measure_host_overhead(backends, device, host_calls, variant) if measure_host else []
    print(report_text(cases, modes, backends, results, overheads, host_calls, on_gpu, variant))

    document = results_document(environment, timer, repeats, results, overheads, unavailable, variant)
    for path in (args.json, args.save_baseline):
        if path is not None:
            _write_json(path, document)
    if args.plot is not None:
        _log(write_plot(args.plot, results, modes, backends))
    if not checking:
        return 0
    report = compare_with_baseline(baseline_records, document["results"], args.tolerance)
    print("\n" + format_check_report(report, args.check))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
