"""The public API: input validation (each message tested), backend resolution, agreement between backends,
autograd behaviour of the statistics, and the import-time promise (no cutlass, no triton)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vibe_kernels.layernorm as ln
from vibe_kernels.layernorm import (
    cutedsl_layernorm,
    is_cutedsl_layernorm_available,
    layernorm,
    torch_layernorm,
    triton_layernorm,
)
from vibe_kernels.layernorm._backends import resolve_backend

REPO_ROOT = Path(__file__).resolve().parents[2]


def _x(gen, device, shape=(4, 64), dtype=torch.float32):
    return (torch.randn(shape, generator=gen) + 0.5).to(dtype).to(device)


def _w(gen, device, hidden=64, dtype=torch.float32):
    return (1 + 0.3 * torch.randn(hidden, generator=gen)).to(dtype).to(device)


# ----------------------------------------------------------------------------------------------------------------
# Validation: every error says what was received and what was expected
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [63, 65])
def test_weight_of_wrong_length(gen, device, hidden):
    with pytest.raises(ValueError, match=rf"weight must have shape \(64,\) to match x's last dim, got \({hidden},\)"):
        layernorm(_x(gen, device), _w(gen, device, hidden))


def test_weight_2d(gen, device):
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\).*got \(1, 64\)"):
        layernorm(_x(gen, device), _w(gen, device).unsqueeze(0))


def test_bias_of_wrong_length(gen, device):
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\).*got \(32,\)"):
        layernorm(_x(gen, device), _w(gen, device), _w(gen, device, 32))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float64, torch.bool, torch.uint8])
def test_unsupported_x_dtype(gen, device, dtype):
    x = (torch.randn(4, 64, generator=gen) * 3).to(dtype).to(device)
    with pytest.raises(TypeError, match=rf"x must be float16, bfloat16 or float32, got {dtype}"):
        layernorm(x, None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_unsupported_weight_dtype(gen, device, dtype):
    with pytest.raises(TypeError, match=rf"weight must be float32 or x's dtype \(torch.float16\), got {dtype}"):
        layernorm(_x(gen, device, dtype=torch.float16), _w(gen, device, dtype=dtype))


def test_fp16_weight_with_bf16_x(gen, device):
    with pytest.raises(TypeError, match=r"weight must be float32 or x's dtype \(torch.bfloat16\), got torch.float16"):
        layernorm(_x(gen, device, dtype=torch.bfloat16), _w(gen, device, dtype=torch.float16))


def test_bias_dtype(gen, device):
    with pytest.raises(TypeError, match=r"bias must be float32 or x's dtype \(torch.bfloat16\), got torch.float16"):
        layernorm(_x(gen, device, dtype=torch.bfloat16), None, _w(gen, device, dtype=torch.float16))


def test_weight_not_a_tensor(gen, device):
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor or None, got list"):
        layernorm(_x(gen, device), [1.0] * 64)


def test_x_not_a_tensor():
    # NumPy/CuPy/JAX arrays are accepted through DLPack (test_interop.py); objects without __dlpack__ are not.
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        layernorm([[1.0, 2.0, 3.0, 4.0]], None)


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_parameter_on_another_device(gen, device, which):
    other = "meta" if device == "cpu" else "cpu"
    x = _x(gen, device)
    param = _w(gen, device).to(other)
    args = (x, param, None) if which == "weight" else (x, None, param)
    with pytest.raises(ValueError, match=rf"{which} is on {other}.* but x is on {device}.*; put them on the same device"):
        layernorm(*args)


def test_zero_dim_x(device):
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension \(\.\.\., N\), got a 0-d tensor"):
        layernorm(torch.tensor(1.5, device=device), None)


def test_empty_last_dim(device):
    with pytest.raises(ValueError, match=r"x's last dim \(the normalized one\) must be >= 1, got shape \(3, 0\)"):
        layernorm(torch.empty(3, 0, device=device), None)


@pytest.mark.parametrize("eps", [0.0, -1e-5, math.nan, math.inf, -math.inf])
def test_bad_eps(gen, device, eps):
    with pytest.raises(ValueError, match=rf"eps must be a finite number > 0, got {eps}"):
        layernorm(_x(gen, device), None, eps=eps)


@pytest.mark.parametrize("eps", ["1e-5", True, None])
def test_eps_of_wrong_type(gen, device, eps):
    with pytest.raises(TypeError, match=r"eps must be a float, got " + type(eps).__name__):
        layernorm(_x(gen, device), None, eps=eps)


def test_non_contiguous_last_dim(gen, device):
    x = _x(gen, device, shape=(64, 8)).t()
    assert x.stride(-1) != 1
    with pytest.raises(ValueError, match=r"x's last dim must be contiguous \(stride 1\), got stride 8 for shape "
                                         r"\(8, 64\); call x.contiguous\(\) first"):
        layernorm(x, None)


def test_unknown_backend(gen, device):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cutedsl', 'triton', 'torch'\), "
                                         r"got 'cuda'"):
        layernorm(_x(gen, device), None, backend="cuda")


def test_cutedsl_on_cpu_tensor(gen):
    x = _x(gen, "cpu")
    expected = (r"backend='cutedsl' cannot run: (x is on a cpu device; CuTeDSL kernels need a CUDA tensor|"
                r"the 'nvidia-cutlass-dsl' package \(module 'cutlass'\) is not installed)")
    with pytest.raises(RuntimeError, match=expected):
        cutedsl_layernorm(x, None)


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: x is a CPU tensor; Triton kernels need a "
                                           r"CUDA tensor \(or TRITON_INTERPRET=1 for the interpreter\)"):
        resolve_backend("triton", torch.device("cpu"))


def test_triton_on_cpu_with_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.device("cpu")) == "triton"


def test_triton_on_meta_device():
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: x is on a meta device"):
        resolve_backend("triton", torch.device("meta"))


def test_validation_happens_before_any_backend_runs(gen, device):
    # A bad eps must be reported as such even with a backend that could not run: validate once, at the boundary.
    with pytest.raises(ValueError, match=r"eps must be"):
        layernorm(_x(gen, device), None, eps=-1.0, backend="cutedsl")


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


def test_auto_on_cpu_runs_torch(gen, check, monkeypatch):
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    # And no other backend is even loaded for it.
    from vibe_kernels.layernorm import api

    real_load = api.load_backend
    monkeypatch.setattr(api, "load_backend",
                        lambda name: pytest.fail(f"auto on CPU loaded {name}") if name != "torch" else real_load(name))
    x = _x(gen, "cpu", (5, 111)).requires_grad_()
    w = _w(gen, "cpu", 111).requires_grad_()
    out = layernorm(x, w, eps=1e-5)
    check.out(out, x, w, None, 1e-5)
    dy = torch.randn(out.shape, generator=gen)
    out.backward(dy)
    check.grads(x, w, None, dy, 1e-5, x.grad, w.grad, None)


def test_auto_on_cuda_prefers_cutedsl_then_triton():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    expected = "cutedsl" if is_cutedsl_layernorm_available() else "triton"
    assert resolve_backend("auto", torch.device("cuda")) == expected


def _backends_to_compare(device):
    backends = ["torch", "triton", "auto"]
    if device == "cuda" and is_cutedsl_layernorm_available():
        backends.append("cutedsl")
    return backends


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backends_agree(gen, device, check, dtype):
    x = _x(gen, device, (3, 7, 769), dtype)
    w, b = _w(gen, device, 769), 0.5 * _w(gen, device, 769, dtype)
    dy = (torch.randn(x.shape, generator=gen)).to(dtype).to(device)
    results = {}
    for backend in _backends_to_compare(device):
        xb, wb, bb = (t.detach().clone().requires_grad_() for t in (x, w, b))
        out, rstd, mean = layernorm(xb, wb, bb, eps=1e-5, return_rstd=True, return_mean=True, backend=backend)
        out.backward(dy)
        check.out(out, x, w, b, 1e-5)
        check.stats(mean, rstd, x, 1e-5)
        check.grads(x, w, b, dy, 1e-5, xb.grad, wb.grad, bb.grad)
        results[backend] = {"out": out, "dx": xb.grad, "dw": wb.grad, "db": bb.grad, "rstd": rstd, "mean": mean}
    # Each backend is within its tolerance of fp64, so any two are within twice that of each other.
    _, out_allowed = check.out_reference(x, w, b, 1e-5, dtype)
    allowed = {name: a for name, (_, a) in
               check.grad_references(x, w, b, dy, 1e-5, {"dx": dtype, "dw": w.dtype, "db": b.dtype}).items()}
    allowed["out"] = out_allowed
    reference = results.pop("torch")
    for backend, tensors in results.items():
        for name, tol in allowed.items():
            check.within(tensors[name], reference[name], 2 * tol, f"{backend} vs torch: {name}")
        assert torch.equal(tensors["rstd"] > 0, torch.ones_like(tensors["rstd"], dtype=torch.bool))


@pytest.mark.parametrize("name, fn", [("torch", torch_layernorm), ("triton", triton_layernorm)])
def test_pinned_wrappers_pass_everything_through(gen, device, check, name, fn):
    x, w, b = _x(gen, device, (2, 96)), _w(gen, device, 96), 0.1 * _w(gen, device, 96)
    out, rstd, mean = fn(x, w, b, eps=1e-3, return_rstd=True, return_mean=True)
    check.out(out, x, w, b, 1e-3)
    check.stats(mean, rstd, x, 1e-3)


def test_default_eps_is_1e_minus_6(gen, device):
    # A row of spread ~1e-3 makes eps matter: 1e-6 vs 1e-5 changes rstd by several percent.
    x = (1e-3 * torch.randn(2, 64, generator=gen)).to(device)
    _, rstd = layernorm(x, None, return_rstd=True)
    _, rstd_explicit = layernorm(x, None, eps=1e-6, return_rstd=True)
    assert torch.equal(rstd, rstd_explicit)
    _, rstd_other = layernorm(x, None, eps=1e-5, return_rstd=True)
    assert not torch.allclose(rstd, rstd_other, rtol=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_stats_are_non_differentiable(gen, device, backend):
    x = _x(gen, device).requires_grad_()
    w = _w(gen, device).requires_grad_()
    out, rstd, mean = layernorm(x, w, return_rstd=True, return_mean=True, backend=backend)
    assert out.requires_grad and out.grad_fn is not None
    assert not rstd.requires_grad and not mean.requires_grad
    assert rstd.grad_fn is None and mean.grad_fn is None
    # Using them in a loss contributes nothing and does not break backward.
    (out.sum() + rstd.sum() + mean.sum()).backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_grad_inputs_give_plain_outputs(gen, device, backend):
    x, w = _x(gen, device), _w(gen, device)
    out = layernorm(x, w, backend=backend)
    assert not out.requires_grad and out.grad_fn is None
    xr = x.clone().requires_grad_()
    with torch.no_grad():
        out = layernorm(xr, w, backend=backend)
    assert not out.requires_grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradients_of_a_nonlinear_loss(gen, device, backend, check):
    # Gradient of a scalar loss built from out through the public API, against the fp64 reference.
    x = _x(gen, device, (3, 40)).requires_grad_()
    w = _w(gen, device, 40).requires_grad_()
    b = (0.2 * _w(gen, device, 40)).requires_grad_()
    out = layernorm(x, w, b, eps=1e-5, backend=backend)
    loss = (out * out).sum()
    loss.backward()
    check.grads(x, w, b, 2 * out.detach(), 1e-5, x.grad, w.grad, b.grad)


# ----------------------------------------------------------------------------------------------------------------
# Statistics accuracy (torch backend; the Triton kernels are held to the same bound in test_triton_numerics.py)
# ----------------------------------------------------------------------------------------------------------------


def test_torch_backend_rstd_with_large_common_offset(gen):
    x = (1000 + 1e-3 * torch.randn(64, 769, generator=gen, dtype=torch.float64)).float()
    _, rstd = torch_layernorm(x, None, eps=1e-12, return_rstd=True)
    ref = ln.layernorm_rstd_ref(x.double(), 1e-12)
    rel = ((rstd.double() - ref) / ref).abs().max().item()
    assert rel < 1e-3, f"rstd relative error {rel:.2e}"


# ----------------------------------------------------------------------------------------------------------------
# Import hygiene
# ----------------------------------------------------------------------------------------------------------------


def test_import_does_not_load_cutlass_or_triton():
    code = ("import sys, vibe_kernels.layernorm as ln; ln.is_cutedsl_layernorm_available(); "
            "ln.is_triton_layernorm_available(); "
            "print(sorted(m for m in ('cutlass', 'triton') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"importing vibe_kernels.layernorm loaded {proc.stdout.strip()}"


def test_public_names():
    assert set(ln.__all__) == {
        "LayerNorm", "cutedsl_layernorm", "is_cutedsl_layernorm_available", "is_triton_layernorm_available",
        "layernorm", "layernorm_mean_ref", "layernorm_ref", "layernorm_rstd_ref", "patch", "torch_layernorm", "unpatch",
        "triton_layernorm", "RMSNorm", "rmsnorm", "rmsnorm_ref", "rmsnorm_rstd_ref", "cutedsl_rmsnorm", "torch_rmsnorm",
        "triton_rmsnorm",
    }
    for name in ln.__all__:
        assert getattr(ln, name).__doc__, f"{name} has no docstring"
