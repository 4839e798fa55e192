"""The fused pre-norm residual (``residual=``, ``residual_in_fp32=``, ``return_residual=``) and the output dtype
(``out_dtype=``) for LayerNorm and RMSNorm, on the Triton (interpreter on CPU) and torch backends: h against
x + residual, out against the fp64 reference computed from the h the kernel normalized, gradients against fp64
autograd of the composition (dx = dresidual = d(norm)/dh + dh), return arities, the launchers' forced configs with
poisoned outputs, and the input checks.

The interpreter truncates fp32 -> bf16 instead of rounding (conftest.INTERPRETED): h in bf16 is then allowed one
more ulp, and the exact fused == unfused comparisons run on bf16 only where rounding is real (torch backend, GPU).
"""

from __future__ import annotations

import pytest
import torch

from vibe_kernels.layernorm import _triton, layernorm, rmsnorm

from conftest import INTERPRETED, assert_within, bound, ulp

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["triton", "torch"]
EPS = 1e-5
NORMS = {"layernorm": False, "rmsnorm": True}


def _id(value):
    return str(value).replace("torch.", "") if isinstance(value, torch.dtype) else None


def norm_fn(rms):
    return rmsnorm if rms else layernorm


def make_inputs(gen, shape, dtype, device, residual_dtype=None, requires_grad=False, bias=True):
    hidden = shape[-1]
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.25).to(dtype)
    residual = (torch.randn(shape, generator=gen) * 2 - 0.5).to(residual_dtype or dtype)
    weight = 1 + 0.5 * torch.randn(hidden, generator=gen)
    b = 0.5 * torch.randn(hidden, generator=gen) if bias else None
    return tuple(t.to(device).requires_grad_(requires_grad) if t is not None else None
                 for t in (x, residual, weight, b))


def random_like(gen, t):
    return torch.randn(t.shape, generator=gen).to(t.dtype).to(t.device)


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def check_h(h, x, residual, residual_in_fp32, backend="torch"):
    """h: fp32 when residual_in_fp32, else x's dtype, equal to x + residual (in fp64) rounded once to its dtype
    (fp32 sums of fp32 inputs may round once more; the interpreter's bf16 truncation is one more ulp)."""
    expected = torch.float32 if residual_in_fp32 else x.dtype
    assert h.dtype == expected and h.shape == x.shape, (h.dtype, h.shape)
    ref = x.detach().double() + residual.detach().double()
    ulps = 1 + (INTERPRETED and backend == "triton" and h.dtype == torch.bfloat16)
    if h.dtype == torch.float32 and not residual_in_fp32 and x.dtype == torch.float32:
        ulps = 1
    assert_within(h, ref, bound(h.dtype, ulps, ref, torch.zeros_like(ref), x.shape[-1]), "h")


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("residual_in_fp32", [False, True], ids=["h_xdtype", "h_fp32"])
@pytest.mark.parametrize("residual_dtype", ["x", "fp32"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward(gen, device, check, backend, norm, dtype, residual_dtype, residual_in_fp32):
    rms = NORMS[norm]
    x, residual, weight, bias = make_inputs(gen, (6, 111), dtype, device,
                                            torch.float32 if residual_dtype == "fp32" else None)
    result = norm_fn(rms)(x, weight, bias, eps=EPS, residual=residual, residual_in_fp32=residual_in_fp32,
                          return_residual=True, return_rstd=True, backend=backend,
                          **({} if rms else {"return_mean": True}))
    out, h, rstd = result[:3]
    check_h(h, x, residual, residual_in_fp32, backend)
    # out normalizes exactly the h that was returned (rounded first unless residual_in_fp32).
    check.out(out, h, weight, bias, EPS, rms=rms, out_dtype=x.dtype)
    check.stats(None if rms else result[3], rstd, h, EPS, rms=rms)
    # Without return_residual: the same out (bit for bit), and nothing else.
    plain = norm_fn(rms)(x, weight, bias, eps=EPS, residual=residual, residual_in_fp32=residual_in_fp32,
                         backend=backend)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_equals_unfused_in_x_dtype(gen, device, backend, norm, dtype):
    """residual_in_fp32=False: out is exactly norm(x + residual) computed unfused in x's dtype."""
    if backend == "triton" and INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("the interpreter truncates fp32 -> bf16 where torch's x + residual rounds")
    rms = NORMS[norm]
    x, residual, weight, bias = make_inputs(gen, (5, 1128), dtype, device)
    fused, h = norm_fn(rms)(x, weight, bias, eps=EPS, residual=residual, return_residual=True, backend=backend)
    unfused_h = x + residual
    assert torch.equal(h, unfused_h)
    assert torch.equal(fused, norm_fn(rms)(unfused_h, weight, bias, eps=EPS, backend=backend))


@pytest.mark.parametrize("norm", list(NORMS))
def test_return_arities_and_order(gen, device, check, norm):
    rms = NORMS[norm]
    x, residual, weight, bias = make_inputs(gen, (2, 3, 64), torch.bfloat16, device)
    fn = norm_fn(rms)
    kwargs = dict(eps=EPS, residual=residual, backend="triton")
    out = fn(x, weight, bias, **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    out2, h = fn(x, weight, bias, return_residual=True, **kwargs)
    out3, h3, rstd = fn(x, weight, bias, return_residual=True, return_rstd=True, **kwargs)
    assert h.shape == x.shape and rstd.shape == (2, 3)
    assert torch.equal(out, out2) and torch.equal(out, out3) and torch.equal(h, h3)
    out4, rstd4 = fn(x, weight, bias, return_rstd=True, **kwargs)
    assert torch.equal(rstd4, rstd)
    if not rms:  # (out, h, rstd, mean) and (out, rstd, mean)
        out5, h5, rstd5, mean5 = fn(x, weight, bias, return_residual=True, return_rstd=True, return_mean=True,
                                    **kwargs)
        assert torch.equal(h5, h) and torch.equal(rstd5, rstd)
        check.stats(mean5, rstd5, h, EPS)
        _, rstd6, mean6 = fn(x, weight, bias, return_rstd=True, return_mean=True, **kwargs)
        assert torch.equal(mean6, mean5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_residual_rows(gen, device, check, backend):
    big = torch.randn(4, 200, generator=gen).to(device)
    residual = big[:, :150]
    x = torch.randn(4, 150, generator=gen).to(device)
    out, h = layernorm(x, None, residual=residual, return_residual=True, eps=EPS, backend=backend)
    check_h(h, x, residual, False, backend)
    check.out(out, h, None, None, EPS)


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------


def _grad_refs(check, h, weight, bias, dy, dh, eps, rms, dx_dtype):
    """(reference, allowed) for dx = dresidual = d(norm)/dh + dh, and the dw/db references."""
    wanted = {"dx": dx_dtype, "dw": weight.dtype}
    if bias is not None:
        wanted["db"] = bias.dtype
    refs = check.grad_references(h, weight, bias, dy, eps, wanted, rms=rms)
    dnorm, allowed = refs["dx"]
    if dh is None:
        return refs
    total = dnorm + dh.double()
    # The fp32 sum is rounded once to dx's dtype: one more ulp of the total.
    refs["dx"] = total, allowed + check.table[dx_dtype].dx_ulps * ulp(dx_dtype) * total.abs()
    return refs


@pytest.mark.parametrize("uses", ["out_and_h", "out_only"])
@pytest.mark.parametrize("residual_in_fp32", [False, True], ids=["h_xdtype", "h_fp32"])
@pytest.mark.parametrize("residual_dtype", ["x", "fp32"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward(gen, device, check, backend, norm, dtype, residual_dtype, residual_in_fp32, uses):
    rms = NORMS[norm]
    r_dtype = torch.float32 if residual_dtype == "fp32" else dtype
    x, residual, weight, bias = make_inputs(gen, (7, 111), dtype, device, r_dtype, requires_grad=True)
    out, h = norm_fn(rms)(x, weight, bias, eps=EPS, residual=residual, residual_in_fp32=residual_in_fp32,
                          return_residual=True, backend=backend)
    dy = random_like(gen, out)
    dh = random_like(gen, h) if uses == "out_and_h" else None
    torch.autograd.backward([out, h] if dh is not None else [out], [dy, dh] if dh is not None else [dy])
    assert x.grad.dtype == dtype and residual.grad.dtype == r_dtype
    assert weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
    for name, grad in (("dx", x.grad), ("dresidual", residual.grad)):
        refs = _grad_refs(check, h.detach(), weight, bias, dy, dh, EPS, rms, grad.dtype)
        check.within(grad, *refs["dx"], f"{name} ({grad.dtype})")
    refs = _grad_refs(check, h.detach(), weight, bias, dy, dh, EPS, rms, dtype)
    check.within(weight.grad, *refs["dw"], "dw")
    check.within(bias.grad, *refs["db"], "db")


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_through_h_only(gen, device, backend, norm):
    """Only the residual output reaches the loss: dx = dresidual = dh, no parameter gradient."""
    x, residual, weight, bias = make_inputs(gen, (3, 64), torch.bfloat16, device, torch.float32, requires_grad=True)
    _, h = norm_fn(NORMS[norm])(x, weight, bias, residual=residual, residual_in_fp32=True, return_residual=True,
                                backend=backend)
    dh = random_like(gen, h)
    h.backward(dh)
    assert torch.equal(x.grad, dh.to(torch.bfloat16)) and torch.equal(residual.grad, dh)
    assert weight.grad is None and bias.grad is None


# How x and the residual reach the call: the leaves themselves, computed tensors, views of the leaves, or clones of
# such views (autograd hands a view's gradient to the leaf without copying it: pytorch/pytorch#34082).
INPUT_PATHS = {
    "leaves": lambda t: t,
    "non_leaves": lambda t: t * 1.0,
    "leaf_views": lambda t: t.unsqueeze(0),
    "cloned_views": lambda t: t.view(-1, t.shape[-1]).clone(),
}


@pytest.mark.parametrize("uses", ["out_and_h", "h_only"])
@pytest.mark.parametrize("path", list(INPUT_PATHS))
@pytest.mark.parametrize("shape", [(6, 40), (2, 3, 40)], ids=["2d", "3d"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_of_x_and_residual_accumulate_apart(gen, device, fresh_dynamo, backend, compiled, shape, path, uses):
    """dx and dresidual hold the same values, but x.grad and residual.grad must be separate tensors: a second
    backward accumulates into each. A regression test: with (..., N) leaves, and with views of leaves, both once
    got a view of one storage, so the second backward double-counted (4x, or 3x, instead of 2x the first
    gradient)."""
    x0, r0, weight, bias = make_inputs(gen, shape, torch.float32, device, requires_grad=True)
    dy, dh = random_like(gen, x0), random_like(gen, x0)

    def forward(x, residual):
        return layernorm(x, weight, bias, residual=residual, return_residual=True, backend=backend)

    run = torch.compile(forward, fullgraph=True) if compiled else forward
    for step in range(2):
        out, h = run(INPUT_PATHS[path](x0), INPUT_PATHS[path](r0))
        dy_, dh_ = dy.view(out.shape), dh.view(h.shape)
        outputs, grads = ([out, h], [dy_, dh_]) if uses == "out_and_h" else ([h], [dh_])
        torch.autograd.backward(outputs, grads)
        if step == 0:
            first = x0.grad.clone()
            assert first.shape == x0.shape and torch.equal(r0.grad, first)
    assert x0.grad.untyped_storage().data_ptr() != r0.grad.untyped_storage().data_ptr()
    torch.testing.assert_close(x0.grad, 2 * first)
    torch.testing.assert_close(r0.grad, 2 * first)


@pytest.mark.parametrize("needs", ["x", "residual"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_one_side_requires_grad(gen, device, check, backend, needs):
    # The gradient is written once, in the dtype of the input that wants it.
    x, residual, weight, _ = make_inputs(gen, (5, 96), torch.bfloat16, device, torch.float32, bias=False)
    (x if needs == "x" else residual).requires_grad_()
    out, h = layernorm(x, weight, residual=residual, eps=EPS, backend=backend, return_residual=True)
    dy = random_like(gen, out)
    out.backward(dy)  # h does not reach the loss
    grad = x.grad if needs == "x" else residual.grad
    other = residual.grad if needs == "x" else x.grad
    assert other is None and grad.dtype == (torch.bfloat16 if needs == "x" else torch.float32)
    check_h(h, x, residual, False, backend)
    refs = check.grad_references(h.detach(), weight, None, dy, EPS, {"dx": grad.dtype})
    check.within(grad, *refs["dx"], "dx")


# ----------------------------------------------------------------------------------------------------------------
# out_dtype
# ----------------------------------------------------------------------------------------------------------------

OUT_DTYPES = [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.float32),
              (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("dtypes", OUT_DTYPES, ids=lambda d: f"{_id(d[0])}_to_{_id(d[1])}")
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_dtype_forward_backward(gen, device, check, backend, norm, dtypes):
    rms = NORMS[norm]
    x_dtype, out_dtype = dtypes
    x, _, weight, bias = make_inputs(gen, (6, 769), x_dtype, device, requires_grad=True)
    out = norm_fn(rms)(x, weight, bias, eps=EPS, out_dtype=out_dtype, backend=backend)
    assert out.dtype == out_dtype and out.shape == x.shape
    check.out(out, x, weight, bias, EPS, rms=rms, out_dtype=out_dtype)
    dy = random_like(gen, out)
    out.backward(dy)
    assert x.grad.dtype == x_dtype  # the gradient flows back in x's dtype
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad, bias.grad, rms=rms)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_dtype_with_residual(gen, device, check, backend):
    x, residual, weight, bias = make_inputs(gen, (4, 256), torch.bfloat16, device, torch.float32)
    out, h, rstd = rmsnorm(x, weight, bias, eps=EPS, residual=residual, residual_in_fp32=True, return_residual=True,
                           return_rstd=True, out_dtype=torch.float32, backend=backend)
    assert out.dtype == torch.float32 and h.dtype == torch.float32
    check_h(h, x, residual, True, backend)
    check.out(out, h, weight, bias, EPS, rms=True, out_dtype=torch.float32)
    check.stats(None, rstd, h, EPS, rms=True)


def test_out_dtype_same_as_x_is_the_plain_path(gen, device):
    x, _, weight, bias = make_inputs(gen, (3, 64), torch.float16, device)
    assert torch.equal(layernorm(x, weight, bias, out_dtype=torch.float16, backend="triton"),
                       layernorm(x, weight, bias, backend="triton"))


# ----------------------------------------------------------------------------------------------------------------
# Launchers with forced configs (chunked, head + tail, persistent), outputs poisoned
# ----------------------------------------------------------------------------------------------------------------

FWD_CONFIGS = {
    "chunked": _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True),
    "chunked_persistent": _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True, programs_per_sm=1),
    "chunked_rows": _triton.FwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True, programs_per_sm=1),
    "chunked_held": _triton.FwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True, programs_per_sm=1,
                                      held_chunks=3),
    "resident_head_tail": _triton.FwdConfig(block_m=2, block_n=1024, num_warps=4, chunked=False, tail_n=128),
}
BWD_CONFIGS = {
    "chunked": _triton.BwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True),
    "resident_persistent": _triton.BwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False),
    "resident_prefetch": _triton.BwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False, prefetch=True),
}


@pytest.mark.parametrize("residual_in_fp32", [False, True], ids=["h_xdtype", "h_fp32"])
@pytest.mark.parametrize("config", list(FWD_CONFIGS))
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_id)
def test_fwd_launcher_forced_config(gen, device, check, dtype, norm, config, residual_in_fp32):
    rms = NORMS[norm]
    rows, hidden = 5, 1128
    x, residual, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, torch.float32)
    out = _poisoned((rows, hidden), torch.float32, device)  # out_dtype fp32 too
    h = _poisoned((rows, hidden), torch.float32 if residual_in_fp32 else dtype, device)
    mean = None if rms else _poisoned((rows,), torch.float32, device)
    rstd = _poisoned((rows,), torch.float32, device)
    _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd, config=FWD_CONFIGS[config], residual=residual,
                          residual_out=h, residual_in_fp32=residual_in_fp32, rms=rms)
    check_h(h, x, residual, residual_in_fp32, "triton")
    check.out(out, h, weight, bias, EPS, rms=rms, out_dtype=torch.float32)
    check.stats(mean, rstd, h, EPS, rms=rms)
    # Without storing h: the same out.
    out2 = _poisoned((rows, hidden), torch.float32, device)
    _triton.layernorm_fwd(x, weight, bias, EPS, out2, None, None, config=FWD_CONFIGS[config], residual=residual,
                          residual_in_fp32=residual_in_fp32, rms=rms)
    assert torch.equal(out2, out)


@pytest.mark.parametrize("h_dtype", ["x", "fp32"])
@pytest.mark.parametrize("config", list(BWD_CONFIGS))
@pytest.mark.parametrize("norm", list(NORMS))
def test_bwd_launcher_forced_config(gen, device, check, norm, config, h_dtype):
    rms = NORMS[norm]
    rows, hidden = (21 if config.startswith("resident") else 5), 1128
    dtype = torch.bfloat16
    h = (torch.randn(rows, hidden, generator=gen) + 0.3).to(torch.float32 if h_dtype == "fp32" else dtype).to(device)
    weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device)
    dy = torch.randn(rows, hidden, generator=gen).to(torch.float32).to(device)  # out_dtype fp32
    dres = torch.randn(rows, hidden, generator=gen).to(h.dtype).to(device)
    mean = None if rms else torch.empty(rows, device=device)
    rstd = torch.empty(rows, device=device)
    _triton.layernorm_fwd(h, weight, None, EPS, torch.empty_like(h), mean, rstd, rms=rms)
    dx = _poisoned((rows, hidden), dtype, device)
    dres_in = _poisoned((rows, hidden), torch.float32, device)
    dweight = _poisoned((hidden,), torch.float32, device)
    _triton.layernorm_bwd(dy, h, weight, mean, rstd, dx, dweight, None, config=BWD_CONFIGS[config], rms=rms,
                          dresidual=dres, dresidual_in=dres_in)
    for grad in (dx, dres_in):
        refs = _grad_refs(check, h, weight, None, dy, dres, EPS, rms, grad.dtype)
        check.within(grad, *refs["dx"], f"dx ({grad.dtype})")
    check.within(dweight, *_grad_refs(check, h, weight, None, dy, dres, EPS, rms, dtype)["dw"], "dw")


def test_fwd_launcher_refuses_residual_out_without_residual(device):
    x = torch.ones(2, 8, device=device)
    with pytest.raises(ValueError, match="residual_out needs a residual"):
        _triton.layernorm_fwd(x, None, None, EPS, torch.empty_like(x), None, None, residual_out=torch.empty_like(x))


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", list(NORMS))
def test_bad_inputs(gen, device, norm):
    fn = norm_fn(NORMS[norm])
    x, residual, weight, _ = make_inputs(gen, (4, 64), torch.bfloat16, device)
    with pytest.raises(ValueError, match=r"residual must have x's shape \(4, 64\), got \(4, 32\)"):
        fn(x, weight, residual=residual[:, :32])
    with pytest.raises(ValueError, match=r"residual must have x's shape \(4, 64\), got \(64,\)"):
        fn(x, weight, residual=residual[0])
    with pytest.raises(TypeError, match=r"residual must be float32 or x's dtype \(torch.bfloat16\), got torch.float16"):
        fn(x, weight, residual=residual.half())
    with pytest.raises(TypeError, match=r"residual must be float32 or x's dtype .*got torch.int32"):
        fn(x, weight, residual=residual.int())
    with pytest.raises(TypeError, match=r"residual must be a torch.Tensor or None, got list"):
        fn(x, weight, residual=[1.0])
    with pytest.raises(ValueError, match=r"residual's last dim must be contiguous"):
        fn(x, weight, residual=torch.randn(64, 4, generator=gen).to(torch.bfloat16).to(device).t())
    with pytest.raises(ValueError, match=r"return_residual=True needs a residual"):
        fn(x, weight, return_residual=True)
    with pytest.raises(ValueError, match=r"residual_in_fp32=True needs a residual"):
        fn(x, weight, residual_in_fp32=True)
    for bad in (torch.int32, torch.float64, torch.bool):
        with pytest.raises(TypeError, match=rf"out_dtype must be torch.float16, torch.bfloat16, torch.float32 or None "
                                            rf"\(x's dtype\), got {bad}"):
            fn(x, weight, out_dtype=bad)
    with pytest.raises(TypeError, match=r"out_dtype must be .* got 'float32'"):
        fn(x, weight, out_dtype="float32")
    # The usual x checks come first.
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16 or float32"):
        fn(x.double(), weight, residual=residual)
