"""Triton LayerNorm backward: the default config against the same config with L2 eviction hints (``l2_hints``), per
shape, as ms and % of the backward's SOL (a same-size ``torch.add(x, dy, out=dx)``: reads two, writes one).

Each config's dx, dw and db are checked against torch's autograd on fp32 copies first (dx poisoned before the run).
The time is the whole backward step: the kernel(s) and the dw/db column sum. GPU time, L2 flushed (the bench's
timer).

    python benchmarks/triton_bwd_probe.py --shapes 32768x1024,4096x4096xfloat16
    python benchmarks/triton_bwd_probe.py --shapes 4096x16384xfloat16 --configs 1x16384w16p1,1x16384w32p1

``--configs``: more configs to time beside the default, each with and without hints, as ``MxNw<warps>p<per SM>``
(resident: block_m rows of block_n = N elements), ``MxNw<warps>p<per SM>r`` (resident, x and dy read twice:
``BwdConfig.reread``) or ``MxNw<warps>p<per SM>c`` (chunked: block_m x block_n tiles), each optionally followed by
``s<stages>`` (``BwdConfig.stages``, e.g. ``1x8192w16p1s3``), then ``f`` (resident only: the partial rows'
column sum in the backward's own launch, ``BwdConfig.fused_sum``, e.g. ``1x8192w16p1s3f``) and then ``x`` (resident,
one stage, not re-read: the next row tile loaded into registers before this one's reductions, ``BwdConfig.prefetch``,
e.g. ``16x256w8p2x``). ``default+f`` / ``default+x``: the shape's default config with ``fused_sum`` / with
``prefetch`` (one stage, not re-read), timed once, with the default's hints, e.g. the fused column sum against the
default's second launch:

    python benchmarks/triton_bwd_probe.py --shapes 4096x8192xfloat16,32768x1024 --configs default+f
"""
import argparse
import dataclasses
import re

import torch

from vibe_kernels.layernorm import _triton
from probe_common import parse_shape, print_config_times, time_alternating
from vibe_kernels.layernorm.bench import gpu_ms_host_hidden


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="32768x256,32768x1024,4096x4096xfloat16")
    parser.add_argument("--dtype", default="bfloat16", help="for shapes without their own (MxNxdtype)")
    parser.add_argument("--configs", default="", help="more configs, comma-separated (see the module doc)")
    parser.add_argument("--repeats", type=int, default=1, help="time the configs this many times, alternating")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}")
    for spec in args.shapes.split(","):
        rows, hidden, dtype = parse_shape(spec, args.dtype)
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        dy = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = torch.randn(hidden, device="cuda", generator=gen)
        b = torch.randn(hidden, device="cuda", generator=gen)
        xf = x.detach().float().clone().requires_grad_()
        wf, bf = w.clone().requires_grad_(), b.clone().requires_grad_()
        torch.nn.functional.layer_norm(xf, (hidden,), wf, bf, 1e-5).backward(dy.float())
        mean = x.float().mean(dim=1)
        rstd = torch.rsqrt(x.float().var(dim=1, unbiased=False) + 1e-5)
        dx, dw, db = torch.empty_like(x), torch.empty_like(w), torch.empty_like(b)
        added = torch.empty_like(x)
        sol = gpu_ms_host_hidden(lambda: torch.add(x, dy, out=added), 25, 100)
        default = _triton.bwd_config(hidden, dtype)
        configs = [default, dataclasses.replace(default, l2_hints=not default.l2_hints)]
        for text in filter(None, args.configs.split(",")):
            if text == "default+f":
                configs.append(dataclasses.replace(default, fused_sum=True))
                continue
            if text == "default+x":  # the register prefetch in place of the default's pipelining / re-reads
                configs.append(dataclasses.replace(default, stages=1, reread=False, prefetch=True))
                continue
            extra = _parse_config(text)
            configs += [extra, dataclasses.replace(extra, l2_hints=True)]
        launches = []
        for config in configs:
            def launch(config=config):
                _triton.layernorm_bwd(dy, x, w, mean, rstd, dx, dw, db, config=config)

            dx.fill_(float("nan"))
            launch()
            dx_err = (dx.float() - xf.grad).abs().max().item()
            dw_err = ((dw - wf.grad).abs().max() / wf.grad.abs().max()).item()
            db_err = ((db - bf.grad).abs().max() / bf.grad.abs().max()).item()
            if not (dx_err < 0.1 and dw_err < 1e-3 and db_err < 1e-3):
                raise AssertionError(f"{spec} {config}: dx err {dx_err}, dw rel {dw_err}, db rel {db_err}")
            launches.append(launch)
        times = time_alternating(launches, args.repeats)
        print(f"{rows}x{hidden} {dtype}: add {sol:.4f} ms")
        print_config_times(configs, times, sol, default)
    print("compiled kernels (name, warps, registers, spilled bytes, shared memory bytes, constexprs):")
    for compiled, constexprs in _triton._compiled_kernels.values():
        print(f"    {compiled.name} {compiled.metadata.num_warps} {compiled.n_regs} {compiled.n_spills} "
              f"{compiled.metadata.shared} {constexprs}")


def _parse_config(text: str) -> _triton.BwdConfig:
    """``MxNw<warps>p<per SM>[c|r][s<stages>][f][x]`` (see the module doc) as a BwdConfig.

    >>> _parse_config("1x8192w16p1s3f")
    BwdConfig(block_m=1, block_n=8192, num_warps=16, chunked=False, programs_per_sm=1, l2_hints=False, \
reread=False, stages=3, fused_sum=True, prefetch=False)
    """
    match = re.fullmatch(r"(\d+)x(\d+)w(\d+)p(\d+)([cr]?)(?:s(\d+))?(f?)(x?)", text)
    if match is None:
        raise SystemExit(f"--configs: {text!r} is not MxNw<warps>p<per SM>[c|r][s<stages>][f][x], default+f or "
                         f"default+x")
    block_m, block_n, warps, per_sm = (int(g) for g in match.groups()[:4])
    try:
        return _triton.BwdConfig(block_m, block_n, warps, match.group(5) == "c", per_sm,
                                 reread=match.group(5) == "r", stages=int(match.group(6) or 1),
                                 fused_sum=match.group(7) == "f", prefetch=match.group(8) == "x")
    except ValueError as exc:  # e.g. fused_sum with chunked tiles
        raise SystemExit(f"--configs: {text!r}: {exc}") from None


if __name__ == "__main__":
    main()
