"""The CuTeDSL disk cache (launch.compile_fwd/compile_bwd with TVM FFI): a cold process compiles and writes one
object file per variant; a fresh process with the same cache directory loads it instead of compiling; a corrupt
file is ignored (recompiled), and VIBE_KERNELS_CACHE_DIR=0 turns the cache off. Runs without a GPU: the kernels
are compiled for sm_90a and loaded, not launched (tests/layernorm/test_gpu_cutedsl_cache.py launches them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cutlass")
pytest.importorskip("tvm_ffi")

REPO_ROOT = Path(__file__).resolve().parents[2]

# Compiles (or loads) one forward and one backward variant and reports how many real compiles happened.
SCRIPT = r"""
import json, os, sys
os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
import cutlass
from vibe_kernels.layernorm._cutedsl import config, launch
compiles = []
for name in ("_compile_fwd", "_compile_bwd"):
    real = getattr(launch, name)
    def counting(*args, _real=real, _name=name):
        compiles.append(_name)
        return _real(*args)
    setattr(launch, name, counting)
fwd = launch.compile_fwd(cutlass.BFloat16, 1024, cutlass.Float32, None, True, 8,
                         config.fwd_config(1024, 2, 8), "sm_90a", tvm_ffi=True)
bwd = launch.compile_bwd(cutlass.BFloat16, 1024, cutlass.Float32, True, True, 8,
                         config.bwd_config(1024, 2, 8), "sm_90a", tvm_ffi=True)
print(json.dumps({"compiles": compiles, "callable": [callable(fwd), callable(bwd)]}))
"""


def _run(cache_dir: str) -> dict:
    env = dict(os.environ, VIBE_KERNELS_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_instead_of_compiling(tmp_path):
    cold = _run(str(tmp_path))
    assert cold == {"compiles": ["_compile_fwd", "_compile_bwd"], "callable": [True, True]}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.startswith(("vk_fwd_", "vk_bwd_")) and f.endswith(".o") for f in files), files
    warm = _run(str(tmp_path))
    assert warm == {"compiles": [], "callable": [True, True]}


def test_a_corrupt_cache_file_is_recompiled(tmp_path):
    _run(str(tmp_path))
    for path in tmp_path.iterdir():
        path.write_bytes(b"not an object file")
    again = _run(str(tmp_path))
    assert again["compiles"] == ["_compile_fwd", "_compile_bwd"]


def test_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("VIBE_KERNELS_CACHE_DIR", "0")
    from vibe_kernels.layernorm._cutedsl import launch

    assert launch.cache_dir() is None
    result = _run("0")
    assert result["compiles"] == ["_compile_fwd", "_compile_bwd"]
