"""The kernel-variant sweep that benchmarks/sanitize.sh runs under compute-sanitizer (memcheck, racecheck, initcheck).

Every case goes through the public API (``layernorm(..., backend="triton" | "cutedsl")``, forward and backward
through autograd) on CUDA tensors, and its results are checked against ``layernorm_ref`` (fp64, on the CPU). The
cases cover every kernel variant of both backends:

* Triton: every row of ``_FWD_LADDER`` and ``_BWD_LADDER`` (N at the top of each bucket for 2-byte dtypes, half of
  it for fp32, which takes the 2N entry), the derived variants (resident head + tail rows, the fp32 rows of the
  backward's re-read entry held in registers instead), odd N (1, 7, 769, 5000, 20000) and the largest N (262144);
* CuTeDSL: every config bucket of ``_cutedsl/config.py`` -- (threads per row, cluster size) for the forward and
  the backward, for 2- and 4-byte dtypes -- and every vector width (1, 2, 4, 8 elements); the persistent forward
  and the few-rows backward's column CTAs;
* fp16 / bf16 / fp32, with and without weight/bias (fp32 or x's dtype), which gradients are wanted, statistics
  stored or not, contiguous / strided / misaligned rows, M = 1, a small odd M, and an M that makes every program of
  a persistent grid loop.

Tiers: 0 = the coverage core (each ladder row / bucket once, the common flags), 1 = the flag, layout and
persistent-grid variants. Each tool runs its own selection, tier 0 first, until its --budget is spent:
memcheck all cases; initcheck tier 0 plus the persistent-grid cases; racecheck one case per ladder row / bucket
(2-byte dtype, M = 3).

    python benchmarks/sanitize_cases.py --list [--tool racecheck]   # the cases, no GPU needed
    python benchmarks/sanitize_cases.py --cpu-smoke                 # a few tiny Triton cases, interpreter on CPU
    python benchmarks/sanitize_cases.py --tool memcheck --budget 170 # what sanitize.sh runs (needs CUDA)

Exit status: 0 when every case that ran matched the reference, 1 otherwise. The last line is a one-line summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ELEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
AFFINES = ("none", "w", "wb_fp32", "wb_same")  # weight / bias: none, weight only (x's dtype), both fp32, both x's
GRADS = ("all", "x", "params", "none")  # which of x / weight+bias require grad; "none": a no-grad forward only
LAYOUTS = ("contig", "strided", "offset")  # rows padded by 3 elements; base pointer one element off (misaligned)
TOOLS = ("memcheck", "initcheck", "racecheck")
EPS = 1e-5
LARGEST_N = 262144
# Persistent-grid cases are capped at this many elements (the fp64 reference runs on the CPU).
MAX_PERSISTENT_ELEMENTS = 40 << 20


@dataclass(frozen=True)
class Case:
    backend: str  # "triton" | "cutedsl"
    hidden: int
    dtype: str  # "bf16" | "fp16" | "fp32"
    affine: str = "wb_fp32"
    grads: str = "all"
    stats: bool = True  # return_rstd/return_mean (the only way to store them in a no-grad forward)
    layout: str = "contig"
    rows: tuple = (1, 37)  # M values; "loop" = enough rows for every program of the persistent grid to loop
    tier: int = 0
    race: bool = False  # in racecheck's subset
    race_rows: tuple = (3,)  # the M values racecheck runs (it is slow per CTA)

    @property
    def id(self) -> str:
        rows = ",".join(str(r) for r in self.rows)
        return (f"{self.backend}:N={self.hidden}:{self.dtype}:{self.affine}:grads={self.grads}"
                f":stats={int(self.stats)}:{self.layout}:M={rows}")

    def tools(self) -> tuple:
        selected = ["memcheck"]
        if self.tier == 0 or "loop" in self.rows:
            selected.append("initcheck")
        if self.race:
            selected.append("racecheck")
        return tuple(selected)


# ----------------------------------------------------------------------------------------------------------------
# The case list
# ----------------------------------------------------------------------------------------------------------------


def _small_rows(hidden: int) -> tuple:
    return (1, 37) if hidden <= 8192 else (1, 5) if hidden <= 65536 else (1, 3)


def triton_ladder_ns() -> tuple[list[int], list[int]]:
    """(2-byte Ns, fp32 Ns): the top of every bucket of both ladders (fp32 rows take the entry for 2N), the largest
    N for the catch-all rows, and odd Ns inside buckets (1, 7, 769, 5000 (resident head + tail), 20000)."""
    from vibe_kernels.layernorm._triton import _BWD_LADDER, _FWD_LADDER

    tops = sorted({row[0] for row in _FWD_LADDER + _BWD_LADDER if row[0] is not None})
    odd = [1, 7, 769, 5000, 20000]
    two_byte = sorted(set(tops) | set(odd) | {LARGEST_N})
    fp32 = sorted({max(1, t // 2) for t in tops} | set(odd) | {tops[-1]})  # tops[-1] fp32 = the catch-all row
    return two_byte, fp32


def cutedsl_bucket_ns() -> tuple[list[int], list[int]]:
    """(2-byte Ns, fp32 Ns): for each config bucket (threads per row, cluster size, and for the backward whether w
    and dw/db live in shared memory) of the forward and the backward,
    the smallest N that lands in it, among powers of two and then their neighbours and 3 * 2^k (ragged N that
    shrink a cluster), plus N = 2 and 4 (vector widths 2 and 4) and odd Ns (vector width 1: 7, 769, 5000, 100003
    (prime, clustered))."""
    from vibe_kernels.layernorm._cutedsl import config

    powers = [1 << k for k in range(config.MAX_N.bit_length())]
    neighbours = sorted({m for p in powers for m in (p + 1, p - 1, 3 * p) if 1 <= m} - set(powers))
    result = []
    for elem in (2, 4):
        ns = {2, 4, 7, 769, 5000, 100003}
        for make in (config.fwd_config, config.bwd_config):
            seen = set()
            for n in powers + neighbours:
                if n > config.MAX_N:
                    continue
                made = make(n, elem, contiguous_vec(n, elem))
                bucket = (made.tiling.threads_per_row, made.tiling.cluster_n,
                          getattr(made, "column_state_in_smem", False))
                if bucket not in seen:
                    seen.add(bucket)
                    ns.add(n)
        result.append(sorted(ns))
    return result[0], result[1]


def contiguous_vec(hidden: int, elem_bytes: int) -> int:
    """The CuTeDSL vector width for contiguous, 16-byte aligned (M, N) tensors (launch.vector_width's answer, without
    importing cutlass): the widest power of two <= 16 bytes dividing N."""
    vec = 16 // elem_bytes
    while vec > 1 and hidden % vec:
        vec //= 2
    return vec


# Tier-1 variants, rotated over the tier-0 cases so that every kernel family meets several of them.
VARIANTS = (
    dict(affine="none", grads="x"),
    dict(affine="w", grads="params"),
    dict(affine="wb_same", grads="all", layout="strided"),
    dict(affine="wb_fp32", grads="none", stats=False),
    dict(affine="wb_same", grads="none", stats=True, layout="offset"),
    dict(affine="w", grads="x", layout="offset"),
    dict(affine="none", grads="none", stats=False, layout="strided"),
)


def build_cases() -> list[Case]:
    import torch

    from vibe_kernels.layernorm._triton import _BWD_LADDER, _FWD_LADDER, _ladder_row, bwd_config, fwd_config

    core: list[Case] = []
    loops: list[Case] = []
    two_byte, fp32 = triton_ladder_ns()
    fwd_rows_seen, bwd_rows_seen, configs_seen = set(), set(), set()
    for i, n in enumerate(two_byte):
        fwd_row = _ladder_row(_FWD_LADDER, n, torch.bfloat16)
        bwd_row = _ladder_row(_BWD_LADDER, n, torch.bfloat16)
        configs = (fwd_config(n, torch.bfloat16), bwd_config(n, torch.bfloat16), fwd_row, bwd_row)
        # racecheck: once per distinct (forward, backward) config and ladder rows (two rows may give one config)
        race = configs not in configs_seen
        core.append(Case("triton", n, ("bf16", "fp16")[i % 2], rows=_small_rows(n), race=race))
        configs_seen.add(configs)
        if bwd_row not in bwd_rows_seen:  # the backward's persistent grid, once per backward ladder row
            loops.append(replace(core[-1], rows=("loop",), tier=1, race=False))
        if fwd_row not in fwd_rows_seen and fwd_row[4] and fwd_row[5] == 1:  # the forward's persistent chunked grid
            loops.append(replace(core[-1], rows=("loop",), grads="none", stats=True, tier=1, race=False))
        fwd_rows_seen.add(fwd_row)
        bwd_rows_seen.add(bwd_row)
    for n in fp32:
        # 5000 and 8192: the backward's fp32 fallback (the re-read ladder row held in registers); 5000: head + tail
        core.append(Case("triton", n, "fp32", rows=_small_rows(n), race=n in (5000, 8192)))
        if n == 8192:
            loops.append(replace(core[-1], rows=("loop",), tier=1, race=False))
    if _FWD_LADDER[-1][5] > 1:
        # The forward's catch-all row with a persistent grid of several programs per SM: fp32 rows just above the
        # last bucket (2-byte rows would need M x N beyond MAX_PERSISTENT_ELEMENTS for the grid to loop).
        n = _FWD_LADDER[-2][0] // 2 + 64
        loops.append(Case("triton", n, "fp32", grads="none", rows=("loop",), tier=1))
    cute_two, cute_fp32 = cutedsl_bucket_ns()
    for i, n in enumerate(cute_two):
        core.append(Case("cutedsl", n, ("bf16", "fp16")[i % 2], rows=_small_rows(n), race=True))
        loops.append(replace(core[-1], rows=("loop",), tier=1, race=False))
    for n in cute_fp32:
        core.append(Case("cutedsl", n, "fp32", rows=_small_rows(n)))
    # The forward's affine_after_stats variant: M >= AFFINE_AFTER_STATS_MIN_ROWS and a one-row CTA (16-byte vectors;
    # 4097: 1-element vectors); 512-thread CTAs and clusters (16384, 65536, 8192 fp32) under the launch bound of two
    # CTAs per SM. Their backwards (16384, 65536 bf16: a cluster, two CTAs per SM with the column state in shared
    # memory) run with them under memcheck and initcheck.
    from vibe_kernels.layernorm._cutedsl.config import AFFINE_AFTER_STATS_MIN_ROWS

    for n, dtype in ((4096, "bf16"), (8192, "fp16"), (4097, "bf16"), (4096, "fp32"), (16384, "bf16"),
                     (65536, "bf16"), (8192, "fp32")):
        rows = (AFFINE_AFTER_STATS_MIN_ROWS + 7,)
        race = n <= 16384 and dtype != "fp32" or n == 4096  # racecheck is slow per CTA: not the clustered rows
        core.append(Case("cutedsl", n, dtype, grads="none", rows=rows, race=race, race_rows=rows))
    # The persistent forward (config.PERSISTENT_MIN_AFFINE_ROW_BYTES of fp32 weight and bias a row, M above
    # SMALL_M_ROWS): every cluster strides over several rows, so its shared memory (the weight/bias slots, the
    # exchange's buffers alternating by row parity) is reused; racecheck on the bf16 one. (The backward's column CTAs
    # at few rows run in every case above with 2 <= M <= 256 over several CTAs: M = 37, racecheck's M = 3.)
    from vibe_kernels.layernorm._cutedsl.config import SMALL_M_ROWS

    for n, dtype in ((65536, "bf16"), (32768, "fp32")):
        rows = (SMALL_M_ROWS + 44,)
        core.append(Case("cutedsl", n, dtype, grads="none", rows=rows, race=dtype == "bf16", race_rows=rows))

    variants = []
    for k, base in enumerate(core):
        variants.append(replace(base, tier=1, race=False, **VARIANTS[k % len(VARIANTS)]))
        if base.dtype != "fp32" and base.hidden in (1, 7, 769, 5000, 8192, 20000, LARGEST_N):
            # the other 2-byte dtype at the ragged Ns and the ends of the range
            other = "fp16" if base.dtype == "bf16" else "bf16"
            variants.append(replace(base, dtype=other, tier=1, race=False, **VARIANTS[(k + 3) % len(VARIANTS)]))
    return core + loops + variants


def select(cases: list[Case], tool: str, backends: tuple) -> list[Case]:
    """The cases ``tool`` runs, in order: tier 0 first; inside a tier, the backends alternate (a budget cut leaves
    both covered)."""
    chosen = [c for c in cases if tool in c.tools() and c.backend in backends]
    counters: dict = {}
    keyed = []
    for c in chosen:
        k = counters[(c.tier, c.backend)] = counters.get((c.tier, c.backend), -1) + 1
        keyed.append(((c.tier, k, c.backend), c))
    return [c for _, c in sorted(keyed, key=lambda item: item[0])]


# ----------------------------------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------------------------------

# Allowed error against the fp64 reference: a sanity bound that catches garbage (unwritten or misread elements),
# not a precision test (the test suite's tolerance table is that).
TOL = {"bf16": 2e-2, "fp16": 3e-3, "fp32": 2e-4}


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _sm_count(device) -> int:
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def loop_rows(case: Case, device) -> int:
    """Rows such that programs of the backward's persistent grid (and of the Triton forward's persistent chunked
    grid, where the config has one) run a second iteration, half of the grid on a ragged last tile."""
    sms = _sm_count(device)
    dtype = _torch_dtype(case.dtype)
    capacity = 1
    if case.backend == "triton":
        from vibe_kernels.layernorm import _triton

        f, b = _triton.fwd_config(case.hidden, dtype), _triton.bwd_config(case.hidden, dtype)
        if f.chunked and f.programs_per_sm:
            capacity = max(capacity, f.programs_per_sm * sms)
        slots = sms * b.programs_per_sm
        if b.chunked:
            col_chunks = -(-case.hidden // b.block_n)
            capacity = max(capacity, max(1, slots // col_chunks) * b.block_m)
        else:
            capacity = max(capacity, slots * b.block_m)
    else:
        from vibe_kernels.layernorm._cutedsl import config

        elem = ELEM_BYTES[case.dtype]
        cfg = config.bwd_config(case.hidden, elem, contiguous_vec(case.hidden, elem))
        capacity = cfg.max_partial_rows(sms) * cfg.tiling.rows_per_cta
    return capacity + capacity // 2 + 3


def _make_inputs(case: Case, rows: int, device, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    dtype = _torch_dtype(case.dtype)
    n = case.hidden
    x_cpu = (torch.randn(rows, n, generator=gen) * 1.5 + 0.25).to(dtype)
    # Padding and the skipped leading element are left unwritten on the device: under initcheck a kernel reading
    # outside its rows is reported. The offset layout ends exactly at its allocation's end (memcheck: a read past
    # the last row is out of bounds).
    if case.layout == "strided":
        x = torch.empty(rows, n + 3, dtype=dtype, device=device)[:, :n]
        x.copy_(x_cpu)
    elif case.layout == "offset":
        x = torch.empty(rows * n + 1, dtype=dtype, device=device)[1:].view(rows, n)
        x.copy_(x_cpu)
    else:
        x = x_cpu.to(device)
    param_dtype = torch.float32 if case.affine == "wb_fp32" else dtype
    weight = bias = None
    if case.affine != "none":
        weight = (1 + 0.5 * torch.randn(n, generator=gen)).to(param_dtype)
    if case.affine in ("wb_fp32", "wb_same"):
        bias = (0.5 * torch.randn(n, generator=gen)).to(param_dtype)
    dy = torch.randn(rows, n, generator=gen).to(dtype)
    return x_cpu, x, weight, bias, dy


def _compare(name: str, got, ref, tol: float, scale: float = 1.0) -> str | None:
    """None when |got - ref| <= tol * (|ref| + scale) everywhere (and got is finite where ref is), else a message."""
    import torch

    got64 = got.detach().cpu().double()
    ref64 = ref.detach().cpu().double()
    if got64.shape != ref64.shape:
        return f"{name}: shape {tuple(got64.shape)} != {tuple(ref64.shape)}"
    bad_finite = torch.isfinite(ref64) & ~torch.isfinite(got64)
    if bad_finite.any():
        return f"{name}: {int(bad_finite.sum())} non-finite values (unwritten or misread elements?)"
    err = (got64 - ref64).abs()
    allowed = tol * (ref64.abs() + scale)
    excess = err - allowed
    if excess.numel() and excess.max() > 0:
        idx = int(excess.flatten().argmax())
        return (f"{name}: {int((excess > 0).sum())}/{err.numel()} elements off; worst at flat index {idx}: "
                f"{got64.flatten()[idx].item()!r} vs {ref64.flatten()[idx].item()!r}")
    return None


def run_case(case: Case, device, tool: str) -> list[str]:
    """Runs ``case`` for each of its M values; returns failure messages (empty: all matched the reference)."""
    import torch

    from vibe_kernels.layernorm import layernorm, layernorm_mean_ref, layernorm_ref, layernorm_rstd_ref

    failures = []
    rows_list = case.rows
    if tool == "racecheck":
        rows_list = case.race_rows
    for rows in rows_list:
        if rows == "loop":
            rows = loop_rows(case, device)
            if rows * case.hidden > MAX_PERSISTENT_ELEMENTS:
                rows = max(3, MAX_PERSISTENT_ELEMENTS // case.hidden)
        seed = zlib.crc32(f"{case.id}:{rows}".encode())
        x_cpu, x, weight_cpu, bias_cpu, dy_cpu = _make_inputs(case, rows, device, seed)
        weight = weight_cpu.to(device) if weight_cpu is not None else None
        bias = bias_cpu.to(device) if bias_cpu is not None else None
        want_x = case.grads in ("all", "x")
        want_p = case.grads in ("all", "params") and weight is not None
        x.requires_grad_(want_x)
        for p in (weight, bias):
            if p is not None:
                p.requires_grad_(want_p)
        result = layernorm(x, weight, bias, eps=EPS, return_rstd=case.stats, return_mean=case.stats,
                           backend=case.backend)
        out, rstd, mean = result if case.stats else (result, None, None)
        grads = {}
        if want_x or want_p:
            names = [name for name, t, w in (("dx", x, want_x), ("dw", weight, want_p), ("db", bias, want_p))
                     if w and t is not None]
            tensors = [{"dx": x, "dw": weight, "db": bias}[name] for name in names]
            grads = dict(zip(names, torch.autograd.grad(out, tensors, dy_cpu.to(device))))
        if device.type == "cuda":
            torch.cuda.synchronize()
            # A device-side read of every output element: under initcheck, an element no kernel wrote is reported
            # here, attributed to this read.
            for t in [out, rstd, mean, *grads.values()]:
                if t is not None:
                    torch.isfinite(t).all().item()

        # fp64 reference on the CPU
        x64 = x_cpu.double().requires_grad_()
        w64 = weight_cpu.double().requires_grad_() if weight_cpu is not None else None
        b64 = bias_cpu.double().requires_grad_() if bias_cpu is not None else None
        ref = layernorm_ref(x64, w64, b64, EPS)
        tol = TOL[case.dtype]
        label = f"M={rows}"
        checks = [_compare(f"{label} out", out, ref, tol)]
        if case.stats:
            checks.append(_compare(f"{label} mean", mean, layernorm_mean_ref(x64.detach()), 1e-4))
            checks.append(_compare(f"{label} rstd", rstd, layernorm_rstd_ref(x64.detach(), EPS), 1e-4))
        if grads:
            ref_inputs = {"dx": x64, "dw": w64, "db": b64}
            ref_grads = torch.autograd.grad(ref, [ref_inputs[k] for k in grads], dy_cpu.double())
            for (name, got), want in zip(grads.items(), ref_grads):
                grad_tol = TOL["fp32"] if got.dtype == torch.float32 else TOL[case.dtype]
                scale = 1.0 if name == "dx" else float(rows) ** 0.5  # dw/db: sums over rows
                checks.append(_compare(f"{label} {name}", got, want, grad_tol, scale))
        failures += [c for c in checks if c]
    return failures


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def _cutedsl_reason(device) -> str:
    from vibe_kernels.layernorm._backends import cutedsl_unavailable_reason

    return cutedsl_unavailable_reason(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=TOOLS, default="memcheck", help="which sanitizer's case selection")
    parser.add_argument("--budget", type=float, default=0, help="seconds: start no new case after this (0: none)")
    parser.add_argument("--backends", default="triton,cutedsl")
    parser.add_argument("--limit", type=int, default=0, help="run at most this many cases (0: all)")
    parser.add_argument("--list", action="store_true", help="print the selected cases and exit (no GPU needed)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run a few tiny Triton cases on the CPU under the Triton interpreter")
    args = parser.parse_args(argv)
    backends = tuple(b for b in args.backends.split(",") if b)

    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    cases = build_cases()
    selected = select(cases, args.tool, backends)
    if args.list:
        for c in selected:
            print(f"tier {c.tier}  {'/'.join(c.tools()):28s} {c.id}")
        print(f"{len(selected)} cases for {args.tool} ({len(cases)} in all; backends {','.join(backends)})")
        return 0

    if args.cpu_smoke:
        device = torch.device("cpu")
        # Tiny Ns across the resident kernels, one chunked N (forward and backward), every tier-1 variant that lands
        # on them; M = 1 and 5.
        smoke_ns = {1, 7, 256, 769, 16384}
        selected = [replace(c, rows=(1, 5)) for c in cases
                    if c.backend == "triton" and c.hidden in smoke_ns and "loop" not in c.rows]
        print("cpu smoke: Triton kernels under the interpreter; CuTeDSL needs a GPU (skipped)")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --list or --cpu-smoke, or on the GPU machine", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  tool {args.tool}  "
              f"PYTORCH_NO_CUDA_MEMORY_CACHING={os.environ.get('PYTORCH_NO_CUDA_MEMORY_CACHING', '')}")

    if args.limit:
        selected = selected[: args.limit]
    unavailable = {}
    if "cutedsl" in backends:
        reason = _cutedsl_reason(device)
        if reason:
            unavailable["cutedsl"] = reason
            print(f"NOTE: CuTeDSL cases skipped: {reason} (on the GPU machine: source .gpu/env.sh first)")

    start = time.perf_counter()
    ran = failed = skipped_budget = skipped_unavailable = 0
    for case in selected:
        if case.backend in unavailable:
            skipped_unavailable += 1
            continue
        if args.budget and time.perf_counter() - start > args.budget:
            skipped_budget += 1
            continue
        t0 = time.perf_counter()
        try:
            failures = run_case(case, device, args.tool)
        except Exception as exc:  # noqa: BLE001 - reported, then the sweep stops if the CUDA context is gone
            failures = [f"{type(exc).__name__}: {exc}".splitlines()[0][:300]]
            traceback.print_exc()
            if device.type == "cuda" and ("CUDA" in str(exc) or "illegal" in str(exc).lower()):
                ran += 1
                failed += 1
                print(f"FAIL  {case.id}  {failures[0]}  (CUDA context lost: stopping)", flush=True)
                skipped_budget += len(selected) - ran - skipped_unavailable - skipped_budget
                break
        ran += 1
        failed += bool(failures)
        status = "ok  " if not failures else "FAIL"
        print(f"{status}  {case.id}  [{time.perf_counter() - t0:.1f}s]  {'; '.join(failures)}", flush=True)
    elapsed = time.perf_counter() - start
    if skipped_budget:
        print(f"budget of {args.budget:.0f}s spent: {skipped_budget} case(s) not run (coverage incomplete)")
    print(f"sanitize_cases: tool={args.tool} ran={ran} failed={failed} skipped_budget={skipped_budget} "
          f"skipped_unavailable={skipped_unavailable} elapsed={elapsed:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
