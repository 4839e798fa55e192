"""First call of a new shape in a fresh process (issue 4's compile-time target), on the GPU machine.

For each provider, two fresh processes share one empty cache directory: "cold" (nothing cached), then "warm"
(the disk cache the cold run wrote). Each reports the import time and the first forward call of a new shape
(synchronized), and checks the output against the fp32 reference. For CuTeDSL the backend's own modules (cutlass,
tvm_ffi, our kernels and launchers: what the first call would import otherwise) are imported and timed apart, as
"backend import", the way Quack's import is apart from its first call. Triton keeps its own cache (TRITON_CACHE_DIR,
pointed at the same scratch directory so cold is really cold). Quack's cache is where Quack puts it (its own
environment variables), so its "cold" may be warm if it ran before on this machine: the line says so.

    python benchmarks/first_call.py [--json PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
provider = sys.argv[1]
import torch
if provider == "quack":
    from quack.rmsnorm import layernorm_fwd as quack_fwd
else:
    from vibe_kernels.layernorm import layernorm, layernorm_ref
torch.cuda.init()
t1 = time.perf_counter()
if provider == "cutedsl":
    # The backend's modules (cutlass, tvm_ffi, our kernels and launchers), which the first call imports otherwise:
    # timed apart, as Quack's import is.
    from vibe_kernels.layernorm._cutedsl import _launch_module
    _launch_module()
t_backend = time.perf_counter()
x = torch.randn(4096, 7168, device="cuda", dtype=torch.bfloat16)
w = torch.randn(7168, device="cuda")
torch.cuda.synchronize()
t2 = time.perf_counter()
if provider == "quack":
    out = quack_fwd(x, w, None, eps=1e-6)
    out = out[0] if isinstance(out, tuple) else out
else:
    out = layernorm(x, w, backend=provider)
torch.cuda.synchronize()
t3 = time.perf_counter()
ok = None
if provider != "quack":
    ref = layernorm_ref(x, w).to(out.dtype)
    ok = bool(torch.allclose(out.float(), ref.float(), atol=0.05, rtol=0.02))
print(json.dumps({"import_s": t1 - t0, "backend_import_s": t_backend - t1, "first_call_s": t3 - t2, "ok": ok}))
"""


def run(provider: str, cache: str) -> dict:
    env = dict(os.environ, VIBE_KERNELS_CACHE_DIR=os.path.join(cache, "vk"), TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    proc = subprocess.run([sys.executable, "-c", CHILD, provider], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": proc.stderr[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--providers", default="cutedsl,triton,quack")
    args = parser.parse_args()
    results = {}
    for provider in args.providers.split(","):
        with tempfile.TemporaryDirectory() as cache:
            results[provider] = {"cold": run(provider, cache), "warm": run(provider, cache)}
    print("| provider | import (s) | backend import (s) | first call, cold cache (s) | first call, warm cache (s) "
          "| output ok |")
    print("|:--|--:|--:|--:|--:|:--|")
    for provider, r in results.items():
        cold, warm = r["cold"], r["warm"]
        if "error" in cold or "error" in warm:
            print(f"| {provider} | error: {(cold.get('error') or warm.get('error'))[-200:]!r} | | | | |")
            continue
        print(f"| {provider} | {cold['import_s']:.2f} | {warm['backend_import_s']:.3f} | {cold['first_call_s']:.3f} "
              f"| {warm['first_call_s']:.3f} "
              f"| {cold['ok']}/{warm['ok']} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
