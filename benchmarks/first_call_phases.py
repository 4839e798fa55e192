"""Where a CuTeDSL first call's time goes in a fresh process with a warm disk cache (run it twice: the first run
fills the cache). Prints seconds per phase; ``--profile`` adds cProfile's top functions of the compile/load phase.

    python benchmarks/first_call_phases.py [--profile]
"""
import cProfile
import os
import pstats
import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402
import cutlass.cute  # noqa: E402,F401

torch.cuda.init()
x = torch.randn(4096, 7168, device="cuda", dtype=torch.bfloat16)
w = torch.randn(7168, device="cuda")
out = torch.empty_like(x)
torch.cuda.synchronize()
t1 = time.perf_counter()
from vibe_kernels.layernorm._cutedsl import config, launch  # noqa: E402

t2 = time.perf_counter()
launch._source_fingerprint()
t3 = time.perf_counter()
import cutlass  # noqa: E402

profile = None
if "--profile" in sys.argv:
    profile = cProfile.Profile()
    profile.enable()
compiled = launch.compile_fwd(cutlass.BFloat16, 7168, cutlass.Float32, None, False, 8, config.fwd_config(7168, 2, 8),
                              launch._arch_of(x.device), tvm_ffi=launch.uses_tvm_ffi())
t4 = time.perf_counter()
if profile is not None:
    profile.disable()
launch.layernorm_fwd(x, w, None, 1e-6, out, None, None)
torch.cuda.synchronize()
t5 = time.perf_counter()
launch.layernorm_fwd(x, w, None, 1e-6, out, None, None)
torch.cuda.synchronize()
t6 = time.perf_counter()
print(f"imports+setup {t1 - t0:.3f}  import launch {t2 - t1:.3f}  fingerprint {t3 - t2:.3f}  "
      f"compile_fwd (cache: {os.environ.get('VIBE_KERNELS_CACHE_DIR', 'default')}) {t4 - t3:.3f}  "
      f"first launch {t5 - t4:.3f}  second launch {t6 - t5:.4f}")
if profile is not None:
    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)
