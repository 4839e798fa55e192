"""RMSNorm: ``rmsnorm`` on the Triton (interpreter on CPU, compiled on CUDA) and torch backends against the fp64
reference (``check`` fixture, rms=True), the launchers' forced configs with poisoned outputs, the ``RMSNorm``
module as a drop-in for ``torch.nn.RMSNorm``, and patch/unpatch of torch.nn.RMSNorm modules.

Shapes stay tiny (the interpreter costs ~3 ms per program instance); the chunked kernels run through forced
configs at N = 1128 with 256-wide chunks.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vibe_kernels.layernorm import (
    RMSNorm,
    _triton,
    patch,
    rmsnorm,
    rmsnorm_ref,
    rmsnorm_rstd_ref,
    torch_rmsnorm,
    triton_rmsnorm,
    unpatch,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["triton", "torch"]
EPS = 1e-5
# (has weight, has bias, parameters in fp32 (True) or in x's dtype (False))
AFFINE = {"w_fp32": (True, False, True), "w_xdtype": (True, False, False), "w_b_fp32": (True, True, True),
          "none": (False, False, True)}


def _id(value):
    return str(value).replace("torch.", "") if isinstance(value, torch.dtype) else None


def make_inputs(gen, shape, dtype, device, affine="w_fp32", requires_grad=False):
    has_w, has_b, fp32_params = AFFINE[affine]
    hidden = shape[-1]
    param_dtype = torch.float32 if fp32_params else dtype
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.25).to(dtype)
    weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(param_dtype) if has_w else None
    bias = (0.5 * torch.randn(hidden, generator=gen)).to(param_dtype) if has_b else None
    return tuple(t.to(device).requires_grad_(requires_grad) if t is not None else None for t in (x, weight, bias))


def random_like(gen, t):
    return torch.randn(t.shape, generator=gen).to(t.dtype).to(t.device)


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------------
# Through the API
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("hidden", [1, 111, 769, 1128])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_reference(gen, device, check, backend, dtype, hidden, affine):
    x, weight, bias = make_inputs(gen, (7, hidden), dtype, device, affine)
    out, rstd = rmsnorm(x, weight, bias, eps=EPS, return_rstd=True, backend=backend)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    check.out(out, x, weight, bias, EPS, rms=True)
    check.stats(None, rstd, x, EPS, rms=True)


@pytest.mark.parametrize("affine", ["w_fp32", "w_b_fp32", "none"])
@pytest.mark.parametrize("hidden", [1, 111, 1128])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_autograd(gen, device, check, backend, dtype, hidden, affine):
    x, weight, bias = make_inputs(gen, (9, hidden), dtype, device, affine, requires_grad=True)
    out = rmsnorm(x, weight, bias, eps=EPS, backend=backend)
    dy = random_like(gen, out)
    out.backward(dy)
    for param in (weight, bias):
        if param is not None:
            assert param.grad.dtype == param.dtype
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad if weight is not None else None,
                bias.grad if bias is not None else None, rms=True)


@pytest.mark.parametrize("pinned, backend", [(triton_rmsnorm, "triton"), (torch_rmsnorm, "torch")])
def test_return_arity(gen, device, check, pinned, backend):
    x, weight, _ = make_inputs(gen, (2, 3, 96), torch.bfloat16, device)
    out = pinned(x, weight, eps=EPS)
    assert isinstance(out, torch.Tensor)
    check.out(out, x, weight, None, EPS, rms=True)
    result = rmsnorm(x, weight, eps=EPS, return_rstd=True, backend=backend)
    assert isinstance(result, tuple) and len(result) == 2
    assert result[1].shape == (2, 3) and result[1].dtype == torch.float32
    check.stats(None, result[1], x, EPS, rms=True)
    with pytest.raises(TypeError, match="return_mean"):
        rmsnorm(x, weight, return_mean=True)  # RMSNorm has no mean


@pytest.mark.parametrize("backend", BACKENDS)
def test_nd_and_strided_rows(gen, device, check, backend):
    big = torch.randn(2, 3, 300, generator=gen).to(torch.float16).to(device)
    x = big[:, :, :257].detach().requires_grad_()  # a leaf view with strided rows
    assert not x.is_contiguous()
    weight = (1 + 0.3 * torch.randn(257, generator=gen)).to(device).requires_grad_()
    out = rmsnorm(x, weight, eps=EPS, backend=backend)
    check.out(out, x, weight, None, EPS, rms=True)
    dy = random_like(gen, out)
    out.backward(dy)
    check.grads(x, weight, None, dy, EPS, x.grad, weight.grad, None, rms=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows(gen, device, backend):
    x, weight, _ = make_inputs(gen, (0, 64), torch.bfloat16, device, requires_grad=True)
    out, rstd = rmsnorm(x, weight, return_rstd=True, backend=backend)
    assert out.shape == (0, 64) and rstd.shape == (0,)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros(64, device=device))


def test_large_offset_rows_are_fine(gen, device):
    # No centering, so a large common offset is just a large RMS: rstd to fp32 accuracy.
    x = (1000 + 1e-3 * torch.randn(8, 769, generator=gen, dtype=torch.float64)).float().to(device)
    _, rstd = triton_rmsnorm(x, None, eps=1e-12, return_rstd=True)
    ref = rmsnorm_rstd_ref(x.double().cpu(), 1e-12)
    assert ((rstd.double().cpu() - ref) / ref).abs().max() < 1e-6


def test_layernorm_path_is_unaffected(gen, device, check):
    # The same x through layernorm and rmsnorm: different results, each matching its own reference.
    x, weight, _ = make_inputs(gen, (4, 128), torch.float32, device)
    ln = _triton_layernorm(x, weight)
    rms = triton_rmsnorm(x, weight, eps=EPS)
    check.out(rms, x, weight, None, EPS, rms=True)
    check.out(ln, x, weight, None, EPS)
    assert not torch.allclose(ln, rms)


def _triton_layernorm(x, weight):
    from vibe_kernels.layernorm import triton_layernorm

    return triton_layernorm(x, weight, eps=EPS)


# ----------------------------------------------------------------------------------------------------------------
# Launchers with forced configs
# ----------------------------------------------------------------------------------------------------------------

FWD_CONFIGS = {
    "chunked": _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True),
    "chunked_persistent": _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True, programs_per_sm=1),
    "chunked_rows": _triton.FwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True, programs_per_sm=1),
    "chunked_held": _triton.FwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True, programs_per_sm=1,
                                      held_chunks=3),
    "resident_head_tail": _triton.FwdConfig(block_m=2, block_n=1024, num_warps=4, chunked=False, tail_n=128),
    "resident_ragged_rows": _triton.FwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False),
}
BWD_CONFIGS = {
    "chunked": _triton.BwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True),
    "resident_persistent": _triton.BwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False),
    "resident_prefetch": _triton.BwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False, prefetch=True),
}


@pytest.mark.parametrize("config", list(FWD_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_fwd_launcher_forced_config(gen, device, check, dtype, config):
    rows, hidden = 5, 1128
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, "w_b_fp32")
    out = _poisoned((rows, hidden), dtype, device)
    rstd = _poisoned((rows,), torch.float32, device)
    _triton.layernorm_fwd(x, weight, bias, EPS, out, None, rstd, config=FWD_CONFIGS[config], rms=True)
    check.out(out, x, weight, bias, EPS, rms=True)
    check.stats(None, rstd, x, EPS, rms=True)


def test_fwd_launcher_refuses_a_mean(device):
    x = torch.ones(2, 8, device=device)
    with pytest.raises(ValueError, match="RMSNorm has no mean"):
        _triton.layernorm_fwd(x, None, None, EPS, torch.empty_like(x), torch.empty(2, device=device),
                              torch.empty(2, device=device), rms=True)


@pytest.mark.parametrize("grads", ["dw_db", "dx_only"])
@pytest.mark.parametrize("config", list(BWD_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_bwd_launcher_forced_config(gen, device, check, dtype, config, grads):
    rows, hidden = (21 if config.startswith("resident") else 5), 1128
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, "w_b_fp32")
    dy = random_like(gen, x)
    rstd = torch.empty(rows, device=device)
    _triton.layernorm_fwd(x, weight, bias, EPS, torch.empty_like(x), None, rstd, rms=True)
    dx = _poisoned((rows, hidden), dtype, device)
    dweight = _poisoned((hidden,), torch.float32, device) if grads == "dw_db" else None
    dbias = _poisoned((hidden,), torch.float32, device) if grads == "dw_db" else None
    _triton.layernorm_bwd(dy, x, weight, None, rstd, dx, dweight, dbias, config=BWD_CONFIGS[config], rms=True)
    check.grads(x, weight, bias, dy, EPS, dx, dweight, dbias, rms=True)


# ----------------------------------------------------------------------------------------------------------------
# The module: a drop-in torch.nn.RMSNorm
# ----------------------------------------------------------------------------------------------------------------


def _pair(normalized_shape, device, gen, **kwargs):
    ours = RMSNorm(normalized_shape, device=device, **kwargs)
    ref = torch.nn.RMSNorm(normalized_shape, device=device, **kwargs)
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.copy_(1 + 0.5 * torch.randn(ref.weight.shape, generator=gen))
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_module_init_matches_torch(device):
    ours, ref = RMSNorm(96, device=device), torch.nn.RMSNorm(96, device=device)
    assert isinstance(ours, torch.nn.RMSNorm)
    assert ours.eps is None and ref.eps is None
    assert ours.normalized_shape == ref.normalized_shape == (96,)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()] == ["weight"]
    assert torch.equal(ours.weight, ref.weight) and ours.weight.requires_grad
    assert ours.backend == "auto" and "backend='auto'" in repr(ours)
    assert RMSNorm(8, elementwise_affine=False).weight is None
    assert RMSNorm(8, dtype=torch.bfloat16).weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs", [{}, {"eps": 1e-3}, {"elementwise_affine": False}], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_module_matches_torch(gen, device, check, backend, dtype, kwargs):
    ours, ref = _pair(111, device, gen, **kwargs)
    ours.backend = backend
    # Small inputs: torch's default eps (eps=None) is the float32 epsilon even for half inputs; a wrong eps
    # (e.g. bfloat16's 2**-7) would move the output by far more than the tolerance here.
    x = (0.02 * torch.randn(2, 5, 111, generator=gen)).to(dtype).to(device)
    out, expected = ours(x), ref(x)
    assert out.shape == expected.shape and out.dtype == expected.dtype == dtype
    eps = ours.eps if ours.eps is not None else torch.finfo(torch.float32).eps
    check.out(out, x, ours.weight, None, eps, rms=True)
    _, allowed = check.out_reference(x, ours.weight, None, eps, dtype, rms=True)
    check.within(out, expected, 2 * allowed, "RMSNorm vs torch.nn.RMSNorm")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_module_gradients_match_torch(gen, device, check, backend):
    ours, ref = _pair(769, device, gen, eps=1e-6)
    ours.backend = backend
    x = (torch.randn(6, 769, generator=gen) + 1).to(device).requires_grad_()
    dy = torch.randn(6, 769, generator=gen).to(device)
    grads = torch.autograd.grad(ours(x), (x, ours.weight), dy)
    ref_grads = torch.autograd.grad(ref(x), (x, ref.weight), dy)
    check.grads(x, ours.weight, None, dy, 1e-6, grads[0], grads[1], None, rms=True)
    refs = check.grad_references(x, ours.weight, None, dy, 1e-6, {"dx": torch.float32, "dw": torch.float32}, rms=True)
    check.within(grads[0], ref_grads[0], 2 * refs["dx"][1], "dx vs torch.nn.RMSNorm")
    check.within(grads[1], ref_grads[1], 2 * refs["dw"][1], "dw vs torch.nn.RMSNorm")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_module_multi_dim_normalized_shape(gen, device, check, backend):
    ours, ref = _pair((4, 6), device, gen)
    ours.backend = backend
    x = torch.randn(3, 4, 6, generator=gen).to(device)
    out = ours(x)
    assert out.shape == x.shape
    _, allowed = check.out_reference(x.reshape(3, 24), ours.weight.reshape(24), None,
                                     torch.finfo(torch.float32).eps, torch.float32, rms=True)
    check.within(out.reshape(3, 24), ref(x).reshape(3, 24), 2 * allowed, "multi-dim RMSNorm vs torch")
    with pytest.raises(ValueError, match=r"RMSNorm expects input of shape \(\*, 4, 6\), got \(3, 6, 4\)"):
        ours(torch.randn(3, 6, 4).to(device))


@pytest.mark.parametrize("kwargs", [{}, {"elementwise_affine": False}], ids=str)
def test_module_state_dict_round_trip(gen, device, kwargs):
    ours, ref = _pair((8, 12), device, gen, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    fresh_torch = torch.nn.RMSNorm((8, 12), device=device, **kwargs)
    fresh_torch.load_state_dict(ours.state_dict())
    fresh_ours = RMSNorm((8, 12), device=device, **kwargs)
    fresh_ours.load_state_dict(fresh_torch.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh_torch.state_dict()[key], value) and torch.equal(fresh_ours.state_dict()[key], value)
    x = torch.randn(3, 8, 12, generator=gen).to(device)
    assert torch.equal(fresh_ours(x), ours(x))


# ----------------------------------------------------------------------------------------------------------------
# patch / unpatch
# ----------------------------------------------------------------------------------------------------------------


class _Block(torch.nn.Module):
    """A pre-norm MLP block with RMSNorm and a final LayerNorm, like a small LLM layer."""

    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.RMSNorm(32, eps=1e-6)
        self.fc = torch.nn.Linear(32, 32)
        self.norm2 = torch.nn.RMSNorm(32)
        self.out_norm = torch.nn.LayerNorm(32)

    def forward(self, x):
        x = x + self.fc(self.norm1(x))
        return self.out_norm(x + self.norm2(x))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_patch_swaps_rmsnorm_and_trains_the_same(device, backend):
    torch.manual_seed(0)
    reference = _Block().to(device)
    model = copy.deepcopy(reference)
    weight = model.norm1.weight
    assert patch(model, backend=backend) == 3
    assert type(model.norm1) is RMSNorm and model.norm1.weight is weight and model.norm1.backend == backend
    assert model.state_dict().keys() == reference.state_dict().keys()
    gen = torch.Generator().manual_seed(1)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (reference, model)]
    for _ in range(2):
        inputs = torch.randn(4, 5, 32, generator=gen).to(device)
        target = torch.randn(4, 5, 32, generator=gen).to(device)
        losses = []
        for net, opt in zip((reference, model), optimizers):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(inputs), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
    for (name, p_ref), (_, p) in zip(reference.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-4, atol=1e-5, msg=f"parameter {name}")
    assert unpatch(model) == 3
    assert type(model.norm1) is torch.nn.RMSNorm and type(model.out_norm) is torch.nn.LayerNorm
    assert not hasattr(model.norm1, "backend") and model.norm1.weight is weight


def test_patch_skips_user_subclasses():
    class UserRMSNorm(torch.nn.RMSNorm):
        pass

    model = torch.nn.Sequential(torch.nn.RMSNorm(16), UserRMSNorm(16))
    assert patch(model) == 1
    assert type(model[1]) is UserRMSNorm
    assert unpatch(model) == 1


def test_reference_matches_torch_functional(gen):
    x = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    w = torch.randn(64, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(rmsnorm_ref(x, w, eps=1e-5), torch.nn.functional.rms_norm(x, (64,), w, 1e-5))
