"""vibe_kernels.layernorm.LayerNorm as a drop-in for torch.nn.LayerNorm: construction, outputs, state_dict,
parameter gradients, and the backend kwarg."""

from __future__ import annotations

import pytest
import torch

from vibe_kernels.layernorm import LayerNorm

BACKENDS = ["auto", "torch", "triton"]


def _pair(normalized_shape, device, gen, **kwargs):
    """Our module and torch's, with identical (non-trivial) parameters."""
    ours = LayerNorm(normalized_shape, device=device, **kwargs)
    ref = torch.nn.LayerNorm(normalized_shape, device=device, **kwargs)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            param.copy_((1 + 0.5 * torch.randn(param.shape, generator=gen)) if name == "weight"
                        else 0.5 * torch.randn(param.shape, generator=gen))
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_same_init_as_torch(device):
    ours, ref = LayerNorm(96, device=device), torch.nn.LayerNorm(96, device=device)
    assert isinstance(ours, torch.nn.LayerNorm)
    assert ours.eps == ref.eps == 1e-5
    assert ours.normalized_shape == ref.normalized_shape == (96,)
    assert ours.elementwise_affine and ours.weight.requires_grad and ours.bias.requires_grad
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    assert ours.weight.dtype == torch.float32 and ours.weight.device.type == device
    assert ours.backend == "auto" and "backend='auto'" in repr(ours)


@pytest.mark.parametrize(
    "kwargs", [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-3}], ids=lambda k: str(k) or "default"
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_fp32(gen, device, check, backend, kwargs):
    ours, ref = _pair(111, device, gen, **kwargs)
    ours.backend = backend
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = (torch.randn(2, 5, 111, generator=gen) + 0.3).to(device)
    out, expected = ours(x), ref(x)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    # Both are fp32 computations of the same thing: compare each with fp64, then with each other.
    check.out(out, x, ours.weight, ours.bias, ours.eps)
    check.out(expected, x, ref.weight, ref.bias, ref.eps)
    _, allowed = check.out_reference(x, ours.weight, ours.bias, ours.eps, torch.float32)
    check.within(out, expected, 2 * allowed, "LayerNorm vs torch.nn.LayerNorm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_dim_normalized_shape(gen, device, check, backend):
    ours, ref = _pair((4, 6, 5), device, gen)
    ours.backend = backend
    x = (torch.randn(3, 4, 6, 5, generator=gen) * 2).to(device).requires_grad_()
    out = ours(x)
    expected = ref(x)
    assert out.shape == x.shape
    flat = x.detach().reshape(3, 120)
    check.out(out.reshape(3, 120), flat, ours.weight.reshape(120), ours.bias.reshape(120), 1e-5)
    _, allowed = check.out_reference(flat, ours.weight.reshape(120), ours.bias.reshape(120), 1e-5, torch.float32)
    check.within(out.reshape(3, 120), expected.reshape(3, 120), 2 * allowed, "multi-dim vs torch")

    dy = torch.randn(x.shape, generator=gen).to(device)
    grads = torch.autograd.grad(out, (x, ours.weight, ours.bias), dy)
    ref_grads = torch.autograd.grad(expected, (x, ref.weight, ref.bias), dy)
    assert [g.shape for g in grads] == [g.shape for g in ref_grads] == [x.shape, (4, 6, 5), (4, 6, 5)]
    check.grads(flat, ours.weight.reshape(120), ours.bias.reshape(120), dy.reshape(3, 120), 1e-5,
                grads[0].reshape(3, 120), grads[1].reshape(120), grads[2].reshape(120))


def test_wrong_trailing_shape_is_rejected(gen, device):
    module = LayerNorm((4, 6), device=device)
    with pytest.raises(ValueError, match=r"LayerNorm expects input of shape \(\*, 4, 6\), got \(2, 6, 4\)"):
        module(torch.randn(2, 6, 4, generator=gen).to(device))
    with pytest.raises(ValueError, match=r"LayerNorm expects input of shape \(\*, 4, 6\), got \(6,\)"):
        module(torch.randn(6, generator=gen).to(device))


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"elementwise_affine": False}], ids=str)
def test_state_dict_round_trip_both_ways(gen, device, kwargs):
    ours, ref = _pair((8, 12), device, gen, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    fresh_torch = torch.nn.LayerNorm((8, 12), device=device, **kwargs)
    fresh_torch.load_state_dict(ours.state_dict())  # ours -> torch
    fresh_ours = LayerNorm((8, 12), device=device, **kwargs)
    fresh_ours.load_state_dict(fresh_torch.state_dict())  # torch -> ours
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh_torch.state_dict()[key], value), key
        assert torch.equal(fresh_ours.state_dict()[key], value), key
    x = torch.randn(3, 8, 12, generator=gen).to(device)
    assert torch.equal(fresh_ours(x), ours(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [{}, {"bias": False}], ids=str)
def test_parameter_gradients(gen, device, check, backend, kwargs):
    ours, ref = _pair(769, device, gen, **kwargs)
    ours.backend = backend
    x = (torch.randn(6, 769, generator=gen) + 1).to(device)
    dy = torch.randn(6, 769, generator=gen).to(device)
    ours(x).backward(dy)
    ref(x).backward(dy)
    check.grads(x, ours.weight, ours.bias, dy, ours.eps, None, ours.weight.grad,
                ours.bias.grad if ours.bias is not None else None)
    _, allowed_dw = check.grad_references(x, ours.weight, ours.bias, dy, ours.eps, {"dw": torch.float32})["dw"]
    check.within(ours.weight.grad, ref.weight.grad, 2 * allowed_dw, "dw vs torch.nn.LayerNorm")
    if ours.bias is not None:
        assert torch.allclose(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_module(gen, device, check, dtype):
    # Parameters in x's dtype (module built with dtype=...), the autocast-free mixed setup.
    module = LayerNorm(256, device=device, dtype=dtype, backend="triton" if device == "cuda" else "auto")
    with torch.no_grad():
        module.weight.copy_(1 + 0.5 * torch.randn(256, generator=gen))
        module.bias.copy_(0.5 * torch.randn(256, generator=gen))
    x = torch.randn(4, 256, generator=gen).to(dtype).to(device)
    out = module(x)
    assert out.dtype == dtype
    check.out(out, x, module.weight, module.bias, module.eps)


def test_backend_kwarg_is_used(gen, device, monkeypatch):
    from vibe_kernels.layernorm import api

    seen = []
    real_load = api.load_backend
    monkeypatch.setattr(api, "load_backend", lambda name: seen.append(name) or real_load(name))
    x = torch.randn(2, 64, generator=gen).to(device)
    LayerNorm(64, device=device, backend="torch")(x)
    LayerNorm(64, device=device, backend="triton")(x)
    assert seen == ["torch", "triton"]
    with pytest.raises(ValueError, match=r"backend must be one of"):
        LayerNorm(64, device=device, backend="nope")(x)
