"""``python -m vibe_kernels.layernorm.tune``: the opt-in tuner for the Triton backend's configs.

The default configs come from measured ladders (``_triton._FWD_LADDER`` / ``_BWD_LADDER``): no tuning happens on a
user's call path. This command times the candidate configs of each requested (N, dtype) on the current GPU, checks
each candidate's output against the fp32 reference first, and writes the fastest ones as JSON. Ship that file and
point ``VIBE_KERNELS_TRITON_CONFIGS`` at it (or call ``_triton.load_tuned_configs(path)``) to use them.

    python -m vibe_kernels.layernorm.tune --shapes 32768x4096,32768x16384 --dtype bf16 --out tuned-h100.json

Without a GPU it only runs with ``--allow-cpu`` (Triton interpreter, tiny shapes): the timings are then not
performance figures, but every candidate is still checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from typing import Callable, Sequence

import torch
import triton

from . import _triton
from ._triton import BwdConfig, FwdConfig
from .reference import layernorm_bwd_ref, layernorm_ref

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
DEFAULT_SHAPES = "32768x256,32768x1024,32768x4096,32768x8192,32768x16384,32768x32768,32768x65536"


def fwd_candidates(hidden: int, dtype: torch.dtype) -> list[FwdConfig]:
    """The heuristic's config first, then resident tiles (whole rows, several per program), head+tail rows for
    widths far from a power of two, chunked rows (one per program, or a persistent grid), and the chunked families
    the defaults took from probes: two-row blocks (``block_m`` = 2, the 16-bit rule from N = 6144) and rows whose
    first chunks are held in registers (``held_chunks``, the rule at (16384, 32768]); each with and without L2
    eviction hints."""
    padded = triton.next_power_of_2(hidden)
    # The tuner's weight and bias are fp32 (tune_shape): the heuristic as the launcher picks it for them.
    candidates = [_triton.fwd_config(hidden, dtype, wide_affine=dtype != torch.float32)]
    if padded > hidden >= 1024 and padded <= _triton.MAX_RESIDENT_FWD:
        tail = triton.next_power_of_2(hidden - padded // 2)
        candidates += [FwdConfig(rows, padded // 2, warps, False, tail)
                       for rows, warps in itertools.product((1, 2, 4), (4, 8, 16))]
    if padded <= _triton.MAX_RESIDENT_FWD:
        for rows, warps in itertools.product((1, 2, 4, 8, 16, 32), (2, 4, 8, 16, 32)):
            per_thread = rows * padded // (32 * warps)
            if 1024 <= rows * padded <= 32768 and 8 <= per_thread <= 64:
                candidates.append(FwdConfig(rows, padded, warps, False))
                if rows <= 2 * _triton.AFFINE_TILE_MAX_ROWS:  # at the tile's offsets: to the rule's bound and past it
                    candidates.append(FwdConfig(rows, padded, warps, False, affine_tile=True))
    for chunk, warps, per_sm in itertools.product((1024, 2048, 4096, 8192, 16384, 32768), (4, 8, 16, 32),
                                                  (0, 1, 2, 4)):
        wide = hidden >= 16384
        if chunk < hidden and chunk <= padded and 8 <= chunk // (32 * warps) <= 32 and (per_sm == 0 or wide) \
                and (warps < 32 or wide):
            candidates.append(FwdConfig(1, chunk, warps, True, 0, per_sm))
    for rows, chunk, warps, held in itertools.product((1, 2), (4096, 8192), (8, 16), (0, 1, 2)):
        # (one program per row block; held chunks must leave part of the row to stream; three or four held lost
        # wherever the sixteenth session measured them)
        if (rows, held) != (1, 0) and chunk <= padded and held * chunk < hidden \
                and 8 <= rows * chunk // (32 * warps) <= 32:
            candidates.append(FwdConfig(rows, chunk, warps, True, held_chunks=held))
    return _with_and_without_l2_hints(candidates)


def bwd_candidates(hidden: int, dtype: torch.dtype, max_programs_per_sm: int | None = None) -> list[BwdConfig]:
    """The heuristic's config first, then persistent resident tiles (rows of up to 8192 elements: held in
    registers, with and without a pipelined row loop; 16-bit rows up to MAX_RESIDENT_BWD: loaded twice) and, for
    wide rows, the chunked path's tiles.
    ``max_programs_per_sm`` drops the resident tiles with more programs per SM (the heuristic stays first, as the
    reference): one per SM keeps the dw/db workspace within SMs x N x 8 bytes."""
    padded = triton.next_power_of_2(hidden)
    candidates = [_triton.bwd_config(hidden, dtype)]
    if padded <= 8192:  # rows held in registers, with and without a pipelined row loop
        for rows, warps, per_sm, stages in itertools.product((1, 2, 4, 8, 16, 32), (4, 8, 16, 32), (1, 2, 4, 8),
                                                             (1, 3)):
            per_thread = rows * padded // (32 * warps)
            if 1024 <= rows * padded <= 16384 and 4 <= per_thread <= 16 and per_sm * warps <= 64:
                if max_programs_per_sm is None or per_sm <= max_programs_per_sm:
                    candidates.append(BwdConfig(rows, padded, warps, False, per_sm, stages=stages))
    elif padded <= _triton.MAX_RESIDENT_BWD and dtype != torch.float32:  # one row a program, loaded twice
        for warps, stages in itertools.product((16, 32), (1, 2)):
            candidates.append(BwdConfig(1, padded, warps, False, 1, reread=True, stages=stages))
    if padded >= 8192:
        for rows, chunk, warps, per_sm in itertools.product((2, 4), (512, 1024, 2048), (4, 8), (2, 4)):
            if chunk <= padded and 4 <= rows * chunk // (32 * warps) <= 32:
                candidates.append(BwdConfig(rows, chunk, warps, True, per_sm))
    candidates = _with_and_without_l2_hints(candidates)
    return candidates[:1] + [c for c in candidates[1:] if c.chunked or max_programs_per_sm is None
                             or c.programs_per_sm <= max_programs_per_sm]


def _with_and_without_l2_hints(candidates: list) -> list:
    """The candidates (the heuristic's first), each also with its L2 eviction hints switched, without duplicates."""
    flipped = [dataclasses.replace(c, l2_hints=not c.l2_hints) for c in candidates]
    return list(dict.fromkeys(candidates + flipped))


def _timer(on_gpu: bool) -> Callable[[Callable[[], object]], float]:
    if on_gpu:
        from .bench import gpu_ms_host_hidden  # GPU time: the launcher's host cost must not decide the ranking

        return lambda fn: gpu_ms_host_hidden(fn, warmup_ms=10, rep_ms=40)

    def wall_ms(fn):
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return wall_ms


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.float().abs().max().clamp_min(1e-30)
    return ((got.float() - want.float()).abs().max() / scale).item()


# Max |got - ref| / max |ref| accepted from a candidate: a few ulps of the dtype (candidates differ only in tiling).
CANDIDATE_RTOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}


def tune_shape(rows: int, hidden: int, dtype: torch.dtype, mode: str, device: torch.device, timer, log,
               max_programs_per_sm: int | None = None):
    """Times every candidate of ``mode`` ("fwd" or "bwd") at rows x hidden; returns (best config, best ms,
    heuristic ms, yardstick ms): the yardstick is a same-size copy (fwd) or add (bwd)."""
    gen = torch.Generator().manual_seed(rows * 7 + hidden)
    x = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=dtype)
    weight = torch.randn(hidden, generator=gen).to(device)
    bias = torch.randn(hidden, generator=gen).to(device)
    out = torch.empty_like(x)
    mean = torch.empty(rows, device=device)
    rstd = torch.empty(rows, device=device)
    _triton.layernorm_fwd(x, weight, bias, 1e-6, out, mean, rstd)
    if mode == "fwd":
        reference = layernorm_ref(x, weight, bias, 1e-6)
        yardstick = timer(lambda: out.copy_(x))
        candidates = fwd_candidates(hidden, dtype)

        def run(cfg):
            _triton.layernorm_fwd(x, weight, bias, 1e-6, out, mean, rstd, config=cfg)
        result = out
    else:
        dy = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=dtype)
        dx = torch.empty_like(x)
        dweight = torch.empty_like(weight)
        dbias = torch.empty_like(bias)
        reference = layernorm_bwd_ref(dy, x, weight, mean, rstd)[0]
        yardstick = timer(lambda: torch.add(x, dy, out=dx))
        candidates = bwd_candidates(hidden, dtype, max_programs_per_sm)

        def run(cfg):
            _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, config=cfg)
        result = dx
    best, best_ms, heuristic_ms = None, float("inf"), None
    for cfg in candidates:
        result.fill_(float("nan"))
        try:
            run(cfg)
        except Exception as exc:  # noqa: BLE001 - a candidate the compiler rejects is skipped, loudly
            log(f"  {mode} {cfg}: skipped ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        error = _relative_error(result, reference)
        if not error <= CANDIDATE_RTOL[dtype]:
            log(f"  MISMATCH {mode} {cfg}: relative error {error:.2e}; not a candidate")
            continue
        ms = timer(lambda: run(cfg))
        log(f"  {mode} {rows}x{hidden} {ms:.4f} ms ({yardstick / ms:.0%}) {cfg}")
        if heuristic_ms is None:
            heuristic_ms = ms  # the first candidate is the heuristic's
        if ms < best_ms:
            best, best_ms = cfg, ms
    return best, best_ms, heuristic_ms, yardstick


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        try:
            rows, hidden = (int(v) for v in token.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shapes are MxN, comma-separated; got {token!r}") from None
        if rows < 1 or hidden < 1:
            raise argparse.ArgumentTypeError(f"M and N must be >= 1; got {token!r}")
        shapes.append((rows, hidden))
    return shapes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vibe_kernels.layernorm.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=_parse_shapes, default=_parse_shapes(DEFAULT_SHAPES), help="MxN,MxN,...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--mode", choices=("fwd", "bwd", "both"), default="both")
    parser.add_argument("--out", required=True, help="JSON file for the tuned configs")
    parser.add_argument("--max-programs-per-sm", type=int, default=None,
                        help="backward: only resident tiles with at most this many programs per SM (1: the dw/db "
                             "workspace stays within SMs x N x 8 bytes)")
    parser.add_argument("--allow-cpu", action="store_true", help="run under the Triton interpreter without a GPU")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print("tuning needs a GPU (or --allow-cpu with TRITON_INTERPRET=1 to check the candidates)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = DTYPES[args.dtype]
    timer = _timer(on_gpu)
    print(f"device: {torch.cuda.get_device_name() if on_gpu else 'cpu (NOT PERFORMANCE FIGURES)'}; triton "
          f"{triton.__version__}; dtype {args.dtype}")
    tuned = {}
    modes = ("fwd", "bwd") if args.mode == "both" else (args.mode,)
    for rows, hidden in args.shapes:
        for mode in modes:
            best, best_ms, heuristic_ms, yardstick = tune_shape(rows, hidden, dtype, mode, device, timer,
                                                                lambda line: print(line, file=sys.stderr),
                                                                args.max_programs_per_sm)
            if best is None:
                print(f"{mode} {rows}x{hidden}: no candidate ran correctly", file=sys.stderr)
                return 1
            label = "copy" if mode == "fwd" else "add"
            print(f"{mode} {rows}x{hidden}: {label} {yardstick:.4f} ms; heuristic {heuristic_ms:.4f} ms "
                  f"({yardstick / heuristic_ms:.0%}); best {best_ms:.4f} ms ({yardstick / best_ms:.0%}) {best}")
            tuned[(mode, hidden, _triton._dtype_name(dtype))] = best
    _triton.save_tuned_configs(args.out, tuned)
    print(f"wrote {len(tuned)} configs to {args.out}; use them with {_triton.TUNED_CONFIGS_ENV}={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
