"""Special values and property tests (issue 8's first part), on the device fixture: the Triton kernels (interpreter
on a CPU machine, compiled on a GPU one) and the torch backend, against the fp64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vibe_kernels.layernorm import layernorm, layernorm_rstd_ref

BACKENDS = ("triton", "torch")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_stay_in_their_row(gen, device, backend):
    x = torch.randn(6, 300, generator=gen).to(device)
    x[1, 17] = float("nan")
    x[4, 3] = float("inf")
    weight = torch.randn(300, generator=gen).to(device)
    out, rstd, mean = layernorm(x, weight, return_rstd=True, return_mean=True, backend=backend)
    clean = [0, 2, 3, 5]
    assert torch.isnan(out[1]).all() and torch.isnan(out[4]).all()
    assert torch.isfinite(out[clean]).all() and torch.isfinite(mean[clean]).all() and torch.isfinite(rstd[clean]).all()
    ref, _, _ = layernorm(x[clean], weight, return_rstd=True, return_mean=True, backend=backend)
    torch.testing.assert_close(out[clean], ref, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_constant_row_gives_bias(gen, device, backend, dtype):
    eps = 1e-6
    x = torch.full((3, 129), 3.25, dtype=dtype, device=device)
    weight = torch.randn(129, generator=gen).to(device)
    bias = torch.randn(129, generator=gen).to(device)
    out, rstd, mean = layernorm(x, weight, bias, eps=eps, return_rstd=True, return_mean=True, backend=backend)
    # Exactly the bias rounded to x's dtype; the Triton interpreter's bf16 store truncates instead (one ulp).
    truncating = backend == "triton" and device == "cpu" and dtype == torch.bfloat16
    ulp_slack = torch.finfo(dtype).eps * bias.abs() if truncating else 0.0
    assert ((out.float() - bias.to(dtype).float()).abs() <= ulp_slack).all()
    torch.testing.assert_close(mean, torch.full_like(mean, 3.25), rtol=0, atol=0)
    torch.testing.assert_close(rstd, torch.full_like(rstd, 1 / math.sqrt(eps)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_largest_fp16_values_do_not_overflow_the_statistics(device, backend):
    row = torch.tensor([65504.0, -65504.0] * 64, dtype=torch.float16, device=device)
    x = torch.stack([row, row.flip(0)])
    out, rstd, mean = layernorm(x, None, return_rstd=True, return_mean=True, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(rstd).all()
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=0)
    torch.testing.assert_close(rstd, torch.full_like(rstd, 1 / 65504.0), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.float().abs(), torch.ones_like(out, dtype=torch.float32), rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset, spread", [(1e4, 1.0), (0.0, 1e-6)], ids=["large-offset", "tiny"])
def test_fp32_rows_with_large_offset_or_tiny_spread(gen, device, backend, offset, spread):
    eps = 1e-20  # so that rstd measures the data's spread, even at 1e-6
    x = (offset + spread * torch.randn(8, 777, generator=gen, dtype=torch.float64)).float()
    _, rstd = layernorm(x.to(device), None, eps=eps, return_rstd=True, backend=backend)
    ref = layernorm_rstd_ref(x.double(), eps)
    rel = ((rstd.double().cpu() - ref) / ref).abs().max().item()
    assert rel < 1e-4, f"rstd relative error {rel:.2e} for rows of {offset} + {spread} * noise"


def test_bad_input_leaves_user_tensors_untouched(gen, device):
    x = torch.randn(4, 64, generator=gen).to(device)
    weight = torch.randn(63, generator=gen).to(device)
    x_before, w_before = x.clone(), weight.clone()
    with pytest.raises(ValueError, match="weight must have shape"):
        layernorm(x, weight, backend="torch")
    assert torch.equal(x, x_before) and torch.equal(weight, w_before)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(0, 5),
    hidden=st.integers(1, 300),
    dtype_name=st.sampled_from(list(DTYPES)),
    params=st.sampled_from(["none", "w", "wb", "wb_xdtype"]),
    row_pad=st.sampled_from([0, 3, 16]),
    lead=st.sampled_from([(), (2,)]),
    arity=st.sampled_from(["out", "rstd", "mean", "both"]),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**31 - 1),
)
# Found by CI: a row whose mean cancels to ~0 (the tolerance must scale with the row's mean |x|, not |mean|).
@example(rows=2, hidden=43, dtype_name="float32", params="none", row_pad=16, lead=(2,), arity="out",
         backend="torch", seed=1476)
def test_property_forward_matches_fp64(device, check, rows, hidden, dtype_name, params, row_pad, lead, arity,
                                       backend, seed):
    """Random shapes, row strides, dtypes, affine parameters and return arities: out, mean and rstd against fp64."""
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(seed)
    storage = (torch.randn(*lead, rows, hidden + row_pad, generator=gen) * 2 + 0.5).to(dtype).to(device)
    x = storage[..., :hidden]  # strided rows when row_pad > 0: the kernels must read them in place
    param_dtype = dtype if params == "wb_xdtype" else torch.float32
    weight = (1 + torch.randn(hidden, generator=gen)).to(param_dtype).to(device) if params != "none" else None
    bias = torch.randn(hidden, generator=gen).to(param_dtype).to(device) if params.startswith("wb") else None
    result = layernorm(x, weight, bias, return_rstd=arity in ("rstd", "both"), return_mean=arity in ("mean", "both"),
                       backend=backend)
    out, *stats = result if isinstance(result, tuple) else (result,)
    assert out.shape == x.shape and out.dtype == dtype
    check.out(out, x, weight, bias, 1e-6)
    rstd = stats[0] if arity in ("rstd", "both") else None
    mean = stats[-1] if arity in ("mean", "both") else None
    check.stats(mean, rstd, x, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_weight_and_bias_views(gen, device, backend):
    x = torch.randn(5, 96, generator=gen).to(device).requires_grad_()
    w_storage = torch.randn(192, generator=gen).to(device).requires_grad_()
    b_storage = torch.randn(192, generator=gen).to(device).requires_grad_()
    weight, bias = w_storage[::2], b_storage[1::2]
    out = layernorm(x, weight, bias, backend=backend)
    ref = layernorm(x, weight.contiguous(), bias.contiguous(), backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn(5, 96, generator=gen).to(device)
    grads = torch.autograd.grad(out, (w_storage, b_storage), dy)
    ref_grads = torch.autograd.grad(ref, (w_storage, b_storage), dy)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (grads[0][1::2] == 0).all() and (grads[1][::2] == 0).all()


@pytest.mark.parametrize("bad_dtype", [torch.complex64, torch.bool, torch.int32, torch.float64])
def test_unsupported_x_dtypes_are_type_errors(device, bad_dtype):
    x = torch.ones(2, 8, dtype=bad_dtype, device=device)
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16 or float32, got torch\."):
        layernorm(x, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_weight_poisons_only_its_column(gen, device, backend):
    # Documented result: a NaN weight (or bias) entry makes that output column NaN and nothing else.
    x = torch.randn(4, 40, generator=gen).to(device)
    weight = torch.randn(40, generator=gen).to(device)
    weight[7] = float("nan")
    out = layernorm(x, weight, backend=backend)
    assert torch.isnan(out[:, 7]).all()
    others = torch.ones(40, dtype=torch.bool, device=device)
    others[7] = False
    assert torch.isfinite(out[:, others]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_calls_from_several_threads(gen, device, backend):
    """Concurrent first calls of a new shape (compilation on a GPU) all return right results."""
    import threading

    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is not thread-safe (it patches triton.language while a kernel runs); "
                    "the compiled kernels are exercised on a GPU machine")

    hidden = 232  # a width no other test uses, so the first call here compiles on a GPU
    inputs = [torch.randn(3, hidden, generator=gen).to(device) for _ in range(4)]
    weight = torch.randn(hidden, generator=gen).to(device)
    results, errors = [None] * 4, []

    def run(i):
        try:
            results[i] = layernorm(inputs[i], weight, backend=backend)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for x, out in zip(inputs, results):
        torch.testing.assert_close(out, layernorm(x, weight, backend="torch"), rtol=1e-5, atol=1e-5)
