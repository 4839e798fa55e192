"""Where the host time of one layernorm() call goes, on the GPU machine: each piece of the call path timed alone
(µs per call, 2000 calls), then cProfile of the whole call (top functions by own time).

    python benchmarks/host_profile.py [triton|cutedsl ...]
"""
import cProfile
import io
import pstats
import sys
import time

import torch

from vibe_kernels.layernorm import _backends, api, layernorm

backends = sys.argv[1:] or ["triton"]
x = torch.randn(8, 1024, device="cuda", dtype=torch.bfloat16)
w = torch.randn(1024, device="cuda")
b = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
dy = torch.randn_like(x)


def per_call(fn, calls=2000):
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


out = torch.empty_like(x)
stats = torch.empty(2, 8, device="cuda")
pieces = {
    "torch.empty(8x1024)": lambda: torch.empty((8, 1024), dtype=torch.bfloat16, device=x.device),
    "torch.empty_like(x)": lambda: torch.empty_like(x),
    "torch.cuda.current_device()": torch.cuda.current_device,
    "torch.cuda.is_available()": torch.cuda.is_available,
    "x.device": lambda: x.device,
    "torch.compiler.is_compiling()": torch.compiler.is_compiling,
    "torch.is_grad_enabled()": torch.is_grad_enabled,
    "check_inputs": lambda: api.check_inputs(x, w, b, 1e-6),
    "_rows_view": lambda: api._rows_view(x),
    "F.layer_norm": lambda: torch.nn.functional.layer_norm(x, (1024,), w.to(x.dtype), b),
    "x.view(8, 1024)": lambda: x.view(8, 1024),
}
for name in backends:
    pieces[f"resolve_backend({name})"] = lambda name=name: _backends.resolve_backend(name, x.device)
    pieces[f"resolve_backend(auto)"] = lambda: _backends.resolve_backend("auto", x.device)
    mod = _backends.load_backend(name)
    pieces[f"{name}.layernorm_fwd (launcher only)"] = lambda mod=mod: mod.layernorm_fwd(
        x, w, b, 1e-6, out, stats[0], stats[1])
    pieces[f"layernorm({name}) no grad"] = lambda name=name: layernorm(x, w, b, backend=name)
    pieces[f"layernorm({name}) grad fwd"] = lambda name=name: layernorm(xg, wg, bg, backend=name)

    def step(name=name):
        xg.grad = wg.grad = bg.grad = None
        layernorm(xg, wg, bg, backend=name).backward(dy)
    pieces[f"layernorm({name}) fwd+bwd step"] = step
if "triton" in backends:
    from vibe_kernels.layernorm import _triton
    kern = _triton._layernorm_fwd_resident_kernel
    cfg = _triton.fwd_config(1024, x.dtype)
    flags = dict(HAS_W=True, HAS_B=True, STORE_MEAN=True, STORE_RSTD=True, IS_RMS=False, HAS_RESIDUAL=False,
                 STORE_RESIDUAL=False, RESIDUAL_IN_FP32=False, ROW_ALIGN=16)
    # The launcher's argument order: x, out, w, b, mean, rstd, residual, residual_out, strides (x, out, residual,
    # residual_out), rows, eps.
    args = (x, out, w, b, stats[0], stats[1], None, None, x.stride(0), out.stride(0), None, None, 8, 1e-6)
    # Every constexpr by name (``_launch`` stores them all with the compiled kernel).
    consts = dict(N=1024, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TAIL_N=cfg.tail_n, AFFINE_FIRST=cfg.affine_first,
                  L2_HINTS=cfg.l2_hints, **flags)
    pieces["triton kernel[grid](...)"] = lambda: kern[(2,)](*args, num_warps=cfg.num_warps, **consts)
    pieces["_triton._launch"] = lambda: _triton._launch(kern, (2,), cfg.num_warps, *args, **consts)
    pieces["_launch_key"] = lambda: _triton._launch_key(id(kern), 0, cfg.num_warps, args, consts)
    pieces["get_current_stream"] = lambda: _triton.triton.runtime.driver.active.get_current_stream(0)
if "cutedsl" in backends:
    from vibe_kernels.layernorm._cutedsl import launch as cute_launch

    cute_launch._fwd_plans.clear()
    cute_launch.layernorm_fwd(x, w, b, 1e-6, out, stats[0], stats[1])
    ((bare, _config),) = cute_launch._fwd_plans.values()
    ptrs = (x.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr())
    stream = cute_launch._raw_stream(0)
    # x, w, b, out, mean, rstd, residual, residual_out, rows, row strides (x, out, residual, residual_out), eps,
    # the persistent kernel's grid (unused here), stream
    pieces["cutedsl bare TVM FFI call (ints)"] = lambda: bare(*ptrs, None, None, 8, 1024, 1024, 0, 0, 1e-6, 1, stream)
    pieces["cutedsl _raw_stream"] = lambda: cute_launch._raw_stream(0)
print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
for name, fn in pieces.items():
    print(f"{name:42} {per_call(fn):8.2f} us/call", flush=True)
for name in backends:
    for label, fn in ((f"no grad {name}", lambda: layernorm(x, w, b, backend=name)),
                      (f"step {name}", pieces[f"layernorm({name}) fwd+bwd step"])):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(1000):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(22)
        print(f"\n## cProfile {label} (1000 calls)\n" + "\n".join(buf.getvalue().splitlines()[6:32]))
