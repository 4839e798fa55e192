"""Triton LayerNorm, wide rows: the default config against split-row configs (``FwdConfig.split`` /
``BwdConfig.split``: a row spread over cdiv(N, block_n) programs that hold their slice in registers and exchange
partial statistics), per shape, as ms and % of SOL: forward a same-size copy, backward a same-size
``torch.add(x, dy, out=dx)``.

Each config's output is checked first against fp32 torch (out poisoned before the run; forward: out, mean, rstd;
backward: dx, dw, db). The time is the whole step (the backward with its dw/db column sum), GPU time, L2 flushed
(the bench's timer).

    python benchmarks/triton_split_probe.py --shapes 8192x262144,16384x131072 --fwd 8192w16p1,4096w8p2 \\
        --bwd 8192w16p1,4096w8p2

Configs: ``<block_n>w<warps>p<programs per SM>``.
"""
import argparse
import re

import torch

from vibe_kernels.layernorm import _triton
from vibe_kernels.layernorm.bench import gpu_ms_host_hidden


def _parse(text: str, cls):
    match = re.fullmatch(r"(\d+)w(\d+)p(\d+)", text)
    if not match:
        raise SystemExit(f"bad config {text!r}: want <block_n>w<warps>p<programs per SM>")
    block_n, warps, per_sm = map(int, match.groups())
    return cls(block_m=1, block_n=block_n, num_warps=warps, chunked=False, programs_per_sm=per_sm, split=True)


def _report(label: str, sol: float, configs, times, default) -> None:
    print(f"{label}: SOL {sol:.4f} ms")
    for config, ms in zip(configs, times):
        name = "default" if config is default else f"{config.block_n}w{config.num_warps}p{config.programs_per_sm}"
        print(f"    {name:>16} {ms:.4f} ms {100 * sol / ms:5.1f}%  {config}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="32768x32768,32768x65536,16384x131072,8192x262144")
    parser.add_argument("--dtype", default="bfloat16", help="for shapes without their own (MxNxdtype)")
    parser.add_argument("--fwd", default="", help="forward split configs, comma-separated")
    parser.add_argument("--bwd", default="", help="backward split configs, comma-separated")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, SMs: {torch.cuda.get_device_properties(0).multi_processor_count}")
    summary = []
    for spec in args.shapes.split(","):
        rows, hidden, *named = spec.split("x")
        rows, hidden = int(rows), int(hidden)
        dtype = getattr(torch, named[0] if named else args.dtype)
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = (torch.randn(rows, hidden, device="cuda", generator=gen) + 2).to(dtype)
        dy = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = torch.randn(hidden, device="cuda", generator=gen)
        b = torch.randn(hidden, device="cuda", generator=gen)
        # References from fp32 torch on the first rows (the check), statistics on all rows (the backward's input).
        check = min(rows, 64)
        xf = x[:check].float().requires_grad_()
        wf, bf = w.clone().requires_grad_(), b.clone().requires_grad_()
        ref = torch.nn.functional.layer_norm(xf, (hidden,), wf, bf, 1e-5)
        mean = x.float().mean(dim=1)
        rstd = torch.rsqrt(x.float().var(dim=1, unbiased=False) + 1e-5)
        out, copied = torch.empty_like(x), torch.empty_like(x)
        mean_out, rstd_out = torch.empty_like(mean), torch.empty_like(rstd)
        copy_ms = gpu_ms_host_hidden(lambda: copied.copy_(x), 25, 100)
        add_ms = gpu_ms_host_hidden(lambda: torch.add(x, dy, out=copied), 25, 100)

        fwd_default = _triton.fwd_config(hidden, dtype)
        fwd_configs = [fwd_default] + [_parse(t, _triton.FwdConfig) for t in filter(None, args.fwd.split(","))]
        fwd_times = []
        for config in fwd_configs:
            def launch(config=config):
                _triton.layernorm_fwd(x, w, b, 1e-5, out, mean_out, rstd_out, config=config)

            out.fill_(float("nan"))
            launch()
            err = (out[:check].float() - ref).abs().max().item()
            mean_err = (mean_out - mean).abs().max().item()
            rstd_err = ((rstd_out - rstd) / rstd).abs().max().item()
            if not (err < 0.1 and mean_err < 1e-4 and rstd_err < 1e-4):
                raise AssertionError(f"{spec} {config}: out err {err}, mean err {mean_err}, rstd rel {rstd_err}")
            fwd_times.append(gpu_ms_host_hidden(launch, 10, 40))
        _report(f"{spec} {dtype} forward", copy_ms, fwd_configs, fwd_times, fwd_default)

        ref.backward(dy[:check].float())
        # dw/db over the checked rows only: a separate call on those rows.
        bwd_default = _triton.bwd_config(hidden, dtype)
        bwd_configs = [bwd_default] + [_parse(t, _triton.BwdConfig) for t in filter(None, args.bwd.split(","))]
        dx, dw, db = torch.empty_like(x), torch.empty_like(w), torch.empty_like(b)
        bwd_times = []
        for config in bwd_configs:
            def launch(config=config, rows_=slice(None)):
                _triton.layernorm_bwd(dy[rows_], x[rows_], w, mean[rows_], rstd[rows_], dx[rows_], dw, db,
                                      config=config)

            dx.fill_(float("nan"))
            launch(rows_=slice(0, check))
            dx_err = (dx[:check].float() - xf.grad).abs().max().item()
            dw_err = ((dw - wf.grad).abs().max() / wf.grad.abs().max()).item()
            db_err = ((db - bf.grad).abs().max() / bf.grad.abs().max()).item()
            launch()
            if not (dx_err < 0.1 and dw_err < 1e-3 and db_err < 1e-3 and not dx.isnan().any()):
                raise AssertionError(f"{spec} {config}: dx err {dx_err}, dw rel {dw_err}, db rel {db_err}")
            bwd_times.append(gpu_ms_host_hidden(launch, 10, 40))
        _report(f"{spec} {dtype} backward", add_ms, bwd_configs, bwd_times, bwd_default)
        summary.append((spec, [100 * copy_ms / t for t in fwd_times], [100 * add_ms / t for t in bwd_times]))
    print("compiled kernels (name, warps, registers, spilled bytes, shared memory bytes):")
    for compiled, _ in _triton._compiled_kernels.values():
        print(f"    {compiled.name} {compiled.metadata.num_warps} {compiled.n_regs} {compiled.n_spills} "
              f"{compiled.metadata.shared}")
    print("summary (% of SOL: default first, then the configs in order)")
    for spec, fwd, bwd in summary:
        print(f"  {spec:>16} fwd {' '.join(f'{p:5.1f}' for p in fwd)} | bwd {' '.join(f'{p:5.1f}' for p in bwd)}")


if __name__ == "__main__":
    main()
