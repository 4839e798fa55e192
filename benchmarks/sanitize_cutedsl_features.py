"""CuTeDSL RMSNorm and out_dtype under compute-sanitizer: forward + backward at ragged N, odd M and the widest N,
each checked against the fp64 reference (a sanity bound).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --report-api-errors no \
        python benchmarks/sanitize_cutedsl_features.py

The reference runs on the CPU (torch's own GPU reductions would show up in racecheck's report), and
--report-api-errors no drops the CUDA libraries' start-up probes (see sanitize.sh).
"""
import torch

from vibe_kernels.layernorm import layernorm, layernorm_ref, rmsnorm, rmsnorm_ref

CASES = [  # (M, N, x dtype, out dtype, rms)
    (37, 7, torch.bfloat16, torch.float32, True), (37, 769, torch.float16, torch.float32, False),
    (3, 5000, torch.bfloat16, torch.bfloat16, True), (1, 65537, torch.bfloat16, torch.float32, True),
    (2, 262144, torch.bfloat16, torch.bfloat16, True), (37, 4096, torch.float32, torch.bfloat16, False),
    (1031, 4096, torch.bfloat16, torch.float32, True),
]
failures = 0
for rows, hidden, dtype, out_dtype, rms in CASES:
    gen = torch.Generator(device="cuda").manual_seed(rows * hidden)
    x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)).requires_grad_()
    fn, ref_fn = (rmsnorm, rmsnorm_ref) if rms else (layernorm, layernorm_ref)
    out = fn(x, w, eps=1e-5, out_dtype=out_dtype, backend="cutedsl")
    out.backward(torch.randn(out.shape, device="cuda", generator=gen).to(out_dtype))
    ref = ref_fn(x.detach().cpu().double(), w.detach().cpu().double(), None, 1e-5)
    err = (out.detach().cpu().double() - ref).abs().max().item()
    ok = err < 5e-2 and torch.isfinite(x.grad).all().item() and torch.isfinite(w.grad).all().item()
    failures += not ok
    print(f"M={rows} N={hidden} {dtype} -> {out_dtype} rms={rms}: max err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
print("failures:", failures)
raise SystemExit(1 if failures else 0)
