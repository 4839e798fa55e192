"""torch.library custom ops: how ``layernorm`` looks to torch.compile.

Dynamo cannot trace into Triton/CuTeDSL launchers (and should not: they allocate workspace, pick configs, cache
compiled kernels), so under ``torch.compile`` ``layernorm`` calls two opaque ops instead of ``LayerNormFunction``:

- ``vibe_kernels::layernorm_fwd(x, weight?, bias?, eps, backend, allow_fallback, need_stats) -> (out, stats)``:
  out (M, N) in x's dtype; stats (2, M) fp32 = [mean; rstd] when ``need_stats``, else an empty (0, M) tensor.
- ``vibe_kernels::layernorm_bwd(dy, x, weight?, stats, backend, allow_fallback, need_dweight, need_dbias,
  bias_dtype?) -> (dx, dweight, dbias)``: dweight/dbias (N,) in weight's/bias's dtype, or empty (0,) tensors when
  not wanted (an op returns tensors, not None).

Each has a fake implementation (shapes and dtypes only, for tracing with symbolic sizes) and the forward has an
autograd formula that calls the backward op, so AOTAutograd puts both into the compiled graphs. The real
implementations run the same backends with the same rule as the eager path (``api._run_forward``): a CuTeDSL kernel
that lacks a shape (NotImplementedError) defers to Triton under backend="auto". The backward applies that rule on
its own (it cannot learn which backend the forward op ran); mean/rstd are backend-independent, so either pairing is
exact.

``layernorm`` also validates and resolves the backend through the two ``*_traceable`` helpers below when
compiling, so that ``fullgraph=True`` holds.

The eager path never goes through these ops: a custom op costs dispatcher and schema-checking host time on every
call, and ``LayerNormFunction`` already does the job there.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._backends import resolve_backend


@torch.library.custom_op("vibe_kernels::layernorm_fwd", mutates_args=())
def layernorm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, backend: str,
                  allow_fallback: bool, need_stats: bool) -> tuple[Tensor, Tensor]:
    """x (M, N) with unit column stride; ``backend`` is a concrete one ("cutedsl", "triton", "torch")."""
    from .api import _run_forward  # api imports this module lazily; import it back lazily too

    rows, hidden = x.shape
    out = torch.empty((rows, hidden), dtype=x.dtype, device=x.device)
    stats = torch.empty((2 if need_stats else 0, rows), dtype=torch.float32, device=x.device)
    if rows > 0:
        mean, rstd = (stats[0], stats[1]) if need_stats else (None, None)
        _run_forward(backend, allow_fallback, x, weight, bias, eps, out, mean, rstd)
    return out, stats


@layernorm_fwd.register_fake
def _layernorm_fwd_fake(x, weight, bias, eps, backend, allow_fallback, need_stats):
    # Runs while compiling, with eps a plain float (a custom op specializes its float arguments): the one place
    # where every eps rule of check_inputs applies under dynamic=True (see check_inputs_traceable).
    from .api import check_inputs

    check_inputs(x, weight, bias, eps)
    rows, hidden = x.shape
    return x.new_empty((rows, hidden)), x.new_empty((2 if need_stats else 0, rows), dtype=torch.float32)


def _param_dtype(weight: Optional[Tensor], x: Tensor) -> torch.dtype:
    return weight.dtype if weight is not None else x.dtype


@torch.library.custom_op("vibe_kernels::layernorm_bwd", mutates_args=())
def layernorm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], stats: Tensor, backend: str, allow_fallback: bool,
                  need_dweight: bool, need_dbias: bool,
                  bias_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor]:
    """dx always (the kernels write it anyway); dweight/dbias only when asked for, else empty (0,) tensors."""
    from .api import _run_backward

    rows, hidden = x.shape
    if dy.stride(-1) != 1:  # the kernels index dy's columns densely (an expanded sum() gradient has stride 0)
        dy = dy.contiguous()
    dx = torch.empty((rows, hidden), dtype=x.dtype, device=x.device)
    dweight = torch.empty((hidden if need_dweight else 0,), dtype=_param_dtype(weight, x), device=x.device)
    dbias = torch.empty((hidden if need_dbias else 0,), dtype=bias_dtype or x.dtype, device=x.device)
    # Unwanted gradients are empty (0,) tensors (an op returns tensors); the kernels are told None for them.
    _run_backward(backend, allow_fallback, dy, x, weight, stats[0], stats[1], dx,
                  dweight if need_dweight else None, dbias if need_dbias else None)
    return dx, dweight, dbias


@layernorm_bwd.register_fake
def _layernorm_bwd_fake(dy, x, weight, stats, backend, allow_fallback, need_dweight, need_dbias, bias_dtype):
    rows, hidden = x.shape
    return (
        x.new_empty((rows, hidden)),
        x.new_empty((hidden if need_dweight else 0,), dtype=_param_dtype(weight, x)),
        x.new_empty((hidden if need_dbias else 0,), dtype=bias_dtype or x.dtype),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _eps, backend, allow_fallback, _need_stats = inputs
    _out, stats = output
    ctx.set_materialize_grads(False)  # stats get no gradient: no zero tensors built for them (see LayerNormFunction)
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(x, weight, stats)
    ctx.backend, ctx.allow_fallback = backend, allow_fallback
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, dout, _dstats):
    if dout is None:  # out itself did not reach the loss
        return None, None, None, None, None, None, None
    x, weight, stats = ctx.saved_tensors
    if stats.shape[0] != 2:
        raise RuntimeError(
            "vibe_kernels::layernorm_fwd ran with need_stats=False, so its backward has no mean/rstd; "
            "call it with need_stats=True when a gradient is needed"
        )
    need_dw = ctx.has_weight and ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dweight, dbias = layernorm_bwd(
        dout, x, weight, stats, ctx.backend, ctx.allow_fallback, need_dw, need_db, ctx.bias_dtype
    )
    return (dx if ctx.needs_input_grad[0] else None, dweight if need_dw else None, dbias if need_db else None,
            None, None, None, None)


layernorm_fwd.register_autograd(_backward, setup_context=_setup_context)


def compiled_layernorm(x2d, weight, bias, eps: float, backend: str, allow_fallback: bool, need_mean: bool,
                       need_rstd: bool):
    """``LayerNormFunction.apply`` through the custom ops: (out (M, N), mean (M,) or None, rstd (M,) or None).

    mean/rstd are computed when asked for or when a gradient may be needed (the backward reads them)."""
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x2d, weight, bias))
    out, stats = layernorm_fwd(x2d, weight, bias, eps, backend, allow_fallback, need_mean or need_rstd or need_grad)
    return out, (stats[0] if need_mean else None), (stats[1] if need_rstd else None)


def check_inputs_traceable(x, weight, bias, eps) -> None:
    """``api.check_inputs`` in a form dynamo traces. Under ``dynamic=True`` dynamo turns float module attributes
    (``LayerNorm.eps``) into symbolic floats, which ``math.isfinite`` cannot take (a graph break). So eps is
    screened here with comparisons (``0 < eps < inf``, False for NaN, becomes a guard): a finite positive eps is
    handed on as a stand-in 1.0, anything else as itself, so that check_inputs raises its usual error. Every other
    eps rule of check_inputs runs in layernorm_fwd's fake implementation, where eps is a plain float again."""
    from .api import check_inputs

    eps_ok = not isinstance(eps, bool) and isinstance(eps, (int, float)) and 0 < eps < math.inf
    check_inputs(x, weight, bias, 1.0 if eps_ok else eps)


@torch.compiler.assume_constant_result
def _resolve_constant(name: str, device_type: str, device_index: Optional[int]) -> str:
    return resolve_backend(name, torch.device(device_type, device_index))


def resolve_backend_traceable(name: str, device: torch.device) -> str:
    """``resolve_backend`` run once at trace time, its answer a constant of the graph. Traced, it would have dynamo
    step into importlib.util.find_spec and the CUDA capability query with their lru caches ignored (dynamo warns
    about each); the answer depends only on the name, the device and the installed packages, none of which a
    compiled graph can change. An unavailable backend raises while compiling (dynamo wraps the error in its
    InternalTorchDynamoError, a RuntimeError, whose message carries ours)."""
    return _resolve_constant(name, device.type, device.index)


# ----------------------------------------------------------------------------------------------------------------
# RMSNorm, the fused residual and out_dtype (``_norm`` in api.py): one op pair for every feature combination
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("vibe_kernels::norm_fwd", mutates_args=())
def norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor], eps: float,
             backend: str, allow_fallback: bool, need_stats: bool, rms: bool, residual_in_fp32: bool,
             store_residual: bool, out_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor]:
    """``api._forward_features`` as an op: (out, h, stats). out (M, N) in out_dtype (None: x's); h (M, N) when a
    residual is given and ``store_residual``, else an empty (0, N) tensor; stats fp32 [mean; rstd] (2, M), [rstd]
    (1, M) for RMSNorm, or (0, M) without ``need_stats``."""
    from .api import _forward_features

    out, h, stats, _ = _forward_features(x, weight, bias, eps, backend, allow_fallback, need_stats, rms, residual,
                                         residual_in_fp32, store_residual, out_dtype)
    rows, hidden = x.shape
    if h is None:
        h = x.new_empty((0, hidden))
    if stats is None:
        stats = x.new_empty((0, rows), dtype=torch.float32)
    return out, h, stats


def _h_dtype(x: Tensor, residual_in_fp32: bool) -> torch.dtype:
    return torch.float32 if residual_in_fp32 else x.dtype


@norm_fwd.register_fake
def _norm_fwd_fake(x, weight, bias, residual, eps, backend, allow_fallback, need_stats, rms, residual_in_fp32,
                   store_residual, out_dtype):
    from .api import check_features, check_inputs

    check_inputs(x, weight, bias, eps)  # eps is a plain float here (see _layernorm_fwd_fake)
    check_features(x, residual, residual_in_fp32, False, out_dtype)
    rows, hidden = x.shape
    h_rows = rows if residual is not None and store_residual else 0
    return (x.new_empty((rows, hidden), dtype=out_dtype or x.dtype),
            x.new_empty((h_rows, hidden), dtype=_h_dtype(x, residual_in_fp32)),
            x.new_empty(((1 if rms else 2) if need_stats else 0, rows), dtype=torch.float32))


@torch.library.custom_op("vibe_kernels::norm_bwd", mutates_args=())
def norm_bwd(dout: Tensor, dh: Optional[Tensor], xin: Tensor, weight: Optional[Tensor], stats: Tensor, backend: str,
             allow_fallback: bool, rms: bool, need_dx: bool, need_dw: bool, need_db: bool, need_dr: bool,
             x_dtype: torch.dtype, residual_dtype: Optional[torch.dtype],
             bias_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``api._feature_grads`` as an op: (grad, dres_in, dweight, dbias), each an empty (0,) tensor when not computed.
    When x and the residual both want a gradient the kernel writes it twice (grad, dres_in): the graph flattens
    both outside the op, and two views of one gradient would let accumulating into one leaf's .grad change the
    other's."""
    from types import SimpleNamespace

    from .api import _feature_grads, _split_stats

    ctx = SimpleNamespace(backend=backend, rms=rms, x_dtype=x_dtype, residual_dtype=residual_dtype,
                          bias_dtype=bias_dtype, separate_residual_grad=True)
    mean, rstd = _split_stats(stats, rms)
    grad, dres_in, dweight, dbias = _feature_grads(ctx, dout, dh, (xin, weight, mean, rstd), need_dx, need_dw,
                                                   need_db, need_dr, allow_fallback)
    empty = xin.new_empty((0,))
    return grad, (dres_in if dres_in is not None else empty), (dweight if dweight is not None else empty.clone()), (
        dbias if dbias is not None else empty.clone())


@norm_bwd.register_fake
def _norm_bwd_fake(dout, dh, xin, weight, stats, backend, allow_fallback, rms, need_dx, need_dw, need_db, need_dr,
                   x_dtype, residual_dtype, bias_dtype):
    rows, hidden = xin.shape
    primary = residual_dtype if (need_dr and not need_dx) else x_dtype
    two_copies = need_dx and need_dr
    return (xin.new_empty((rows, hidden), dtype=primary),
            xin.new_empty((rows, hidden) if two_copies else (0,), dtype=residual_dtype if two_copies else xin.dtype),
            xin.new_empty((hidden,) if need_dw else (0,), dtype=weight.dtype if need_dw else xin.dtype),
            xin.new_empty((hidden,) if need_db else (0,), dtype=bias_dtype if need_db else xin.dtype))


def _norm_setup_context(ctx, inputs, output) -> None:
    (x, weight, bias, residual, _eps, backend, allow_fallback, _need_stats, rms, _in_fp32, _store, _out_dtype) = inputs
    _out, h, stats = output
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(stats)
    has_residual = residual is not None
    ctx.save_for_backward(h if has_residual else x, weight, stats)
    ctx.backend, ctx.allow_fallback, ctx.rms = backend, allow_fallback, rms
    ctx.has_weight, ctx.has_bias, ctx.has_residual = weight is not None, bias is not None, has_residual
    ctx.x_dtype = x.dtype
    ctx.residual_dtype = residual.dtype if has_residual else None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.separate_residual_grad = True  # as norm_bwd: x and the residual never get one gradient tensor


def _norm_backward(ctx, dout, dh, _dstats):
    nones = (None,) * 8
    if dout is None and dh is None:
        return (None, None, None, None) + nones
    from .api import _grads_through_h_only, _wanted_grads

    need_dx, need_dw, need_db, need_dr = _wanted_grads(ctx)
    if dh is not None and dh.shape[0] == 0:  # h was not stored (no residual): nothing flows through it
        dh = None
    if dout is None:
        return _grads_through_h_only(ctx, dh, need_dx, need_dr) + nones
    xin, weight, stats = ctx.saved_tensors
    if stats.shape[0] == 0:
        raise RuntimeError(
            "vibe_kernels::norm_fwd ran with need_stats=False, so its backward has no statistics; call it with "
            "need_stats=True when a gradient is needed"
        )
    grad, dres_in, dweight, dbias = norm_bwd(
        dout, dh, xin, weight, stats, ctx.backend, ctx.allow_fallback, ctx.rms, need_dx, need_dw, need_db, need_dr,
        ctx.x_dtype, ctx.residual_dtype, ctx.bias_dtype,
    )
    dr = (dres_in if dres_in.shape[0] != 0 else grad) if need_dr else None
    return ((grad if need_dx else None), (dweight if need_dw else None), (dbias if need_db else None), dr) + nones


norm_fwd.register_autograd(_norm_backward, setup_context=_norm_setup_context)


def compiled_norm(x2d, weight, bias, residual2d, eps: float, backend: str, allow_fallback: bool, need_mean: bool,
                  need_rstd: bool, rms: bool, residual_in_fp32: bool, return_residual: bool, out_dtype):
    """``NormFunction.apply`` through the custom ops: (out, h or None, mean or None, rstd or None). Statistics
    and h are computed when asked for or when a gradient may be needed (the backward reads them)."""
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x2d, weight, bias, residual2d))
    has_residual = residual2d is not None
    out, h, stats = norm_fwd(x2d, weight, bias, residual2d, eps, backend, allow_fallback,
                             need_mean or need_rstd or need_grad, rms, residual_in_fp32,
                             has_residual and (return_residual or need_grad), out_dtype)
    mean = stats[0] if need_mean and not rms else None
    rstd = stats[-1] if need_rstd else None
    return out, (h if return_residual else None), mean, rstd
