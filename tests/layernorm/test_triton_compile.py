"""Every Triton kernel variant that the launchers in vibe_kernels.layernorm._triton can produce compiles ahead of
time for sm_90 (H100), with no GPU needed, and the resident kernels get 128-bit loads at aligned N.

How the variants are found: the launchers themselves are called (with small CPU tensors) while each kernel object
is replaced by a recorder, so the constexprs, pointer dtypes, None arguments and num_warps are exactly what the
launchers would pass; each recorded launch becomes ``triton.compile(ASTSource(fn, signature, constexprs, attrs),
target=GPUTarget("cuda", 90, 32))``. Signatures follow Triton's JIT specialisation: tensors -> "*<dtype>" with a
16-byte-divisibility attribute (fresh allocations are aligned), None -> constexpr, ints == 1 -> constexpr, other
ints -> i32 (+ divisibility 16 when divisible), floats -> fp32.

Why a subprocess: with TRITON_INTERPRET=1 (set by conftest.py when there is no GPU) triton builds every @jit
function at import, its own tl.sum etc. included, as an interpreted function, which the compiler cannot lower. So
the compile runs in a fresh interpreter with TRITON_INTERPRET=0 (this file's ``__main__``), which works with or
without a GPU, whatever the parent process has set.

Grid trimming (a compile costs ~0.2 s; the full product of dtypes x flags x N would be thousands): the full flag
grid (HAS_W, HAS_B, STORE_MEAN, STORE_RSTD for the forward; every (weight, dweight, dbias) the API can ask for in
the backward) runs in bf16 at one resident and one chunked N; every config bucket of fwd_config/bwd_config
(one N per distinct config, plus the odd sizes) runs for fp32 and fp16 with the training flag set only (weight in x's
dtype, fp32 bias, all outputs). Weight/bias dtypes (fp32 vs x's) vary across those scenarios. (``COMPILED_DTYPES``:
fp16 and bf16 share every config and branch, and the flag branches are the same in every dtype.) Variants are
deduplicated before compiling. One subprocess per (launcher, flags|sizes|features, dtype) so pytest-xdist spreads
them. The "features" part covers RMSNorm, the fused residual (residual in x's dtype or fp32, h stored or not,
rounded or kept in fp32), the output dtype, and in the backward the residual output's gradient (DRES) and the
residual input's own-dtype gradient (DRES_IN), at one resident, one head+tail and one chunked N (and at N = 16384:
forward, resident only with a residual; backward, the re-read resident rows, chunked for fp32).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET = ("cuda", 90, 32)
DTYPES = ["float32", "float16", "bfloat16"]

# Candidate row widths: powers of two first, so each config bucket is represented by an aligned N where it has one.
POW2_SIZES = [1, 16, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144]
ODD_SIZES = [111, 769, 1128, 5000, 8200, 32776]  # ragged last blocks, head+tail rows; always compiled
# Row counts: the launchers use fewer rows per program when M is small (so every SM gets work), so each size is
# recorded at a large M (the ladder's rows per program) and a small one. Fake tensors: no memory is allocated.
LARGE_M, SMALL_M = 32768, 64


def representative_sizes(config_fn, dtype) -> list[int]:
    """One N per distinct config that the heuristic returns (its config bucket), plus every odd size."""
    seen, sizes = set(), []
    for hidden in POW2_SIZES + ODD_SIZES:
        cfg = config_fn(hidden, dtype)
        if cfg not in seen or hidden in ODD_SIZES:
            seen.add(cfg)
            sizes.append(hidden)
    return sizes


def opt_in_configs(cls_name: str, dtype: str, hidden: int) -> list[dict]:
    """Configs the heuristics never return but a caller can pass (config=): the heuristic config for ``hidden``
    with one opt-in switch turned on (a bool field defaulting to False, other than ``chunked``, e.g. a single-kernel
    or split-row path), and with three pipeline stages, as JSON. Found from the dataclass, so a new switch is
    covered without editing this test."""
    from vibe_kernels.layernorm import _triton

    cls = getattr(_triton, cls_name)
    heuristic = (_triton.fwd_config if cls is _triton.FwdConfig else _triton.bwd_config)(hidden, getattr(_torch(), dtype))
    switches = [f.name for f in dataclasses.fields(cls) if f.default is False and f.name != "chunked"]
    configs = []
    for name in switches:
        if name == "fused_sum" and hidden > 1024:
            continue  # the counter handshake is the same at every width: one width keeps the compile time down
        try:
            configs.append(dataclasses.replace(heuristic, **{name: True}))
        except ValueError:  # a switch this config cannot take (fused_sum in the chunked backward)
            if name == "prefetch" and not heuristic.chunked and hidden <= 8192:
                # the register prefetch replaces the pipelined / re-read loop of the resident backward
                configs.append(dataclasses.replace(heuristic, stages=1, reread=False, prefetch=True))
    if "stages" in {f.name for f in dataclasses.fields(cls)}:
        configs.append(dataclasses.replace(heuristic, stages=3))  # a software-pipelined loop
    if getattr(heuristic, "held_chunks", None) == 0 and heuristic.chunked and 2 * heuristic.block_n < hidden:
        configs.append(dataclasses.replace(heuristic, held_chunks=2))  # the chunked forward's held chunks
    return [{"cls": cls_name, "fields": dataclasses.asdict(config)} for config in configs]


def fwd_scenarios(dtype: str, part: str) -> list[dict]:
    """Forward launches. "flags": the full flag grid at one resident and one chunked N (and every opt-in config);
    "sizes": the training flag set (weight in x's dtype, fp32 bias, mean and rstd stored) at every
    bucket's N, and rows == 1 (the JIT turns an int argument equal to 1 into a constexpr: another variant)."""
    def scenario(hidden, weight, bias, mean, rstd, rows=LARGE_M, config=None):
        return dict(launcher="fwd", dtype=dtype, rows=rows, hidden=hidden, weight=weight, bias=bias, mean=mean,
                    rstd=rstd, config=config)

    if part == "features":
        return fwd_feature_scenarios(dtype)
    if part == "flags":
        # N = 1024 at both M: one wave of programs (SMALL_M) loads weight/bias before the statistics.
        configs = ([(1024, None, LARGE_M), (1024, None, SMALL_M), (65536, None, LARGE_M)]
                   + [(hidden, c, LARGE_M) for hidden in (1024, 65536) for c in opt_in_configs("FwdConfig", dtype, hidden)])
        return [scenario(hidden, "float32" if has_w else None, "x" if has_b else None, mean, rstd, rows=rows,
                         config=config)
                for hidden, config, rows in configs
                for has_w, has_b, mean, rstd in itertools.product([True, False], repeat=4)]
    from vibe_kernels.layernorm._triton import fwd_config

    sizes = representative_sizes(fwd_config, getattr(_torch(), dtype))
    # (fp32 weight and bias at two resident widths: with 16-bit x, the default loads them at the tile's offsets)
    return [scenario(hidden, "x", "float32", True, True, rows=rows) for hidden in sizes for rows in (LARGE_M, SMALL_M)] + [
        scenario(4096, "x", "x", False, False, rows=1), scenario(65536, "x", "x", False, False, rows=1)] + [
        scenario(hidden, "float32", "float32", True, True, rows=rows) for hidden in (2048, 4096)
        for rows in (LARGE_M, SMALL_M)]


def _other_float(dtype: str) -> str:
    """An out_dtype other than x's: fp32 for half types, bf16 for fp32."""
    return "bfloat16" if dtype == "float32" else "float32"


# (rms, residual dtype, residual_out stored, residual_in_fp32, out dtype): "x" = x's dtype
FWD_FEATURE_SETS = [
    (True, None, False, False, "x"),
    (True, "x", True, False, "x"),
    (True, "float32", True, True, "x"),
    (False, "x", True, False, "x"),
    (False, "x", False, False, "x"),
    (False, "float32", True, True, "x"),
    (False, "float32", True, False, "x"),
    (False, "x", True, True, "other"),
    (False, None, False, False, "other"),
    (True, None, False, False, "other"),
]


# The chunked forward with held chunks (FwdConfig.held_chunks, opt-in) at N = 65536, for every feature set.
HELD_CONFIG = {"cls": "FwdConfig", "fields": dict(block_m=1, block_n=8192, num_warps=16, chunked=True, tail_n=0,
                                                  programs_per_sm=1, affine_first=False, l2_hints=True,
                                                  held_chunks=2)}


def fwd_feature_scenarios(dtype: str) -> list[dict]:
    scenarios = []
    for hidden, config in ((1024, None), (5000, None), (16384, None), (65536, None), (65536, HELD_CONFIG)):
        # 16384: resident with a residual, chunked without. Held chunks: the sets that change what is held (h in
        # x's dtype or fp32, stored or not) and the output dtype.
        sets = FWD_FEATURE_SETS if config is None else [FWD_FEATURE_SETS[i] for i in (1, 2, 4, 5, 8)]
        for rms, residual, store, in_fp32, out in sets:
            residual_out = ("float32" if in_fp32 else "x") if store else None
            scenarios.append(dict(
                launcher="fwd", dtype=dtype, rows=LARGE_M, hidden=hidden, weight="x", bias=None if rms else "float32",
                mean=not rms, rstd=True, config=config, rms=rms, residual=residual, residual_out=residual_out,
                residual_in_fp32=in_fp32, out=_other_float(dtype) if out == "other" else "x"))
    return scenarios


# (rms, h dtype, dy dtype, dresidual dtype, dresidual_in dtype): the backward of each forward feature
BWD_FEATURE_SETS = [
    (True, "x", "x", None, None),
    (True, "x", "x", "x", None),
    (True, "float32", "x", "float32", "float32"),
    (False, "x", "x", "x", None),
    (False, "float32", "x", "float32", "float32"),
    (False, "float32", "x", None, "float32"),
    (False, "x", "other", None, None),
    (True, "x", "other", "x", None),
]


def bwd_feature_scenarios(dtype: str) -> list[dict]:
    other = _other_float(dtype)
    spec = lambda s: other if s == "other" else s  # noqa: E731
    return [dict(launcher="bwd", dtype=dtype, rows=LARGE_M, hidden=hidden, weight="x", dweight=True,
                 dbias=None if rms else "float32", config=None, rms=rms, x=spec(h), dy=spec(dy),
                 dresidual=dres, dresidual_in=dres_in)
            for hidden in (1024, 16384, 32768) for rms, h, dy, dres, dres_in in BWD_FEATURE_SETS]


BWD_FLAG_SETS = [  # (weight, dweight wanted, dbias dtype or None): every set the API can ask for
    (None, False, None), (None, False, "x"), ("float32", False, None), ("float32", True, None),
    ("x", False, "float32"), ("x", True, "x"),
]


def bwd_scenarios(dtype: str, part: str) -> list[dict]:
    """Backward launches. "flags": every BWD_FLAG_SETS entry at two resident Ns (held in registers; re-read) and
    one chunked N (and every opt-in config); "sizes": the training set (weight in x's dtype with its gradient, fp32
    bias gradient) at every bucket's N."""
    def scenario(hidden, weight, dweight, dbias, config=None, rows=LARGE_M):
        return dict(launcher="bwd", dtype=dtype, rows=rows, hidden=hidden, weight=weight, dweight=dweight, dbias=dbias,
                    config=config)

    if part == "features":
        return bwd_feature_scenarios(dtype)
    if part == "flags":
        sizes = (1024, 16384, 32768)  # 16384: the re-read resident rows (16-bit)
        configs = [(hidden, None) for hidden in sizes] + [(hidden, c) for hidden in sizes
                                                          for c in opt_in_configs("BwdConfig", dtype, hidden)]
        return [scenario(hidden, *flags, config=config) for hidden, config in configs for flags in BWD_FLAG_SETS]
    from vibe_kernels.layernorm._triton import bwd_config

    sizes = representative_sizes(bwd_config, getattr(_torch(), dtype))
    # weight_grads_from_rows alone: the CuTeDSL backward's dw/db at few rows (the Triton backward fuses it).
    from_rows = [dict(scenario(hidden, "x", True, "float32", rows=SMALL_M), from_rows=True)
                 for hidden in (1024, 16384)]
    return [scenario(hidden, "x", True, "float32", rows=rows) for hidden in sizes
            for rows in (LARGE_M, SMALL_M)] + from_rows


def _torch():
    import torch

    return torch


# ----------------------------------------------------------------------------------------------------------------
# The compiling side (runs in a subprocess with TRITON_INTERPRET=0)
# ----------------------------------------------------------------------------------------------------------------


H100_SMS = 132


def record_launches(module, scenarios):
    """Calls the launchers of ``module`` for each scenario with every kernel replaced by a recorder. Tensors are
    fake CUDA tensors (FakeTensorMode: no GPU, no memory), so the CUDA-only branches run as on an H100 (132 SMs).
    Returns ({kernel name: kernel}, [(kernel name, args, kwargs, scenario index)])."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    kernels = {name: obj for name, obj in vars(module).items() if name.endswith("_kernel")}
    launches = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((self.name, args, kwargs, current))
            return launch

    saved = dict(kernels, _num_sms=module._num_sms, _fast_launch_on=module._fast_launch_on,
                 _sum_counter=module._sum_counter)
    for name in kernels:
        setattr(module, name, Recorder(name))
    module._num_sms = lambda device_index: H100_SMS
    # The fused column sum's counter: a fake one (the real lookup asks the CUDA runtime about the current stream).
    module._sum_counter = lambda device: torch.zeros(2, dtype=torch.int32, device="cuda")
    module._fast_launch_on = False  # the recorders stand in for the JIT: no compiled kernel or launch plan to cache
    try:
        with FakeTensorMode():
            for current, sc in enumerate(scenarios):
                dtype = getattr(torch, sc["dtype"])
                shape = (sc["rows"], sc["hidden"])
                cfg = sc.get("config")
                cfg = getattr(module, cfg["cls"])(**cfg["fields"]) if cfg else None

                def tensor(spec, size):
                    if spec is None:
                        return None
                    return torch.empty(size, dtype=dtype if spec == "x" else getattr(torch, spec), device="cuda")

                x = tensor("x", shape)
                stat = lambda wanted: tensor("float32", (sc["rows"],)) if wanted else None  # noqa: E731
                if sc["launcher"] == "fwd":
                    features = {}
                    if "rms" in sc:  # the "features" part
                        features = dict(rms=sc["rms"], residual=tensor(sc["residual"], shape),
                                        residual_out=tensor(sc["residual_out"], shape),
                                        residual_in_fp32=sc["residual_in_fp32"])
                    module.layernorm_fwd(x, tensor(sc["weight"], sc["hidden"]), tensor(sc["bias"], sc["hidden"]),
                                         1e-6, tensor(sc.get("out", "x"), shape), stat(sc["mean"]), stat(sc["rstd"]),
                                         config=cfg, **features)
                else:
                    weight = tensor(sc["weight"], sc["hidden"])
                    dweight = tensor(sc["weight"], sc["hidden"]) if sc["dweight"] else None
                    features = {}
                    if "rms" in sc:
                        features = dict(rms=sc["rms"], dresidual=tensor(sc["dresidual"], shape),
                                        dresidual_in=tensor(sc["dresidual_in"], shape))
                    if sc.get("from_rows"):
                        module.weight_grads_from_rows(tensor("x", shape), tensor("x", shape), stat(True), stat(True),
                                                      dweight, tensor(sc["dbias"], sc["hidden"]))
                        continue
                    module.layernorm_bwd(tensor(sc.get("dy", "x"), shape), tensor(sc.get("x", "x"), shape), weight,
                                         stat(not sc.get("rms")), stat(True), tensor("x", shape), dweight,
                                         tensor(sc["dbias"], sc["hidden"]), config=cfg, **features)
    finally:
        for name, obj in saved.items():
            setattr(module, name, obj)
    return kernels, launches


def _specialise(kernel, args, kwargs):
    """(signature, constexprs, attrs, num_warps) the way Triton's JIT would specialise this launch."""
    import torch

    type_names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
                  torch.int64: "i64"}
    values = dict(zip(kernel.arg_names, args))
    options = {k: v for k, v in kwargs.items() if k not in kernel.arg_names}
    values.update({k: v for k, v in kwargs.items() if k in kernel.arg_names})
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        name, value = param.name, values[param.name]
        if param.is_constexpr or value is None or (type(value) is int and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + type_names[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "u1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot specialise {name}={value!r}")
    return signature, constexprs, attrs, options.get("num_warps", 4)


def compile_scenarios(scenarios):
    """Runs in the subprocess: one result per distinct kernel variant the scenarios launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vibe_kernels.layernorm import _triton

    kernels, launches = record_launches(_triton, scenarios)
    variants = {}
    for name, args, kwargs, scenario in launches:
        signature, constexprs, attrs, num_warps = _specialise(kernels[name], args, kwargs)
        key = json.dumps([name, signature, constexprs, sorted(map(str, attrs)), num_warps], sort_keys=True)
        variants.setdefault(key, dict(kernel=name, signature=signature, constexprs=constexprs, attrs=attrs,
                                      num_warps=num_warps, scenarios=[]))["scenarios"].append(scenario)
    results = []
    for variant in variants.values():
        result = dict(kernel=variant["kernel"], constexprs=variant["constexprs"], signature=variant["signature"],
                      num_warps=variant["num_warps"], scenarios=variant["scenarios"])
        try:
            source = ASTSource(fn=kernels[variant["kernel"]], signature=variant["signature"],
                               constexprs=variant["constexprs"], attrs=variant["attrs"])
            compiled = triton.compile(source, target=GPUTarget(*TARGET), options={"num_warps": variant["num_warps"]})
            ptx_lines = compiled.asm["ptx"].splitlines()
            loads = [line.strip() for line in ptx_lines if "ld.global" in line]
            result.update(
                error=None,
                cubin_bytes=len(compiled.asm["cubin"]),
                shared_bytes=compiled.metadata.shared,
                target=compiled.metadata.target.arch,
                loads=len(loads),
                # 128-bit loads: ld.global.v4, or 16-byte async copies to shared memory (a pipelined loop's loads)
                v4_loads=sum(".v4." in line for line in loads) + sum(
                    "cp.async." in line and (", 0x10," in line or line.rstrip().endswith(", 0x10;"))
                    for line in ptx_lines),
                scalar_loads=sorted({line for line in loads if ".v2." not in line and ".v4." not in line}),
                # L2 eviction policies the loads can use (createpolicy.fractional.L2::<policy>)
                l2_policies=sorted({policy for line in ptx_lines if "createpolicy" in line
                                    for policy in ("evict_first", "evict_last") if f"L2::{policy}" in line}),
                # The fused column sum's counter accesses: 32-bit integer atomics and acquire loads (the partial rows'
                # atomic adds are f32)
                counter_ops=[line.strip() for line in ptx_lines
                             if re.search(r"\b(atom|red)\.global\.\S*\.[us]32\b|\bld\.global\S*\.acquire", line)],
                # The held chunks' byte permutes (_unheld): the selector must be a register, not a folded constant
                runtime_permutes=sum(bool(re.search(r"prmt\.b32\s+%r\d+,\s*%r\d+,\s*0,\s*%r\d+;", line))
                                     for line in ptx_lines),
            )
        except Exception as exc:  # reported per variant, asserted by the test
            result.update(error=f"{type(exc).__name__}: {exc}"[:2000])
        results.append(result)
    return results


def run_compile_subprocess(scenarios, cache_dir):
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    env["TRITON_CACHE_DIR"] = str(cache_dir)  # a fresh cache: every variant really goes through ptxas
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__], input=json.dumps(scenarios), capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 0, f"compile subprocess failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(compile_scenarios(json.load(sys.stdin))))
    sys.exit(0)


# ----------------------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------------------

import pytest  # noqa: E402  (the __main__ side above needs no pytest)


SCENARIOS = {"fwd": fwd_scenarios, "bwd": bwd_scenarios}
PARTS = ("flags", "sizes", "features")
FEATURE_FLAGS = {"fwd": ("IS_RMS", "HAS_RESIDUAL", "STORE_RESIDUAL", "RESIDUAL_IN_FP32"),
                 "bwd": ("IS_RMS", "HAS_DRESIDUAL", "STORE_DRESIDUAL_IN")}
FLAGS = {"fwd": ("HAS_W", "HAS_B", "STORE_MEAN", "STORE_RSTD"), "bwd": ("HAS_W", "NEED_DW", "NEED_DB")}
RESIDENT = ("_layernorm_fwd_resident_kernel", "_layernorm_bwd_resident_kernel")


def test_every_kernel_is_launched_by_some_scenario():
    from vibe_kernels.layernorm import _triton

    kernels = {name for name in vars(_triton) if name.endswith("_kernel")}
    covered = set()
    for launcher, make in SCENARIOS.items():
        for dtype in DTYPES:
            for part in PARTS:
                scenarios = make(dtype, part)
                _, launches = record_launches(_triton, scenarios)
                assert {index for *_, index in launches} == set(range(len(scenarios))), f"{launcher} {part}"
                covered |= {name for name, *_ in launches}
    assert kernels == covered, f"kernels in _triton.py that no scenario launches: {sorted(kernels - covered)}"


def test_flag_grid_sizes_hit_both_config_branches():
    from vibe_kernels.layernorm._triton import bwd_config, fwd_config

    for dtype in (_torch().float32, _torch().float16, _torch().bfloat16):
        assert not fwd_config(1024, dtype).chunked and fwd_config(65536, dtype).chunked
        assert not bwd_config(1024, dtype).chunked and bwd_config(32768, dtype).chunked
        assert bwd_config(16384, dtype).chunked == (dtype == _torch().float32)  # 16-bit: re-read resident rows


def test_runs_without_a_gpu_under_the_interpreter():
    # The parent of the compile subprocesses: with no GPU, conftest.py has switched the interpreter on.
    if not _torch().cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"


# What each part compiles in. fp16 and bf16 take the same config buckets and flag branches (the element type is the
# only difference), and the flag branches are the same in every dtype: so the flag grid compiles in bf16 only, every
# config bucket (sizes) and the features in fp32 and fp16. Every kernel variant still reaches ptxas; the interpreter
# tests run every dtype.
COMPILED_DTYPES = {"flags": ("bfloat16",), "sizes": ("float32", "float16"), "features": ("float32", "float16")}
COMPILED = [(launcher, part, dtype) for launcher in ("fwd", "bwd") for part in PARTS for dtype in COMPILED_DTYPES[part]]


def test_every_dtype_compiles_and_fp32_takes_every_config_bucket():
    assert {dtype for *_, dtype in COMPILED} == set(DTYPES)
    assert {(launcher, part) for launcher, part, _ in COMPILED} == {(l, p) for l in ("fwd", "bwd") for p in PARTS}
    assert ("fwd", "sizes", "float32") in COMPILED and ("bwd", "sizes", "float32") in COMPILED


@pytest.mark.parametrize("launcher,part,dtype", COMPILED)
def test_kernels_compile_for_sm90(tmp_path, launcher, part, dtype):
    scenarios = SCENARIOS[launcher](dtype, part)
    results = run_compile_subprocess(scenarios, tmp_path / "triton-cache")

    failures = [f"{r['kernel']} {r['constexprs']} {r['signature']}: {r['error']}" for r in results if r["error"]]
    assert not failures, f"{len(failures)}/{len(results)} variants failed to compile:\n" + "\n".join(failures[:5])
    launched = sorted({s for r in results for s in r["scenarios"]})
    assert launched == list(range(len(scenarios))), "every scenario must launch at least one kernel"
    for r in results:
        assert r["cubin_bytes"] > 0 and r["target"] == 90, r["kernel"]

    if part == "flags":
        # Every flag combination reached the compiler as its own constexpr set, in every config branch: each kernel
        # taking all the launcher's flags got all of them.
        expected = 16 if launcher == "fwd" else len(BWD_FLAG_SETS)
        flagged = {r["kernel"] for r in results if set(FLAGS[launcher]) <= set(r["constexprs"])}
        assert flagged, "no kernel takes the flags"
        for kernel in flagged:
            seen = {tuple(r["constexprs"][f] for f in FLAGS[launcher]) for r in results if r["kernel"] == kernel}
            assert len(seen) == expected, f"{kernel}: flag sets compiled {sorted(seen)}"
        if launcher == "fwd":
            # The resident forward with weight/bias loaded before and after the statistics, every flag set each.
            for first in (True, False):
                seen = {tuple(r["constexprs"][f] for f in FLAGS[launcher]) for r in results
                        if r["kernel"] == RESIDENT[0] and r["constexprs"].get("AFFINE_FIRST", False) == first}
                assert len(seen) == expected, f"AFFINE_FIRST={first}: flag sets compiled {sorted(seen)}"

        # L2 eviction hints (the l2_hints opt-in): rows at their last read evict_first; rows read again (the
        # chunked forward's statistics pass) and the weight and bias evict_last; without the opt-in, no policy.
        # The re-read backward (REREAD) loads x and dy evict_last first and evict_first the second time. A pipelined
        # loop (NUM_STAGES > 1) may turn a load into an async copy to shared memory, which carries no policy (Triton
        # 3.6 does, for x and dy): there the policies are a subset of those.
        for r in results:
            c = r["constexprs"]
            hinted, kept = c.get("L2_HINTS", False), c.get("HAS_W", False) or c.get("HAS_B", False)
            if c.get("REREAD", False):
                expected = ["evict_first", "evict_last"]
            elif not hinted:
                expected = []
            elif r["kernel"] == "_layernorm_fwd_chunked_kernel" or kept:
                expected = ["evict_first", "evict_last"]
            else:
                expected = ["evict_first"]
            if c.get("NUM_STAGES", 1) > 1:
                assert set(r["l2_policies"]) <= set(expected), r
                assert hinted or c.get("REREAD", False) or not r["l2_policies"], r
            else:
                assert r["l2_policies"] == expected, r
        hinted = {r["kernel"] for r in results if r["constexprs"].get("L2_HINTS", False)}
        assert hinted == ({"_layernorm_fwd_resident_kernel", "_layernorm_fwd_chunked_kernel"} if launcher == "fwd"
                          else {"_layernorm_bwd_resident_kernel", "_layernorm_bwd_tiled_kernel"}), hinted

        # The fused column sum (BwdConfig.fused_sum, an opt-in config): a scalar atomic runs in one thread of the
        # program (Triton predicates it on thread 0), so each program makes one arrival (a release add), the sum
        # programs one acquire poll (Triton 3.9 turns the acquire add of 0 into an acquire load) and one departure
        # (a relaxed add). No other kernel variant touches a counter.
        fused = [r for r in results if r["constexprs"].get("SUM_BLOCK_N", 0) > 0]
        assert bool(fused) == (launcher == "bwd"), "no fused column sum variant compiled"
        for r in results:
            ops = r["counter_ops"]
            if r not in fused:
                assert not ops, r
                continue
            assert all(op.startswith("@%p") for op in ops), f"an unpredicated counter access: {ops}"
            arrivals = [op for op in ops if re.search(r"(red|atom)\.global\.gpu\.release\.add\.u32", op)]
            polls = [op for op in ops if re.search(r"ld\.global\.gpu\.acquire\.b32|atom\.global\.gpu\.acquire\.add",
                                                   op)]
            departures = [op for op in ops if re.search(r"atom\.global\.gpu\.relaxed\.add\.u32", op)]
            assert len(arrivals) == len(polls) == len(departures) == 1 and len(ops) == 3, ops

    # The chunked forward's held chunks (FwdConfig.held_chunks), 16-bit x held in x's dtype: each 32-bit register of a
    # held chunk is permuted once, by a selector the compilers cannot fold (else they hold the fp32 values instead).
    # The resident backward's register prefetch (BwdConfig.prefetch, an opt-in config): at N = 1024, every flag set.
    prefetched = {r["constexprs"]["N"] for r in results if r["constexprs"].get("PREFETCH", False)}
    assert bool(prefetched) == (launcher == "bwd" and part == "flags"), prefetched
    held = [r for r in results if r["constexprs"].get("HELD_CHUNKS", 0) > 0]
    # (opt-in configs in "flags" and "features"; the default of 16-bit rows of (16384, 32768] in "sizes")
    assert bool(held) == (launcher == "fwd" and (part != "sizes" or dtype != "float32")), "held chunks compiled?"
    for r in held:
        c = r["constexprs"]
        in_16bit = dtype != "float32" and not (c["HAS_RESIDUAL"] and c["RESIDUAL_IN_FP32"])
        assert c["OPAQUE_ASM"] and (r["runtime_permutes"] > 0) == in_16bit, r

    # Weight and bias at the tile's offsets (FwdConfig.affine_tile: an opt-in in "flags" at N = 1024, the default
    # for 16-bit x with fp32 weight and bias at N = 2048 / 4096 in "sizes"): they load straight into the rows'
    # layout, so there the resident forward's shared memory is the reductions' scratch alone (with the one-row load,
    # fp32 weight and bias with 16-bit x went through 4-8 KB of it in every program).
    tiled = [r for r in results if r["constexprs"].get("AFFINE_TILE", False)]
    assert bool(tiled) == (launcher == "fwd" and (part == "flags" or (part == "sizes" and dtype != "float32"))), \
        "affine_tile compiled where no scenario asks for it, or not where one does"
    for r in tiled:
        c = r["constexprs"]
        assert c["TAIL_N"] == 0 and c["N"] in (1024, 2048, 4096), c
        if c["HAS_W"] or c["HAS_B"]:
            assert r["shared_bytes"] <= 256, (r["kernel"], c, r["shared_bytes"])

    if part == "features":
        # Every feature combination reached the compiler in every kernel that takes the feature flags, and the
        # output (fwd) / dy (bwd) of another dtype than x's got its own pointer type.
        flags = FEATURE_FLAGS[launcher]
        expected = {tuple(bool(v) for v in combo) for combo in _feature_flag_sets(launcher, dtype)}
        for kernel in {r["kernel"] for r in results if set(flags) <= set(r["constexprs"])}:
            seen = {tuple(r["constexprs"][f] for f in flags) for r in results if r["kernel"] == kernel}
            assert expected <= seen, f"{kernel}: feature flag sets compiled {sorted(seen)}, expected {sorted(expected)}"
        typed = "Y" if launcher == "fwd" else "DY"
        other = "*" + {"float32": "fp32", "bfloat16": "bf16"}[_other_float(dtype)]
        assert any(r["signature"].get(typed) == other for r in results), f"no {typed} of dtype {other} compiled"

    # 128-bit loads: resident kernels at aligned N (N >= 256 with rows a multiple of 16 bytes: every row start and
    # the weight are 16-byte aligned; for N = 5000 fp16 only through the ROW_ALIGN hint, as Triton itself only
    # knows a stride's divisibility by 16) must load with ld.global.v4 wherever each thread holds at least 16
    # bytes of a tile (the small-M variants with one row per program can hold less); at power-of-two N the forward
    # needs no narrower load at all (the backward still loads mean/rstd per row).
    elem_bytes = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]

    def bytes_per_thread(r):
        c = r["constexprs"]
        return c["BLOCK_M"] * c["BLOCK_N"] * elem_bytes // (32 * r["num_warps"])

    aligned = [r for r in results if r["kernel"] in RESIDENT and r["constexprs"]["N"] >= 256
               and r["constexprs"]["N"] * elem_bytes % 16 == 0 and bytes_per_thread(r) >= 16]
    assert aligned, "no aligned resident variant compiled"
    if part == "sizes" and elem_bytes == 2:
        # N = 5000: rows 16-byte aligned only through the ROW_ALIGN hint, in whichever kernel the config picks.
        at_5000 = [r for r in results if r["constexprs"].get("N") == 5000 and "ROW_ALIGN" in r["constexprs"]]
        assert at_5000, "N = 5000 not compiled"
        for r in at_5000:  # rows of x, dy, out, dx: 16 bytes at a time
            assert r["constexprs"]["ROW_ALIGN"] == 8
            # (the backward's b32 loads are its per-row fp32 mean and rstd)
            narrow = [line for line in r["scalar_loads"] if ".b16" in line or (".b32" in line and launcher == "fwd")]
            assert not narrow, f"{r['kernel']} N=5000 {dtype}: rows loaded narrowly {narrow[:3]}"
    for r in aligned:
        where = f"{r['kernel']} N={r['constexprs']['N']} {dtype}"
        assert r["v4_loads"] > 0, f"{where}: no 128-bit loads"
        n = r["constexprs"]["N"]
        if r["kernel"] == "_layernorm_fwd_resident_kernel" and n & (n - 1) == 0:  # (a short tail may load less)
            assert not r["scalar_loads"], f"{where}: non-vector loads {r['scalar_loads'][:4]}"


def _feature_flag_sets(launcher: str, dtype: str) -> list[tuple]:
    """The feature constexprs each scenario of the "features" part should compile (FEATURE_FLAGS order)."""
    if launcher == "fwd":
        return [(rms, residual is not None, store, residual is not None and (in_fp32 or dtype == "float32"))
                for rms, residual, store, in_fp32, _ in FWD_FEATURE_SETS]
    return [(rms, dres is not None, dres_in is not None) for rms, _, _, dres, dres_in in BWD_FEATURE_SETS]
