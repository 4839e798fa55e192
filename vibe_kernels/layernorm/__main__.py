"""``python -m vibe_kernels.layernorm``: check every available backend against the fp32 reference; time on a GPU.

Without a GPU, the Triton backend runs under the interpreter (TRITON_INTERPRET=1, set here before triton is
imported) at small sizes, and no timing is printed: timings need a GPU.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ._backends import cutedsl_unavailable_reason, triton_unavailable_reason  # noqa: E402
from .api import layernorm  # noqa: E402
from .reference import layernorm_ref  # noqa: E402

# Max |out - ref| allowed, relative to max |ref|: about one ulp of the dtype (bf16 has 8 bits of mantissa).
OUT_RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-6}


def _check(backend: str, rows: int, hidden: int, dtype: torch.dtype, with_bias: bool, device: str) -> tuple[bool, str]:
    gen = torch.Generator(device="cpu").manual_seed(rows * 131 + hidden)
    x = torch.randn(rows, hidden, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    weight = torch.randn(hidden, generator=gen).to(device)
    bias = torch.randn(hidden, generator=gen).to(device) if with_bias else None
    dy = torch.randn(rows, hidden, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    if bias is not None:
        bias.requires_grad_(True)
    out = layernorm(x, weight, bias, backend=backend)
    out.backward(dy)
    grads = [x.grad, weight.grad] + ([bias.grad] if bias is not None else [])
    params = [x, weight] + ([bias] if bias is not None else [])
    ref_params = [p.detach().double().requires_grad_(True) for p in params]
    ref = layernorm_ref(ref_params[0], ref_params[1], ref_params[2] if bias is not None else None)
    ref.backward(dy.double())
    out_err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    grad_errs = [((g.double() - r.grad).abs().max() / r.grad.abs().max()).item() for g, r in zip(grads, ref_params)]
    grad_tol = 4 * OUT_RTOL[dtype] + 1e-5 * rows**0.5
    ok = out_err <= OUT_RTOL[dtype] and all(e <= grad_tol for e in grad_errs)
    names = ["dx", "dw", "db"]
    detail = f"out {out_err:.1e}  " + "  ".join(f"{n} {e:.1e}" for n, e in zip(names, grad_errs))
    return ok, detail


def main(argv: list[str] | None = None) -> int:
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    backends = ["torch"]
    if not triton_unavailable_reason(torch.device(device)):
        backends.append("triton")
    else:
        print(f"triton backend skipped: {triton_unavailable_reason(torch.device(device))}")
    if on_gpu and not cutedsl_unavailable_reason(torch.device(device)):
        backends.append("cutedsl")
    else:
        print(f"cutedsl backend skipped: {cutedsl_unavailable_reason(torch.device(device)) or 'needs a GPU'}")
    if on_gpu:
        print(f"device: {torch.cuda.get_device_name()}")
        shapes = [(4096, 8192, torch.float16, True), (4096, 8192, torch.bfloat16, False), (4095, 5000, torch.float16, True),
                  (1024, 1024, torch.float32, True), (7, 111, torch.bfloat16, True), (4, 65536, torch.bfloat16, True)]
    else:
        print("no GPU: correctness only, Triton under the interpreter at small sizes (timings need a GPU)")
        shapes = [(8, 256, torch.float16, True), (5, 111, torch.bfloat16, False), (3, 769, torch.float32, True),
                  (2, 1128, torch.bfloat16, True)]
    failures = 0
    print(f"{'backend':8} {'rows':>6} {'hidden':>7} {'dtype':9} bias  result  max relative error")
    for backend in backends:
        for rows, hidden, dtype, with_bias in shapes:
            try:
                ok, detail = _check(backend, rows, hidden, dtype, with_bias, device)
            except NotImplementedError as exc:
                ok, detail = True, f"not supported: {exc}"
            failures += not ok
            print(f"{backend:8} {rows:6d} {hidden:7d} {str(dtype).replace('torch.', ''):9} "
                  f"{'yes' if with_bias else 'no ':4}  {'ok  ' if ok else 'FAIL'}    {detail}")
    if on_gpu:
        from . import bench

        bench_status = bench.main(["--shapes", "seed", "--backends", ",".join(backends)] + list(argv or []))
        failures += int(bench_status != 0)
    print("all backends match the reference" if failures == 0 else f"{failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
