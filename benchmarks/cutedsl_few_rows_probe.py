"""CuTeDSL backward at few rows: dw/db from column CTAs of the same launch (``BwdConfig.column_tile``, the default
there) against the previous path (the kernel writes dx, then the Triton backend's ``weight_grads_from_rows`` sums
dw/db in a second launch) and against the Triton backend's own backward, GPU time (the bench's timer: L2 flushed,
host dispatch hidden) and % of a same-size add (the backward's bytes: reads x and dy, writes dx).

Correctness first, each run: dx bit-identical between the two CuTeDSL paths; dw and db against an fp64 reference.

    python benchmarks/cutedsl_few_rows_probe.py [--shapes 128x4096,...] [--repeats 3]
"""
import argparse
import dataclasses

import torch

from probe_common import parse_shape, time_alternating
from vibe_kernels.layernorm import _triton
from vibe_kernels.layernorm._cutedsl import config as cfg
from vibe_kernels.layernorm._cutedsl import launch

DEFAULT_SHAPES = "128x4096,128x8192,256x1024,200x2048xfloat16,8x1024,64x4096,100x1000xfloat16,256x4096,32x8192"


def check(name, got, want, tol):
    err = (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
    status = "ok" if err <= tol else "FAIL"
    return f"{name} {err:.1e} {status}", err <= tol


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}")
    failures = 0
    for spec in args.shapes.split(","):
        rows, hidden, dtype = parse_shape(spec, "bfloat16")
        gen = torch.Generator(device="cuda").manual_seed(rows * 7 + hidden)
        x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        dy = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = 1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        b = 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        mean = torch.empty(rows, device="cuda")
        rstd = torch.empty(rows, device="cuda")
        launch.layernorm_fwd(x, w, b, 1e-6, torch.empty_like(x), mean, rstd)
        vec = 16 // x.element_size() if hidden % (16 // x.element_size()) == 0 else 1
        column = cfg.bwd_config(hidden, x.element_size(), vec, rows=rows)
        previous = dataclasses.replace(column, column_tile=0)
        xhat = (x.double() - mean.double()[:, None]) * rstd.double()[:, None]
        ref_dw = (dy.double() * xhat).sum(0)
        ref_db = dy.double().sum(0)
        outs = {}
        cells = []
        for label, config in (("column", column), ("previous", previous)):
            dx = torch.full_like(x, float("nan"))
            dw = torch.full_like(w, float("nan"))
            db = torch.full_like(b, float("nan"))
            launch.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, config=config)
            outs[label] = (dx, dw, db)
            for name, got, want in (("dw", dw, ref_dw), ("db", db, ref_db)):
                text, ok = check(f"{label} {name}", got, want, 1e-5)
                failures += not ok
                cells.append(text)
        same_dx = torch.equal(outs["column"][0], outs["previous"][0])
        failures += not same_dx
        cells.append(f"dx {'identical' if same_dx else 'DIFFERS'}")
        add_out = torch.empty_like(x)
        bufs = {k: (torch.empty_like(x), torch.empty_like(w), torch.empty_like(b)) for k in ("c", "p", "t")}
        launches = [
            lambda: torch.add(x, dy, out=add_out),
            lambda: launch.layernorm_bwd(dy, x, w, mean, rstd, *bufs["c"], config=column),
            lambda: launch.layernorm_bwd(dy, x, w, mean, rstd, *bufs["p"], config=previous),
            lambda: _triton.layernorm_bwd(dy, x, w, mean, rstd, *bufs["t"]),
        ]
        times = time_alternating(launches, args.repeats)
        add_ms = min(times[0])
        timing = "  ".join(f"{label} " + "/".join(f"{ms:.4f}" for ms in samples)
                           + f" ({100 * add_ms / min(samples):.0f}%)"
                           for label, samples in zip(("add", "column", "previous", "triton"), times))
        print(f"{rows}x{hidden} {str(dtype).split('.')[-1]} column_tile={column.column_tile} "
              f"ctas={column.column_ctas(hidden)}: {timing}\n    {'  '.join(cells)}", flush=True)
    print(f"failures: {failures}")


if __name__ == "__main__":
    main()
