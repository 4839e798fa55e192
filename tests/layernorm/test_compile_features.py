"""torch.compile of RMSNorm, the fused residual and out_dtype through ``vibe_kernels::norm_fwd/norm_bwd`` (_ops.py),
and DLPack arrays as the residual.

As in test_compile.py: on a CPU the torch backend and the Triton kernels under the interpreter, compiled with
"aot_eager"; on a GPU the same tests run on CUDA tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from vibe_kernels.layernorm import RMSNorm, _ops, layernorm, rmsnorm

BACKENDS = ["torch", "triton"]
pytestmark = pytest.mark.usefixtures("fresh_dynamo")


# (rms, residual dtype (None: no residual; "x": x's), residual_in_fp32, out_dtype)
FEATURES = [
    (True, None, False, None),
    (True, "x", False, None),
    (True, torch.float32, True, None),
    (False, "x", False, None),
    (False, torch.float32, True, None),
    (False, None, False, torch.float32),
    (True, "x", False, torch.float32),
]


def _feature_id(case):
    rms, residual, in_fp32, out_dtype = case
    parts = ["rms" if rms else "ln"]
    if residual is not None:
        parts.append("res-" + ("x" if residual == "x" else "fp32") + ("-in32" if in_fp32 else ""))
    if out_dtype is not None:
        parts.append("out32")
    return "-".join(parts)


def _inputs(device, gen, dtype, residual, rows=6, hidden=32):
    x = torch.randn(rows, hidden, generator=gen).to(device, dtype)
    r = None
    if residual is not None:
        r = torch.randn(rows, hidden, generator=gen).to(device, dtype if residual == "x" else residual)
    weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device)
    bias = (0.5 * torch.randn(hidden, generator=gen)).to(device)
    return x, r, weight, bias


@pytest.mark.parametrize("case", FEATURES, ids=_feature_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(device, gen, backend, case):
    rms, residual, in_fp32, out_dtype = case
    x, r, weight, bias = _inputs(device, gen, torch.bfloat16, residual)
    x.requires_grad_()
    weight.requires_grad_()
    if r is not None:
        r.requires_grad_()
    bias = None if rms else bias.requires_grad_()
    args = (x, weight, bias, r, 1e-5, backend, False, True, rms, in_fp32, r is not None, out_dtype)
    torch.library.opcheck(torch.ops.vibe_kernels.norm_fwd.default, args)
    out, h, stats = _ops.norm_fwd(*args)
    assert stats.shape == (1 if rms else 2, 6) and out.dtype == (out_dtype or x.dtype)
    assert h.shape == ((6, 32) if r is not None else (0, 32))
    dy = torch.randn(out.shape, generator=gen).to(device, out.dtype)
    xin = (h if r is not None else x).detach()
    need_dr = r is not None
    residual_dtype = r.dtype if r is not None else None
    torch.library.opcheck(
        torch.ops.vibe_kernels.norm_bwd.default,
        (dy, None, xin, weight.detach(), stats, backend, False, rms, True, True, bias is not None, need_dr,
         x.dtype, residual_dtype, None if bias is None else bias.dtype),
    )


def _call(rms, **kwargs):
    return rmsnorm(**kwargs) if rms else layernorm(**kwargs)


@pytest.mark.parametrize("case", FEATURES, ids=_feature_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_features_match_eager(device, gen, backend, case):
    """fullgraph compile of the call (out, [h], rstd) against eager: the same values and gradients, bit for bit."""
    rms, residual, in_fp32, out_dtype = case
    x, r, weight, bias = _inputs(device, gen, torch.bfloat16, residual)
    bias = None if rms else bias
    kwargs = dict(eps=1e-5, backend=backend, return_rstd=True, out_dtype=out_dtype)
    if r is not None:
        kwargs.update(residual_in_fp32=in_fp32, return_residual=True)

    def fn(x, weight, bias, r):
        extra = {} if r is None else {"residual": r}
        return _call(rms, x=x, weight=weight, bias=bias, **extra, **kwargs)

    leaves = [t for t in (x, weight, bias, r)]
    eager_leaves = [None if t is None else t.clone().requires_grad_() for t in leaves]
    compiled_leaves = [None if t is None else t.clone().requires_grad_() for t in leaves]
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    res_e, res_c = fn(*eager_leaves), compiled(*compiled_leaves)
    assert len(res_e) == len(res_c) == (3 if r is not None else 2)
    for got, want in zip(res_c, res_e):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert any("vibe_kernels.norm_fwd" in graph.code for graph in counter.graphs), "custom op not traced"
    # Gradients through out and (with a residual) h.
    grads_out = [torch.randn(t.shape, generator=gen).to(device, t.dtype) for t in res_e[:-1]]
    torch.autograd.backward(list(res_e[:-1]), grads_out)
    torch.autograd.backward(list(res_c[:-1]), grads_out)
    for name, t_e, t_c in zip(("x", "weight", "bias", "residual"), eager_leaves, compiled_leaves):
        if t_e is None:
            continue
        assert t_c.grad is not None, f"no gradient for {name}"
        torch.testing.assert_close(t_c.grad, t_e.grad, rtol=0, atol=0, msg=f"grad of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_rmsnorm_module_does_not_recompile_for_new_batch_sizes(device, gen, backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), RMSNorm(32, backend=backend), torch.nn.Linear(32, 4)).to(device)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    frames_after_first = None
    for batch in (3, 5, 7):
        x = torch.randn(batch, 8, generator=gen).to(device)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        compiled(x).square().mean().backward()
        if frames_after_first is None:
            frames_after_first = counter.frame_count
    assert counter.frame_count == frames_after_first, "a new batch size recompiled"
    assert any("vibe_kernels.norm_fwd" in graph.code for graph in counter.graphs)


def test_gradient_through_h_only(device, gen):
    """Only the residual output reaches the loss: x and r get dh (compiled as in eager)."""
    x, r, weight, _ = _inputs(device, gen, torch.float32, "x")

    def fn(x, r):
        _, h = layernorm(x, weight, None, residual=r, return_residual=True, backend="torch")
        return h.sum()

    x1, r1 = x.clone().requires_grad_(), r.clone().requires_grad_()
    torch.compile(fn, backend="aot_eager", fullgraph=True)(x1, r1).backward()
    assert torch.equal(x1.grad, torch.ones_like(x)) and torch.equal(r1.grad, torch.ones_like(r))


def test_dlpack_residual_round_trip(gen):
    """NumPy x and residual in, NumPy (out, h) out, equal to the torch call."""
    x, r, weight, bias = _inputs("cpu", gen, torch.float32, "x")
    out, h = layernorm(x.numpy(), weight, bias, residual=r.numpy(), return_residual=True, backend="torch")
    assert isinstance(out, np.ndarray) and isinstance(h, np.ndarray)
    want_out, want_h = layernorm(x, weight, bias, residual=r, return_residual=True, backend="torch")
    np.testing.assert_array_equal(out, want_out.numpy())
    np.testing.assert_array_equal(h, want_h.numpy())
    out_rms = rmsnorm(x.numpy(), weight, residual=r.numpy(), backend="torch")
    np.testing.assert_array_equal(out_rms, rmsnorm(x, weight, residual=r, backend="torch").numpy())
