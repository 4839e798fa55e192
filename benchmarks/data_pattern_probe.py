"""Does the backward's speed follow the dtype or the data? (fourteenth session's lead: the CuTeDSL RMSNorm backward
at 4096x8192 runs at ~80% of a same-size add in fp16 against ~90% in bf16, with the same SASS but for the
conversions, while Triton's backward is as fast in both.)

    python benchmarks/data_pattern_probe.py            # on the GPU (about a minute)

Per dtype (fp16, bf16) and bit pattern of x and dy ("own": randn in that dtype; "other": the other 16-bit dtype's
randn bits, reinterpreted; "zero": all zeros; "half": randn with the low 8 mantissa bits cleared, for fp16): a
device copy of x, torch.add(x, dy), and the RMSNorm backward (no mean, fp32 weight, dw wanted) of both backends'
launchers with their default configs, in ms (the bench's timer: median GPU time, L2 flushed, host dispatch
hidden) and as % of the add, and the
larger backend's error against the fp32 reference on the first 256 rows (dx and dw, each relative to its largest
magnitude when that is above 1; the bit patterns are all finite).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    import torch

    from vibe_kernels.layernorm import _triton
    from vibe_kernels.layernorm._cutedsl import launch
    from vibe_kernels.layernorm.bench import gpu_ms_host_hidden
    from vibe_kernels.layernorm.reference import norm_bwd_ref_fp32, rmsnorm_rstd_ref

    rows, hidden = 4096, 8192
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    gen = torch.Generator(device=device).manual_seed(0)
    randn = {dt: (torch.randn(rows, hidden, device=device, generator=gen).to(dt),
                  torch.randn(rows, hidden, device=device, generator=gen).to(dt))
             for dt in (torch.float16, torch.bfloat16)}
    weight = 1 + 0.5 * torch.randn(hidden, device=device, generator=gen)
    dw = torch.empty(hidden, device=device)

    def bench(fn) -> float:
        return gpu_ms_host_hidden(fn, 10, 60)

    print(f"{'dtype':9} {'bits':6} {'copy':>8} {'add':>8} {'cutedsl':>8} {'%add':>5} {'triton':>8} {'%add':>5}  err")
    for dtype, other in ((torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)):
        patterns = {"own": randn[dtype], "other": tuple(t.view(dtype) for t in randn[other]),
                    "zero": tuple(torch.zeros_like(t) for t in randn[dtype])}
        if dtype == torch.float16:
            patterns["half"] = tuple((t.view(torch.int16) & ~0xFF).view(dtype) for t in randn[dtype])
        for name, (x, dy) in patterns.items():
            assert bool(torch.isfinite(x).all() and torch.isfinite(dy).all())
            rstd = rmsnorm_rstd_ref(x, 1e-5).float()
            dx = torch.empty_like(x)
            copy_out = torch.empty_like(x)
            t_copy = bench(lambda: copy_out.copy_(x))
            t_add = bench(lambda: torch.add(x, dy, out=dx))
            ref_dx, ref_dw, _ = norm_bwd_ref_fp32(dy[:256], x[:256], weight, None, rstd[:256])
            times, errors = [], []
            for backend in (launch, _triton):
                dx.fill_(float("nan"))
                backend.layernorm_bwd(dy[:256], x[:256], weight, None, rstd[:256], dx[:256], dw, None, rms=True)
                errors.append(max(float((dx[:256].float() - ref_dx.float()).abs().max()
                                        / max(1.0, float(ref_dx.float().abs().max()))),
                                  float((dw - ref_dw).abs().max() / max(1.0, float(ref_dw.abs().max())))))
                times.append(bench(lambda b=backend: b.layernorm_bwd(dy, x, weight, None, rstd, dx, dw, None,
                                                                     rms=True)))
            print(f"{str(dtype)[6:]:9} {name:6} {t_copy:8.4f} {t_add:8.4f} {times[0]:8.4f} {100 * t_add / times[0]:5.0f} "
                  f"{times[1]:8.4f} {100 * t_add / times[1]:5.0f}  {max(errors):.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
