"""On a GPU: kernels loaded from the CuTeDSL disk cache by a fresh process compute the same results as freshly
compiled ones (forward and backward), and the warm process compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import torch
from vibe_kernels.layernorm import cutedsl_layernorm, layernorm_ref
from vibe_kernels.layernorm._cutedsl import launch
compiles = []
for name in ("_compile_fwd", "_compile_bwd"):
    real = getattr(launch, name)
    def counting(*args, _real=real, _name=name):
        compiles.append(_name)
        return _real(*args)
    setattr(launch, name, counting)
torch.manual_seed(1)
x = torch.randn(513, 3072, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(3072, device="cuda", requires_grad=True)
b = torch.randn(3072, device="cuda", requires_grad=True)
out = cutedsl_layernorm(x, w, b)
dy = torch.randn_like(out)
out.backward(dy)
xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
ref = layernorm_ref(xr, wr, br)
ref.backward(dy.double())
err = {name: float((got.double() - want).abs().max()) for name, got, want in
       (("out", out, ref), ("dx", x.grad, xr.grad), ("dw", w.grad, wr.grad), ("db", b.grad, br.grad))}
print(json.dumps({"compiles": compiles, "err": err, "tvm_ffi": launch.uses_tvm_ffi()}))
"""


def _run(cache_dir):
    env = dict(os.environ, VIBE_KERNELS_CACHE_DIR=str(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cached_kernels_match_compiled_ones(tmp_path):
    from vibe_kernels.layernorm import is_cutedsl_layernorm_available

    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend unavailable")
    cold = _run(tmp_path)
    if not cold["tvm_ffi"]:
        pytest.skip("apache-tvm-ffi is not installed: the disk cache covers the TVM FFI path only")
    assert cold["compiles"] == ["_compile_fwd", "_compile_bwd"]
    warm = _run(tmp_path)
    assert warm["compiles"] == []
    # Same inputs (seeded), same kernels: identical results, and both within bf16 tolerance of fp64.
    assert warm["err"] == cold["err"]
    assert cold["err"]["out"] < 0.1 and cold["err"]["dx"] < 0.5, cold["err"]
