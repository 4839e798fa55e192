"""Triton forward with the fused residual: the default config against the tuner's candidates, RMSNorm and LayerNorm
side by side (ms and % of the variant's same-bytes SOL: a copy of x, r -> out, h, i.e. two same-size copies).
``--out-dtype float32``: instead, LayerNorm with out in that dtype and no residual (SOL: one fp16 copy moving x's and
out's bytes, as the bench); the resident candidates run with weight/bias loaded before and after the statistics.
With --out-dtype equal to --dtype this is the plain forward. ``--l2-hints``: instead of the tuner's candidates, the
default config with and without L2 eviction hints and the chunked candidates with them (one program a row or the
default's grid; every grid at N >= 65536; a shape MxNxdtype in --shapes takes its own dtype).
``--two-row-and-held`` (with --out-dtype): only the default and the chunked two-row / held-chunk candidates.

Every candidate's out and h are checked against the torch composition first. GPU time (the bench's timer).

    python benchmarks/triton_residual_probe.py [--shapes 4096x16384,4096x8192] [--top 6] [--out-dtype float32]
"""
import argparse
import dataclasses

import torch

from vibe_kernels.layernorm import _triton
from vibe_kernels.layernorm.bench import gpu_ms_host_hidden
from vibe_kernels.layernorm.tune import fwd_candidates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="4096x16384,4096x8192")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--out-dtype", default=None)
    parser.add_argument("--l2-hints", action="store_true")
    parser.add_argument("--two-row-and-held", action="store_true",
                        help="with --out-dtype: only the default and the tuner's two-row and held-chunk candidates")
    args = parser.parse_args()
    if args.out_dtype:
        return out_dtype_probe(args)
    dtype = getattr(torch, args.dtype)
    print(f"device: {torch.cuda.get_device_name()}")
    for spec in args.shapes.split(","):
        rows, hidden = map(int, spec.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        r = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = 1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        out, h = torch.empty_like(x), torch.empty_like(x)
        rstd = torch.empty(rows, device="cuda")
        mean = torch.empty(rows, device="cuda")
        x2, r2 = torch.empty_like(x), torch.empty_like(x)
        sol = gpu_ms_host_hidden(lambda: (x2.copy_(x), r2.copy_(r)), 25, 100)
        hh = (x.float() + r.float()).to(dtype).float()
        for rms in (True, False):
            ref = (torch.nn.functional.rms_norm(hh, (hidden,), w, 1e-6) if rms
                   else torch.nn.functional.layer_norm(hh, (hidden,), w, None, 1e-6))

            def launch(config):
                _triton.layernorm_fwd(x, w, None, 1e-6, out, None if rms else mean, rstd, config=config,
                                      residual=r, residual_out=h, rms=rms)

            def check():
                err = (out.float() - ref).abs().max().item()
                if not err < 0.05 or not torch.equal(h.float(), hh):
                    raise AssertionError(f"wrong output: max err {err}")

            label = f"{spec} {args.dtype} {'rmsnorm' if rms else 'layernorm'} + residual"
            default = _triton.fwd_config(hidden, dtype, True, wide_affine=_triton._wider_affine(x, w, None))
            rank_candidates(label, default, fwd_candidates(hidden, dtype), launch,
                            out, check, sol, args.top)


def rank_candidates(label, default, candidates, launch, out, check, sol, top) -> None:
    """Times ``launch(config)`` for the default and every candidate (each checked first: ``out`` is poisoned,
    ``check()`` raises on a wrong result) and prints the default and the ``top`` fastest, as % of ``sol``."""
    results = []
    for config in [default] + [c for c in candidates if c != default]:
        try:
            out.fill_(float("nan"))
            launch(config)
            check()
            results.append((gpu_ms_host_hidden(lambda config=config: launch(config), 10, 40), config))
        except Exception as exc:  # noqa: BLE001
            print(f"  {config}: {type(exc).__name__}: {str(exc)[:120]}")
    default_ms = results[0][0] if results and results[0][1] == default else float("nan")
    print(f"{label}: SOL {sol:.4f} ms; default {default_ms:.4f} ({100 * sol / default_ms:.0f}%) {default}")
    for ms, config in sorted(results, key=lambda item: item[0])[:top]:
        print(f"  {ms:.4f} ({100 * sol / ms:.0f}%) {config}")


def out_dtype_probe(args) -> None:
    print(f"device: {torch.cuda.get_device_name()}")
    for spec in args.shapes.split(","):
        rows, hidden, *named = spec.split("x")
        rows, hidden = int(rows), int(hidden)
        dtype = getattr(torch, named[0] if named else args.dtype)
        out_dtype = getattr(torch, args.out_dtype) if args.out_dtype != args.dtype else dtype
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = 1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        b = 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        out = torch.empty(rows, hidden, device="cuda", dtype=out_dtype)
        # The bench's same-bytes SOL: one fp16 copy moving x's bytes read plus out's bytes written.
        elements = rows * hidden * (x.element_size() + out.element_size()) // 4
        src = torch.empty(elements, device="cuda", dtype=torch.float16).normal_()
        dst = torch.empty_like(src)
        sol = gpu_ms_host_hidden(lambda: dst.copy_(src), 25, 100)
        ref = torch.nn.functional.layer_norm(x.float(), (hidden,), w, b, 1e-6)

        def check():
            err = (out.float() - ref).abs().max().item()
            if not err < 0.05:
                raise AssertionError(f"wrong output: max err {err}")

        # The launcher's own choice for this out (config=None): wider out elements take the wide_out config.
        default = _triton.fwd_config(hidden, dtype, wide_out=out.element_size() > x.element_size(),
                                     wide_affine=_triton._wider_affine(x, w, b))
        candidates = fwd_candidates(hidden, dtype)
        if args.l2_hints:
            # fwd_candidates starts with the default; hinted and plain candidates map to one hinted config.
            candidates = list(dict.fromkeys(
                dataclasses.replace(c, l2_hints=True) for c in candidates
                if c == default or (c.chunked and (hidden >= 65536
                                                   or c.programs_per_sm in (0, default.programs_per_sm)))))
        elif args.two_row_and_held:
            candidates = [c for c in candidates if c == default or (c.chunked and (c.block_m > 1 or c.held_chunks))]
        else:
            # Each resident candidate also with weight/bias loaded before the statistics.
            candidates += [dataclasses.replace(c, affine_first=True) for c in candidates if not c.chunked]
        rank_candidates(f"{rows}x{hidden} {dtype} -> {out_dtype} layernorm", default,
                        candidates,
                        lambda config: _triton.layernorm_fwd(x, w, b, 1e-6, out, None, None, config=config), out,
                        check, sol, args.top)


if __name__ == "__main__":
    main()
