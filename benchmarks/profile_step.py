"""GPU kernels of one LayerNorm forward+backward step (torch.profiler): each kernel's mean duration and the mean idle
gap before it, per backend and shape, as the bench runs the step (x, weight, bias requiring grad; fp32 weight and
bias). Shows what the backward's second launch (the dw/db column sum) and the gaps between launches cost.

    python benchmarks/profile_step.py --shapes 4096x8192xfloat16,4096x4096xfloat16 --backends cutedsl,triton
"""
import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from vibe_kernels.layernorm import layernorm

parser = argparse.ArgumentParser()
parser.add_argument("--shapes", default="4096x8192xfloat16,4096x4096xfloat16,4095x5000xfloat16")
parser.add_argument("--backends", default="cutedsl,triton")
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()
print(torch.cuda.get_device_name())

for spec in args.shapes.split(","):
    m, n, dtype = spec.split("x")
    m, n, dtype = int(m), int(n), getattr(torch, dtype)
    for backend in args.backends.split(","):
        x = torch.randn(m, n, device="cuda", dtype=dtype, requires_grad=True)
        w = torch.randn(n, device="cuda", requires_grad=True)
        b = torch.randn(n, device="cuda", requires_grad=True)
        dy = torch.randn_like(x)

        def step():
            out = layernorm(x, w, b, backend=backend)
            out.backward(dy)
            x.grad = w.grad = b.grad = None

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
        kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda e: e.time_range.start)
        per_step = len(kernels) // args.steps
        durations, gaps = defaultdict(list), defaultdict(list)
        for i, e in enumerate(kernels[: per_step * args.steps]):
            slot = (i % per_step, e.name[:60])
            durations[slot].append(e.time_range.end - e.time_range.start)
            if i:
                gaps[slot].append(e.time_range.start - kernels[i - 1].time_range.end)
        spans = [kernels[(s + 1) * per_step - 1].time_range.end - kernels[s * per_step].time_range.start
                 for s in range(args.steps)]
        print(f"\n{spec} {backend}: {per_step} kernels a step, first-to-last span {sorted(spans)[len(spans) // 2]:.1f} "
              f"us (median)")
        for slot in sorted(durations):
            d = sorted(durations[slot])[len(durations[slot]) // 2]
            g = sorted(gaps[slot])[len(gaps[slot]) // 2] if gaps[slot] else float("nan")
            print(f"  {slot[0]} {slot[1]:60s} {d:8.1f} us  gap before {g:6.1f} us")
