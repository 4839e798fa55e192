"""CuTeDSL LayerNorm backward: the previous default configs ("old") against the current ones ("new").

    python benchmarks/cutedsl_bwd_probe.py            # on the H100: check, then time (under 3 minutes)
    python benchmarks/cutedsl_bwd_probe.py --ptxas    # anywhere (no GPU): ptxas -v registers / spills per config
    python benchmarks/cutedsl_bwd_probe.py --rms --shapes 4096x8192xfp16   # RMSNorm's backward (no mean, no db)
    python benchmarks/cutedsl_bwd_probe.py --shapes 4096x4096xfp16 --only new,sep --repeat 3   # interleaved repeats
    python benchmarks/cutedsl_bwd_probe.py --residual --shapes 4096x4096xfp16   # the fused residual's backward
    python benchmarks/cutedsl_bwd_probe.py --residual --shapes 4096x4096xfp32 --grad-dtype bf16   # bf16 dy and dh

--residual: the backward of the fused pre-norm residual (the gradient dh flowing into h added to dx, as the bench's
residual variant); its own variants: new (the residual default), old (its loads unstaged: no prefetch, no stages, the
default before the twentieth session, where the default stages them), st2 / st3 (x, dy and dh staged through shared
memory, BwdConfig.stages), sst (st2 with the statistics staged too) and fst (sst with the column sum in the same
launch; the default for unclustered rows of one or two a tile).

old: 128..512-thread CTAs, ctas_per_sm = 1024 // threads (up to 8 CTAs, so up to 8 dw/db partial rows, per SM),
     w and the dw/db accumulators in registers (N = 262144 then spills: 704-byte stack frame).
16B: 16 bytes of x a thread (twice the threads, two CTAs per SM in registers).
2cs: for clustered rows, two CTAs per SM (a launch bound: 64 registers) with w and dw/db in shared memory.
new: one 512-thread CTA per SM (several rows per CTA for N < 8192 bf16), so at most one partial row per SM (one
     per cluster for clustered rows); w and dw/db in shared memory where a thread holds more than 32 bytes of x
     (N = 262144 bf16, N >= 131072 fp32).
r1: one row a CTA (the default's threads per row); 64B: 64 bytes of x a thread, one row a CTA; 64Bs: that with w and
     dw/db in shared memory (clustered rows only; the default at N in (122880, 131072] 16-bit).
l2: the current default with L2 eviction policies (x, dy evict_first; w evict_last).
pf: the current default with the next row tile's loads issued while this one computes (``BwdConfig.prefetch``).
1s / 1r: clustered rows, one CTA per SM with prefetch, w and dw/db in shared memory / in registers.
st2 / st3: the default with x and dy staged through shared memory by cp.async, 1 / 2 tiles ahead (no prefetch).
sep / fus: the default with the column sum as a second launch / in the backward's own launch (sum CTAs,
     ``BwdConfig.fused_column_sum``), whichever the default is not.
sst / fst / pst: staged defaults only: the default, "fus", "sep" with each tile's mean and rstd copied into the stage
     with its x and dy (``BwdConfig.staged_stats``: no plain load of a statistic in the loop); where the default has
     staged_stats (above 6144 columns), "sst" is the default itself and "ust" the default with plain loads instead.
Both run through the current kernel and launcher: the launcher caps a clustered grid at ctas_per_sm waves of the
clusters the GPU holds at once (cuOccupancyMaxActiveClusters), for the old config as well.

Per shape and config: ms (triton do_bench median, L2 flushed), % of a same-size torch.add(x, dy, out=dx), the max
abs error of dx / dw / db against the fp32 reference (vibe_kernels/layernorm/reference.py) on the first rows,
checked before timing, and the dw/db workspace (partial rows x N x 8 bytes, measured peak in brackets) against
the bound SMs x N x 8 bytes. The last lines are a compact table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vibe_kernels.layernorm._cutedsl import config as cfg  # noqa: E402

SHAPES = [(32768, 256, "bf16"), (32768, 1024, "bf16"), (32768, 4096, "bf16"), (32768, 8192, "bf16"),
          (4096, 8192, "fp16"), (4096, 4096, "fp16"),
          (32768, 16384, "bf16"), (4096, 16384, "fp16"), (32768, 32768, "bf16"), (32768, 65536, "bf16"),
          (16384, 131072, "bf16"), (8192, 262144, "bf16"), (8192, 8192, "fp32")]
ELEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
HOST_HIDDEN = False  # --host-hidden
RMS = False  # --rms: RMSNorm's backward (no mean, no db)
RESIDUAL = False  # --residual: the fused residual's backward (dh added to dx)
GRAD_DTYPE = ""  # --grad-dtype: dy (and dh) in this dtype instead of x's (e.g. bf16 out from fp32 x)
ONLY: list[str] = []  # --only: these variants alone
REPEAT = 1  # --repeat: time every variant of a shape this many times, interleaved
TILINGS: list[str] = []  # --tilings: extra variants, the default with another row tiling (see tiling_variant)


def old_bwd_config(hidden: int, elem_bytes: int, vec: int) -> cfg.BwdConfig:
    """The backward config before the workspace bound: CTAs of at least 128 threads, 1024 threads' worth of CTAs
    per SM, everything in registers."""
    tiling = cfg.bwd_config(hidden, elem_bytes, vec, min_cta_threads=cfg.MIN_CTA_THREADS,
                            column_state_in_smem=False).tiling
    return cfg.BwdConfig(tiling, max(1, 1024 // tiling.num_threads), column_state_in_smem=False)


def residual_configs(hidden: int, elem_bytes: int) -> dict[str, cfg.BwdConfig]:
    """--residual: the residual default and its loads staged through shared memory (where the kernel takes them)."""
    default = cfg.bwd_config(hidden, elem_bytes, 16 // elem_bytes, residual=True)
    found = {"new": default}
    base = dataclasses.replace(default, stages=1, staged_stats=False, fused_column_sum=False)
    if base != default:
        found["old"] = base
    if not (base.prefetch or base.column_state_in_smem or base.column_tile):
        found.update(st2=dataclasses.replace(base, stages=2), st3=dataclasses.replace(base, stages=3),
                     sst=dataclasses.replace(base, stages=2, staged_stats=True))
        if base.tiling.cluster_n == 1:
            found["fst"] = dataclasses.replace(base, stages=2, staged_stats=True, fused_column_sum=True)
    return found


def tiling_variant(spec: str, default: cfg.BwdConfig) -> tuple[str, cfg.BwdConfig]:
    """``--tilings`` item THREADSxVECSxROWS[sSTAGES][cCTAS]: the default config with rows of THREADS threads (any
    multiple of 32 for a multi-warp row, not only powers of two) x VECS vectors, ROWS rows a CTA, and optionally
    another pipeline depth and CTAs per SM; named tTHREADSvVECSrROWS[sS][cC].

    >>> d = cfg.bwd_config(5000, 2, 8)
    >>> name, c = tiling_variant("640x1x1s3", d)
    >>> name, c.tiling.num_threads, c.tiling.tile_n, c.stages, c.ctas_per_sm
    ('t640v1r1s3', 640, 5120, 3, 1)
    """
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)(?:s(\d+))?(?:c(\d+))?", spec)
    if match is None:
        raise SystemExit(f"--tilings: {spec!r} is not THREADSxVECSxROWS[sSTAGES][cCTAS]")
    threads, vecs, rows, stages, ctas = match.groups()
    tiling = cfg.RowTiling(default.tiling.vec, int(threads), int(vecs), int(rows), default.tiling.cluster_n)
    config = dataclasses.replace(default, tiling=tiling, stages=int(stages or default.stages),
                                 ctas_per_sm=int(ctas or default.ctas_per_sm))
    name = f"t{threads}v{vecs}r{rows}" + (f"s{stages}" if stages else "") + (f"c{ctas}" if ctas else "")
    return name, config


def configs(hidden: int, elem_bytes: int) -> dict[str, cfg.BwdConfig]:
    found = _configs(hidden, elem_bytes)
    found.update(tiling_variant(spec, found["new"]) for spec in TILINGS)
    return found


def _configs(hidden: int, elem_bytes: int) -> dict[str, cfg.BwdConfig]:
    if RESIDUAL:
        return residual_configs(hidden, elem_bytes)
    vec = 16 // elem_bytes  # contiguous, 16-byte-aligned tensors
    found = {"old": old_bwd_config(hidden, elem_bytes, vec), "new": cfg.bwd_config(hidden, elem_bytes, vec)}
    # Clustered rows: two CTAs per SM (the launch bound: 64 registers) with w and dw/db in shared memory, if two
    # CTAs' column state fits; a cluster of c >= 2 CTAs still writes one partial row per c CTAs.
    two = cfg.BwdConfig(found["new"].tiling, 2, column_state_in_smem=True)
    if two.tiling.cluster_n >= 2 and 2 * two.smem_bytes() <= 220 * 1024 and two not in found.values():
        found["2cs"] = two
    # 16 bytes of x a thread: twice the threads (a cluster of two 512-thread CTAs at N = 8192 bf16), 8 values a
    # thread, so two CTAs per SM fit in registers.
    half = cfg.bwd_config(hidden, elem_bytes, vec, bytes_per_thread=16)
    if half not in found.values():
        found["16B"] = half
    # One row a CTA (CTAs of the row's own thread count): twice the CTAs of the two-row default at small M.
    t = found["new"].tiling
    one_row = cfg.bwd_config(hidden, elem_bytes, vec, min_cta_threads=t.threads_per_row)
    if one_row not in found.values():
        found["r1"] = one_row
    # 64 bytes of x a thread, one row a CTA: a quarter of the default's threads per row.
    wide = cfg.bwd_config(hidden, elem_bytes, vec, bytes_per_thread=64, min_cta_threads=128)
    if wide not in found.values():
        found["64B"] = wide
        if wide.tiling.cluster_n > 1 and not wide.column_state_in_smem:
            # ... with w and dw/db in shared memory (as the 262144-wide default): at N = 131072 an 8-CTA cluster,
            # of which 16 fit at once (128 SMs), where the default's 16-CTA clusters fit 7 (112 SMs).
            in_smem = dataclasses.replace(wide, column_state_in_smem=True)
            if in_smem not in found.values():  # the default itself at N in (122880, 131072] 16-bit
                found["64Bs"] = in_smem
    # The column sum in a second launch / in the backward's own launch, whichever the default does not.
    if found["new"].fused_column_sum:
        found["sep"] = dataclasses.replace(found["new"], fused_column_sum=False)
    else:
        try:
            found["fus"] = dataclasses.replace(found["new"], fused_column_sum=True)
        except ValueError:  # clustered rows, column state in shared memory
            pass
    # Staged: each row tile's mean and rstd copied into the stage with x and dy (BwdConfig.staged_stats), with the
    # column sum as the default has it ("sst") and the other way ("fst": fused, or "pst": separate); "ust": plain
    # loads of the statistics where the default stages them.
    if found["new"].stages > 1:
        if found["new"].staged_stats:
            found["ust"] = dataclasses.replace(found["new"], staged_stats=False)
        found["sst"] = dataclasses.replace(found["new"], staged_stats=True)
        if "fus" in found:
            found["fst"] = dataclasses.replace(found["fus"], staged_stats=True)
        if "sep" in found:
            found["pst"] = dataclasses.replace(found["sep"], staged_stats=True)
    # The current default with L2 eviction policies (x, dy evict_first; w evict_last).
    found["l2"] = dataclasses.replace(found["new"], l2_hints=True)
    # The current default with the next row tile's loads issued while this one computes (BwdConfig.prefetch).
    found["pf"] = dataclasses.replace(found["new"], prefetch=True, stages=1, staged_stats=False)
    # Clustered rows: one CTA per SM with the next row's loads prefetched, the column state in shared memory
    # ("1s") or in registers ("1r") -- the 262144 bf16 default, tried at narrower clustered rows.
    if t.cluster_n >= 2:
        for name, smem in (("1s", True), ("1r", False)):
            one = cfg.BwdConfig(t, 1, column_state_in_smem=smem, prefetch=True)
            if one not in found.values():
                found[name] = one
    # The default's loads staged through shared memory (BwdConfig.stages: cp.async, 2 or 3 tiles in flight), where
    # the kernel takes them (the column state in registers).
    base = found["new"]
    if not base.column_state_in_smem and not base.column_tile and base.tiling.vec * elem_bytes == 16:
        for stages in (2, 3):
            staged = dataclasses.replace(base, prefetch=False, l2_hints=False, stages=stages)
            if staged not in found.values():  # "new" itself where the default stages its loads
                found[f"st{stages}"] = staged
    return found


def describe(c: cfg.BwdConfig) -> str:
    t = c.tiling
    return (f"{t.num_threads}thr {t.rows_per_cta}row x{t.cluster_n}cl {c.ctas_per_sm}cta/SM "
            f"{'smem' if c.column_state_in_smem else 'regs'}")


# ----------------------------------------------------------------------------------------------------------------
# ptxas (no GPU needed)
# ----------------------------------------------------------------------------------------------------------------


def ptxas_usage(ptx: str) -> dict:
    """Registers, stack frame and spill bytes of the PTX's kernel for sm_90a, from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run(["ptxas", "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(text)
    regs = re.search(r"Used (\d+) registers", text)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)), "stack": int(frame.group(1)), "spill_stores": int(frame.group(2)),
            "spill_loads": int(frame.group(3))}


def ptxas_report() -> None:
    import cutlass

    from vibe_kernels.layernorm._cutedsl import launch

    dtypes = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16, "fp32": cutlass.Float32}
    cases = [(n, "bf16", "fp32", True) for n in (256, 1024, 4096, 8192, 16384, 32768)]
    for n in (65536, 131072, 262144):
        for dtype in ("bf16", "fp16", "fp32"):
            cases += [(n, dtype, "fp32", True), (n, dtype, "bf16", True), (n, dtype, None, False)]
    print(f"{'N':>7} {'dtype':5} {'w':5} {'dw/db':5} | {'old config':32} {'regs':>4} {'stack':>5} {'spill':>9} | "
          f"{'new config':32} {'regs':>4} {'stack':>5} {'spill':>9}")
    for n, dtype, weight, want in cases:
        line = f"{n:>7} {dtype:5} {str(weight):5} {str(want):5}"
        for c in configs(n, ELEM_BYTES[dtype]).values():
            wdt = dtypes[weight] if weight else None
            ptx = launch.compile_bwd(dtypes[dtype], n, wdt, want, want, c.tiling.vec, c, "sm_90a",
                                     keep_ptx=True).__ptx__
            u = ptxas_usage(ptx)
            line += (f" | {describe(c):32} {u['registers']:>4} {u['stack']:>5} "
                     f"{u['spill_stores']:>4}/{u['spill_loads']:<4}")
        print(line, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------------------------


def gpu_probe() -> None:
    import torch
    from triton.testing import do_bench

    from vibe_kernels.layernorm.bench import gpu_ms_host_hidden

    from vibe_kernels.layernorm._cutedsl import launch
    from vibe_kernels.layernorm.reference import (layernorm_mean_ref, layernorm_rstd_ref, norm_bwd_ref_fp32,
                                                  rmsnorm_rstd_ref)

    torch_dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    print(f"device: {torch.cuda.get_device_name()} ({sms} SMs)  torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    table = []

    def bench(fn) -> float:
        if HOST_HIDDEN:
            return gpu_ms_host_hidden(fn, 10, 60)
        return do_bench(fn, warmup=10, rep=60, return_mode="median")

    for rows, hidden, dtype_name in SHAPES:
        dtype = torch_dtypes[dtype_name]
        gen = torch.Generator(device=device).manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, device=device, dtype=dtype, generator=gen)
        grad_dtype = torch_dtypes[GRAD_DTYPE] if GRAD_DTYPE else dtype  # --grad-dtype: dy and dh in another dtype
        dy = torch.randn(rows, hidden, device=device, dtype=grad_dtype, generator=gen)
        dres = torch.randn(rows, hidden, device=device, dtype=grad_dtype, generator=gen) if RESIDUAL else None
        weight = 1 + 0.5 * torch.randn(hidden, device=device, generator=gen)
        dx = torch.empty_like(x)
        dw = torch.empty(hidden, device=device)
        db = None if RMS else torch.empty(hidden, device=device)
        chunk = max(1, (1 << 28) // (hidden * 4))  # fp32 statistics in 1 GiB slices
        mean = None if RMS else torch.cat([layernorm_mean_ref(x[i:i + chunk]) for i in range(0, rows, chunk)])
        rstd_ref = rmsnorm_rstd_ref if RMS else layernorm_rstd_ref
        rstd = torch.cat([rstd_ref(x[i:i + chunk], 1e-5) for i in range(0, rows, chunk)]).float()
        if RESIDUAL:
            # The same bytes (h, dy and dh read, dx written): a copy of half of them into the other half.
            src = torch.empty(rows * hidden * (dtype.itemsize + grad_dtype.itemsize) // 2, device=device,
                              dtype=torch.float16)
            dst = torch.empty_like(src)
            t_add = bench(lambda: dst.copy_(src))
            del src, dst
        else:
            t_add = bench(lambda: torch.add(x, dy, out=dx))
        bound = sms * hidden * 8
        # --only filters the named variants; the --tilings ones always run.
        found = configs(hidden, x.element_size())
        wanted = set(ONLY) | {tiling_variant(spec, found["new"])[0] for spec in TILINGS}
        variants = [(name, c) for name, c in found.items() if not ONLY or name in wanted]
        for name, c in variants * REPEAT:
            # Check on the first rows: enough for several persistent iterations and a ragged last tile.
            check = min(rows, max(64, 3 * c.max_partial_rows(sms) * c.tiling.rows_per_cta + 5))
            check_mean = None if RMS else mean[:check]
            ref_dx, ref_dw, ref_db = norm_bwd_ref_fp32(dy[:check], x[:check], weight, check_mean, rstd[:check])
            if RESIDUAL:
                ref_dx = ref_dx.float() + dres[:check].float()
            launch.layernorm_bwd(dy[:check], x[:check], weight, check_mean, rstd[:check], dx[:check], dw, db,
                                 config=c, rms=RMS, dresidual=None if dres is None else dres[:check])
            err = max(float((dx[:check].float() - ref_dx.float()).abs().max()),
                      float((dw - ref_dw).abs().max() / max(1.0, float(ref_dw.abs().max()))),
                      0.0 if RMS else float((db - ref_db).abs().max() / max(1.0, float(ref_db.abs().max()))))
            del ref_dx, ref_dw, ref_db

            def run(c=c):
                launch.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=c, rms=RMS, dresidual=dres)

            run()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            workspace = launch.bwd_grid_clusters(c, rows, device.index or 0) * hidden * 8
            ms = bench(run)
            ok = err < (0.1 if dtype != torch.float32 else 1e-3)
            sol_name = "the 4-tensor copy" if RESIDUAL else "add"
            line = (f"{rows}x{hidden} {dtype_name} {name:3} [{describe(c)}]: {ms:.4f} ms, "
                    f"{100 * t_add / ms:.0f}% of {sol_name} ({t_add:.4f} ms), max err {err:.2e}{'' if ok else ' WRONG'}, "
                    f"workspace {workspace / 2**20:.2f} MiB (peak {peak / 2**20:.2f}) vs bound {bound / 2**20:.2f} "
                    f"MiB{'' if workspace <= bound else ' OVER'}")
            print(line, flush=True)
            table.append((f"{rows}x{hidden} {dtype_name}", name, ms, 100 * t_add / ms, err, ok, workspace / bound))
        del x, dy, dx, mean, rstd, dres
        torch.cuda.empty_cache()
    print(f"\n[{time.perf_counter() - start:.0f} s]  workspace = partial rows x N x 8 B, as a multiple of "
          "SMs x N x 8 B")
    print(f"{'shape':22} {'cfg':10} {'ms':>9} {'%add':>5} {'max err':>9} {'ws/bound':>8}")
    for shape, name, ms, pct, err, ok, ratio in table:
        print(f"{shape:22} {name:10} {ms:9.4f} {pct:5.0f} {err:9.2e}{'' if ok else '!'} {ratio:8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ptxas", action="store_true", help="compile only; print ptxas -v usage per config")
    parser.add_argument("--min-hidden", type=int, default=1, help="only shapes with N at least this")
    parser.add_argument("--max-hidden", type=int, default=1 << 30, help="only shapes with N at most this")
    parser.add_argument("--shapes", default="", help="MxNxdtype,... instead of SHAPES (e.g. 128x4096xbf16)")
    parser.add_argument("--rms", action="store_true", help="RMSNorm's backward (no mean, no db)")
    parser.add_argument("--residual", action="store_true", help="the fused residual's backward (dh added to dx)")
    parser.add_argument("--grad-dtype", default="", choices=("", "bf16", "fp16", "fp32"),
                        help="dy and dh in this dtype instead of x's")
    parser.add_argument("--only", default="",
                        help="comma-separated variant names (e.g. new,sep) to run alone (with the --tilings ones)")
    parser.add_argument("--tilings", default="",
                        help="extra variants: the default with other row tilings, THREADSxVECSxROWS[sSTAGES][cCTAS],... "
                             "(e.g. 640x1x1s3: 640 threads of one vector a row, one row a CTA, 3 stages)")
    parser.add_argument("--repeat", type=int, default=1, help="time each variant this many times, interleaved")
    parser.add_argument("--host-hidden", action="store_true",
                        help="time with the bench's timer (host dispatch hidden behind a spin kernel): for small M")
    args = parser.parse_args()
    global HOST_HIDDEN, RMS, REPEAT, RESIDUAL, GRAD_DTYPE
    HOST_HIDDEN, RMS, REPEAT, RESIDUAL = args.host_hidden, args.rms, max(1, args.repeat), args.residual
    GRAD_DTYPE = args.grad_dtype
    TILINGS[:] = [spec for spec in args.tilings.split(",") if spec]
    ONLY[:] = [name for name in args.only.split(",") if name]
    if args.shapes:
        SHAPES[:] = [(int(m), int(n), d) for m, n, d in (spec.split("x") for spec in args.shapes.split(","))]
    SHAPES[:] = [shape for shape in SHAPES if args.min_hidden <= shape[1] <= args.max_hidden]
    if args.ptxas:
        os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
        ptxas_report()
    else:
        gpu_probe()
    return 0


if __name__ == "__main__":
    sys.exit(main())
