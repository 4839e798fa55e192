"""torch.compile through the ``vibe_kernels::layernorm_fwd/bwd`` custom ops (_ops.py).

On a CPU: the torch backend and the Triton kernels under the interpreter, compiled with the "aot_eager" backend
(dynamo + AOTAutograd, the same graphs inductor would get, without inductor's C++ build time). On a GPU the same
tests run on CUDA tensors; inductor on CUDA is in test_gpu_ecosystem.py.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch.utils._python_dispatch import TorchDispatchMode

from vibe_kernels.layernorm import LayerNorm, _ops, layernorm

BACKENDS = ["torch", "triton"]
pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _params(device, gen, hidden, affine, dtype=torch.float32):
    """(weight, bias) leaves requiring grad: ("wb") both, ("w") weight only, ("") neither."""
    weight = bias = None
    if "w" in affine:
        weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device, dtype).requires_grad_()
    if "b" in affine:
        bias = (0.5 * torch.randn(hidden, generator=gen)).to(device, dtype).requires_grad_()
    return weight, bias


def _grads(*tensors):
    return [None if t is None else t.grad for t in tensors]


# ----------------------------------------------------------------------------------------------------------------
# The ops on their own: schema, fake implementation, autograd registration (torch.library.opcheck)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", ["wb", "w", ""])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(device, gen, backend, affine):
    # Rows strided (a column slice): the ops take x's row stride as it is.
    x = torch.randn(5, 24, generator=gen).to(device)[:, :16].requires_grad_()
    weight, bias = _params(device, gen, 16, affine)
    fwd = torch.ops.vibe_kernels.layernorm_fwd.default
    torch.library.opcheck(fwd, (x, weight, bias, 1e-5, backend, False, True))
    torch.library.opcheck(fwd, (x.detach(), None, None, 1e-5, backend, False, False))  # inference: no stats

    out, stats = _ops.layernorm_fwd(x, weight, bias, 1e-5, backend, False, True)
    assert out.shape == (5, 16) and stats.shape == (2, 5) and stats.dtype == torch.float32
    dy = torch.randn(5, 16, generator=gen).to(device)
    detached = weight.detach() if weight is not None else None  # the backward op is not differentiable itself
    bias_dtype = bias.dtype if bias is not None else None
    torch.library.opcheck(
        torch.ops.vibe_kernels.layernorm_bwd.default,
        (dy, x.detach(), detached, stats, backend, False, weight is not None, bias is not None, bias_dtype),
    )


def test_backward_without_stats_is_an_error(device):
    x = torch.randn(3, 8, device=device, requires_grad=True)
    out, _ = _ops.layernorm_fwd(x, None, None, 1e-5, "torch", False, False)
    with pytest.raises(RuntimeError, match="ran with need_stats=False"):
        out.sum().backward()


# ----------------------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) against eager
# ----------------------------------------------------------------------------------------------------------------


def _model(device, backend, **norm_kwargs):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32), LayerNorm(32, backend=backend, **norm_kwargs), torch.nn.GELU(), torch.nn.Linear(32, 4)
    ).to(device)


@pytest.mark.parametrize(
    "backend, norm_kwargs",
    [("auto", {}), ("triton", {}), ("torch", {}), ("torch", {"bias": False}), ("torch", {"elementwise_affine": False})],
    ids=["auto", "triton", "torch", "torch-no-bias", "torch-no-affine"],
)
def test_compiled_model_matches_eager_without_recompiling(device, gen, backend, norm_kwargs):
    eager, compiled_model = _model(device, backend, **norm_kwargs), _model(device, backend, **norm_kwargs)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True, dynamic=True)
    frames_after_first = None
    for batch in (3, 5, 7):
        x = torch.randn(batch, 8, generator=gen).to(device)
        out_e, out_c = eager(x), compiled(x)
        torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
        out_e.square().mean().backward()
        out_c.square().mean().backward()
        for (name, p_e), p_c in zip(eager.named_parameters(), compiled_model.parameters()):
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-6, atol=1e-6, msg=f"grad of {name} (M={batch})")
        if frames_after_first is None:
            frames_after_first = counter.frame_count  # dynamo may restart its analysis once: compare, don't count
            assert frames_after_first >= 1
    assert counter.frame_count == frames_after_first, "a new batch size recompiled"
    assert any("vibe_kernels.layernorm_fwd" in graph.code for graph in counter.graphs), "custom op not traced"
    norm = compiled_model[1]
    assert (norm.weight is not None) == ("elementwise_affine" not in norm_kwargs)
    assert (norm.bias is not None) == (not norm_kwargs)


@pytest.mark.parametrize(
    "affine, return_rstd, return_mean",
    [("wb", True, True), ("w", True, False), ("", False, True), ("b", False, False)],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_functional_matches_eager(device, gen, check, backend, affine, return_rstd, return_mean):
    kwargs = dict(eps=1e-5, return_rstd=return_rstd, return_mean=return_mean, backend=backend)

    def fn(x, weight, bias):
        return layernorm(x, weight, bias, **kwargs)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    x_c = torch.randn(2, 3, 16, generator=gen).to(device).requires_grad_()
    x_e = x_c.detach().clone().requires_grad_()
    w_c, b_c = _params(device, gen, 16, affine)
    w_e, b_e = (None if t is None else t.detach().clone().requires_grad_() for t in (w_c, b_c))
    res_c, res_e = compiled(x_c, w_c, b_c), fn(x_e, w_e, b_e)
    if return_rstd or return_mean:
        assert isinstance(res_c, tuple) and len(res_c) == len(res_e) == 1 + return_rstd + return_mean
        for stat_c, stat_e in zip(res_c[1:], res_e[1:]):
            assert stat_c.shape == (2, 3) and stat_c.dtype == torch.float32 and not stat_c.requires_grad
            torch.testing.assert_close(stat_c, stat_e, rtol=0, atol=0)
        rstd = res_c[1] if return_rstd else None
        mean = res_c[-1] if return_mean else None
        check.stats(mean, rstd, x_c, 1e-5)
        out_c, out_e = res_c[0], res_e[0]
    else:
        out_c, out_e = res_c, res_e
    check.out(out_c, x_c, w_c, b_c, 1e-5)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    dy = torch.randn(2, 3, 16, generator=gen).to(device)
    out_c.backward(dy)
    out_e.backward(dy)
    for name, g_c, g_e in zip(("dx", "dw", "db"), _grads(x_c, w_c, b_c), _grads(x_e, w_e, b_e)):
        assert (g_c is None) == (g_e is None), name
        if g_c is not None:
            torch.testing.assert_close(g_c, g_e, rtol=0, atol=0, msg=name)
    check.grads(x_c, w_c, b_c, dy, 1e-5, *_grads(x_c, w_c, b_c))


def test_compiled_inference_and_fp16(device, gen, check):
    """no_grad (no stats computed) and low-precision x with fp32 parameters, through the compiled graph."""
    weight, bias = _params(device, gen, 16, "wb")
    x = torch.randn(4, 16, generator=gen).to(device, torch.float16)
    compiled = torch.compile(lambda t: layernorm(t, weight, bias, backend="torch"), backend="aot_eager",
                             fullgraph=True)
    with torch.no_grad():
        out = compiled(x)
    assert out.dtype == torch.float16 and not out.requires_grad
    check.out(out, x, weight, bias, 1e-6)


def test_compile_errors_name_the_problem(device):
    x = torch.randn(2, 8, device=device)
    with pytest.raises(RuntimeError, match="backend must be one of"):  # resolved once while compiling
        torch.compile(lambda t: layernorm(t, None, backend="nope"), backend="aot_eager", fullgraph=True)(x)
    # Without fullgraph, the failing check is a graph break and the eager call raises its usual error.
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got -1.0"):
        torch.compile(lambda t: layernorm(t, None, eps=-1.0, backend="torch"), backend="aot_eager")(x)


@pytest.mark.parametrize("eps", [1e-5, 1e-40, 0.0])
def test_compiled_module_rejects_the_eps_eager_rejects(device, eps):
    """dynamic=True makes LayerNorm.eps a symbolic float: compiled and eager still accept and reject the same eps
    (whatever check_inputs' rules are: eager is the oracle)."""
    norm = LayerNorm(8, eps=eps, backend="torch", device=device)
    x = torch.randn(3, 8, device=device)
    try:
        norm(x)
        eager_error = None
    except ValueError as exc:
        eager_error = str(exc)
    compiled = torch.compile(norm, backend="aot_eager", fullgraph=eager_error is None, dynamic=True)
    if eager_error is None:
        compiled(x)
    else:  # raised while compiling (the fake implementation) or by the eager fallback after a graph break
        with pytest.raises(Exception, match=re.escape(eager_error)):
            compiled(x)


# ----------------------------------------------------------------------------------------------------------------
# The eager path does not go through the custom ops
# ----------------------------------------------------------------------------------------------------------------


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.namespaces = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


def test_eager_path_skips_the_custom_ops(device, gen, monkeypatch):
    weight, bias = _params(device, gen, 16, "wb")
    x = torch.randn(3, 16, generator=gen).to(device).requires_grad_()
    with _OpRecorder() as seen:  # the recorder does see the ops when they are called
        _ops.compiled_layernorm(x, weight, bias, 1e-5, "torch", False, False, False)[0].sum().backward()
    assert "vibe_kernels" in seen.namespaces

    def fail(*args, **kwargs):
        raise AssertionError("the eager path called _ops.compiled_layernorm")

    monkeypatch.setattr(_ops, "compiled_layernorm", fail)
    with _OpRecorder() as seen:
        out, rstd = layernorm(x, weight, bias, return_rstd=True, backend="torch")
        out.sum().backward()
        with torch.no_grad():
            layernorm(x, weight, bias, backend="torch")
    assert "vibe_kernels" not in seen.namespaces and "aten" in seen.namespaces
