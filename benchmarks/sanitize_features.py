"""RMSNorm, the fused residual and out_dtype under compute-sanitizer (the LayerNorm sweep, sanitize_cases.py, runs
plain LayerNorm only): forward + backward at ragged N, odd M and the widest N, each output checked against the
fp64 reference (a sanity bound). Both backends run every case; the residual is in x's dtype with h rounded to it,
or in fp32 with h kept in fp32 (``residual_in_fp32``: dx is then written twice, in x's dtype and in fp32), and
its gradient flows through h too.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --report-api-errors no \\
        python benchmarks/sanitize_features.py [--backends cutedsl,triton] [--set features|rules]

``--set rules``: LayerNorm / RMSNorm at the shapes where the eleventh, sixteenth, eighteenth, twentieth,
twenty-first and twenty-second sessions' rules switch kernels (the CuTeDSL backward's staged loads and staged
statistics, the forward's four-CTA launch bound, clusters of any size for ragged rows and of at most 8 for the
ragged forward, the fused residual's staged backward, the persistent forward over unclustered rows (with a bias);
Triton's two-row blocks at N = 16384, held two-row blocks at N = 32768, the fp32-out blocks and the twenty-fourth
session's weight and bias at the tile's offsets; the twenty-fifth session's CuTeDSL forward rows of 2-4 KB in one
128-thread CTA), with M above one wave and not a multiple of the CTA's rows (and one one-wave case). The CuTeDSL
backward sums its dw/db columns in its own launch (the twelfth session's fused column sum) at every N <= 6144 here:
16-bit staged rows and fp32 prefetched ones.

The reference runs on the CPU (torch's own GPU reductions would show up in racecheck's report), and
--report-api-errors no drops the CUDA libraries' start-up probes (see sanitize.sh).
"""
import argparse

import torch

from vibe_kernels.layernorm import layernorm, layernorm_ref, rmsnorm, rmsnorm_ref

CASES = [  # (M, N, x dtype, out dtype, rms, residual: None, "x" (x's dtype) or "fp32" (residual_in_fp32))
    (37, 7, torch.bfloat16, torch.float32, True, None), (37, 769, torch.float16, torch.float32, False, None),
    (3, 5000, torch.bfloat16, torch.bfloat16, True, None), (1, 65537, torch.bfloat16, torch.float32, True, None),
    (2, 262144, torch.bfloat16, torch.bfloat16, True, None), (37, 4096, torch.float32, torch.bfloat16, False, None),
    (1031, 4096, torch.bfloat16, torch.float32, True, None),
    (37, 769, torch.bfloat16, torch.bfloat16, True, "x"), (3, 5000, torch.float16, torch.float16, False, "fp32"),
    (1, 65537, torch.bfloat16, torch.float32, False, "x"), (2, 262144, torch.bfloat16, torch.bfloat16, True, "fp32"),
    (300, 8192, torch.bfloat16, torch.bfloat16, False, "x"), (1031, 4096, torch.bfloat16, torch.float32, False, "fp32"),
]

RULE_CASES = [
    (301, 16384, torch.bfloat16, torch.bfloat16, False, None), (301, 16384, torch.float16, torch.float16, True, None),
    (1031, 5000, torch.float16, torch.float16, False, None), (300, 8192, torch.bfloat16, torch.bfloat16, False, None),
    (1031, 4096, torch.float16, torch.float16, True, None), (1031, 6144, torch.bfloat16, torch.bfloat16, False, None),
    (1031, 4096, torch.float32, torch.float32, False, None),
    # the sixteenth session's rules: the CuTeDSL backward's staged statistics with the fused column sum above 6144
    # columns (RMSNorm fp16 here, LayerNorm bf16 above), Triton's held two-row blocks at (16384, 32768]
    (300, 8192, torch.float16, torch.float16, True, None), (301, 32768, torch.bfloat16, torch.bfloat16, False, None),
    # the eighteenth session's: CuTeDSL clusters of the fewest CTAs that cover a ragged row (12 at N = 139264 bf16,
    # the last ragged; 3 / 5 at 36864, the forward persistent; 13 fp32 vectors of 4), the backward's 8-CTA clusters
    # at N = 131072 16-bit; Triton's fp32-out two-row blocks at (4096, 16384]
    (37, 139264, torch.bfloat16, torch.bfloat16, False, None), (301, 36864, torch.float16, torch.float16, False, None),
    (3, 151936, torch.float32, torch.float32, True, None), (37, 131072, torch.bfloat16, torch.bfloat16, False, None),
    (301, 12288, torch.bfloat16, torch.float32, False, None), (301, 8192, torch.bfloat16, torch.float32, True, None),
    (37, 100000, torch.float16, torch.float16, False, None),  # the backward in 7 CTAs of 64 bytes (N <= 131072)
    # the twentieth and twenty-first sessions': the CuTeDSL ragged forward in clusters of at most 8 CTAs (M >= 1024),
    # the fused residual's staged backward (16-bit; fp32 x with a bf16 dy: 8-byte cp.async.ca copies)
    (1025, 139264, torch.bfloat16, torch.bfloat16, False, None), (1031, 4096, torch.float16, torch.float16, False, "x"),
    (1031, 5000, torch.float16, torch.float16, True, "x"), (1031, 3072, torch.float32, torch.bfloat16, False, "x"),
    # the twenty-second session's: the persistent forward over unclustered rows, 4 / 2 / 1 CTAs per SM (fp32 weight
    # and bias: the last item asks for a bias)
    (1031, 4096, torch.bfloat16, torch.bfloat16, False, None, True),
    (1031, 8192, torch.float16, torch.float16, False, None, True),
    (1031, 16384, torch.bfloat16, torch.bfloat16, False, None, True),
    # the twenty-fourth session's: Triton's resident forward with fp32 weight and bias at the tile's offsets (two rows
    # a program at 2048; a row a program in one wave at 4096)
    (1031, 2048, torch.bfloat16, torch.bfloat16, False, None, True),
    (37, 4096, torch.float16, torch.float16, False, None, True),
    # the twenty-fifth session's: the CuTeDSL forward's rows of 2-4 KB in one 128-thread CTA at M >= 4096 (one
    # vector a thread at 1024 bf16 with a bias; two, the last ragged, at 1536 fp16, RMSNorm's weight only)
    (4099, 1024, torch.bfloat16, torch.bfloat16, False, None, True),
    (4097, 1536, torch.float16, torch.float16, True, None),
]


def run(backend: str, rows: int, hidden: int, dtype, out_dtype, rms: bool, residual, bias: bool = False) -> bool:
    gen = torch.Generator(device="cuda").manual_seed(rows * hidden)
    x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)).requires_grad_()
    b = (0.1 * torch.randn(hidden, device="cuda", generator=gen)).requires_grad_() if bias else None
    fn, ref_fn = (rmsnorm, rmsnorm_ref) if rms else (layernorm, layernorm_ref)
    kwargs = {"out_dtype": out_dtype}
    r = None
    if residual is not None:
        r_dtype = torch.float32 if residual == "fp32" else dtype
        r = torch.randn(rows, hidden, device="cuda", generator=gen).to(r_dtype).requires_grad_()
        kwargs.update(residual=r, residual_in_fp32=residual == "fp32", return_residual=True)
    result = fn(x, w, b, eps=1e-5, backend=backend, **kwargs)
    out, h = result if residual is not None else (result, None)
    grads = [torch.randn(out.shape, device="cuda", generator=gen).to(out.dtype)]
    outputs = [out]
    if h is not None:
        outputs.append(h)
        grads.append(torch.randn(h.shape, device="cuda", generator=gen).to(h.dtype))
    torch.autograd.backward(outputs, grads)
    normed = (h if h is not None else x).detach().cpu().double()
    ref = ref_fn(normed, w.detach().cpu().double(), None if b is None else b.detach().cpu().double(), 1e-5)
    err = (out.detach().cpu().double() - ref).abs().max().item()
    finite = all(torch.isfinite(t.grad).all().item() for t in (x, w, b, r) if t is not None)
    ok = err < 5e-2 and finite
    print(f"{backend} M={rows} N={hidden} {dtype} -> {out_dtype} rms={rms} residual={residual} bias={bias}: "
          f"max err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="cutedsl,triton")
    parser.add_argument("--set", default="features", choices=("features", "rules"))
    parser.add_argument("--first", type=int, default=0, help="skip the set's cases before this index")
    args = parser.parse_args()
    failures = 0
    for backend in args.backends.split(","):
        for case in (CASES if args.set == "features" else RULE_CASES)[args.first:]:
            failures += not run(backend, *case)
    print("failures:", failures)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
