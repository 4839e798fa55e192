"""Triton LayerNorm forward: the default config against other configs, per shape, as ms and % of a same-size copy
(GPU time, L2 flushed: the bench's timer). Each config's out, mean and rstd are checked against fp32 torch first.

    python benchmarks/triton_fwd_probe.py --shapes 4096x16384xfloat16 --configs c8192w8m2h,r1x8192w8h

Configs: ``c<block_n>w<warps>[m<rows a block>][p<programs per SM>][k<held chunks>][h]`` (chunked; h: L2 hints) or
``r<block_m>x<block_n>w<warps>[h][a][t]`` (resident rows; a: weight and bias loaded with the rows, ``affine_first``;
t: at the tile's offsets, ``affine_tile``).
The default runs as a caller gets it (``config=None``: at small M the launcher also narrows its row blocks to give
every SM work). Removed after losing: an ``s<stages>`` suffix for a pipelined chunk loop (eighth session,
``benchmarks/results/h100-2026-11-25-h/probes/triton-fwd-stages.txt``: 35-63% of a copy against 88-94%) and a
``g<programs>`` grid cap for the wide forward (thirteenth session, ``h100-2026-12-06-e/probes/
triton-fwd-capped-grid.txt``: 43-75% against 66-85%), and an ``s<block_n>w<warps>[p<per SM>][h]`` split-row config
(``FwdConfig.split``, nineteenth session, commit 62a3ff5, ``h200-2026-12-07-j/probes-l/triton-fwd-split.txt``: 30-51%
against 62-69% at N = 65536-262144).

``--api`` adds two lines after the configs: the default launch without the mean / rstd stores, and the public
``layernorm(..., backend="triton")`` under ``torch.no_grad()`` (the bench's forward), to place a gap between the
bench and this probe (thirteenth session: 128x4096 bf16, 0.0063 ms in the bench, 0.0057-0.0058 ms here).
"""
import argparse
import re

import torch

from vibe_kernels.layernorm import _triton, layernorm
from probe_common import parse_shape, print_config_times, time_alternating
from vibe_kernels.layernorm.bench import gpu_ms_host_hidden


def _parse(text: str) -> _triton.FwdConfig:
    chunked = re.fullmatch(r"c(\d+)w(\d+)(?:m(\d+))?(?:p(\d+))?(?:k(\d+))?(h?)", text)
    if chunked:
        block_n, warps, block_m, per_sm, held, hints = chunked.groups()
        return _triton.FwdConfig(int(block_m or 1), int(block_n), int(warps), True, programs_per_sm=int(per_sm or 0),
                                 l2_hints=bool(hints), held_chunks=int(held or 0))
    resident = re.fullmatch(r"r(\d+)x(\d+)w(\d+)(h?)(a?)(t?)", text)
    if resident:
        block_m, block_n, warps, hints, affine_first, affine_tile = resident.groups()
        return _triton.FwdConfig(int(block_m), int(block_n), int(warps), False, l2_hints=bool(hints),
                                 affine_first=bool(affine_first), affine_tile=bool(affine_tile))
    raise SystemExit(f"bad config {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="4096x8192xfloat16,4096x16384xfloat16,32768x16384")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--configs", default="")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--api", action="store_true", help="also time the default without stats and the public API")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}")
    for spec in args.shapes.split(","):
        rows, hidden, dtype = parse_shape(spec, args.dtype)
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = (torch.randn(rows, hidden, device="cuda", generator=gen) + 1).to(dtype)
        w = torch.randn(hidden, device="cuda", generator=gen)
        b = torch.randn(hidden, device="cuda", generator=gen)
        ref = torch.nn.functional.layer_norm(x.float(), (hidden,), w, b, 1e-5)
        ref_var, ref_mean = torch.var_mean(x.float(), dim=1, unbiased=False)
        ref_rstd = torch.rsqrt(ref_var + 1e-5)
        out, copied = torch.empty_like(x), torch.empty_like(x)
        mean, rstd = torch.empty(rows, device="cuda"), torch.empty(rows, device="cuda")
        copy_ms = gpu_ms_host_hidden(lambda: copied.copy_(x), 25, 100)
        one_wave = rows <= _triton._program_slots(x.device)
        default = _triton.fwd_config(hidden, dtype, one_wave=one_wave, wide_affine=_triton._wider_affine(x, w, b))
        configs = [default] + [_parse(t) for t in filter(None, args.configs.split(","))]
        launches, kept = [], []
        for config in configs:
            def launch(config=None if config is default else config):
                _triton.layernorm_fwd(x, w, b, 1e-5, out, mean, rstd, config=config)

            for tensor in (out, mean, rstd):
                tensor.fill_(float("nan"))
            try:
                launch()
            except ValueError as exc:  # a config this width cannot take (held chunks covering the whole row)
                print(f"{spec}: skipped {config}: {exc}")
                continue
            err = (out.float() - ref).abs().max().item()
            mean_err = (mean - ref_mean).abs().max().item()
            rstd_err = ((rstd - ref_rstd) / ref_rstd).abs().max().item()
            if not (err < 0.1 and mean_err < 1e-3 and rstd_err < 1e-4):
                raise AssertionError(f"{spec} {config}: out err {err}, mean err {mean_err}, rstd rel err {rstd_err}")
            launches.append(launch)
            kept.append(config)
        configs = kept
        if args.api:
            def launch_no_stats():
                _triton.layernorm_fwd(x, w, b, 1e-5, out, None, None)

            def launch_api():
                with torch.no_grad():
                    return layernorm(x, w, b, eps=1e-5, backend="triton")

            for name, launch in (("default, no mean/rstd stores", launch_no_stats), ("API, no_grad", launch_api)):
                out.fill_(float("nan"))
                got = launch()
                err = ((got if got is not None else out).float() - ref).abs().max().item()
                if not err < 0.1:
                    raise AssertionError(f"{spec} {name}: out err {err}")
                configs.append(name)
                launches.append(launch)
        times = time_alternating(launches, args.repeats)
        print(f"{spec} {dtype}: copy {copy_ms:.4f} ms")
        print_config_times(configs, times, copy_ms, default)


if __name__ == "__main__":
    main()
