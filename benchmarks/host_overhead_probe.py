"""Host-overhead probe used for docs/perf-notes.md: CPU µs per call / per fwd+bwd step of tiny shapes, against
empty autograd Functions, plus a torch.profiler table of our step. Run on a GPU machine: python benchmarks/host_overhead_probe.py"""
import time, sys
import torch
from vibe_kernels.layernorm import layernorm, api
x = torch.randn(8, 1024, device="cuda", dtype=torch.bfloat16)
w = torch.randn(1024, device="cuda"); b = torch.randn(1024, device="cuda")
dy = torch.randn_like(x)
xg = x.clone().requires_grad_(); wg = w.clone().requires_grad_(); bg = b.clone().requires_grad_()
class Ident(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        return a.clone()
    @staticmethod
    def backward(ctx, g):
        return g
class Three(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w, b):
        m = torch.empty(8, device="cuda"); r = torch.empty(8, device="cuda")
        ctx.mark_non_differentiable(m, r)
        ctx.save_for_backward(a, w, m, r)
        return a.clone(), m, r
    @staticmethod
    def backward(ctx, g, gm, gr):
        return g, None, None
class ThreeNoMat(Three):
    @staticmethod
    def forward(ctx, a, w, b):
        ctx.set_materialize_grads(False)
        return Three.forward(ctx, a, w, b)
def ident_step():
    xg.grad = None
    Ident.apply(xg).backward(dy)
def three_step():
    xg.grad = None
    Three.apply(xg, wg, bg)[0].backward(dy)
def three_nomat_step():
    xg.grad = None
    ThreeNoMat.apply(xg, wg, bg)[0].backward(dy)
def ours_step():
    xg.grad = wg.grad = bg.grad = None
    layernorm(xg, wg, bg, backend="triton").backward(dy)
def ours_fwd_only():
    layernorm(xg, wg, bg, backend="triton")
def ours_fwd_apply_only():
    api.LayerNormFunction.apply(xg, wg, bg, 1e-6, "triton", False, False, False)
def timeit(f):
    for _ in range(50): f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(500): f()
    host = (time.perf_counter() - t) / 500 * 1e6
    torch.cuda.synchronize()
    print(f"{f.__name__:20} host {host:7.1f} us/call", flush=True)
for f in (ident_step, three_step, three_nomat_step, ours_fwd_only, ours_fwd_apply_only, ours_step):
    timeit(f)
torch.autograd.set_grad_enabled(True)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(20): ours_step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=50))
