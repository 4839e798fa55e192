"""Registers, local memory and occupancy of Triton forward / backward configs, compiled for sm_90 on the CPU (no GPU).

A pre-screen for GPU probes: each config (triton_fwd_probe.py's syntax, or triton_bwd_probe.py's with --backward, or
"default" for the launcher's own choice) is launched through ``_triton.layernorm_fwd`` / ``layernorm_bwd`` on fake
CUDA tensors, compiled ahead of time for sm_90, and read back with cuobjdump (every kernel the launch runs: the
backward's column sum too). Per config it prints the kernel's registers a thread, local memory (spills), shared
memory, the CTAs and warps an SM that registers, threads and shared memory allow (H100: 64K registers, 2048 threads,
228 KB of shared memory with 1 KB reserved a CTA), and the bytes of x an SM has in one chunk step at that occupancy
(rows a program x chunk width x element size x CTAs), a rough proxy for the bytes in flight. It does not time
anything; the numbers depend on the Triton version (the GPU machine has 3.6: run it with that Triton first on the
path to match).

    python benchmarks/triton_registers.py --shape 32768x16384xfloat16 --configs default,c2048w16h,c2048w8h
    python benchmarks/triton_registers.py --backward --shape 32768x256 --configs default,32x256w16p1
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile for sm_90, never interpret

_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_ROOT), str(_ROOT / "benchmarks"), str(_ROOT / "tests" / "layernorm")]

REGISTERS_AN_SM = 65536
THREADS_AN_SM = 2048
CTAS_AN_SM = 32
SHARED_AN_SM = 228 * 1024
SHARED_RESERVED_A_CTA = 1024


def _cuobjdump() -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else "cuobjdump"


def usage_lines(shape: str, configs: list[str], weight: str = "float32", bias: str | None = "float32",
                backward: bool = False) -> list[str]:
    """One line per config and kernel launched (see the module's docstring)."""
    import torch  # noqa: F401  (record_launches builds fake CUDA tensors)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from probe_common import parse_shape
    from test_triton_compile import _specialise, record_launches
    from triton_bwd_probe import _parse_config as parse_bwd
    from triton_fwd_probe import _parse as parse_fwd
    from vibe_kernels.layernorm import _triton

    rows, hidden, dtype = parse_shape(shape, "bfloat16")
    dtype_name = str(dtype).removeprefix("torch.")
    lines = []
    for spec in configs:
        if backward:  # dx, dw (in the weight's dtype) and db (in the bias's), as the API's backward launches them
            scenario = dict(launcher="bwd", dtype=dtype_name, rows=rows, hidden=hidden, weight=weight,
                            dweight=weight is not None, dbias=bias)
        else:
            scenario = dict(launcher="fwd", dtype=dtype_name, rows=rows, hidden=hidden, weight=weight, bias=bias,
                            mean=False, rstd=False)
        if spec != "default":
            config = parse_bwd(spec) if backward else parse_fwd(spec)
            scenario["config"] = {"cls": type(config).__name__, "fields": dataclasses.asdict(config)}
        kernels, launches = record_launches(_triton, [scenario])
        for name, args, kwargs, _ in launches:
            signature, constexprs, attrs, warps = _specialise(kernels[name], args, kwargs)
            source = ASTSource(fn=kernels[name], signature=signature, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            with tempfile.TemporaryDirectory() as tmp:
                cubin = Path(tmp) / "kernel.cubin"
                cubin.write_bytes(compiled.asm["cubin"])
                report = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True,
                                        check=True).stdout
            found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", report)
            if found is None:
                raise RuntimeError(f"cuobjdump printed no resource usage for {name}:\n{report}")
            registers, _, _, local = (int(v) for v in found.groups())
            threads = 32 * warps
            shared = compiled.metadata.shared
            ctas = min(REGISTERS_AN_SM // (registers * threads), THREADS_AN_SM // threads, CTAS_AN_SM,
                       SHARED_AN_SM // (shared + SHARED_RESERVED_A_CTA))
            if "BLOCK_P" in constexprs:  # the column sum of partial rows: reads no x
                chunk = "-"
            else:  # x's elements a program step (its rows x its chunk), at the occupancy above
                chunk = f"{ctas * constexprs.get('BLOCK_M', 1) * constexprs['BLOCK_N'] * dtype.itemsize // 1024}KB"
            lines.append(f"{spec:14s} {name} warps={warps} registers={registers} local={local} "
                         f"shared={shared} CTAs/SM={ctas} warps/SM={ctas * warps} "
                         f"chunk-bytes/SM={chunk}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32768x16384xfloat16", help="MxN[xdtype] (bf16 by default)")
    parser.add_argument("--configs", default="default", help="comma-separated: default, c2048w8h, r2x4096w8, ...")
    parser.add_argument("--weight", default="float32")
    parser.add_argument("--bias", default="float32", help="a dtype, or 'none'")
    parser.add_argument("--backward", action="store_true", help="the backward's configs (triton_bwd_probe.py syntax)")
    args = parser.parse_args(argv)
    import triton

    print(f"triton {triton.__version__}, sm_90, {'backward' if args.backward else 'forward'} {args.shape}, "
          f"weight {args.weight}, bias {args.bias}")
    bias = None if args.bias == "none" else args.bias
    for line in usage_lines(args.shape, args.configs.split(","), args.weight, bias, args.backward):
        print(line, flush=True)


if __name__ == "__main__":
    main()
