"""Numerics of the Triton backend (backend="triton") on the ``device`` fixture: compiled kernels on CUDA, the
interpreter on CPU. Every output is compared element by element with the fp64 reference (``check`` fixture, one
tolerance table per dtype in conftest.py), which also fails on any NaN/inf.

Grid trimming: under the interpreter each program instance costs a few ms, so shapes stay small (M <= 16,
N <= 1128) except one forward and one backward case just past the resident limits (MAX_RESIDENT_FWD/BWD) with
M = 1-2; the chunked kernels are otherwise exercised cheaply by forcing their configs at N = 1128 with 256-wide
chunks. The full affine grid runs on the forward; gradients use a subset of N.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vibe_kernels.layernorm import _triton, layernorm, layernorm_rstd_ref, triton_layernorm
from vibe_kernels.layernorm.api import _rows_view

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HIDDEN = [1, 111, 256, 769, 1024, 1128]  # odd sizes (ragged last block) plus powers of two
GRAD_HIDDEN = [1, 111, 769, 1128]
EPS = 1e-5

# (has weight, has bias, parameters in fp32 (True) or in x's dtype (False))
AFFINE = {
    "w_b_fp32": (True, True, True),
    "w_b_xdtype": (True, True, False),
    "w_fp32": (True, False, True),
    "b_xdtype": (False, True, False),
    "none": (False, False, True),
}


def _id(value):
    return str(value).replace("torch.", "") if isinstance(value, torch.dtype) else None


def make_inputs(gen, shape, dtype, device, affine="w_b_fp32", requires_grad=False):
    """x with a non-zero mean and unit-ish spread; weight around 1, bias around 0; none of them all-zero."""
    has_w, has_b, fp32_params = AFFINE[affine]
    hidden = shape[-1]
    param_dtype = torch.float32 if fp32_params else dtype
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.25).to(dtype)
    weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(param_dtype) if has_w else None
    bias = (0.5 * torch.randn(hidden, generator=gen)).to(param_dtype) if has_b else None
    tensors = [t.to(device).requires_grad_(requires_grad) if t is not None else None for t in (x, weight, bias)]
    return tuple(tensors)


def random_like(gen, t):
    return torch.randn(t.shape, generator=gen).to(t.dtype).to(t.device)


# ----------------------------------------------------------------------------------------------------------------
# Forward through the API
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_forward_matches_reference(gen, device, check, dtype, hidden, affine):
    x, weight, bias = make_inputs(gen, (7, hidden), dtype, device, affine)
    out, rstd, mean = layernorm(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True, backend="triton")
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)


@pytest.mark.parametrize(
    "return_rstd, return_mean, expected", [(False, False, 1), (True, False, 2), (False, True, 2), (True, True, 3)]
)
def test_return_arity_and_order(gen, device, check, return_rstd, return_mean, expected):
    x, weight, bias = make_inputs(gen, (3, 5, 96), torch.bfloat16, device)
    result = triton_layernorm(x, weight, bias, eps=EPS, return_rstd=return_rstd, return_mean=return_mean)
    if expected == 1:
        assert isinstance(result, torch.Tensor)
        result = (result,)
    assert isinstance(result, tuple) and len(result) == expected
    check.out(result[0], x, weight, bias, EPS)
    rest = list(result[1:])
    rstd = rest.pop(0) if return_rstd else None  # order is (out, rstd, mean)
    mean = rest.pop(0) if return_mean else None
    check.stats(mean, rstd, x, EPS)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_strided_rows_are_not_copied(gen, device, check, dtype):
    hidden, stride = 769, 1000
    big = torch.randn(6, stride, generator=gen).to(dtype).to(device)
    x = big[:, :hidden]
    assert not x.is_contiguous()
    rows = _rows_view(x)
    assert rows.data_ptr() == x.data_ptr() and rows.stride() == (stride, 1), "2-D strided rows must be a view"
    x3 = big.view(2, 3, stride)[:, :, :hidden]
    rows3 = _rows_view(x3)
    assert rows3.data_ptr() == x3.data_ptr() and rows3.stride() == (stride, 1), "mergeable 3-D rows must be a view"

    _, weight, bias = make_inputs(gen, (1, hidden), dtype, device)
    before = big.clone()
    out, rstd, mean = layernorm(x3, weight, bias, eps=EPS, return_rstd=True, return_mean=True, backend="triton")
    assert out.shape == x3.shape and out.is_contiguous()
    check.out(out, x3, weight, bias, EPS)
    check.stats(mean, rstd, x3, EPS)
    assert torch.equal(big, before), "the input storage (and its padding columns) must be left untouched"


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_strided_rows_backward(gen, device, check, dtype):
    big = torch.randn(5, 1200, generator=gen).to(dtype).to(device).requires_grad_()
    x = big[:, :1128]
    _, weight, bias = make_inputs(gen, (1, 1128), dtype, device, requires_grad=True)
    out = triton_layernorm(x, weight, bias, eps=EPS)
    dy = random_like(gen, out)
    out.backward(dy)
    check.grads(x, weight, bias, dy, EPS, big.grad[:, :1128], weight.grad, bias.grad)
    assert torch.equal(big.grad[:, 1128:], torch.zeros_like(big.grad[:, 1128:]))


@pytest.mark.parametrize("shape", [(2, 3, 111), (1, 1, 1, 64), (1128,), (4, 1)], ids=str)
def test_nd_inputs(gen, device, check, shape):
    x, weight, bias = make_inputs(gen, shape, torch.float16, device, "w_b_xdtype", requires_grad=True)
    out, rstd, mean = triton_layernorm(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True)
    assert out.shape == x.shape and rstd.shape == x.shape[:-1] and mean.shape == x.shape[:-1]
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)
    dy = random_like(gen, out)
    out.backward(dy)
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad, bias.grad)


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 111)], ids=str)
def test_zero_rows(gen, device, shape):
    x, weight, bias = make_inputs(gen, shape, torch.bfloat16, device, "w_b_fp32", requires_grad=True)
    out, rstd, mean = triton_layernorm(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True)
    assert out.shape == x.shape and rstd.shape == x.shape[:-1] and mean.shape == x.shape[:-1]
    assert rstd.dtype == mean.dtype == torch.float32
    out.sum().backward()
    assert x.grad.shape == x.shape
    hidden = shape[-1]
    # No rows: the parameter gradients are exact zeros (a sum over nothing), not uninitialised memory.
    assert torch.equal(weight.grad, torch.zeros(hidden, device=device))
    assert torch.equal(bias.grad, torch.zeros(hidden, device=device))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_single_row(gen, device, check, dtype):
    x, weight, bias = make_inputs(gen, (1, 1128), dtype, device, "w_b_fp32", requires_grad=True)
    out, rstd, mean = triton_layernorm(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True)
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)
    dy = random_like(gen, out)
    out.backward(dy)
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad, bias.grad)


# ----------------------------------------------------------------------------------------------------------------
# Backward through the API
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("hidden", GRAD_HIDDEN)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_backward_matches_autograd(gen, device, check, dtype, hidden, affine):
    rows = 13
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, affine, requires_grad=True)
    out = layernorm(x, weight, bias, eps=EPS, backend="triton")
    dy = random_like(gen, out)
    out.backward(dy)
    for param, grad in ((weight, "weight"), (bias, "bias")):
        if param is not None:
            assert param.grad.dtype == param.dtype, f"{grad}.grad must keep the parameter's dtype"
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad if weight is not None else None,
                bias.grad if bias is not None else None)


@pytest.mark.parametrize("needs", ["x", "weight", "bias", "x_weight"])
def test_backward_partial_requires_grad(gen, device, check, needs):
    x, weight, bias = make_inputs(gen, (9, 111), torch.float32, device)
    x.requires_grad_("x" in needs)
    weight.requires_grad_("weight" in needs)
    bias.requires_grad_("bias" in needs)
    out = triton_layernorm(x, weight, bias, eps=EPS)
    dy = random_like(gen, out)
    out.backward(dy)
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad, bias.grad)
    for tensor, name in ((x, "x"), (weight, "weight"), (bias, "bias")):
        assert (tensor.grad is not None) == (name in needs.split("_")), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_id)
def test_backward_is_deterministic(gen, device, dtype):
    # 100 rows of 128: 4 row tiles of 32 spread over several persistent programs, whose partials are summed.
    x, weight, bias = make_inputs(gen, (100, 128), dtype, device, "w_b_fp32", requires_grad=True)
    dy = random_like(gen, x.detach())
    grads = []
    for _ in range(2):
        out = triton_layernorm(x, weight, bias, eps=EPS)
        dx, dw, db = torch.autograd.grad(out, (x, weight, bias), dy)
        grads.append((dx, dw, db))
    for first, second, name in zip(grads[0], grads[1], ("dx", "dw", "db")):
        assert torch.equal(first, second), f"{name} differs between two identical backward runs"


# Rows with a large common offset: a plain two-pass variance, sum((x - m)^2) with an fp32 mean m a few ulps off
# (|m - mean| ~ 1e-4 at 1000), adds (m - mean)^2 ~ 1e-8 to a variance of 1e-6, and an unshifted Welford pass is
# worse; both were 5e-3 .. 5e-2 off here before the corrected two-pass / shifted statistics.


def _large_offset_rows(gen, rows, hidden, device):
    return (1000 + 1e-3 * torch.randn(rows, hidden, generator=gen, dtype=torch.float64)).float().to(device)


def _assert_rstd_relative(rstd, x, eps, limit, what):
    ref = layernorm_rstd_ref(x.double().cpu(), eps)
    rel = ((rstd.double().cpu() - ref) / ref).abs()
    assert rel.max().item() < limit, (
        f"{what}: rstd relative error up to {rel.max().item():.2e} ({int((rel >= limit).sum())}/{rel.numel()} rows "
        f"over {limit:g}) for rows of 1000 + 1e-3 * noise"
    )


@pytest.mark.parametrize("hidden", [769, 1024])
def test_rstd_with_large_common_offset(gen, device, hidden):
    # 64 rows so that a statistics error that depends on how the fp32 mean happens to round cannot hide.
    x = _large_offset_rows(gen, 64, hidden, device)
    _, rstd = triton_layernorm(x, None, eps=1e-12, return_rstd=True)
    _assert_rstd_relative(rstd, x, 1e-12, 1e-3, f"triton N={hidden}")


def test_rstd_with_moderate_common_offset(gen, device):
    # A milder offset (1000x the spread) must be held to a tighter bound.
    x = (10 + 1e-2 * torch.randn(16, 769, generator=gen, dtype=torch.float64)).float().to(device)
    _, rstd = triton_layernorm(x, None, eps=1e-12, return_rstd=True)
    _assert_rstd_relative(rstd, x, 1e-12, 1e-4, "triton N=769")


# ----------------------------------------------------------------------------------------------------------------
# Past the resident limits, through the API (the heuristic picks the chunked kernels)
# ----------------------------------------------------------------------------------------------------------------


def test_chunked_forward_past_resident_limit(gen, device, check):
    hidden = _triton.MAX_RESIDENT_FWD + 40
    assert _triton.fwd_config(hidden, torch.bfloat16).chunked
    x, weight, bias = make_inputs(gen, (1, hidden), torch.bfloat16, device, "w_b_xdtype")
    out, rstd, mean = triton_layernorm(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True)
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)


def test_chunked_backward_past_resident_limit(gen, device, check):
    hidden = _triton.MAX_RESIDENT_BWD + 24
    assert _triton.bwd_config(hidden, torch.float16).chunked
    x, weight, bias = make_inputs(gen, (2, hidden), torch.float16, device, "w_b_fp32", requires_grad=True)
    out = triton_layernorm(x, weight, bias, eps=EPS)
    check.out(out, x, weight, bias, EPS)
    dy = random_like(gen, out)
    out.backward(dy)
    check.grads(x, weight, bias, dy, EPS, x.grad, weight.grad, bias.grad)


# ----------------------------------------------------------------------------------------------------------------
# Launchers called directly, every config branch forced, outputs poisoned with NaN beforehand
# ----------------------------------------------------------------------------------------------------------------


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


FWD_CONFIGS = {
    # 1128 = 4 full 256-wide chunks + a ragged 104-wide tail
    "chunked": lambda hidden: _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True),
    # one chunk wider than the row: no full chunk at all, only the masked tail
    "chunked_single_tail": lambda hidden: _triton.FwdConfig(block_m=1, block_n=2048, num_warps=4, chunked=True),
    # 2 rows a chunked block over 5 rows (weight/bias chunks shared by the block): the last block has a masked row
    "chunked_rows": lambda hidden: _triton.FwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True),
    # 2 rows per program over 5 rows: the last program has a masked row
    "resident_ragged_rows": lambda hidden: _triton.FwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False),
    "heuristic": lambda hidden: None,
}


def _opt_in_switches(cls):
    """Bool config fields defaulting to False other than ``chunked``: alternative code paths a caller opts into."""
    return [f.name for f in dataclasses.fields(cls) if f.default is False and f.name != "chunked"]


_FWD_FIELDS = {f.name for f in dataclasses.fields(_triton.FwdConfig)}
if "tail_n" in _FWD_FIELDS:  # 1128 held as a 1024 head + a 128 tail (104 columns used)
    FWD_CONFIGS["resident_head_tail"] = lambda hidden: _triton.FwdConfig(
        block_m=2, block_n=1024, num_warps=4, chunked=False, tail_n=128)
if "programs_per_sm" in _FWD_FIELDS:  # persistent chunked grid: 4 programs (CPU slots) over 5 rows
    FWD_CONFIGS["chunked_persistent"] = lambda hidden: _triton.FwdConfig(
        block_m=1, block_n=256, num_warps=4, chunked=True, programs_per_sm=1)
# Held chunks: 2 x 256 held + 616 streamed (two full chunks and a ragged 104), 2-row blocks over 5 rows; and 4 x 256
# held, leaving only the ragged 104-wide chunk to stream.
FWD_CONFIGS["chunked_held"] = lambda hidden: _triton.FwdConfig(
    block_m=2, block_n=256, num_warps=4, chunked=True, held_chunks=2)
FWD_CONFIGS["chunked_held_all_but_tail"] = lambda hidden: _triton.FwdConfig(
    block_m=1, block_n=256, num_warps=4, chunked=True, programs_per_sm=1, held_chunks=4)

# Each opt-in switch on top of the small chunked configs (paths that a switch reserves for CUDA fall back here).
for _switch in _opt_in_switches(_triton.FwdConfig):
    FWD_CONFIGS[f"chunked_{_switch}"] = (
        lambda hidden, _s=_switch: dataclasses.replace(FWD_CONFIGS["chunked"](hidden), **{_s: True}))


@pytest.mark.parametrize("stats", ["mean_rstd", "rstd", "none"])
@pytest.mark.parametrize("config", list(FWD_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_fwd_launcher_forced_config(gen, device, check, dtype, config, stats):
    rows, hidden = 5, 1128
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, "w_b_fp32")
    out = _poisoned((rows, hidden), dtype, device)
    mean = _poisoned((rows,), torch.float32, device) if stats == "mean_rstd" else None
    rstd = _poisoned((rows,), torch.float32, device) if stats != "none" else None
    result = _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd, config=FWD_CONFIGS[config](hidden))
    assert result is None, "launchers write into their outputs and return nothing"
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)


def _check_default_bf16_fwd(gen, device, check, rows, hidden, rms):
    """The default-config forward of bf16 rows (LayerNorm, or RMSNorm with ``rms``) against the fp64 reference,
    outputs poisoned first."""
    x, weight, bias = make_inputs(gen, (rows, hidden), torch.bfloat16, device, "w_b_fp32")
    out = _poisoned((rows, hidden), torch.bfloat16, device)
    rstd = _poisoned((rows,), torch.float32, device)
    if rms:
        _triton.layernorm_fwd(x, weight, None, EPS, out, None, rstd, rms=True)
        ref = x.double() * torch.rsqrt(x.double().square().mean(-1, keepdim=True) + EPS) * weight.double()
        torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2**-7)
        return
    mean = _poisoned((rows,), torch.float32, device)
    _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd)
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)


@pytest.mark.parametrize("rms", [False, True])
def test_fwd_default_row_blocks_for_16bit_rows_up_to_16384(gen, device, check, rms):
    """16-bit rows of (8192, 16384] above one wave of programs take the two-row chunked blocks by default
    (FWD_ROW_BLOCK_16BIT): an odd M leaves the last block a row short, N = 12000 leaves the second chunk ragged. (M
    above one wave: 7 under the interpreter, which plays 4 program slots; 301 on an H100.)"""
    rows, hidden = (7 if device == "cpu" else 301), 12000
    config = _triton.fwd_config(hidden, torch.bfloat16)
    assert (config.chunked, config.block_m, config.block_n) == (True, 2, 8192)
    assert _triton.fwd_config(hidden, torch.bfloat16, one_wave=True).block_m == 1  # one wave: a row a program
    _check_default_bf16_fwd(gen, device, check, rows, hidden, rms)


def _record_fwd_configs(monkeypatch) -> list:
    """The configs the forward launcher asks fwd_config for, from now on (plans cleared: every call looks)."""
    seen, real = [], _triton.fwd_config
    monkeypatch.setattr(_triton, "fwd_config", lambda *args, **kwargs: seen.append(real(*args, **kwargs)) or seen[-1])
    _triton._fwd_plans.clear()
    return seen


@pytest.mark.parametrize("dtype, hidden", [(torch.float16, 8192), (torch.bfloat16, 7500), (torch.float16, 6144)],
                         ids=str)
def test_fwd_default_two_row_blocks_from_6144_to_8192(gen, device, check, monkeypatch, dtype, hidden):
    """16-bit rows of [6144, 8192] with more rows than one wave take two-row blocks of 8192 columns and 8 warps
    (N = 7500, 6144: the one chunk ragged; an odd M leaves the last block a row short); rows of (4096, 6144) keep
    one row a program in 1024-element chunks, rows with a wider out take the same blocks, and rows with a fused
    residual stay resident. (M above one wave: 7 under the interpreter's 4 program slots, 301 on an H100.)"""
    assert _triton.fwd_config(5000, dtype).block_n == 1024
    assert _triton.fwd_config(5000, dtype, wide_out=True).block_n == 1024
    assert _triton.fwd_config(hidden, dtype, wide_out=True) == _triton.fwd_config(hidden, dtype)
    assert not _triton.fwd_config(hidden, dtype, residual=True).chunked
    rows = 7 if device == "cpu" else 301
    seen = _record_fwd_configs(monkeypatch)
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, "w_b_fp32")
    out = _poisoned((rows, hidden), dtype, device)
    mean, rstd = _poisoned((rows,), torch.float32, device), _poisoned((rows,), torch.float32, device)
    _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd)
    assert [(c.chunked, c.block_m, c.block_n, c.num_warps) for c in seen] == [(True, 2, 8192, 8)]
    check.out(out, x, weight, bias, EPS)
    check.stats(mean, rstd, x, EPS)


@pytest.mark.parametrize("hidden, expected", [(4096, (False, True)), (12000, (True, False))], ids=str)
def test_fwd_default_configs_with_a_wider_out(gen, device, check, monkeypatch, hidden, expected):
    """bf16 x, fp32 out: resident rows load weight and bias with the rows (affine_first); rows of (8192, 16384]
    stream two-row blocks of 4096-element chunks, the first held in registers, instead of the 8192-element blocks
    of an out in x's dtype (N = 12000: one held, one full and one ragged streamed chunk). (Not with a fused
    residual: measured without one.)"""
    assert not _triton.fwd_config(hidden, torch.bfloat16, residual=True, wide_out=True).affine_first
    rows = 7 if device == "cpu" else 301
    seen = _record_fwd_configs(monkeypatch)
    x, weight, bias = make_inputs(gen, (rows, hidden), torch.bfloat16, device, "w_b_fp32")
    out = _poisoned((rows, hidden), torch.float32, device)
    mean, rstd = _poisoned((rows,), torch.float32, device), _poisoned((rows,), torch.float32, device)
    _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd)
    assert [(c.chunked, c.affine_first) for c in seen] == [expected]
    if seen[0].chunked:
        assert (seen[0].block_m, seen[0].block_n, seen[0].held_chunks) == (2, 4096, 1)
    check.out(out, x, weight, bias, EPS, out_dtype=torch.float32)
    check.stats(mean, rstd, x, EPS)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("variant", ["one_row", "two_rows", "four_rows", "head_tail", "affine_first", "rms",
                                     "residual", "weight_only", "bias_only"])
def test_fwd_affine_tile_changes_no_bits(gen, device, dtype, variant):
    """FwdConfig.affine_tile loads weight and bias at the tile's offsets instead of as one row expanded to the
    tile: the same values meet the same arithmetic, so out, mean, rstd (and h) are bit-identical either way, for
    one-, two- and four-row tiles, a head + tail row, weight and bias before the statistics, RMSNorm, a fused
    residual and either parameter alone; fp32 and x-dtype parameters."""
    rows, hidden = 5, 1000
    config = _triton.FwdConfig(block_m=2, block_n=1024, num_warps=4, chunked=False)
    affine, kwargs = "w_b_fp32", {}
    if variant == "one_row":
        config = dataclasses.replace(config, block_m=1)
    elif variant == "four_rows":
        config, affine = dataclasses.replace(config, block_m=4), "w_b_xdtype"
    elif variant == "head_tail":
        config = dataclasses.replace(config, block_n=512, tail_n=512)
    elif variant == "affine_first":
        config, affine = dataclasses.replace(config, affine_first=True), "w_b_xdtype"
    elif variant == "rms":
        kwargs["rms"] = True
    elif variant == "residual":
        kwargs.update(residual=random_like(gen, torch.empty(rows, hidden, dtype=dtype, device=device)),
                      residual_out=None)
    elif variant == "weight_only":
        affine = "w_fp32"
    elif variant == "bias_only":
        affine = "b_xdtype"
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, affine)
    results = []
    for tile in (False, True):
        out = _poisoned((rows, hidden), dtype, device)
        mean = None if kwargs.get("rms") else _poisoned((rows,), torch.float32, device)
        rstd = _poisoned((rows,), torch.float32, device)
        if "residual" in kwargs:
            kwargs["residual_out"] = _poisoned((rows, hidden), dtype, device)
        _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd,
                              config=dataclasses.replace(config, affine_tile=tile), **kwargs)
        results.append([t for t in (out, mean, rstd, kwargs.get("residual_out")) if t is not None])
    for plain, tiled in zip(*results):
        assert not plain.isnan().any()
        assert torch.equal(plain, tiled)


def test_fwd_affine_tile_rule(gen, device, check, monkeypatch):
    """The launcher loads weight and bias at the tile's offsets where each given one is wider than x (fp32 with bf16
    x) in resident configs of whole rows with at most AFFINE_TILE_MAX_ROWS rows a program (N = 2048: two rows) and
    in one wave (a row a program); not with a parameter in x's dtype, nor at N = 256 (eight rows a program), nor for
    head + tail rows (N = 3000), nor in the chunked kernel."""
    assert _triton.AFFINE_TILE_MAX_ROWS == 2
    assert not _triton.fwd_config(16384, torch.bfloat16, wide_affine=True).affine_tile  # chunked
    assert not _triton.fwd_config(2048, torch.float32).affine_tile
    cases = [(2048, "w_b_fp32", 300, True), (2048, "w_fp32", 300, True), (2048, "w_b_xdtype", 300, False),
             (2048, "b_xdtype", 300, False), (256, "w_b_fp32", 300, False), (256, "w_b_fp32", 3, True),
             (3000, "w_b_fp32", 3, False), (2048, "none", 300, False)]
    for hidden, affine, rows, expected in cases:
        rows = rows if device == "cuda" or rows < 4 else 7  # the interpreter's 4 program slots: 7 rows, not one wave
        seen = _record_fwd_configs(monkeypatch)
        x, weight, bias = make_inputs(gen, (rows, hidden), torch.bfloat16, device, affine)
        out = _poisoned((rows, hidden), torch.bfloat16, device)
        mean, rstd = _poisoned((rows,), torch.float32, device), _poisoned((rows,), torch.float32, device)
        _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd)
        assert [c.affine_tile for c in seen] == [expected], (hidden, affine, rows, seen)
        check.out(out, x, weight, bias, EPS)
        check.stats(mean, rstd, x, EPS)


@pytest.mark.parametrize("rms", [False, True])
def test_fwd_default_held_chunks_for_16bit_rows_up_to_32768(gen, device, check, rms):
    """16-bit rows of (16384, 32768] above one wave stream in two-row blocks with each row's first 8192 columns
    held in registers (FWD_HELD_16BIT): N = 20000 leaves the streamed part one full and one ragged chunk, an odd M
    a block a row short."""
    rows, hidden = (7 if device == "cpu" else 301), 20000
    config = _triton.fwd_config(hidden, torch.bfloat16)
    assert (config.chunked, config.block_m, config.block_n, config.held_chunks) == (True, 2, 8192, 1)
    _check_default_bf16_fwd(gen, device, check, rows, hidden, rms)


def test_fwd_held_chunks_are_checked(device):
    """held_chunks: chunked configs only, at most MAX_HELD_CHUNKS, and the held columns must leave a column of the
    row to stream (a row that fits whole in held chunks is the resident kernel's)."""
    with pytest.raises(ValueError, match="held_chunks"):
        _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=False, held_chunks=1)
    with pytest.raises(ValueError, match="held_chunks"):
        _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True, held_chunks=_triton.MAX_HELD_CHUNKS + 1)
    x = torch.ones(2, 1024, device=device)
    all_held = _triton.FwdConfig(block_m=1, block_n=256, num_warps=4, chunked=True, held_chunks=4)
    with pytest.raises(ValueError, match="must be below the row's 1024 elements"):
        _triton.layernorm_fwd(x, None, None, EPS, torch.empty_like(x), None, None, config=all_held)


@pytest.mark.parametrize("config", ["chunked", "chunked_rows", "chunked_held", "resident_ragged_rows"])
def test_fwd_launcher_large_offset(gen, device, config):
    rows, hidden = 16, 1128
    x = _large_offset_rows(gen, rows, hidden, device)
    out = _poisoned((rows, hidden), torch.float32, device)
    mean, rstd = _poisoned((rows,), torch.float32, device), _poisoned((rows,), torch.float32, device)
    _triton.layernorm_fwd(x, None, None, 1e-12, out, mean, rstd, config=FWD_CONFIGS[config](hidden))
    assert torch.isfinite(out).all()
    _assert_rstd_relative(rstd, x, 1e-12, 1e-3, config)


BWD_CONFIGS = {
    # 1128 columns in 256-wide chunks (5 column programs, the last ragged), row groups of 2 over 5 rows
    "chunked": _triton.BwdConfig(block_m=2, block_n=256, num_warps=4, chunked=True),
    # 2 rows per tile over 21 rows: 11 tiles on 8 persistent programs (some loop twice), last tile ragged
    "resident_persistent": _triton.BwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False),
    "heuristic": None,
}
# Resident-only options on the persistent tile: x and dy loaded twice, and a pipelined row loop (the interpreter
# runs it unpipelined; the compile tests and the GPU run it pipelined).
if "reread" in {f.name for f in dataclasses.fields(_triton.BwdConfig)}:
    BWD_CONFIGS["resident_reread"] = dataclasses.replace(BWD_CONFIGS["resident_persistent"], reread=True)
    BWD_CONFIGS["resident_pipelined"] = dataclasses.replace(BWD_CONFIGS["resident_persistent"], stages=3)
    BWD_CONFIGS["resident_reread_pipelined"] = dataclasses.replace(BWD_CONFIGS["resident_persistent"], reread=True,
                                                                   stages=2)
for _switch in _opt_in_switches(_triton.BwdConfig):
    if _switch != "reread":
        try:
            BWD_CONFIGS[f"chunked_{_switch}"] = dataclasses.replace(BWD_CONFIGS["chunked"], **{_switch: True})
        except ValueError:  # a resident-only switch (fused_sum): on the persistent tile (shared partial rows)
            BWD_CONFIGS[f"resident_{_switch}"] = dataclasses.replace(BWD_CONFIGS["resident_persistent"],
                                                                     **{_switch: True})


@pytest.mark.parametrize("grads", ["dw_db", "dw", "db", "dx_only", "no_weight"])
@pytest.mark.parametrize("config", list(BWD_CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_bwd_launcher_forced_config(gen, device, check, dtype, config, grads):
    rows, hidden = (21 if config.startswith("resident") else 5), 1128
    affine = "b_xdtype" if grads == "no_weight" else "w_b_fp32"
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, affine)
    dy = random_like(gen, x)
    mean, rstd = torch.empty(rows, device=device), torch.empty(rows, device=device)
    _triton.layernorm_fwd(x, weight, bias, EPS, torch.empty_like(x), mean, rstd)
    dx = _poisoned((rows, hidden), dtype, device)
    dweight = _poisoned((hidden,), weight.dtype, device) if weight is not None and "dw" in grads else None
    dbias = _poisoned((hidden,), bias.dtype, device) if "db" in grads or grads == "no_weight" else None
    result = _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, config=BWD_CONFIGS[config])
    assert result is None, "launchers write into their outputs and return nothing"
    check.grads(x, weight, bias, dy, EPS, dx, dweight, dbias)


@pytest.mark.parametrize("config", [name for name in BWD_CONFIGS if name.startswith("chunked")])
def test_bwd_launcher_chunked_is_deterministic(gen, device, config):
    rows, hidden = 9, 1128
    x, weight, _ = make_inputs(gen, (rows, hidden), torch.float32, device, "w_fp32")
    dy = random_like(gen, x)
    mean, rstd = torch.empty(rows, device=device), torch.empty(rows, device=device)
    _triton.layernorm_fwd(x, weight, None, EPS, torch.empty_like(x), mean, rstd)
    runs = []
    for _ in range(2):
        dx, dw, db = torch.empty_like(x), _poisoned((hidden,), torch.float32, device), _poisoned(
            (hidden,), torch.float32, device)
        _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=BWD_CONFIGS[config])
        runs.append((dx, dw, db))
    for first, second, name in zip(runs[0], runs[1], ("dx", "dw", "db")):
        assert torch.isfinite(first).all() and torch.equal(first, second), name


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=_id)
def test_bwd_prefetch_and_reread_give_the_same_bits(gen, device, dtype, rms):
    """BwdConfig.prefetch (the next row tile loaded before this one's reductions) and reread (x and dy loaded again
    for dx) change when and how often the loads happen, not the arithmetic: dx, dw and db bit for bit as without
    them (21 rows in 2-row tiles: the persistent programs' last prefetch falls past the rows). Except reread's fp32
    dx on the GPU: its last bits differed from the plain kernel's on the H100 (eighteenth session,
    h100-2026-12-07-i/tests/b.log; cause not examined: the SASS of the two was not compared), so there it is held
    to a few fp32 ulps; 16-bit dx, rounded from the same fp32 values, stayed bit-identical."""
    rows, hidden = 21, 1128
    x, weight, bias = make_inputs(gen, (rows, hidden), dtype, device, "w_b_fp32")
    dy = random_like(gen, x)
    mean = None if rms else torch.empty(rows, device=device)
    rstd = torch.empty(rows, device=device)
    _triton.layernorm_fwd(x, weight, None if rms else bias, EPS, torch.empty_like(x), mean, rstd, rms=rms)
    runs = []
    for switch in (None, "prefetch", "reread"):
        config = BWD_CONFIGS["resident_persistent"]
        if switch is not None:
            config = dataclasses.replace(config, **{switch: True})
        dx, dw = _poisoned((rows, hidden), dtype, device), _poisoned((hidden,), torch.float32, device)
        db = None if rms else _poisoned((hidden,), torch.float32, device)
        _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=config, rms=rms)
        runs.append((dx, dw, db))
    for switch, other in zip(("prefetch", "reread"), runs[1:]):
        for plain, got, name in zip(runs[0], other, ("dx", "dw", "db")):
            if plain is None:
                continue
            assert torch.isfinite(plain).all() and torch.isfinite(got).all(), (switch, name)
            if switch == "reread" and name == "dx" and dtype == torch.float32 and device != "cpu":
                torch.testing.assert_close(got, plain, rtol=4 * 2.0 ** -23, atol=1e-6, msg=f"{switch} {name}")
            else:
                assert torch.equal(plain, got), (switch, name)


def test_bwd_prefetch_is_checked():
    for fields in (dict(chunked=True), dict(reread=True), dict(stages=2)):
        with pytest.raises(ValueError, match="prefetch"):
            _triton.BwdConfig(**{**dict(block_m=2, block_n=256, num_warps=4, chunked=False), **fields},
                              prefetch=True)


# ----------------------------------------------------------------------------------------------------------------
# The tolerance is not vacuous
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_tolerance_rejects_a_few_ulps(gen, check, dtype):
    # A correctly rounded result passes; the same result 4 ulps off on one element fails (fp32: 4x the allowance
    # for the reductions' arithmetic, arith_ulps(N) ulps), and so does a NaN (an unwritten poisoned element).
    x, weight, bias = make_inputs(gen, (3, 256), dtype, "cpu", "w_b_fp32")
    out = torch.nn.functional.layer_norm(x.double(), (256,), weight.double(), bias.double(), EPS).to(dtype)
    check.out(out, x, weight, bias, EPS)
    ulps = 4 if dtype != torch.float32 else 4 * (8 + 2 * 8)
    worst = int(out.abs().argmax())  # the largest element: its terms are no larger than itself (no cancellation)
    bad = out.clone()
    bad.view(-1)[worst] = (out.view(-1)[worst].double() * (1 + ulps * torch.finfo(dtype).eps)).to(dtype)
    with pytest.raises(AssertionError, match=rf"1/768 elements out of tolerance; worst at flat index {worst}:"):
        check.out(bad, x, weight, bias, EPS)
    bad = out.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(AssertionError, match=r"1 non-finite values"):
        check.out(bad, x, weight, bias, EPS)


# ----------------------------------------------------------------------------------------------------------------
# L2 eviction hints
# ----------------------------------------------------------------------------------------------------------------


def test_l2_hint_rules():
    """Hints where they measured faster (see _triton._fwd_l2_hints / _bwd_l2_hints): forward 16-bit rows and every
    chunked row; backward 16-bit resident rows; never at small M, in the forward with a residual, on fp32 resident
    rows or in the chunked backward."""
    bf16, fp32 = torch.bfloat16, torch.float32
    assert _triton.fwd_config(4096, bf16).l2_hints and not _triton.fwd_config(4096, bf16).chunked
    assert _triton.fwd_config(16384, bf16).l2_hints and _triton.fwd_config(16384, bf16).chunked
    assert _triton.fwd_config(65536, fp32).l2_hints and _triton.fwd_config(65536, fp32).chunked
    assert not _triton.fwd_config(4096, fp32).l2_hints
    assert not _triton.fwd_config(4096, bf16, one_wave=True).l2_hints
    assert not _triton.fwd_config(4096, bf16, residual=True).l2_hints
    assert not _triton.fwd_config(65536, bf16, residual=True).l2_hints
    assert _triton.bwd_config(4096, bf16).l2_hints
    assert not _triton.bwd_config(4096, bf16, few_rows=True).l2_hints
    assert not _triton.bwd_config(32768, bf16).l2_hints and _triton.bwd_config(32768, bf16).chunked
    assert not _triton.bwd_config(4096, fp32).l2_hints


@pytest.mark.parametrize("chunked", [False, True])
def test_l2_hints_change_no_bits(gen, device, chunked):
    """A cache policy changes where lines live, never a result: forward (out, mean, rstd) and backward (dx, dw, db)
    with and without hints are bit-identical, resident and chunked."""
    hidden = 1128
    x, weight, bias = make_inputs(gen, (6, hidden), torch.bfloat16, device, "w_b_fp32")
    dy = random_like(gen, x)
    fwd = (_triton.FwdConfig(1, 256, 4, True) if chunked else _triton.fwd_config(hidden, torch.bfloat16))
    bwd = (_triton.BwdConfig(2, 256, 4, True) if chunked else _triton.bwd_config(hidden, torch.bfloat16))
    results = []
    for hints in (False, True):
        out = torch.full_like(x, float("nan"))
        mean = torch.full((6,), float("nan"), device=device)
        rstd = torch.full((6,), float("nan"), device=device)
        _triton.layernorm_fwd(x, weight, bias, EPS, out, mean, rstd,
                              config=dataclasses.replace(fwd, l2_hints=hints))
        dx = torch.full_like(x, float("nan"))
        dw = torch.full_like(weight, float("nan"))
        db = torch.full_like(bias, float("nan"))
        _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=dataclasses.replace(bwd, l2_hints=hints))
        results.append((out, mean, rstd, dx, dw, db))
    for plain, hinted in zip(*results):
        assert not plain.isnan().any()
        assert torch.equal(plain, hinted)


# ----------------------------------------------------------------------------------------------------------------
# Backward: re-reading x and dy, and pipelining the row loop, change no bits
# ----------------------------------------------------------------------------------------------------------------


def test_bwd_config_rules_reread_and_stages():
    """16-bit rows of (8192, 16384] elements: one re-read row of 16 warps a program, two stages; narrower resident
    rows: three stages (one at N <= 256); fp32 rows of (4096, 8192]: held in registers, unpipelined; wider rows:
    chunked."""
    bf16, fp32 = torch.bfloat16, torch.float32
    wide = _triton.bwd_config(16384, bf16)
    assert (wide.chunked, wide.reread, wide.stages, wide.block_m, wide.block_n, wide.num_warps) == (
        False, True, 2, 1, 16384, 16)
    assert _triton.bwd_config(12000, torch.float16).reread
    assert all(_triton.bwd_config(n, bf16).stages == 3 and not _triton.bwd_config(n, bf16).reread
               for n in (512, 1024, 5000, 8192))
    assert _triton.bwd_config(256, bf16).stages == 1
    # N 1024-4096: one program per SM of 8 / 4 / 2 rows x 8 warps (H100: 4096² 70 -> 83-85% of the add).
    assert [(c.block_m, c.num_warps, c.programs_per_sm) for c in map(lambda n: _triton.bwd_config(n, bf16),
                                                                     (1024, 2048, 4096))] == [(8, 8, 1), (4, 8, 1),
                                                                                              (2, 8, 1)]
    assert _triton.bwd_config(8192, fp32) == _triton.BwdConfig(1, 8192, 16, False, 1)
    assert _triton.bwd_config(16384, fp32).chunked and _triton.bwd_config(16385, bf16).chunked


@pytest.mark.parametrize("feature", ["layernorm", "rmsnorm", "no_weight", "dx_only", "residual_grads"])
def test_bwd_reread_and_stages_change_no_bits(gen, device, feature):
    """The resident backward with x and dy loaded twice, or with its row loop pipelined, gives the bits of the plain
    resident backward: dx, dw and db. On the GPU the fp32 residual-input gradient (dx before its rounding, plus the
    residual's gradient) may differ in its last bits: the compiler contracts dx's last multiply and the residual add
    into an FMA or not, and may associate the row sums differently, which the rounded dx hides."""
    rows, hidden = 13, 1128
    x, weight, bias = make_inputs(gen, (rows, hidden), torch.bfloat16, device,
                                  "b_xdtype" if feature == "no_weight" else "w_b_fp32")
    dy, dres = random_like(gen, x), random_like(gen, x)
    rms = feature == "rmsnorm"
    mean = None if rms else torch.empty(rows, device=device)
    rstd = torch.empty(rows, device=device)
    _triton.layernorm_fwd(x, weight, bias, EPS, torch.empty_like(x), mean, rstd, rms=rms)
    plain = _triton.BwdConfig(block_m=2, block_n=2048, num_warps=4, chunked=False)
    results = []
    for config in (plain, dataclasses.replace(plain, reread=True), dataclasses.replace(plain, stages=3),
                   dataclasses.replace(plain, reread=True, stages=2, l2_hints=True)):
        dx = _poisoned((rows, hidden), x.dtype, device)
        dw = _poisoned((hidden,), torch.float32, device) if weight is not None and feature != "dx_only" else None
        db = _poisoned((hidden,), torch.float32, device) if feature != "dx_only" and not rms else None
        extra = {}
        if feature == "residual_grads":
            extra = dict(dresidual=dres, dresidual_in=_poisoned((rows, hidden), torch.float32, device))
        _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=config, rms=rms, **extra)
        results.append([t for t in (dx, dw, db, extra.get("dresidual_in")) if t is not None])
    for variant in results[1:]:
        for reference, got in zip(results[0][:3], variant[:3]):
            assert not reference.isnan().any()
            assert torch.equal(reference, got)
        if feature == "residual_grads":
            reference, got = results[0][3], variant[3]
            assert not reference.isnan().any()
            if torch.device(device).type == "cpu":
                assert torch.equal(reference, got)
            else:  # a few fp32 ulps of the row's scale apart (the 2026-11-25 H100 run broke a per-element bound)
                row_scale = (reference.abs() + dres.float().abs()).amax(dim=1, keepdim=True)
                assert ((got - reference).abs() <= 8 * torch.finfo(torch.float32).eps * row_scale).all()
