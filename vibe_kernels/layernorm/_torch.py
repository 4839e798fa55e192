"""PyTorch backend: the reference math writing into preallocated outputs. Runs on any device (the CPU path)."""

from __future__ import annotations

import torch

from ._backends import rows_launcher
from .reference import (
    layernorm_mean_ref,
    layernorm_ref,
    layernorm_rstd_ref,
    norm_bwd_ref_fp32,
    residual_add_ref,
    rmsnorm_ref,
    rmsnorm_rstd_ref,
)


def layernorm_fwd(x, weight, bias, eps, out, mean, rstd, *, residual=None, residual_out=None,
                  residual_in_fp32=False, rms=False) -> None:
    """Writes out (M, N) in its own dtype and, when given, mean/rstd (M,) fp32. See api.layernorm for the contract.

    rms: RMSNorm (mean must be None). residual: normalize h = x + residual (fp32 when residual_in_fp32, else rounded
    to x's dtype), written to residual_out when given."""
    if rms and mean is not None:
        raise ValueError("RMSNorm has no mean: pass mean=None")
    if residual is not None:
        x = residual_add_ref(x, residual, residual_in_fp32)
        if residual_out is not None:
            residual_out.copy_(x)
    if rms:
        out.copy_(rmsnorm_ref(x, weight, bias, eps, out_dtype=out.dtype))
        if rstd is not None:
            rstd.copy_(rmsnorm_rstd_ref(x, eps))
        return
    out.copy_(layernorm_ref(x, weight, bias, eps, out_dtype=out.dtype))
    if mean is not None:
        mean.copy_(layernorm_mean_ref(x))
    if rstd is not None:
        rstd.copy_(layernorm_rstd_ref(x, eps))


def fwd_launcher(x, weight, bias, out, mean, rstd, rms=False):
    """Repeats ``layernorm_fwd`` on (M, N) views (see _backends)."""
    return rows_launcher(layernorm_fwd, *x.shape, rms=rms)


def layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, *, rms=False, dresidual=None,
                  dresidual_in=None) -> None:
    """Writes dx (M, N) and, when given, dweight/dbias (N,) in their own dtypes. rms: RMSNorm (``mean`` unused).
    dresidual: the gradient of the residual output, added to dx; dresidual_in: a second copy of dx (own dtype)."""
    dx_val, dw_val, db_val = norm_bwd_ref_fp32(dy, x, weight, None if rms else mean, rstd)
    if dresidual is not None:
        dx_val = dx_val + dresidual.to(dx_val.dtype)
    dx.copy_(dx_val)
    if dresidual_in is not None:
        dresidual_in.copy_(dx_val)
    if dweight is not None:
        dweight.copy_(dw_val)
    if dbias is not None:
        dbias.copy_(db_val)
