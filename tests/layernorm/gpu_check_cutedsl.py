"""GPU check of the CuTeDSL LayerNorm backend: numerics against an fp64 reference over many shapes, then timings.

Run on a CUDA machine with nvidia-cutlass-dsl:  python tests/layernorm/gpu_check_cutedsl.py [--quick] [--no-bench]
Prints one line per case (max errors scaled by their tolerance: <= 1 passes) and exits non-zero on any failure.
Outputs (out, mean, rstd, dx, dw, db) are filled with NaN before every call, so an unwritten element fails.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

import torch

from vibe_kernels.layernorm import _cutedsl
from vibe_kernels.layernorm._cutedsl import config, launch

EPS = 1e-5
# Tolerance per output dtype: |got - ref| <= atol + rtol * |ref| (rtol ~ 2 ulp of the output dtype).
RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-9, torch.float32: 2e-5}
ATOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-4}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _excess(got: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> float:
    """max(|got - ref| / (atol + rtol |ref|)): <= 1 passes; NaN anywhere gives inf."""
    got = got.double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - ref).abs() / (atol + rtol * ref.abs())).max().item()


class _Reference:
    """fp64 LayerNorm forward and backward from the same (rounded) inputs, computed in row chunks so that the
    widest shapes (4096 x 262144 fp32) fit next to the kernel's own tensors; dw/db accumulate over chunks."""

    def __init__(self, x, weight, bias, dy):
        self.x, self.weight, self.bias, self.dy = x, weight, bias, dy
        self.chunk = max(1, 2**25 // x.shape[1])

    def chunks(self):
        w = self.weight.double() if self.weight is not None else None
        for start in range(0, self.x.shape[0], self.chunk):
            rows = slice(start, start + self.chunk)
            xd = self.x[rows].double()
            mean = xd.mean(dim=1, keepdim=True)
            xd -= mean
            rstd = torch.rsqrt((xd * xd).mean(dim=1, keepdim=True) + EPS)
            xhat = xd.mul_(rstd)
            y = xhat * w if w is not None else xhat.clone()
            if self.bias is not None:
                y += self.bias.double()
            dyd = self.dy[rows].double()
            g = dyd * w if w is not None else dyd
            dx = rstd * (g - g.mean(dim=1, keepdim=True) - xhat * (g * xhat).mean(dim=1, keepdim=True))
            yield rows, y, mean.squeeze(1), rstd.squeeze(1), dx, (dyd * xhat).sum(dim=0), dyd.sum(dim=0)


def _rows(m: int, n: int, dtype, layout: str) -> torch.Tensor:
    """x of shape (m, n): contiguous, strided rows (a column slice of a wider tensor), or a misaligned start."""
    if layout == "contig":
        return torch.randn(m, n, device="cuda", dtype=dtype)
    if layout == "strided":
        return torch.randn(m, n + 8, device="cuda", dtype=dtype)[:, :n]
    if layout == "stride+3":
        return torch.randn(m, n + 3, device="cuda", dtype=dtype)[:, :n]
    if layout == "offset1":
        return torch.randn(m, n + 1, device="cuda", dtype=dtype)[:, 1:]
    raise ValueError(layout)


def check_case(m, n, dtype, affine, layout, extra: bool) -> tuple[bool, str]:
    """One shape: forward, backward; with ``extra``, also the forward without statistics and a second backward
    (bitwise equal: deterministic dw/db)."""
    torch.manual_seed(m * 7919 + n)
    x = _rows(m, n, dtype, layout)
    dy = _rows(m, n, dtype, layout)
    wdt = {"none": None, "w_same": dtype, "wb_fp32": torch.float32, "wb_same": dtype}[affine]
    weight = torch.randn(n, device="cuda", dtype=wdt) if wdt is not None else None
    bias = torch.randn(n, device="cuda", dtype=wdt) if affine.startswith("wb") else None
    ref = _Reference(x, weight, bias, dy)

    out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
    mean = torch.full((m,), float("nan"), device="cuda", dtype=torch.float32)
    rstd = torch.full((m,), float("nan"), device="cuda", dtype=torch.float32)
    _cutedsl.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd)
    torch.cuda.synchronize()
    errs = {}
    if extra:
        out2 = torch.full_like(out, float("nan"))
        _cutedsl.layernorm_fwd(x, weight, bias, EPS, out2, None, None)
        torch.cuda.synchronize()
        errs["out_nostats"] = 0.0 if torch.equal(out2, out) else math.inf
        del out2

    dx = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
    dweight = torch.full((n,), float("nan"), device="cuda", dtype=wdt) if weight is not None else None
    dbias = torch.full((n,), float("nan"), device="cuda", dtype=bias.dtype) if bias is not None else None
    # The backward reads the forward's statistics (checked against the reference below).
    _cutedsl.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias)
    torch.cuda.synchronize()
    if extra and dweight is not None:
        dw_again = torch.full_like(dweight, float("nan"))
        db_again = torch.full_like(dbias, float("nan")) if dbias is not None else None
        _cutedsl.layernorm_bwd(dy, x, weight, mean, rstd, torch.empty_like(dx), dw_again, db_again)
        torch.cuda.synchronize()
        same = torch.equal(dw_again, dweight) and (dbias is None or torch.equal(db_again, dbias))
        errs["determ"] = 0.0 if same else math.inf

    dw_ref = torch.zeros(n, device="cuda", dtype=torch.float64)
    db_ref = torch.zeros(n, device="cuda", dtype=torch.float64)
    worst = {"out": 0.0, "mean": 0.0, "rstd": 0.0, "dx": 0.0}
    for rows, y_r, mean_r, rstd_r, dx_r, dw_part, db_part in ref.chunks():
        worst["out"] = max(worst["out"], _excess(out[rows], y_r, ATOL[dtype], RTOL[dtype]))
        worst["mean"] = max(worst["mean"], _excess(mean[rows], mean_r, 1e-5, 1e-4))
        worst["rstd"] = max(worst["rstd"], _excess(rstd[rows], rstd_r, 1e-5, 1e-4))
        worst["dx"] = max(worst["dx"], _excess(dx[rows], dx_r, ATOL[dtype], 2 * RTOL[dtype]))
        dw_ref += dw_part
        db_ref += db_part
    errs.update(worst)
    # dw/db sum M rows: fp32 accumulation error grows with sqrt(M), and the result is rounded to its dtype.
    grow = math.sqrt(m)
    if dweight is not None:
        errs["dw"] = _excess(dweight, dw_ref, 1e-3 * grow, 2 * RTOL[dweight.dtype])
    if dbias is not None:
        errs["db"] = _excess(dbias, db_ref, 1e-3 * grow, 2 * RTOL[dbias.dtype])
    ok = all(e <= 1.0 for e in errs.values())
    return ok, " ".join(f"{k}={v:.3g}" for k, v in errs.items())


def _cases(quick: bool):
    """(m, n, dtype, affine, layout, extra): per (N, dtype), M=1 once, M=7 contiguous + a strided/misaligned layout,
    M=4096 contiguous (+ strided rows for N <= 16384); affine modes rotate so each (N, dtype) meets several."""
    ns = (1, 111, 256, 769, 1024, 4096, 5000, 8192, 16384, 32768, 65536, 262144)
    if quick:
        ns = (111, 1024, 5000, 65536)
    affines = ("wb_fp32", "w_same", "none", "wb_same")
    strided = ("strided", "stride+3", "offset1")
    for i, n in enumerate(ns):
        for j, dtype in enumerate(DTYPES):
            r = i + j
            yield 1, n, dtype, affines[r % 4], "contig", False
            yield 7, n, dtype, affines[(r + 1) % 4], "contig", True
            yield 7, n, dtype, affines[(r + 2) % 4], strided[r % 3], False
            yield 4096, n, dtype, affines[(r + 3) % 4], "contig", n == 4096
            if n <= 16384:
                yield 4096, n, dtype, affines[r % 4], "strided", False


def numerics(quick: bool, budget_s: float) -> int:
    failures = skipped = 0
    start = time.perf_counter()
    print(f"{'M':>5} {'N':>7} {'dtype':>5} {'affine':>8} {'layout':>8}  result  (error / tolerance, <= 1 passes)")
    for m, n, dtype, affine, layout, extra in _cases(quick):
        if time.perf_counter() - start > budget_s:
            skipped += 1
            continue
        label = f"{m:>5} {n:>7} {SHORT[dtype]:>5} {affine:>8} {layout:>8}"
        t0 = time.perf_counter()
        try:
            ok, detail = check_case(m, n, dtype, affine, layout, extra)
        except Exception as exc:  # noqa: BLE001 -- report and continue
            ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            traceback.print_exc(limit=4)
        failures += not ok
        print(f"{label}  {'ok  ' if ok else 'FAIL'}  {detail}  [{time.perf_counter() - t0:.1f}s]", flush=True)
    if skipped:
        print(f"time budget of {budget_s:.0f}s spent: {skipped} case(s) skipped")
    return failures


# The anchors' shapes (M, N, dtype), timed against a same-size copy (forward) and copy + add (forward+backward).
BENCH_SHAPES = [
    (4096, 8192, torch.bfloat16), (32768, 256, torch.bfloat16), (32768, 1024, torch.bfloat16),
    (32768, 4096, torch.bfloat16), (32768, 16384, torch.bfloat16), (4096, 8192, torch.float16),
    (4096, 16384, torch.float16), (4096, 4096, torch.float16), (32768, 8192, torch.bfloat16),
    (32768, 32768, torch.bfloat16), (32768, 65536, torch.bfloat16), (16384, 131072, torch.bfloat16),
    (8192, 262144, torch.bfloat16), (8192, 8192, torch.float32), (4095, 5000, torch.float16),
]


class _Problem:
    def __init__(self, m, n, dtype):
        self.x = torch.randn(m, n, device="cuda", dtype=dtype)
        self.dy = torch.randn_like(self.x)
        self.weight = torch.randn(n, device="cuda", dtype=torch.float32)
        self.bias = torch.randn(n, device="cuda", dtype=torch.float32)
        self.out, self.dx, self.y = (torch.empty_like(self.x) for _ in range(3))
        self.mean = torch.empty(m, device="cuda", dtype=torch.float32)
        self.rstd = torch.empty_like(self.mean)
        self.dweight, self.dbias = torch.empty_like(self.weight), torch.empty_like(self.bias)

    def fwd(self, config=None):
        launch.layernorm_fwd(self.x, self.weight, self.bias, EPS, self.out, self.mean, self.rstd, config=config)

    def bwd(self, config=None):
        launch.layernorm_bwd(self.dy, self.x, self.weight, self.mean, self.rstd, self.dx, self.dweight, self.dbias,
                             config=config)

    def copy(self):
        self.y.copy_(self.x)

    def copy_add(self):
        self.y.copy_(self.x)
        torch.add(self.x, self.dy, out=self.dx)


def _time(fn) -> float:
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn)


def bench() -> None:
    print(f"\n{'M':>6} {'N':>6} {'dtype':>5}  copy ms  fwd ms (% copy)    copy+add ms  fwd+bwd ms (% copy+add)  bwd ms")
    for m, n, dtype in BENCH_SHAPES:
        p = _Problem(m, n, dtype)
        t_copy, t_fwd = _time(p.copy), _time(p.fwd)
        t_copy_add, t_bwd = _time(p.copy_add), _time(p.bwd)
        t_fb = _time(lambda: (p.fwd(), p.bwd()))
        print(
            f"{m:>6} {n:>6} {SHORT[dtype]:>5}  {t_copy:.4f}  {t_fwd:.4f} ({100 * t_copy / t_fwd:5.1f}%)    {t_copy_add:.4f}"
            f"       {t_fb:.4f} ({100 * t_copy_add / t_fb:5.1f}%)       {t_bwd:.4f}",
            flush=True,
        )
        del p
    # Host cost per forward call on a tiny shape (launch-bound).
    x = torch.randn(8, 1024, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    w = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        _cutedsl.layernorm_fwd(x, w, w, EPS, out, None, None)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(1000):
        _cutedsl.layernorm_fwd(x, w, w, EPS, out, None, None)
    host_us = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    print(f"host cost per forward call (8x1024 bf16, no sync): {host_us:.1f} us; TVM FFI: {launch.uses_tvm_ffi()}")


def sweep() -> None:
    """Times alternative configs at a few shapes (tuning data for the heuristics in config.py)."""
    shapes = [(32768, 256, torch.bfloat16), (32768, 1024, torch.bfloat16), (4096, 8192, torch.bfloat16),
              (32768, 16384, torch.bfloat16), (32768, 65536, torch.bfloat16), (8192, 262144, torch.bfloat16)]
    for m, n, dtype in shapes:
        p = _Problem(m, n, dtype)
        elem = p.x.element_size()
        t_copy = _time(p.copy)
        t_copy_add = _time(p.copy_add)
        line = []
        for bpt in (32, 64, 128):
            for max_threads in (256, 512):
                c = config.fwd_config(n, elem, 16 // elem, bytes_per_thread=bpt, max_cta_threads=max_threads)
                t = c.tiling
                try:
                    ms = _time(lambda: p.fwd(c))
                    line.append(f"b{bpt}/t{t.threads_per_row}x{t.rows_per_cta}/c{t.cluster_n}:{100 * t_copy / ms:.0f}%")
                except Exception as exc:  # noqa: BLE001
                    line.append(f"b{bpt}/{max_threads}: {type(exc).__name__}")
        print(f"sweep fwd {m}x{n}: " + "  ".join(line), flush=True)
        line = []
        p.fwd()
        for bpt in (16, 32, 64):
            for cps in (1, 2, 4):
                c = config.bwd_config(n, elem, 16 // elem, bytes_per_thread=bpt, ctas_per_sm=cps)
                t = c.tiling
                try:
                    ms = _time(lambda: p.bwd(c))
                    line.append(f"b{bpt}/t{t.threads_per_row}x{t.rows_per_cta}/c{t.cluster_n}/s{cps}:{ms:.4f}")
                except Exception as exc:  # noqa: BLE001
                    line.append(f"b{bpt}/s{cps}: {type(exc).__name__}")
        print(f"sweep bwd {m}x{n} (copy+add {t_copy_add:.4f} ms, fwd {_time(p.fwd):.4f}): " + "  ".join(line), flush=True)
        del p


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--bench-only", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also time alternative configs")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the numerics before skipping")
    args = parser.parse_args()
    ok, reason = _cutedsl.is_available()
    if not ok:
        print(f"CuTeDSL backend unavailable: {reason}")
        return 2
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    t0 = time.perf_counter()
    failures = 0 if args.bench_only else numerics(args.quick, args.budget)
    print(f"numerics: {failures} failing case(s) [{time.perf_counter() - t0:.0f}s]", flush=True)
    if not args.no_bench:
        bench()
    if args.sweep:
        sweep()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
