"""RMSNorm, the fused residual and out_dtype at realistic shapes on a CUDA GPU (skipped without one): Triton,
CuTeDSL and "auto" forward + backward against the fp64 reference, both backends' launchers with poisoned outputs,
fused vs unfused, "auto" running the features on CuTeDSL, and the RMSNorm module against torch.nn.RMSNorm."""

from __future__ import annotations

import pytest
import torch

from vibe_kernels.layernorm import RMSNorm, _triton, is_cutedsl_layernorm_available, layernorm, rmsnorm
from vibe_kernels.layernorm._backends import load_backend

pytestmark = pytest.mark.gpu

SHAPES = [  # (M, N, dtype): resident, one warp-wide row, head + tail, chunked forward and backward, and more
    (4096, 8192, torch.bfloat16),
    (32768, 256, torch.bfloat16),
    (4095, 5000, torch.float16),
    (4, 65536, torch.bfloat16),
    (8192, 8192, torch.float32),
    (1024, 16384, torch.float16),  # Triton: resident with a residual, chunked without
]
_ids = lambda v: str(v).replace("torch.", "")  # noqa: E731
NORMS = {"layernorm": False, "rmsnorm": True}


@pytest.fixture
def cuda_gen(gen):
    return torch.Generator(device="cuda").manual_seed(int(torch.randint(2**31, (1,), generator=gen)))


def _inputs(gen, rows, hidden, dtype, residual_dtype=None, requires_grad=False):
    x = (torch.randn(rows, hidden, generator=gen, device="cuda") * 1.5 + 0.25).to(dtype)
    residual = (torch.randn(rows, hidden, generator=gen, device="cuda") * 2 - 0.5).to(residual_dtype or dtype)
    weight = 1 + 0.5 * torch.randn(hidden, generator=gen, device="cuda")
    bias = (0.5 * torch.randn(hidden, generator=gen, device="cuda")).to(dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (x, residual, weight, bias))


def _dh_total_check(check, h, weight, bias, dy, dh, rms, grad, what):
    refs = check.grad_references(h, weight, bias, dy, 1e-5, {"dx": grad.dtype}, rms=rms)
    dnorm, allowed = refs["dx"]
    total = dnorm + dh.double() if dh is not None else dnorm
    if dh is not None:
        allowed = allowed + check.table[grad.dtype].dx_ulps * torch.finfo(grad.dtype).eps * total.abs()
    check.within(grad, total, allowed, what)


def _require(backend):
    if backend == "cutedsl" and not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend unavailable (needs nvidia-cutlass-dsl and sm_90+)")


@pytest.mark.parametrize("backend", ["triton", "cutedsl", "auto"])
@pytest.mark.parametrize("rows, hidden, dtype", SHAPES, ids=_ids)
def test_rmsnorm_forward_backward(cuda_gen, check, backend, rows, hidden, dtype):
    _require(backend)
    x, _, weight, bias = _inputs(cuda_gen, rows, hidden, dtype, requires_grad=True)
    out, rstd = rmsnorm(x, weight, bias, eps=1e-5, return_rstd=True, backend=backend)
    check.out(out, x, weight, bias, 1e-5, rms=True)
    check.stats(None, rstd, x, 1e-5, rms=True)
    dy = torch.randn(out.shape, generator=cuda_gen, device="cuda").to(dtype)
    out.backward(dy)
    check.grads(x, weight, bias, dy, 1e-5, x.grad, weight.grad, bias.grad, rms=True)


@pytest.mark.parametrize("residual_in_fp32", [False, True], ids=["h_xdtype", "h_fp32"])
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", ["triton", "cutedsl", "auto"])
@pytest.mark.parametrize("rows, hidden, dtype", SHAPES, ids=_ids)
def test_residual_forward_backward(cuda_gen, check, backend, norm, residual_in_fp32, rows, hidden, dtype):
    _require(backend)
    rms = NORMS[norm]
    r_dtype = torch.float32 if residual_in_fp32 else dtype
    x, residual, weight, bias = _inputs(cuda_gen, rows, hidden, dtype, r_dtype, requires_grad=True)
    fn = rmsnorm if rms else layernorm
    out, h, rstd = fn(x, weight, bias, eps=1e-5, residual=residual, residual_in_fp32=residual_in_fp32,
                      return_residual=True, return_rstd=True, backend=backend)
    expected_h = x.detach().float() + residual.detach().float()
    if not residual_in_fp32:
        expected_h = expected_h.to(dtype)
    assert h.dtype == expected_h.dtype and torch.equal(h, expected_h)
    check.out(out, h, weight, bias, 1e-5, rms=rms, out_dtype=dtype)  # out in x's dtype, h may be fp32
    dy = torch.randn(out.shape, generator=cuda_gen, device="cuda").to(dtype)
    dh = torch.randn(h.shape, generator=cuda_gen, device="cuda").to(h.dtype)
    torch.autograd.backward([out, h], [dy, dh])
    assert x.grad.dtype == dtype and residual.grad.dtype == r_dtype
    _dh_total_check(check, h.detach(), weight, bias, dy, dh, rms, x.grad, "dx")
    _dh_total_check(check, h.detach(), weight, bias, dy, dh, rms, residual.grad, "dresidual")
    check.grads(h.detach(), weight, bias, dy, 1e-5, None, weight.grad, bias.grad, rms=rms)


@pytest.mark.parametrize("backend", ["triton", "cutedsl"])
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("rows, hidden, dtype", SHAPES, ids=_ids)
def test_fused_residual_equals_unfused(cuda_gen, backend, norm, rows, hidden, dtype):
    """h is exactly x + residual; out is the unfused norm(x + residual) bit for bit where both take the same
    forward kernel configuration (always on CuTeDSL: same dtypes, same alignment class, same config), and within
    one ulp of its terms where they do not (Triton's fp16/bf16 rows of 4097-8192 stream in chunks without a
    residual and stay resident with one: the statistics round differently)."""
    _require(backend)
    x, residual, weight, bias = _inputs(cuda_gen, rows, hidden, dtype)
    fn = rmsnorm if NORMS[norm] else layernorm
    fused, h = fn(x, weight, bias, residual=residual, return_residual=True, backend=backend)
    assert torch.equal(h, x + residual)
    unfused = fn(x + residual, weight, bias, backend=backend)
    if backend == "cutedsl" or _triton.fwd_config(hidden, dtype, True) == _triton.fwd_config(hidden, dtype, False):
        assert torch.equal(fused, unfused)
    else:
        # One ulp of the larger of out and its terms (normalized * weight, bias): where they cancel, a last-bit
        # difference of the fp32 statistics moves out by more than one ulp of out itself.
        out32, bias32 = unfused.float(), bias.float()
        terms = out32.abs() + (out32 - bias32).abs() + bias32.abs()
        ratio = ((fused.float() - out32).abs() / (torch.finfo(dtype).eps * terms)).nan_to_num(0.0).max().item()
        assert ratio <= 1.0, f"fused and unfused out differ by {ratio:.2f} ulps of their terms"


@pytest.mark.parametrize("x_dtype, out_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                                (torch.float16, torch.float32)], ids=_ids)
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("backend", ["triton", "cutedsl", "auto"])
@pytest.mark.parametrize("rows, hidden", [(4096, 8192), (4, 65536), (4095, 5000), (2048, 16384)], ids=str)
def test_out_dtype(cuda_gen, check, backend, norm, x_dtype, out_dtype, rows, hidden):
    _require(backend)
    rms = NORMS[norm]
    x, _, weight, bias = _inputs(cuda_gen, rows, hidden, x_dtype, requires_grad=True)
    out = (rmsnorm if rms else layernorm)(x, weight, bias, eps=1e-5, out_dtype=out_dtype, backend=backend)
    check.out(out, x, weight, bias, 1e-5, rms=rms, out_dtype=out_dtype)
    dy = torch.randn(out.shape, generator=cuda_gen, device="cuda").to(out_dtype)
    out.backward(dy)
    assert x.grad.dtype == x_dtype
    check.grads(x, weight, bias, dy, 1e-5, x.grad, weight.grad, bias.grad, rms=rms)


@pytest.mark.parametrize("backend", ["triton", "cutedsl"])
@pytest.mark.parametrize("rms", [True, False], ids=["rmsnorm", "layernorm"])
@pytest.mark.parametrize("rows, hidden, dtype", SHAPES, ids=_ids)
def test_launchers_write_every_element(cuda_gen, check, backend, rms, rows, hidden, dtype):
    """The backends' launchers into NaN-poisoned outputs: an fp32 residual kept in fp32 (h), out in fp32, and a
    backward that adds the gradient of h and writes dx twice (x's dtype and the residual's)."""
    _require(backend)
    module = load_backend(backend)
    x, residual, weight, _ = _inputs(cuda_gen, rows, hidden, dtype, torch.float32)
    nan = float("nan")
    out = torch.full_like(x, nan, dtype=torch.float32)
    h = torch.full_like(x, nan, dtype=torch.float32)
    rstd = torch.full((rows,), nan, device="cuda")
    mean = None if rms else torch.full((rows,), nan, device="cuda")
    module.layernorm_fwd(x, weight, None, 1e-5, out, mean, rstd, residual=residual, residual_out=h,
                         residual_in_fp32=True, rms=rms)
    assert torch.equal(h, x.float() + residual)
    check.out(out, h, weight, None, 1e-5, rms=rms, out_dtype=torch.float32)
    check.stats(mean, rstd, h, 1e-5, rms=rms)
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda")
    dh = torch.randn(x.shape, generator=cuda_gen, device="cuda")
    dx = torch.full_like(x, nan)
    dres_in = torch.full_like(h, nan)
    dweight = torch.full_like(weight, nan)
    module.layernorm_bwd(dy, h, weight, mean, rstd, dx, dweight, None, rms=rms, dresidual=dh, dresidual_in=dres_in)
    _dh_total_check(check, h, weight, None, dy, dh, rms, dx, "dx")
    _dh_total_check(check, h, weight, None, dy, dh, rms, dres_in, "dresidual_in")
    check.grads(h, weight, None, dy, 1e-5, None, dweight, None, rms=rms)


def test_auto_runs_the_features_on_cutedsl(cuda_gen, check, monkeypatch):
    """Under backend="auto" on Hopper, RMSNorm with the fused residual and out_dtype runs forward and backward on
    CuTeDSL: with the Triton launchers made to fail, the call still succeeds."""
    _require("cutedsl")

    def no_triton(*args, **kwargs):
        raise AssertionError("backend='auto' fell back to Triton")

    monkeypatch.setattr(_triton, "layernorm_fwd", no_triton)
    monkeypatch.setattr(_triton, "layernorm_bwd", no_triton)
    x, residual, weight, bias = _inputs(cuda_gen, 256, 4096, torch.bfloat16, torch.float32, requires_grad=True)
    for fn, rms in ((layernorm, False), (rmsnorm, True)):
        out, h = fn(x, weight, bias, residual=residual, residual_in_fp32=True, return_residual=True,
                    out_dtype=torch.float32, backend="auto")
        assert out.dtype == torch.float32 and h.dtype == torch.float32
        check.out(out, h.detach(), weight, bias, 1e-6, rms=rms, out_dtype=torch.float32)
        (out.sum() + h.sum()).backward()
        assert x.grad.dtype == torch.bfloat16 and residual.grad.dtype == torch.float32
        assert torch.equal(x.grad, residual.grad.to(torch.bfloat16))
        x.grad = residual.grad = weight.grad = bias.grad = None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=_ids)
def test_rmsnorm_module_matches_torch(cuda_gen, check, dtype):
    ref = torch.nn.RMSNorm(4096, device="cuda")
    with torch.no_grad():
        ref.weight.copy_(1 + 0.5 * torch.randn(4096, generator=cuda_gen, device="cuda"))
    ours = RMSNorm(4096, device="cuda")
    ours.load_state_dict(ref.state_dict())
    x = (0.05 * torch.randn(2048, 4096, generator=cuda_gen, device="cuda")).to(dtype).requires_grad_()
    out, expected = ours(x), ref(x)
    eps = torch.finfo(torch.float32).eps
    _, allowed = check.out_reference(x, ours.weight, None, eps, dtype, rms=True)
    check.within(out, expected, 2 * allowed, "RMSNorm vs torch.nn.RMSNorm")
    dy = torch.randn(out.shape, generator=cuda_gen, device="cuda").to(dtype)
    (dx,) = torch.autograd.grad(out, (x,), dy)
    check.grads(x, ours.weight, None, dy, eps, dx, None, None, rms=True)
