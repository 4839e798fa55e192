"""Triton LayerNorm backward: the default config against the same config with L2 eviction hints (``l2_hints``), per
shape, as ms and % of the backward's SOL (a same-size ``torch.add(x, dy, out=dx)``: reads two, writes one).

Each config's dx, dw and db are checked against torch's autograd on fp32 copies first (dx poisoned before the run).
The time is the whole backward step: the kernel(s) and the dw/db column sum. GPU time, L2 flushed (the bench's
timer).

    python benchmarks/triton_bwd_probe.py --shapes 32768x1024,4096x4096xfloat16
"""
import argparse
import dataclasses

import torch

from vibe_kernels.layernorm import _triton
from vibe_kernels.layernorm.bench import gpu_ms_host_hidden


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="32768x256,32768x1024,4096x4096xfloat16")
    parser.add_argument("--dtype", default="bfloat16", help="for shapes without their own (MxNxdtype)")
    parser.add_argument("--repeats", type=int, default=1, help="time the configs this many times, alternating")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}")
    for spec in args.shapes.split(","):
        rows, hidden, *named = spec.split("x")
        rows, hidden = int(rows), int(hidden)
        dtype = getattr(torch, named[0] if named else args.dtype)
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        dy = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = torch.randn(hidden, device="cuda", generator=gen)
        b = torch.randn(hidden, device="cuda", generator=gen)
        xf = x.detach().float().clone().requires_grad_()
        wf, bf = w.clone().requires_grad_(), b.clone().requires_grad_()
        torch.nn.functional.layer_norm(xf, (hidden,), wf, bf, 1e-5).backward(dy.float())
        mean = x.float().mean(dim=1)
        rstd = torch.rsqrt(x.float().var(dim=1, unbiased=False) + 1e-5)
        dx, dw, db = torch.empty_like(x), torch.empty_like(w), torch.empty_like(b)
        added = torch.empty_like(x)
        sol = gpu_ms_host_hidden(lambda: torch.add(x, dy, out=added), 25, 100)
        default = _triton.bwd_config(hidden, dtype)
        configs = (default, dataclasses.replace(default, l2_hints=True))
        launches = []
        for config in configs:
            def launch(config=config):
                _triton.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, config=config)

            dx.fill_(float("nan"))
            launch()
            dx_err = (dx.float() - xf.grad).abs().max().item()
            dw_err = ((dw - wf.grad).abs().max() / wf.grad.abs().max()).item()
            db_err = ((db - bf.grad).abs().max() / bf.grad.abs().max()).item()
            if not (dx_err < 0.1 and dw_err < 1e-3 and db_err < 1e-3):
                raise AssertionError(f"{spec} {config}: dx err {dx_err}, dw rel {dw_err}, db rel {db_err}")
            launches.append(launch)
        times = [[] for _ in configs]
        for _ in range(args.repeats):
            for launch, samples in zip(launches, times):
                samples.append(gpu_ms_host_hidden(launch, 10, 40))
        cells = [f"hints={config.l2_hints} " + " ".join(f"{ms:.4f} ({100 * sol / ms:.0f}%)" for ms in samples)
                 for config, samples in zip(configs, times)]
        print(f"{rows}x{hidden} {dtype}: add {sol:.4f} ms; {'  '.join(cells)}  {default}")


if __name__ == "__main__":
    main()
