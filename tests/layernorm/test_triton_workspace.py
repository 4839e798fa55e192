"""The Triton backward's dw/db workspace (issue 8): at most one fp32 partial row of N per SM for every default
config, whatever M, and correct results when two programs share a partial row."""

import dataclasses
import itertools

import pytest
import torch

from vibe_kernels.layernorm import _backends
from vibe_kernels.layernorm.reference import layernorm_bwd_ref

_triton = pytest.importorskip("vibe_kernels.layernorm._triton")

SIZES = [1, 7, 64, 256, 257, 512, 1000, 1024, 2048, 4096, 5000, 8192, 8200, 16384, 32768, 65536, 131072, 262144]
ROWS = [1, 3, 128, 1000, 4096, 32768, 1 << 20]


@pytest.mark.parametrize("sms", [4, 114, 132])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_default_configs_keep_one_partial_row_per_sm(dtype, sms):
    for hidden, rows in itertools.product(SIZES, ROWS):
        cfg = _triton.bwd_config(hidden, dtype)
        plan = _triton.bwd_plan(rows, hidden, cfg, sms)
        where = f"N={hidden} M={rows} {dtype} on {sms} SMs ({cfg})"
        assert 1 <= plan.partial_rows <= sms, f"{where}: {plan.partial_rows} partial rows"
        if not cfg.chunked:
            programs = plan.grid[0]
            # Shared rows take exactly two atomic adds at most (what keeps them deterministic).
            assert programs <= (2 if plan.shared_partials else 1) * plan.partial_rows, where
            assert plan.shared_partials == (programs > sms), where


def test_a_tuned_config_with_more_programs_per_sm_still_shares_rows_by_two_at_most():
    plan = _triton.bwd_plan(32768, 1024, _triton.BwdConfig(2, 1024, 4, False, 4), 132)
    assert plan.grid == (528,) and plan.shared_partials and plan.partial_rows == 264


@pytest.mark.parametrize("hidden", [256, 1024, 5000])
def test_shared_partial_rows_give_the_reference_gradients(hidden, device):
    slots = _triton._program_slots(torch.device(device))
    rows = 3 * slots + 5  # more programs than SMs at 2 programs per SM: the shared-row path
    gen = torch.Generator().manual_seed(hidden)
    x = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.float16)
    dy = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.float16)
    weight = torch.randn(hidden, generator=gen).to(device)
    mean = x.float().mean(1)
    rstd = torch.rsqrt(x.float().var(1, unbiased=False) + 1e-5)
    cfg = _triton.BwdConfig(1, _triton._next_power_of_2(hidden), 4, False, 2)
    plan = _triton.bwd_plan(rows, hidden, cfg, slots, shrink_rows=False)
    assert plan.shared_partials  # 2 programs per SM: the shared-row path runs
    dx = torch.full_like(x, float("nan"))
    dweight = torch.full_like(weight, float("nan"))
    dbias = torch.full_like(weight, float("nan"))
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, config=cfg)
    want_dx, want_dw, want_db = layernorm_bwd_ref(dy, x, weight, mean, rstd)
    torch.testing.assert_close(dweight, want_dw.float(), rtol=1e-4, atol=1e-3 * rows ** 0.5)
    torch.testing.assert_close(dbias, want_db.float(), rtol=1e-4, atol=1e-3 * rows ** 0.5)
    torch.testing.assert_close(dx.float(), want_dx.float(), rtol=4e-3, atol=4e-3)


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16], ids=["fp32_grads", "bf16_grads"])
@pytest.mark.parametrize("rows, hidden", [(1, 256), (1, 5000), (1, 16384), (3, 1024), (200, 256), (300, 256),
                                          (3, 16384)])
def test_small_m_weight_gradients_skip_partial_rows(rows, hidden, grad_dtype, device, monkeypatch, check):
    """Small M, three ways to dw/db, each chosen where it moves the fewest bytes:
    - one partial row written by plain stores (M = 1): fp32 dw/db are written by the backward kernel itself, no
      second launch;
    - more partial rows but at most WEIGHT_GRADS_FROM_ROWS_MAX_ROWS rows (resident rows): no partial rows; the
      backward launch's last programs sum dw/db straight from the rows while the others write dx (one launch: no
      sum_partials, no weight_grads_from_rows), or a second launch does (weight_grads_from_rows) for re-read rows;
    - otherwise (and for gradients in another dtype than fp32 at M = 1) the partial rows' column sum.
    All give the reference gradients (fresh random inputs, NaN-poisoned outputs)."""
    calls = {"sum": 0, "rows": 0}
    real_sum, real_rows = _triton.sum_partials, _triton.weight_grads_from_rows

    def counted(name, real):
        return lambda *args: (calls.__setitem__(name, calls[name] + 1), real(*args))

    monkeypatch.setattr(_triton, "sum_partials", counted("sum", real_sum))
    monkeypatch.setattr(_triton, "weight_grads_from_rows", counted("rows", real_rows))
    gen = torch.Generator().manual_seed(rows * hidden)
    x = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.bfloat16)
    dy = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.bfloat16)
    weight = torch.randn(hidden, generator=gen).to(device=device, dtype=grad_dtype)
    mean = x.float().mean(1)
    rstd = torch.rsqrt(x.float().var(1, unbiased=False) + 1e-5)
    dx = torch.full_like(x, float("nan"))
    dweight = torch.full_like(weight, float("nan"))
    dbias = torch.full_like(weight, float("nan"))
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias)
    cfg = _triton.bwd_config(hidden, x.dtype)
    plan = _triton.bwd_plan(rows, hidden, cfg, _triton._program_slots(torch.device(device)))
    from_rows = (not cfg.chunked and plan.partial_rows > 1
                 and rows <= _backends.WEIGHT_GRADS_FROM_ROWS_MAX_ROWS)
    direct = plan.partial_rows == 1 and not plan.shared_partials and grad_dtype == torch.float32
    want = {"sum": 0, "rows": int(cfg.reread)} if from_rows else {"sum": 0 if direct else 1, "rows": 0}
    assert calls == want, f"{plan}, grads {grad_dtype}"
    refs = check.grad_references(x, weight, torch.zeros_like(weight), dy, 1e-5,
                                 {"dx": dx.dtype, "dw": grad_dtype, "db": grad_dtype})
    for name, got in (("dx", dx), ("dw", dweight), ("db", dbias)):
        check.within(got, *refs[name], name)


@pytest.mark.parametrize("rows, hidden, rms", [(100, 1024, False), (37, 5000, False), (256, 256, True)])
def test_small_m_fused_weight_gradients_give_the_separate_launches_bits(rows, hidden, rms, device):
    """The fused few-rows backward (dx programs and dw/db column programs in one launch) gives the bits of its two
    halves launched separately: the resident kernel writing dx only, then weight_grads_from_rows (dw/db bit for bit
    in the interpreter, within fp32 contraction noise on a GPU)."""
    gen = torch.Generator().manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.bfloat16)
    dy = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.bfloat16)
    weight = torch.randn(hidden, generator=gen).to(device=device)
    mean = None if rms else x.float().mean(1)
    rstd = torch.rsqrt((x.float().pow(2).mean(1) if rms else x.float().var(1, unbiased=False)) + 1e-5)
    cfg = _triton.bwd_config(hidden, x.dtype, few_rows=True)
    plan = _triton.bwd_plan(rows, hidden, cfg, _triton._program_slots(torch.device(device)))
    assert plan.partial_rows > 1 and not cfg.reread  # the fused path
    fused = [torch.full_like(x, float("nan")), torch.full_like(weight, float("nan")),
             None if rms else torch.full_like(weight, float("nan"))]
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, *fused, rms=rms)
    separate = [torch.full_like(t, float("nan")) if t is not None else None for t in fused]
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, separate[0], None, None, rms=rms,
                          config=dataclasses.replace(cfg, block_m=plan.block_m))
    _triton.weight_grads_from_rows(dy, x, mean, rstd, separate[1], separate[2])
    for name, got, want in zip(("dx", "dw", "db"), fused, separate):
        if want is None:
            continue
        assert not want.isnan().any()
        if name == "dx" or device == "cpu":
            assert torch.equal(got, want)
        else:
            # The same fp32 sums in the same order, compiled into two different kernels: on the GPU the compiler may
            # contract dy * xhat + acc into an FMA in one and not the other (the H100 run of 2026-12-06 differed
            # in the last bits of dw). Within a few fp32 ulps of each column's sum of magnitudes.
            xhat = (x.float() - (0 if rms else mean[:, None])) * rstd[:, None]
            terms = dy.float() * xhat if name == "dw" else dy.float()
            bound = 8 * torch.finfo(torch.float32).eps * terms.abs().sum(0)
            assert ((got - want).abs() <= bound).all()
