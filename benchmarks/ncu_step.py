"""A fixed number of LayerNorm / RMSNorm forward+backward steps, for ``ncu`` to profile (the bench's step: x and
fp32 weight requiring grad, dy given). Six warm-up steps first: with the inputs' ~10 setup kernels and three kernels
a step, ``--launch-skip 20`` lands in warm steps, after the JIT's first calls.

    ncu --clock-control none --launch-skip 20 --launch-count 6 --section SpeedOfLight \\
        python benchmarks/ncu_step.py --shape 4096x8192xfloat16 --backend cutedsl --rms
"""
import argparse

import torch

from probe_common import parse_shape
from vibe_kernels.layernorm import layernorm, rmsnorm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="4096x8192xfloat16")
    parser.add_argument("--backend", default="cutedsl")
    parser.add_argument("--rms", action="store_true")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    rows, hidden, dtype = parse_shape(args.shape, "float16")
    gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype).requires_grad_()
    weight = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)).requires_grad_()
    bias = None if args.rms else torch.randn(hidden, device="cuda", generator=gen).requires_grad_()
    dy = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
    for _ in range(args.warmup + args.steps):
        out = (rmsnorm(x, weight, backend=args.backend) if args.rms
               else layernorm(x, weight, bias, backend=args.backend))
        out.backward(dy)
        x.grad = weight.grad = None
        if bias is not None:
            bias.grad = None
    torch.cuda.synchronize()
    print(f"{args.backend} {'rmsnorm' if args.rms else 'layernorm'} {args.shape}: {args.warmup + args.steps} steps")


if __name__ == "__main__":
    main()
