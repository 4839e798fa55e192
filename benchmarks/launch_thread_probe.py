"""Triton launch cost from the main thread, a Python thread and inside an autograd backward (host-overhead-probes.txt,
part 3). Run on a GPU machine: python benchmarks/launch_thread_probe.py"""
import time, sys, threading
import torch
from vibe_kernels.layernorm import _triton as T
x = torch.randn(8, 1024, device="cuda", dtype=torch.bfloat16)
w = torch.randn(1024, device="cuda"); b = torch.randn(1024, device="cuda")
dy = torch.randn_like(x); dx = torch.empty_like(x); dw = torch.empty_like(w); db = torch.empty_like(b)
mean = x.float().mean(1); rstd = x.float().var(1).rsqrt()
part = torch.empty(4, 1024, device="cuda")
def raw_bwd(): T.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db)
def kernel_only():
    T._layernorm_bwd_resident_kernel[(4,)](dy, x, w, mean, rstd, dx, part, part, 1024, 1024, 1024, 8, N=1024, BLOCK_M=4, BLOCK_N=1024, HAS_W=True, NEED_DW=True, NEED_DB=True, num_warps=4)
def empty5():
    for _ in range(5): torch.empty((8, 1024), device="cuda")
def timeit(f, label):
    for _ in range(50): f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(500): f()
    print(f"{label:30} {(time.perf_counter() - t) / 500 * 1e6:7.1f} us/call", flush=True)
for f in (raw_bwd, kernel_only, empty5):
    timeit(f, "main " + f.__name__)
    th = threading.Thread(target=timeit, args=(f, "thread " + f.__name__)); th.start(); th.join()
# inside autograd backward
class Probe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        return a.clone()
    @staticmethod
    def backward(ctx, g):
        t = time.perf_counter()
        for _ in range(20): FN()
        Probe.times.append((time.perf_counter() - t) / 20 * 1e6)
        return g
Probe.times = []
xg = x.clone().requires_grad_()
for FN in (raw_bwd, kernel_only, empty5):
    Probe.times = []
    for _ in range(30): Probe.apply(xg).backward(dy)
    print(f"in autograd backward {FN.__name__:20} {sorted(Probe.times)[15]:7.1f} us/call")
