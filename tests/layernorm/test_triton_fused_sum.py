"""The Triton resident backward's opt-in fused column sum (``BwdConfig.fused_sum``): sum programs after the row
programs in the same launch wait on a per-stream arrival counter, then sum the dw/db partial rows, instead of a
second launch (``sum_partials``). On the ``device`` fixture: the interpreter on CPU, where programs run one after
another in grid order (the sum programs' polling ends at once) and the sum programs add the same partial rows in
the same order as ``sum_partials`` (one step over all of them: ``_fused_sum_tile``), so dw/db are bit-identical
there; on a GPU their tiles and warps differ, so dw/db agree within fp32 summation-order noise (test_gpu.py times
and checks realistic shapes). The PTX of the counter's atomics is checked by test_triton_compile.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vibe_kernels.layernorm import _backends

_triton = pytest.importorskip("vibe_kernels.layernorm._triton")


@pytest.fixture
def sum_launches(monkeypatch):
    """Counts the sum_partials launches (the unfused column sum), which still run."""
    calls = []
    real = _triton.sum_partials
    monkeypatch.setattr(_triton, "sum_partials", lambda *args: (calls.append(args), real(*args)))
    return calls


def _inputs(gen, rows, hidden, dtype, device, rms=False):
    x = (torch.randn(rows, hidden, generator=gen) * 1.5 + 0.25).to(device=device, dtype=dtype)
    dy = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=dtype)
    mean = None if rms else x.float().mean(1)
    rstd = torch.rsqrt((x.float().pow(2).mean(1) if rms else x.float().var(1, unbiased=False)) + 1e-5)
    return x, dy, mean, rstd


def _run(x, dy, weight, mean, rstd, grads, config, rms=False):
    """dx, dw, db (None where not wanted) of one backward with ``config``, outputs NaN-poisoned."""
    dx = torch.full_like(x, float("nan"))
    hidden = x.shape[1]
    grads = [torch.full((hidden,), float("nan"), dtype=dtype, device=x.device) if dtype is not None else None
             for dtype in grads]
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, *grads, config=config, rms=rms)
    return [dx] + grads


def _counters_at_zero():
    return all(counter.tolist() == [0, 0] for counter in _backends._sum_counters.values())


# (rows, hidden, dtype, config (block_m, warps, programs per SM, reread), weight dtype, dw dtype, db dtype, rms)
CASES = {
    "fp32_w_b": (40, 64, torch.float32, (1, 4, 1, False), torch.float32, torch.float32, torch.float32, False),
    "bf16_shared_partials": (300, 256, torch.bfloat16, (4, 4, 2, False), torch.float32, torch.float32, torch.float32,
                             False),
    "fp16_ragged_n": (100, 1000, torch.float16, (2, 4, 1, False), torch.float32, torch.float32, torch.float32, False),
    "bf16_grads_in_bf16": (60, 777, torch.bfloat16, (2, 4, 2, False), torch.bfloat16, torch.bfloat16, torch.bfloat16,
                           False),
    "fp16_dw_only": (70, 300, torch.float16, (2, 4, 1, False), torch.float32, torch.float32, None, False),
    "fp16_db_only_no_weight": (45, 130, torch.float16, (1, 4, 1, False), None, None, torch.float16, False),
    "fp32_rmsnorm": (50, 500, torch.float32, (2, 4, 1, False), torch.float32, torch.float32, None, True),
    "bf16_reread": (64, 2048, torch.bfloat16, (1, 4, 1, True), torch.float32, torch.float32, torch.float32, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_sum_gives_the_two_launch_results(case, gen, device, sum_launches):
    rows, hidden, dtype, (block_m, warps, per_sm, reread), w_dtype, dw_dtype, db_dtype, rms = CASES[case]
    x, dy, mean, rstd = _inputs(gen, rows, hidden, dtype, device, rms)
    weight = torch.randn(hidden, generator=gen).to(device=device, dtype=w_dtype) if w_dtype is not None else None
    config = _triton.BwdConfig(block_m, _triton._next_power_of_2(hidden), warps, False, per_sm, reread=reread)
    plan = _triton.bwd_plan(rows, hidden, config, _triton._program_slots(x.device), shrink_rows=False)
    assert plan.partial_rows > 1
    if device == "cpu":  # more programs than the 4 interpreter "SMs": shared rows (not so with a GPU's SMs)
        assert plan.shared_partials == (per_sm == 2)
    two_launches = _run(x, dy, weight, mean, rstd, (dw_dtype, db_dtype), config, rms)
    assert len(sum_launches) == 1
    fused = _run(x, dy, weight, mean, rstd, (dw_dtype, db_dtype), dataclasses.replace(config, fused_sum=True), rms)
    assert len(sum_launches) == 1, "the fused backward launched sum_partials"
    assert _counters_at_zero()
    for name, got, want in zip(("dx", "dw", "db"), fused, two_launches):
        if want is None:
            assert got is None
            continue
        assert not got.isnan().any(), name
        if name == "dx" or device == "cpu":
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-5 * rows ** 0.5)
    again = _run(x, dy, weight, mean, rstd, (dw_dtype, db_dtype), dataclasses.replace(config, fused_sum=True), rms)
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(fused, again))
    assert _counters_at_zero()


def test_fused_sum_needs_the_resident_backward():
    with pytest.raises(ValueError, match="fused_sum"):
        _triton.BwdConfig(2, 1024, 4, True, 4, fused_sum=True)


@pytest.mark.parametrize("why", ["one partial row", "strided gradients", "no gradients wanted"])
def test_fused_sum_falls_back_where_it_cannot_run(why, gen, device, monkeypatch):
    """The launcher takes the two-launch path (or none) where the sum programs cannot run: one partial row (the
    kernel writes fp32 dw/db directly, or one sum launch converts them), gradients not of unit stride (the sum
    programs write unit-stride rows) and no dw/db wanted. Under CUDA graph capture too (no counter: test_gpu.py)."""
    launches = []
    monkeypatch.setattr(_triton, "sum_partials", lambda *args: launches.append(args))
    hidden = 128
    rows = 3 if why == "one partial row" else 40
    x, dy, mean, rstd = _inputs(gen, rows, hidden, torch.float16, device)
    weight = torch.randn(hidden, generator=gen).to(device)
    config = _triton.BwdConfig(1 if why != "one partial row" else 4, hidden, 4, False, 1, fused_sum=True)
    grads = [torch.zeros(hidden, device=device, dtype=torch.float16) for _ in range(2)]
    if why == "strided gradients":
        grads = [torch.zeros(2 * hidden, device=device, dtype=torch.float16)[::2] for _ in range(2)]
    if why == "no gradients wanted":
        grads = [None, None]
    seen = []
    real_launch = _triton._launch
    monkeypatch.setattr(_triton, "_launch", lambda kernel, grid, *args, **kw: (seen.append(kw), real_launch(
        kernel, grid, *args, **kw))[1])
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, torch.empty_like(x), *grads, config=config)
    assert all(kw["SUM_BLOCK_N"] == 0 for kw in seen if "SUM_BLOCK_N" in kw)
    assert len(launches) == (0 if why == "no gradients wanted" else 1)
