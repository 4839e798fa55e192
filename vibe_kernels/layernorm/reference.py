"""Reference LayerNorm math in fp32 (or fp64 when given fp64), used by the torch backend and by the tests.

All statistics are computed in at least fp32, with a two-pass variance (mean first, then the mean of the squared
deviations), which stays accurate for rows with a large common offset (1000 + small noise).
"""

from __future__ import annotations

import torch


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def layernorm_mean_ref(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim, in fp32 (fp64 for fp64 x). Shape x.shape[:-1]."""
    return x.to(_stat_dtype(x.dtype)).mean(dim=-1)


def layernorm_rstd_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / sqrt(biased variance + eps) over the last dim, in fp32 (fp64 for fp64 x). Shape x.shape[:-1]."""
    xf = x.to(_stat_dtype(x.dtype))
    centered = xf - xf.mean(dim=-1, keepdim=True)
    return torch.rsqrt((centered * centered).mean(dim=-1) + eps)


def layernorm_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(x - mean) * rstd * weight + bias over the last dim, computed in fp32 (fp64 for fp64 x).

    Returned in ``out_dtype`` (default: x's dtype). Differentiable through torch autograd, so it doubles as the
    gradient reference.
    """
    stat_dtype = _stat_dtype(x.dtype)
    xf = x.to(stat_dtype)
    mean = xf.mean(dim=-1, keepdim=True)
    centered = xf - mean
    rstd = torch.rsqrt((centered * centered).mean(dim=-1, keepdim=True) + eps)
    y = centered * rstd
    if weight is not None:
        y = y * weight.to(stat_dtype)
    if bias is not None:
        y = y + bias.to(stat_dtype)
    return y.to(out_dtype or x.dtype)


def layernorm_bwd_ref(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form backward on 2-D (M, N) inputs in fp32: returns (dx in x.dtype, dw fp32 (N,), db fp32 (N,)).

    xhat = (x - mean) * rstd; g = dy * w; dx = rstd * (g - mean(g) - xhat * mean(g * xhat));
    dw = sum_rows(dy * xhat); db = sum_rows(dy).
    """
    stat_dtype = _stat_dtype(x.dtype)
    xf = x.to(stat_dtype)
    dyf = dy.to(stat_dtype)
    xhat = (xf - mean.to(stat_dtype).unsqueeze(-1)) * rstd.to(stat_dtype).unsqueeze(-1)
    g = dyf * weight.to(stat_dtype) if weight is not None else dyf
    c_g = g.mean(dim=-1, keepdim=True)
    c_gx = (g * xhat).mean(dim=-1, keepdim=True)
    dx = (g - c_g - xhat * c_gx) * rstd.to(stat_dtype).unsqueeze(-1)
    return dx.to(x.dtype), (dyf * xhat).sum(dim=0), dyf.sum(dim=0)
