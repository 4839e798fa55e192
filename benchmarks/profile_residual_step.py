"""CUDA kernels of one RMSNorm forward+backward step with and without the fused residual (torch.profiler), on
leaf x and residual as the bench has them: shows every kernel and copy the step launches.

    python benchmarks/profile_residual_step.py [--backend cutedsl]
"""
import argparse

import torch
from torch.profiler import profile, ProfilerActivity
from vibe_kernels.layernorm import rmsnorm, layernorm
parser = argparse.ArgumentParser()
parser.add_argument("--backend", default="cutedsl")
for backend in (parser.parse_args().backend,):
  for residual in (False, True):
    x = torch.randn(4096, 8192, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    r = torch.randn_like(x, requires_grad=True) if residual else None
    w = torch.randn(8192, device="cuda", requires_grad=True)
    dy = torch.randn_like(x); dh = torch.randn_like(x)
    def step():
        if residual:
            out, h = rmsnorm(x, w, residual=r, return_residual=True, backend=backend)
            torch.autograd.backward([out, h], [dy, dh])
        else:
            out = rmsnorm(x, w, backend=backend)
            out.backward(dy)
        x.grad = None; w.grad = None
        if r is not None: r.grad = None
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5): step()
        torch.cuda.synchronize()
    print(backend, "residual" if residual else "plain")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70))
