"""PyTorch backend: the reference math writing into preallocated outputs. Runs on any device (the CPU path)."""

from __future__ import annotations

import torch

from .reference import layernorm_bwd_ref, layernorm_mean_ref, layernorm_ref, layernorm_rstd_ref


def layernorm_fwd(x, weight, bias, eps, out, mean, rstd) -> None:
    """Writes out (M, N) and, when given, mean/rstd (M,) fp32. See api.layernorm for the contract."""
    out.copy_(layernorm_ref(x, weight, bias, eps))
    if mean is not None:
        mean.copy_(layernorm_mean_ref(x))
    if rstd is not None:
        rstd.copy_(layernorm_rstd_ref(x, eps))


def layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias) -> None:
    """Writes dx (M, N) and, when given, dweight/dbias (N,) in their own dtypes."""
    dx_val, dw_val, db_val = layernorm_bwd_ref(dy, x, weight, mean, rstd)
    dx.copy_(dx_val)
    if dweight is not None:
        dweight.copy_(dw_val)
    if dbias is not None:
        dbias.copy_(db_val)
