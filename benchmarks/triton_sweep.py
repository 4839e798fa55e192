"""Sweep Triton LayerNorm configs per shape on a GPU and print % of the same-size copy (the forward SOL).

Usage: python benchmarks/triton_sweep.py [--mode fwd|bwd|both] [--json out.json]
An exploration tool for choosing the heuristic table in vibe_kernels/layernorm/_triton.py.
"""

import argparse
import itertools
import json
import sys

import torch
import triton
from triton.testing import do_bench

from vibe_kernels.layernorm import _triton as T
from vibe_kernels.layernorm.reference import layernorm_bwd_ref, layernorm_mean_ref, layernorm_ref, layernorm_rstd_ref

SHAPES = [
    (32768, 256, torch.bfloat16), (32768, 1024, torch.bfloat16), (32768, 4096, torch.bfloat16),
    (32768, 8192, torch.bfloat16), (32768, 16384, torch.bfloat16), (32768, 32768, torch.bfloat16),
    (32768, 65536, torch.bfloat16), (16384, 131072, torch.bfloat16), (8192, 262144, torch.bfloat16),
    (4096, 8192, torch.float16), (4096, 4096, torch.float16), (8192, 8192, torch.float32), (4095, 5000, torch.float16),
    (32768, 512, torch.bfloat16), (32768, 2048, torch.bfloat16), (8192, 16384, torch.float32),
]


def fwd_candidates(n):
    bn = triton.next_power_of_2(n)
    cands = [T.fwd_config(n, torch.bfloat16)]
    if bn > n and bn <= T.MAX_RESIDENT_FWD:  # head + tail variants for rows far from a power of two
        tail = triton.next_power_of_2(n - bn // 2)
        for bm, nw in itertools.product([1, 2, 4], [4, 8, 16]):
            cands.append(T.FwdConfig(bm, bn // 2, nw, False, tail))
    if bn <= T.MAX_RESIDENT_FWD:
        for bm, nw in itertools.product([1, 2, 4, 8, 16, 32], [2, 4, 8, 16, 32]):
            if bm * bn > 32768 or bm * bn < 1024 or bm * bn // (32 * nw) > 64 or bm * bn // (32 * nw) < 8:
                continue
            cands.append(T.FwdConfig(bm, bn, nw, False))
    for cb, nw, pps in itertools.product([1024, 2048, 4096, 8192, 16384], [4, 8, 16, 32], [0, 1, 2, 4]):
        if cb <= bn and cb < n and 8 <= cb // (32 * nw) <= 32 and (pps == 0 or n >= 16384) and (nw < 32 or n >= 16384):
            cands.append(T.FwdConfig(1, cb, nw, True, 0, pps))
    return list(dict.fromkeys(cands))


def bwd_candidates(n):
    bn = triton.next_power_of_2(n)
    cands = [T.bwd_config(n, torch.bfloat16)]
    if bn <= 16384:
        for bm, nw, pps in itertools.product([1, 2, 4, 8, 16, 32], [4, 8, 16, 32], [1, 2, 4, 8]):
            if bm * bn > 16384 or bm * bn < 1024 or bm * bn // (32 * nw) > 16 or bm * bn // (32 * nw) < 4:
                continue
            if pps * nw > 64:
                continue
            cands.append(T.BwdConfig(bm, bn, nw, False, pps))
    for bm, cb, nw, pps in itertools.product([2, 4], [512, 1024, 2048], [4, 8], [4]):
        if cb <= bn and bn >= 8192 and bm * cb // (32 * nw) >= 4 and bm * cb // (32 * nw) <= 32:
            cands.append(T.BwdConfig(bm, cb, nw, True, pps))
    return list(dict.fromkeys(cands))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="both")
    p.add_argument("--json", default=None)
    p.add_argument("--shapes", default=None, help="comma list of MxN (bf16)")
    args = p.parse_args()
    shapes = SHAPES
    if args.shapes:
        shapes = [(int(s.split("x")[0]), int(s.split("x")[1]), torch.bfloat16) for s in args.shapes.split(",")]
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    results = []
    for m, n, dt in shapes:
        x = torch.randn(m, n, device="cuda", dtype=dt)
        w = torch.randn(n, device="cuda")
        b = torch.randn(n, device="cuda")
        y = torch.empty_like(x)
        mean = torch.empty(m, device="cuda")
        rstd = torch.empty(m, device="cuda")
        copy_ms = do_bench(lambda: y.copy_(x), return_mode="median", warmup=10, rep=30)
        ref = layernorm_ref(x, w, b, 1e-6) if args.mode != "bwd" else None
        line = {"M": m, "N": n, "dtype": str(dt), "copy_ms": copy_ms}
        if args.mode in ("fwd", "both"):
            best = None
            for cfg in fwd_candidates(n):
                y.fill_(float("nan"))
                try:
                    T.layernorm_fwd(x, w, b, 1e-6, y, mean, rstd, config=cfg)
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 - exploring configs; report and move on
                    print("  fwd", cfg, "failed:", type(e).__name__, str(e)[:100], flush=True)
                    continue
                err = (y.float() - ref.float()).abs().max().item()
                ms = do_bench(lambda: T.layernorm_fwd(x, w, b, 1e-6, y, mean, rstd, config=cfg), return_mode="median", warmup=10, rep=30)
                if best is None or ms < best[0]:
                    best = (ms, cfg, err)
            heur = T.fwd_config(n, dt)
            hms = do_bench(lambda: T.layernorm_fwd(x, w, b, 1e-6, y, mean, rstd, config=heur), return_mode="median", warmup=10, rep=30)
            print(f"FWD {m}x{n} {dt}: copy {copy_ms:.4f}  heuristic {hms:.4f} ({copy_ms/hms:.0%})  best {best[0]:.4f} ({copy_ms/best[0]:.0%}) {best[1]} err {best[2]:.2e}", flush=True)
            line.update(fwd_heur_ms=hms, fwd_best_ms=best[0], fwd_best=repr(best[1]))
        if args.mode in ("bwd", "both"):
            dy = torch.randn_like(x)
            dx = torch.empty_like(x)
            dw = torch.empty(n, device="cuda")
            db = torch.empty(n, device="cuda")
            T.layernorm_fwd(x, w, b, 1e-6, y, mean, rstd)
            check_rows = m if m * n <= (1 << 27) else 256  # the fp32 reference of a 4 GB tensor does not fit
            dx_ref, dw_ref, db_ref = layernorm_bwd_ref(dy[:check_rows], x[:check_rows], w, mean[:check_rows], rstd[:check_rows])
            ref = None
            torch.cuda.empty_cache()
            add_ms = do_bench(lambda: torch.add(x, dy, out=dx), return_mode="median", warmup=10, rep=30)
            best = None
            for cfg in bwd_candidates(n):
                dx.fill_(float("nan"))
                try:
                    T.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, config=cfg)
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001
                    print("  bwd", cfg, "failed:", type(e).__name__, str(e)[:100], flush=True)
                    continue
                err = (dx[:check_rows].float() - dx_ref.float()).abs().max().item()
                errw = ((dw - dw_ref).abs().max() / dw_ref.abs().max()).item() if check_rows == m else float("nan")
                ms = do_bench(lambda: T.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, config=cfg), return_mode="median", warmup=10, rep=30)
                if best is None or ms < best[0]:
                    best = (ms, cfg, err, errw)
            heur = T.bwd_config(n, dt)
            hms = do_bench(lambda: T.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, config=heur), return_mode="median", warmup=10, rep=30)
            print(f"BWD {m}x{n} {dt}: add {add_ms:.4f}  heuristic {hms:.4f} ({add_ms/hms:.0%})  best {best[0]:.4f} ({add_ms/best[0]:.0%}) {best[1]} err {best[2]:.2e} dw {best[3]:.1e}", flush=True)
            line.update(add_ms=add_ms, bwd_heur_ms=hms, bwd_best_ms=best[0], bwd_best=repr(best[1]))
        results.append(line)
        x = y = ref = dx_ref = dy = dx = None
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
