"""CuTeDSL forward: config variants side by side on the GPU (ms and % of a same-size copy, one process).

Variants: the default config; weight/bias loaded after the row statistics (``affine_after_stats``: ~64 instead of
~95 registers a thread with fp32 weight and bias, so twice the CTAs per SM); and that with 32 bytes of x a thread;
CTAs of up to 1024 threads with 32 bytes of x a thread (``t1024``: twice the warps of a 512-thread CTA at the same
registers per SM), with weight/bias early or late; and the default, late and early configs with L1 hints
(``l1_hints``: rows loaded without allocating in L1, weight/bias kept with evict-last): "+l1"; and the late and
early configs with a launch bound of two CTAs per SM (``min_ctas_per_sm=2``: ptxas fits 64 registers a thread at
512 threads): "+2cta"; the default and late configs bounded to 64 registers a thread whatever the CTA size ("+64r":
four 256-thread CTAs per SM); two or four rows a CTA where a row takes 128 threads ("rows2", "rows4", "...late"); the
default with mean and variance in one exchange ("merged"; "merged-early": weight/bias before the statistics, no
launch bound); RMSNorm with the default config ("rms", only when named in --only: LayerNorm's bytes with one row
sum); 1024-thread CTAs with 64 bytes of x a thread, merged statistics and weight/bias late ("t1024m": half the
default's cluster); 64, 32 or 16 bytes of x a thread ("64B": the multi-row tiling that rows of 2-4 KB had before
MID_ROW_BYTES; "32B", "16B": more threads on a row, for small M, and the 2-4 KB rows' tilings); the default
with L2 eviction policies (``l2_hints``: rows evict_first, weight/bias evict_last): "l2"; a one-CTA row split over a
cluster of two half-size CTAs, weight/bias late: "cl2"; the persistent kernel (``persistent``: weight/bias read once
into shared memory, the next row's x prefetched): "persist", and for unclustered rows with 2-4 CTAs per SM:
"persist2".."persist4"; rows over more than 8 CTAs in 8-CTA clusters of more bytes a thread ("c8"), and in
1024-thread CTAs ("c8t1024"); the fitted 9-15-CTA clusters with weight and bias late
("fitted", the ragged default before the twentieth session).
Every variant's output is checked against torch's layer_norm first. GPU time (the bench's timer: L2 flushed, host
dispatch hidden behind a spin kernel).

    python benchmarks/cutedsl_fwd_probe.py [--json PATH] [--stats]   # --stats: timed with mean and rstd stored
"""
import argparse
import dataclasses
import json

import torch

from probe_common import parse_shape
from vibe_kernels.layernorm._cutedsl import config as cfg
from vibe_kernels.layernorm._cutedsl import launch
from vibe_kernels.layernorm.bench import gpu_ms_host_hidden

SHAPES = [(1, 1024, torch.bfloat16), (128, 1024, torch.bfloat16), (1, 4096, torch.bfloat16),
          (128, 4096, torch.bfloat16), (256, 4096, torch.bfloat16), (4096, 8192, torch.float16),
          (4096, 8192, torch.bfloat16), (4096, 16384, torch.float16),
          (4096, 4096, torch.float16), (4095, 5000, torch.float16), (4096, 4608, torch.float16), (8192, 8192, torch.float32),
          (32768, 256, torch.bfloat16), (32768, 1024, torch.bfloat16), (32768, 4096, torch.bfloat16),
          (32768, 8192, torch.bfloat16), (32768, 16384, torch.bfloat16), (32768, 32768, torch.bfloat16),
          (32768, 65536, torch.bfloat16), (16384, 131072, torch.bfloat16), (8192, 262144, torch.bfloat16),
          (128, 8192, torch.bfloat16), (1, 8192, torch.bfloat16)]


def _persistent(config, ctas_per_sm: int):
    """``config``'s tiling in the persistent kernel (merged statistics; the per-row kernel's fields off) at
    ``ctas_per_sm`` CTAs per SM."""
    return dataclasses.replace(config, persistent=True, merged_stats=True, affine_after_stats=False, min_ctas_per_sm=0,
                               l2_hints=False, persistent_ctas_per_sm=ctas_per_sm)


def variants(hidden: int, elem: int, vec: int, rows: int, affine_bytes: int = 8, only: set | None = None) -> dict:
    default = cfg.fwd_config(hidden, elem, vec, rows=rows, affine_bytes=affine_bytes)
    late = dataclasses.replace(default, affine_after_stats=True)
    late32 = dataclasses.replace(cfg.fwd_config(hidden, elem, vec, bytes_per_thread=32), affine_after_stats=True)
    early = dataclasses.replace(default, affine_after_stats=False)
    t1024 = cfg.fwd_config(hidden, elem, vec, bytes_per_thread=32, max_cta_threads=1024)
    t1024_late = dataclasses.replace(t1024, affine_after_stats=True)
    hinted = {f"{name}+l1": dataclasses.replace(config, l1_hints=True)
              for name, config in (("default", default), ("late", late), ("early", early))}
    two_ctas = {f"{name}+2cta": dataclasses.replace(config, min_ctas_per_sm=2)
                for name, config in (("late", late), ("early", early))}
    # A launch bound of 64 registers a thread at any CTA size ("+64r": 4 CTAs of 256 threads per SM): ptxas gives the
    # 256-thread late-affine CTA at N = 5000 / 8192 16-bit 78 registers (3 CTAs per SM), 64 with no spills under it.
    bounded_ctas = 65536 // (64 * default.tiling.num_threads)
    if bounded_ctas >= 2:
        two_ctas.update({f"{name}+64r": dataclasses.replace(config, min_ctas_per_sm=bounded_ctas)
                         for name, config in (("default", default), ("late", late))})
    # Several rows a CTA where a row takes 128 threads (CTAs of 256 / 512 threads), weight/bias early or late.
    rows2 = cfg.fwd_config(hidden, elem, vec, rows=rows, min_cta_threads=256)
    rows4 = cfg.fwd_config(hidden, elem, vec, rows=rows, min_cta_threads=512)
    multi_row = {"rows2": rows2, "rows2late": dataclasses.replace(rows2, affine_after_stats=True),
                 "rows4": rows4, "rows4late": dataclasses.replace(rows4, affine_after_stats=True)}
    # The rule before the launch bound: late only for one-row CTAs of <= 256 threads without a cluster.
    previous = dataclasses.replace(default, min_ctas_per_sm=0, affine_after_stats=(
        rows >= cfg.AFFINE_AFTER_STATS_MIN_ROWS and default.tiling.rows_per_cta == 1
        and default.tiling.cluster_n == 1 and default.tiling.num_threads <= 256))
    # Mean and variance in one exchange (rows that fill the tiling exactly).
    extra = {}
    if default.tiling.tile_n * default.tiling.cluster_n == hidden:
        extra = {"merged": dataclasses.replace(default, merged_stats=True),
                 "merged-early": dataclasses.replace(default, merged_stats=True, affine_after_stats=False,
                                                     min_ctas_per_sm=0)}
    # 1024-thread CTAs at 64 bytes of x a thread (half the cluster of the 512-thread default for clustered rows),
    # mean and variance in one exchange, weight/bias after the statistics.
    t1024_64 = cfg.fwd_config(hidden, elem, vec, rows=rows, max_cta_threads=1024)
    if t1024_64.tiling.tile_n * t1024_64.tiling.cluster_n == hidden:
        extra["t1024m"] = dataclasses.replace(t1024_64, merged_stats=True, affine_after_stats=True)
    # 32 and 16 bytes of x a thread (more threads on a row: for small M, where one row's latency sets the time), and
    # 64 (the tiling of rows of 2-4 KB before the twenty-fifth session's MID_ROW_BYTES rule).
    for per_thread in (64, 32, 16):
        extra[f"{per_thread}B"] = cfg.fwd_config(hidden, elem, vec, rows=rows, bytes_per_thread=per_thread,
                                                 affine_bytes=affine_bytes)
    # L2 eviction policies: rows evict_first, weight/bias evict_last ("l2").
    extra["l2"] = dataclasses.replace(default, l2_hints=True)
    # A one-CTA row split over a cluster of two CTAs of half the threads, weight/bias late ("cl2"): twice the CTAs of
    # a grid of one row each, so its last, partly filled wave costs half as much (4096 rows over 132 SMs x 3 CTAs:
    # 10.3 waves), and more rows in flight (ptxas, 8192 fp16 with fp32 weight and bias: 72 registers a 128-thread CTA,
    # 7 CTAs per SM = 3.5 rows, against 80 registers a 256-thread CTA, 3 rows); at the cost of a cluster exchange.
    t = default.tiling
    if t.cluster_n == 1 and t.rows_per_cta == 1 and t.threads_per_row >= 128 and not default.persistent:
        half = t.threads_per_row // 2
        split = cfg.fwd_config(hidden, elem, vec, rows=rows, max_cta_threads=half, min_cta_threads=half,
                               affine_bytes=affine_bytes)
        if split.tiling.cluster_n == 2:
            extra["cl2"] = dataclasses.replace(split, affine_after_stats=True)
    # The persistent kernel (weight/bias read once into shared memory, the next row's x loaded during this row's
    # exchange), for one-row CTAs over rows that fill the tiling ("persist"; merged statistics).
    t = default.tiling
    if (t.rows_per_cta == 1 or t.cluster_n == 1) and t.tile_n * t.cluster_n == hidden:
        # (Unclustered CTAs of several rows too: one row's weight and bias slots, twenty-third session.)
        extra["persist"] = _persistent(default, 1)
        # Unclustered rows: 2-4 persistent CTAs per SM under a launch bound ("persist2".."persist4",
        # FwdConfig.persistent_ctas_per_sm), where their weight and bias slots fit in shared memory together.
        if t.cluster_n == 1:
            for ctas in (2, 3, 4):
                if ctas * t.tile_n * affine_bytes <= 200 * 1024:
                    extra[f"persist{ctas}"] = _persistent(default, ctas)
        # The one-cluster-a-row kernel where the default is persistent ("per-row").
        extra["per-row"] = cfg.fwd_config(hidden, elem, vec, rows=rows, affine_bytes=affine_bytes, persistent=False)
        # Narrow unclustered rows: persistent over tilings of 16 / 32 bytes of x a thread ("persist16B8": 16 bytes,
        # 8 CTAs per SM). ptxas (N = 1024 bf16, fp32 weight and bias, statistics stored): 16 bytes, 128 threads, 53
        # registers at 4 and 8 CTAs per SM (16: 52 bytes spilled); 32 bytes, 2 rows of 64 threads, 86 registers at 4
        # (8: 16 bytes spilled). The default tiling (64 bytes, 4 rows of 32 threads) spills from 4 CTAs per SM.
        if t.cluster_n == 1:
            for per_thread, ctas in ((16, 4), (16, 8), (32, 4)):
                narrow = cfg.fwd_config(hidden, elem, vec, rows=rows, bytes_per_thread=per_thread)
                nt = narrow.tiling
                if (nt.cluster_n == 1 and nt.tile_n == hidden and ctas * nt.num_threads <= 2048
                        and ctas * nt.tile_n * affine_bytes <= 200 * 1024):
                    extra[f"persist{per_thread}B{ctas}"] = _persistent(narrow, ctas)
    # Rows over more than 8 CTAs in 8-CTA clusters of more bytes a thread, no launch bound ("c8": two such clusters
    # fit a GPC, where one of 9-16 CTAs leaves the rest of it idle; at N = 151936 bf16 the old halved tiling, 8 CTAs
    # of 80 bytes, read 57% of a copy against 30% for the fitted 13-CTA cluster).
    t = default.tiling
    if t.cluster_n > 8 and t.rows_per_cta == 1:
        nvec = -(-hidden // vec)
        vecs = -(-nvec // (t.threads_per_row * 8))
        eight = cfg.RowTiling(vec, t.threads_per_row, vecs, 1, -(-nvec // (t.threads_per_row * vecs)))
        extra["c8"] = dataclasses.replace(default, tiling=eight, persistent=False, min_ctas_per_sm=0,
                                          merged_stats=eight.tile_n * eight.cluster_n == hidden)
        # The same in 1024-thread CTAs ("c8t1024": half the bytes a thread, at most 64 registers).
        vecs = -(-nvec // (1024 * 8))
        wide = cfg.RowTiling(vec, 1024, vecs, 1, -(-nvec // (1024 * vecs)))
        extra["c8t1024"] = dataclasses.replace(default, tiling=wide, persistent=False, min_ctas_per_sm=0,
                                               merged_stats=wide.tile_n * wide.cluster_n == hidden)
    # The fitted tiling of ragged wide rows (9-15 CTAs), weight and bias late: the default until the twentieth session
    # ("fitted").
    fitted = cfg.FwdConfig(cfg._row_tiling(hidden, vec, 64, elem, cfg.MAX_CTA_THREADS, cfg.MIN_CTA_THREADS),
                           affine_after_stats=True)
    found = {"default": default}
    if previous != default:
        found["previous"] = previous
    if 8 < fitted.tiling.cluster_n < cfg.MAX_CLUSTER and fitted.tiling.rows_per_cta == 1 and fitted != default:
        found["fitted"] = fitted
    for name, config in (("early", early), ("late", late), ("late32", late32), ("t1024", t1024),
                         ("t1024late", t1024_late), *hinted.items(), *two_ctas.items(), *multi_row.items(),
                         *extra.items()):
        # Filtered before the duplicates are dropped: a variant asked for by name is kept even where its config
        # equals one not asked for (at 4096x8192 "per-row" equals "late", and was dropped with it).
        if only is not None and name not in only:
            continue
        if config not in found.values():
            found[name] = config
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--min-hidden", type=int, default=1, help="only shapes with N at least this")
    parser.add_argument("--only", default="", help="comma-separated variant names to run besides the default")
    parser.add_argument("--shapes", default="", help="comma-separated MxN (SHAPES' entries of that "
                        "size, else bf16) or MxNx<torch dtype> to run (default: all of SHAPES)")
    parser.add_argument("--stats", action="store_true",
                        help="time with mean and rstd stored (the training forward) instead of without")
    parser.add_argument("--affine", default="float32", choices=("float32", "bfloat16", "weight", "none"),
                        help="weight and bias dtype, weight (an fp32 weight, no bias: 4 bytes a column, as the "
                        "bench's bias-free rows), or none (the bench's are float32)")
    args = parser.parse_args()
    rows_out = []
    print(f"device: {torch.cuda.get_device_name()}")
    shapes = SHAPES
    if args.shapes:  # MxN: SHAPES' entries of that size (both dtypes of 4096x8192), else bf16
        shapes = [shape for spec in args.shapes.split(",")
                  for shape in ([s for s in SHAPES if f"{s[0]}x{s[1]}" == spec] or [parse_shape(spec, "bfloat16")])]
    for rows, hidden, dtype in shapes:
        if hidden < args.min_hidden:
            continue
        gen = torch.Generator(device="cuda").manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
        w = 1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        b = 0.1 * torch.randn(hidden, device="cuda", generator=gen)
        if args.affine == "bfloat16":
            w, b = w.bfloat16(), b.bfloat16()
        elif args.affine == "weight":
            b = None
        elif args.affine == "none":
            w = b = None
        out = torch.empty_like(x)
        ref = torch.nn.functional.layer_norm(x.float(), (hidden,), None if w is None else w.float(),
                                             None if b is None else b.float(), 1e-6)
        # Stored statistics against fp64 (mean relative to the row's standard deviation, rstd relative).
        ref_var, ref_mean = torch.var_mean(x.double(), dim=1, correction=0)
        ref_std = (ref_var + 1e-6).sqrt()
        ref_rstd = 1 / ref_std
        mean = torch.empty(rows, device="cuda")
        rstd = torch.empty(rows, device="cuda")
        copy_ms = gpu_ms_host_hidden(lambda: out.copy_(x), 25, 100)
        line = {"rows": rows, "hidden": hidden, "dtype": str(dtype).split(".")[-1], "copy_ms": copy_ms}
        vec = 16 // x.element_size()
        affine_bytes = sum(t.element_size() for t in (w, b) if t is not None)
        only = set(args.only.split(",")) if args.only else None
        for name, config in variants(hidden, x.element_size(), vec, rows, affine_bytes, only).items():
            try:
                out.fill_(float("nan"))
                mean.fill_(float("nan"))
                rstd.fill_(float("nan"))
                launch.layernorm_fwd(x, w, b, 1e-6, out, mean, rstd, config=config)
                err = (out.float() - ref).abs().max().item()
                stat_err = max(((mean - ref_mean) / ref_std).abs().max().item(),
                               ((rstd - ref_rstd) / ref_rstd).abs().max().item())
                stats = (mean, rstd) if args.stats else (None, None)
                ms = gpu_ms_host_hidden(lambda: launch.layernorm_fwd(x, w, b, 1e-6, out, *stats, config=config),
                                        25, 100)
                line[name] = {"ms": ms, "pct": 100 * copy_ms / ms, "max_err": err, "stat_err": stat_err,
                              "tiling": dataclasses.asdict(config.tiling)}
            except Exception as exc:  # noqa: BLE001
                line[name] = {"error": repr(exc)[:200]}
        if "rms" in args.only.split(","):
            # RMSNorm with the default config: the same bytes and a single row sum, the cost of LayerNorm's second one.
            rms_ref = torch.nn.functional.rms_norm(x.float(), (hidden,), None if w is None else w.float(), 1e-6)
            rms_ref = rms_ref if b is None else rms_ref + b.float()
            out.fill_(float("nan"))
            launch.layernorm_fwd(x, w, b, 1e-6, out, None, None, rms=True)
            err = (out.float() - rms_ref).abs().max().item()
            ms = gpu_ms_host_hidden(lambda: launch.layernorm_fwd(x, w, b, 1e-6, out, None, None, rms=True), 25, 100)
            line["rms"] = {"ms": ms, "pct": 100 * copy_ms / ms, "max_err": err}
        rows_out.append(line)
        def cell(k, v):
            if "ms" not in v:
                return f"{k} ERR {v['error'][:160]}"
            stats = f", stats {v['stat_err']:.1e}" if "stat_err" in v else ""
            return f"{k} {v['ms']:.4f} ({v['pct']:.0f}%, err {v['max_err']:.1e}{stats})"

        cells = "  ".join(cell(k, v) for k, v in line.items() if isinstance(v, dict))
        stored = ", stats stored" if args.stats else ""
        print(f"{rows}x{hidden} {line['dtype']} affine {args.affine}{stored}: copy {copy_ms:.4f}  {cells}", flush=True)
        del x, out, ref, ref_var, ref_mean, ref_std, ref_rstd
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
