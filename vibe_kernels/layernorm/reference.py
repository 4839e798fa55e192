"""Reference LayerNorm / RMSNorm math in fp32 (or fp64 when given fp64), used by the torch backend and by the tests.

All LayerNorm statistics are computed in at least fp32 with a corrected two-pass variance (mean first, then the
mean of the squared deviations, minus the square of the deviations' mean), which stays accurate for rows with a
large common offset (1000 + small noise). RMSNorm: rstd = 1 / sqrt(mean(x^2) + eps), out = x * rstd * w (+ b).
"""

from __future__ import annotations

import torch


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mean_and_centered(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrected two-pass statistics over the last dim: (mean, centered, biased variance), keepdim.

    The first-pass mean of rows with a large common offset (1000 + noise, fp32) is a few ulps off; the mean of the
    centered row measures that error, and subtracting it fixes both the mean and the variance.
    """
    rough_mean = xf.mean(dim=-1, keepdim=True)
    centered = xf - rough_mean
    correction = centered.mean(dim=-1, keepdim=True)
    var = (centered * centered).mean(dim=-1, keepdim=True) - correction * correction
    return rough_mean + correction, centered - correction, var


def layernorm_mean_ref(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim, in fp32 (fp64 for fp64 x). Shape x.shape[:-1]."""
    return _mean_and_centered(x.to(_stat_dtype(x.dtype)))[0].squeeze(-1)


def layernorm_rstd_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / sqrt(biased variance + eps) over the last dim, in fp32 (fp64 for fp64 x). Shape x.shape[:-1]."""
    return torch.rsqrt(_mean_and_centered(x.to(_stat_dtype(x.dtype)))[2] + eps).squeeze(-1)


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
    _, centered, var = _mean_and_centered(x.to(stat_dtype))
    y = centered * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(stat_dtype)
    if bias is not None:
        y = y + bias.to(stat_dtype)
    return y.to(out_dtype or x.dtype)


def norm_bwd_ref_fp32(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form LayerNorm (``mean`` given) or RMSNorm (``mean`` None) backward on 2-D (M, N) inputs, all in fp32
    (fp64 for fp64 x): returns (dx, dw (N,), db (N,)).

    xhat = (x - mean) * rstd (RMSNorm: x * rstd); g = dy * w; dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    (RMSNorm: no mean(g) term); dw = sum_rows(dy * xhat); db = sum_rows(dy).
    """
    stat_dtype = _stat_dtype(x.dtype)
    xf = x.to(stat_dtype)
    dyf = dy.to(stat_dtype)
    rstd_col = rstd.to(stat_dtype).unsqueeze(-1)
    xhat = (xf - mean.to(stat_dtype).unsqueeze(-1)) * rstd_col if mean is not None else xf * rstd_col
    g = dyf * weight.to(stat_dtype) if weight is not None else dyf
    c_gx = (g * xhat).mean(dim=-1, keepdim=True)
    if mean is not None:
        dx = (g - g.mean(dim=-1, keepdim=True) - xhat * c_gx) * rstd_col
    else:
        dx = (g - xhat * c_gx) * rstd_col
    return dx, (dyf * xhat).sum(dim=0), dyf.sum(dim=0)


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
    dx, dw, db = norm_bwd_ref_fp32(dy, x, weight, mean, rstd)
    return dx.to(x.dtype), dw, db


def rmsnorm_rstd_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) over the last dim, in fp32 (fp64 for fp64 x). Shape x.shape[:-1]."""
    xf = x.to(_stat_dtype(x.dtype))
    return torch.rsqrt((xf * xf).mean(dim=-1) + eps)


def rmsnorm_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x * rstd * weight + bias over the last dim with rstd = 1 / sqrt(mean(x^2) + eps), computed in fp32 (fp64
    for fp64 x), returned in ``out_dtype`` (default: x's dtype). Differentiable through torch autograd."""
    stat_dtype = _stat_dtype(x.dtype)
    xf = x.to(stat_dtype)
    y = xf * torch.rsqrt((xf * xf).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(stat_dtype)
    if bias is not None:
        y = y + bias.to(stat_dtype)
    return y.to(out_dtype or x.dtype)


def residual_add_ref(x: torch.Tensor, residual: torch.Tensor, residual_in_fp32: bool = False) -> torch.Tensor:
    """The fused residual's h = x + residual: summed in fp32 (fp64 for fp64 inputs), returned in fp32 when
    ``residual_in_fp32`` else rounded to x's dtype (what an unfused ``x + residual`` in x's dtype gives)."""
    stat_dtype = torch.float64 if torch.float64 in (x.dtype, residual.dtype) else torch.float32
    h = x.to(stat_dtype) + residual.to(stat_dtype)
    return h if residual_in_fp32 else h.to(x.dtype)
