"""Sweep: CuTeDSL forward configs at small M (latency-bound rows), against Quack and the copy SOL.

For each (M, N) bf16 shape, the heuristic's tiling and variants that split the row over a cluster of 2/4/8 CTAs
(fewer vectors per thread) or use half the threads per row. Prints ms (do_bench median, L2 flushed) per variant.

    python benchmarks/cutedsl_small_m.py
"""
import dataclasses

import torch
from triton.testing import do_bench

from vibe_kernels.layernorm._cutedsl import config as cfg
from vibe_kernels.layernorm._cutedsl import launch

SHAPES = [(1, 4096), (1, 8192), (128, 4096), (128, 8192), (128, 16384), (512, 8192), (1024, 8192)]


def variants(hidden):
    base = cfg.fwd_config(hidden, 2, 8).tiling
    nvec = -(-hidden // 8)
    out = {"heuristic": base}
    for cluster in (2, 4, 8):
        c = base.cluster_n * cluster
        if c > cfg.MAX_CLUSTER:
            continue
        vecs = -(-nvec // (base.threads_per_row * c))
        if (c - 1) * base.threads_per_row * vecs * 8 >= hidden:
            continue
        out[f"cluster x{cluster}"] = dataclasses.replace(base, cluster_n=c, vecs_per_thread=vecs)
    if base.threads_per_row >= 64:
        t = base.threads_per_row // 2
        out["half threads"] = dataclasses.replace(base, threads_per_row=t, vecs_per_thread=-(-nvec // (t * base.cluster_n)),
                                                  rows_per_cta=max(1, cfg.MIN_CTA_THREADS // t))
    return out


def main():
    try:
        from quack.rmsnorm import layernorm_fwd as quack_fwd
    except ImportError:
        quack_fwd = None
    print(f"device: {torch.cuda.get_device_name()}")
    for rows, hidden in SHAPES:
        x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(hidden, device="cuda")
        out = torch.empty_like(x)
        stats = torch.empty(2, rows, device="cuda")
        ref = ((x.float() - x.float().mean(-1, keepdim=True)) * torch.rsqrt(x.float().var(-1, unbiased=False, keepdim=True) + 1e-6) * w).to(x.dtype)
        line = [f"{rows}x{hidden}", f"copy {do_bench(lambda: out.copy_(x)):.4f}"]
        if quack_fwd is not None:
            line.append(f"quack {do_bench(lambda: quack_fwd(x, w, None, eps=1e-6)):.4f}")
        for name, tiling in variants(hidden).items():
            conf = cfg.FwdConfig(tiling)
            try:
                launch.layernorm_fwd(x, w, None, 1e-6, out, stats[0], stats[1], config=conf)
                err = float((out.float() - ref.float()).abs().max())
                ms = do_bench(lambda: launch.layernorm_fwd(x, w, None, 1e-6, out, stats[0], stats[1], config=conf))
                line.append(f"{name} {ms:.4f}{'' if err < 0.1 else ' WRONG'}")
            except Exception as exc:  # noqa: BLE001
                line.append(f"{name} failed {type(exc).__name__}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
