"""The public LayerNorm / RMSNorm entry points: validate once, flatten to 2-D, pick a backend, run it under autograd."""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from ._backends import MAX_REPEAT_FWD_PLANS, load_backend, repeat_fwd_plans, resolve_backend

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP32_TINY = torch.finfo(torch.float32).tiny


def _check_param(name: str, param: Optional[torch.Tensor], x: torch.Tensor, hidden: int, device) -> None:
    if param is None:
        return
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(param).__name__}")
    if param.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {param.layout}")
    if param.dtype not in (torch.float32, x.dtype):
        raise TypeError(
            f"{name} must be float32 or x's dtype ({x.dtype}), got {param.dtype}"
        )
    if param.dim() != 1 or param.shape[0] != hidden:
        raise ValueError(
            f"{name} must have shape ({hidden},) to match x's last dim, got {tuple(param.shape)}"
        )
    if param.device != device:
        raise ValueError(f"{name} is on {param.device} but x is on {device}; put them on the same device")


def _check_eps(eps) -> None:
    if eps.__class__ is float and FP32_TINY <= eps < math.inf:  # the usual case, in one comparison
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if (isinstance(eps, int) and abs(eps) >= 2**1024) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    if eps < FP32_TINY:
        raise ValueError(
            f"eps={eps} is below float32's smallest normal number ({FP32_TINY}): the kernels add it to the variance "
            "in float32, where it would vanish (constant rows would give NaN)"
        )


def check_inputs(x, weight, bias, eps) -> None:
    """Raises TypeError/ValueError describing what was received and what was expected."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_nested or x.layout != torch.strided:
        raise TypeError("x must be a dense (strided) tensor, got " + ("a nested tensor" if x.is_nested else f"layout {x.layout}"))
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (..., N), got a 0-d tensor")
    hidden = x.shape[-1]
    if hidden == 0:
        raise ValueError(f"x's last dim (the normalized one) must be >= 1, got shape {tuple(x.shape)}")
    if x.stride(-1) != 1 and hidden > 1:
        raise ValueError(
            f"x's last dim must be contiguous (stride 1), got stride {x.stride(-1)} for shape {tuple(x.shape)}; "
            "call x.contiguous() first"
        )
    _check_eps(eps)
    device = x.device
    _check_param("weight", weight, x, hidden, device)
    _check_param("bias", bias, x, hidden, device)


def check_features(x, residual, residual_in_fp32, return_residual, out_dtype) -> None:
    """The fused-residual and output-dtype arguments (x already checked): TypeError/ValueError saying what was
    received and what was expected."""
    if out_dtype is not None and out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"out_dtype must be torch.float16, torch.bfloat16, torch.float32 or None (x's dtype), got {out_dtype!r}"
        )
    if residual is None:
        if return_residual:
            raise ValueError("return_residual=True needs a residual (residual=None was given)")
        if residual_in_fp32:
            raise ValueError("residual_in_fp32=True needs a residual (residual=None was given)")
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
    if residual.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"residual must be float32 or x's dtype ({x.dtype}), got {residual.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if residual.device != x.device:
        raise ValueError(f"residual is on {residual.device} but x is on {x.device}; put them on the same device")
    if residual.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(
            f"residual's last dim must be contiguous (stride 1), got stride {residual.stride(-1)} for shape "
            f"{tuple(residual.shape)}; call residual.contiguous() first"
        )


def _check_flags(**flags) -> None:
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _rows_view(x: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with unit column stride; a view whenever the leading dims can be flattened."""
    if x.dim() == 2 and x.stride(1) == 1:  # already (M, N): no new view object (a few µs of host time each)
        return x
    x2d = x.reshape(-1, x.shape[-1])
    if x2d.stride(1) != 1:  # only possible for N == 1, where the column stride is meaningless
        x2d = x2d.as_strided(x2d.shape, (x2d.stride(0), 1))
    return x2d


# Backward nodes that hand on the gradient they receive, or a view of it, with no new storage.
_GRAD_VIEW_NODES = frozenset({
    "ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "AliasBackward", "UnsqueezeBackward",
    "SqueezeBackward", "TBackward", "TransposeBackward", "PermuteBackward", "CloneBackward", "ExpandBackward",
    "ToCopyBackward",
})


def _grad_lands_in_a_leaf(t: torch.Tensor) -> bool:
    """Whether the gradient handed to ``t`` can become a leaf's .grad as that very storage: t is a leaf, or only
    views and pass-throughs (view, reshape, transpose, clone...) separate it from one. autograd then steals the
    gradient (or a view of it) instead of copying it (pytorch/pytorch#34082), so two such inputs given one
    gradient tensor would share their .grad storage. Bounded walk; a very long chain counts as reaching a leaf."""
    if t.is_leaf:
        return True
    node = t.grad_fn
    for _ in range(32):
        if node is None:
            return False
        name = type(node).__name__
        if name == "AccumulateGrad":
            return True
        if name.rstrip("0123456789") not in _GRAD_VIEW_NODES:
            return False
        following = node.next_functions
        node = following[0][0] if following else None
    return True


def _on_device(device: torch.device):
    """Triton and CuTeDSL launch on the *current* CUDA device: make it x's for tensors on another GPU."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _run_forward(backend: str, allow_fallback: bool, x2d, weight, bias, eps, out, mean, rstd, **features) -> str:
    """Runs the forward on ``backend``; returns the backend that ran. Under backend="auto", a CuTeDSL kernel that
    lacks this shape or feature (NotImplementedError) defers to Triton. ``features``: the backends' keyword
    arguments (rms, residual, residual_out, residual_in_fp32), absent on the plain LayerNorm path."""
    with _on_device(x2d.device):
        try:
            load_backend(backend).layernorm_fwd(x2d, weight, bias, eps, out, mean, rstd, **features)
            return backend
        except NotImplementedError:
            if backend != "cutedsl" or not allow_fallback:
                raise
        load_backend("triton").layernorm_fwd(x2d, weight, bias, eps, out, mean, rstd, **features)
        return "triton"


def _run_backward(backend: str, allow_fallback: bool, dy, x2d, weight, mean, rstd, dx, dweight, dbias,
                  **features) -> None:
    """Runs the backward on ``backend`` into preallocated gradients (M = 0: dweight/dbias are zeroed, nothing is
    launched). ``allow_fallback``: a CuTeDSL kernel that lacks the shape (NotImplementedError) defers to Triton,
    for callers that cannot know which backend ran the forward (the custom op); the autograd Functions pass the
    backend that ran it and False."""
    if x2d.shape[0] == 0:
        for grad in (dweight, dbias):
            if grad is not None:
                grad.zero_()
        return
    with _on_device(x2d.device):
        try:
            load_backend(backend).layernorm_bwd(dy, x2d, weight, mean, rstd, dx, dweight, dbias, **features)
            return
        except NotImplementedError:
            if backend != "cutedsl" or not allow_fallback:
                raise
        load_backend("triton").layernorm_bwd(dy, x2d, weight, mean, rstd, dx, dweight, dbias, **features)


def _forward(x2d, weight, bias, eps, backend, allow_fallback, need_stats):
    """Allocates out (and mean/rstd when ``need_stats``) and runs the forward: (out, mean, rstd, backend that ran)."""
    rows, hidden = x2d.shape
    out = torch.empty((rows, hidden), dtype=x2d.dtype, device=x2d.device)
    mean = rstd = None
    if need_stats:  # both or neither: backends store the pair together
        stats = torch.empty((2, rows), dtype=torch.float32, device=x2d.device)
        mean, rstd = stats.unbind(0)
    if rows > 0:
        backend = _run_forward(backend, allow_fallback, x2d, weight, bias, eps, out, mean, rstd)
    return out, mean, rstd, backend


def _split_stats(stats, rms: bool):
    """(mean, rstd) rows of a stats tensor: [mean; rstd] for LayerNorm, [rstd] for RMSNorm (mean None)."""
    if stats is None:
        return None, None
    return (None, stats[0]) if rms else (stats[0], stats[1])


def _forward_features(x2d, weight, bias, eps, backend, allow_fallback, need_stats, rms, residual2d,
                      residual_in_fp32, store_residual, out_dtype):
    """``_forward`` with RMSNorm, the fused residual and the output dtype: (out, h, stats, backend that ran).
    h (the residual output x + residual, fp32 when residual_in_fp32 else x's dtype) is written only when
    ``store_residual``; stats (fp32, when ``need_stats``) is (2, M) [mean; rstd], or (1, M) [rstd] for RMSNorm
    (``_split_stats``)."""
    rows, hidden = x2d.shape
    device = x2d.device
    out = torch.empty((rows, hidden), dtype=out_dtype or x2d.dtype, device=device)
    stats = torch.empty((1 if rms else 2, rows), dtype=torch.float32, device=device) if need_stats else None
    mean, rstd = _split_stats(stats, rms)
    h = None
    features = {}
    if rms:
        features["rms"] = True
    if residual2d is not None:
        if store_residual:
            h_dtype = torch.float32 if residual_in_fp32 else x2d.dtype
            h = torch.empty((rows, hidden), dtype=h_dtype, device=device)
        features.update(residual=residual2d, residual_out=h, residual_in_fp32=bool(residual_in_fp32))
    if rows > 0:
        backend = _run_forward(backend, allow_fallback, x2d, weight, bias, eps, out, mean, rstd, **features)
    return out, h, stats, backend


def _backward(ctx, dout, dh, saved, need_dx, need_dw, need_db, need_dr):
    """The gradients (dx, dweight, dbias, dresidual) of a forward saved as ``saved`` = (normalized input (x, or h
    with a residual), weight, mean, rstd); ``dh``: the gradient of the residual output (or None). dx and the
    residual's gradient are the same values (dh_total = d(norm)/dh + dh): written once, twice when their dtypes
    differ or ``ctx.separate_residual_grad``. Unwanted gradients are None."""
    if dout is None:
        return _grads_through_h_only(ctx, dh, need_dx, need_dr)
    grad, dres_in, dweight, dbias = _feature_grads(ctx, dout, dh, saved, need_dx, need_dw, need_db, need_dr, False)
    dr = (dres_in if dres_in is not None else grad) if need_dr else None
    return (grad if need_dx else None), dweight, dbias, dr


def _wanted_grads(ctx):
    """(need_dx, need_dw, need_db, need_dr) of a feature forward whose inputs start x, weight, bias, residual."""
    return (ctx.needs_input_grad[0], ctx.has_weight and ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2], ctx.has_residual and ctx.needs_input_grad[3])


def _grads_through_h_only(ctx, dh, need_dx, need_dr):
    """(dx, dweight, dbias, dresidual) when only the residual output h reached the loss: norm(h) contributes
    nothing, x and the residual get dh (two distinct tensors under ``ctx.separate_residual_grad``)."""
    dx = dh.to(ctx.x_dtype) if need_dx else None
    dr = dh.to(ctx.residual_dtype) if need_dr else None
    if dr is not None and dr is dx and ctx.separate_residual_grad:
        dr = dr.clone()
    return dx, None, None, dr


def _feature_grads(ctx, dout, dh, saved, need_dx, need_dw, need_db, need_dr, allow_fallback):
    """The backward's kernels for ``_backward`` and the custom op ``vibe_kernels::norm_bwd``: (grad, dres_in,
    dweight, dbias). ``grad`` is the gradient of the normalized input (+ dh) in x's dtype, or in the residual's
    when only the residual wants it; ``dres_in`` a copy in the residual's dtype when both want it and the dtypes
    differ or ``ctx.separate_residual_grad`` (the two must not be one tensor), else None. ctx: backend, rms,
    x_dtype, residual_dtype, bias_dtype, separate_residual_grad."""
    xin, weight, mean, rstd = saved
    rows, hidden = xin.shape
    device = xin.device
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dh is not None and dh.stride(-1) != 1:
        dh = dh.contiguous()
    # Write the gradient once in the dtype of whoever wants it (x's when both do), plus a copy in the residual's
    # dtype when both want it and the dtypes differ or the two must be distinct tensors.
    primary_dtype = ctx.residual_dtype if (need_dr and not need_dx) else ctx.x_dtype
    dx = torch.empty((rows, hidden), dtype=primary_dtype, device=device)
    dres_in = None
    if need_dx and need_dr and (ctx.residual_dtype != ctx.x_dtype or ctx.separate_residual_grad):
        dres_in = torch.empty((rows, hidden), dtype=ctx.residual_dtype, device=device)
    dweight = torch.empty((hidden,), dtype=weight.dtype, device=device) if need_dw else None
    dbias = torch.empty((hidden,), dtype=ctx.bias_dtype, device=device) if need_db else None
    features = {}
    if ctx.rms:
        features["rms"] = True
    if dh is not None:
        features["dresidual"] = dh
    if dres_in is not None:
        features["dresidual_in"] = dres_in
    _run_backward(ctx.backend, allow_fallback, dout, xin, weight, mean, rstd, dx, dweight, dbias, **features)
    return dx, dres_in, dweight, dbias


class LayerNormFunction(torch.autograd.Function):
    """Returns ``out`` alone, or ``(out, mean, rstd)`` when the caller asked for a statistic: each extra output
    of an autograd.Function costs host time on every step, so unrequested statistics stay internal."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, eps, backend, allow_fallback, need_mean, need_rstd):
        # mean/rstd get no gradient: without this, autograd would build zero tensors for them on every backward
        # (two allocations and two fill kernels, ~0.2 ms of host time per step on the H100 machine).
        ctx.set_materialize_grads(False)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        stats_out = need_mean or need_rstd
        out, mean, rstd, backend = _forward(x2d, weight, bias, eps, backend, allow_fallback, stats_out or need_grad)
        ctx.backend = backend
        ctx.has_weight = weight is not None
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.stats_out = stats_out
        if need_grad:
            if stats_out:  # returned to the caller: saved as outputs, so in-place edits of them are detected
                ctx.save_for_backward(x2d, weight, mean, rstd)
            else:  # internal: nobody else holds them
                ctx.save_for_backward(x2d, weight)
                ctx.stats = (mean, rstd)
        if not stats_out:
            return out
        ctx.mark_non_differentiable(mean, rstd)
        return out, mean, rstd

    @staticmethod
    def backward(ctx, dout, *_dstats):
        if dout is None:  # out itself did not reach the loss
            return None, None, None, None, None, None, None, None
        if ctx.stats_out:
            x2d, weight, mean, rstd = ctx.saved_tensors
        else:
            x2d, weight = ctx.saved_tensors
            mean, rstd = ctx.stats
        rows, hidden = x2d.shape
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dx = torch.empty((rows, hidden), dtype=x2d.dtype, device=x2d.device)
        need_dw = ctx.has_weight and ctx.needs_input_grad[1]
        need_db = ctx.has_bias and ctx.needs_input_grad[2]
        dweight = torch.empty((hidden,), dtype=weight.dtype, device=x2d.device) if need_dw else None
        dbias = torch.empty((hidden,), dtype=ctx.bias_dtype, device=x2d.device) if need_db else None
        _run_backward(ctx.backend, False, dout, x2d, weight, mean, rstd, dx, dweight, dbias)
        return (dx if ctx.needs_input_grad[0] else None), dweight, dbias, None, None, None, None, None


class NormFunction(torch.autograd.Function):
    """LayerNorm or RMSNorm with the fused residual and the output dtype. Outputs (out, h, mean, rstd): h is the
    residual output (None without a residual), mean is None for RMSNorm; mean/rstd are not differentiable.

    x and the residual come in with their own (..., N) shapes and are flattened here, not by the caller: the
    backward then hands one and the same gradient tensor to both, as torch's own ``x + residual`` does, and
    autograd copies it where two leaves would otherwise share it. Flattened outside, each would get its own view of
    one storage, and accumulating into one leaf's .grad would change the other's. When the gradients of both can
    land in a leaf's .grad without a copy (leaves, or views of leaves: ``_grad_lands_in_a_leaf``), the kernel
    writes the residual's gradient a second time instead: autograd would not copy a view (nor does it for torch's
    own ``x.view(...) + r.view(...)``, pytorch/pytorch#34082)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, backend, allow_fallback, need_mean, need_rstd, rms,
                residual_in_fp32, return_residual, out_dtype):
        ctx.set_materialize_grads(False)
        need_grad = any(ctx.needs_input_grad[:4])
        has_residual = residual is not None
        x2d = _rows_view(x)
        residual2d = _rows_view(residual) if has_residual else None
        ctx.x_shape = x.shape
        ctx.separate_residual_grad = has_residual and _grad_lands_in_a_leaf(x) and _grad_lands_in_a_leaf(residual)
        out, h, stats, backend = _forward_features(
            x2d, weight, bias, eps, backend, allow_fallback, need_mean or need_rstd or need_grad, rms, residual2d,
            residual_in_fp32, has_residual and (return_residual or need_grad), out_dtype,
        )
        mean, rstd = _split_stats(stats, rms)
        ctx.backend = backend
        ctx.rms = rms
        ctx.has_weight = weight is not None
        ctx.has_bias = bias is not None
        ctx.has_residual = has_residual
        ctx.x_dtype = x2d.dtype
        ctx.residual_dtype = residual2d.dtype if has_residual else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        if need_grad:
            # The backward differentiates norm(h): with a residual it needs h, which the forward stored.
            ctx.save_for_backward(h if has_residual else x2d, weight, mean, rstd)
        stats = [t for t in (mean, rstd) if t is not None]
        ctx.mark_non_differentiable(*stats)
        return out, h, mean, rstd

    @staticmethod
    def backward(ctx, dout, dh, _dmean, _drstd):
        nones = (None,) * 9
        if dout is None and dh is None:
            return (None, None, None, None) + nones
        need_dx, need_dw, need_db, need_dr = _wanted_grads(ctx)
        dx, dweight, dbias, dr = _backward(ctx, dout, dh, ctx.saved_tensors, need_dx, need_dw, need_db, need_dr)
        # One view object for both when dx and dr are one tensor (see the class docstring).
        dx_nd = dx.view(ctx.x_shape) if dx is not None else None
        dr_nd = dx_nd if dr is dx else (dr.view(ctx.x_shape) if dr is not None else None)
        return (dx_nd, dweight, dbias, dr_nd) + nones


def _norm(x, weight, bias, eps, return_rstd, return_mean, backend, rms, residual, residual_in_fp32,
          return_residual, out_dtype):
    """RMSNorm and the extended LayerNorm (residual, out_dtype): checks, flattens, runs, and shapes the result
    (out, [h], [rstd], [mean])."""
    _check_flags(return_rstd=return_rstd, return_mean=return_mean, residual_in_fp32=residual_in_fp32,
                 return_residual=return_residual)
    compiling = torch.compiler.is_compiling()
    if compiling:  # as in layernorm: checks and backend choice that dynamo traces without a graph break
        from ._ops import check_inputs_traceable, resolve_backend_traceable

        check_inputs_traceable(x, weight, bias, eps)
        concrete = resolve_backend_traceable(backend, x.device)
    else:
        check_inputs(x, weight, bias, eps)
        concrete = resolve_backend(backend, x.device)
    check_features(x, residual, residual_in_fp32, return_residual, out_dtype)
    if out_dtype == x.dtype:
        out_dtype = None
    weight_in, bias_in = weight, bias
    weight = weight.contiguous() if weight is not None and weight.stride(0) != 1 else weight
    bias = bias.contiguous() if bias is not None and bias.stride(0) != 1 else bias
    args = (float(eps), concrete, backend == "auto")
    if torch.is_grad_enabled() and not compiling and any(
            t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        out, h, mean, rstd = NormFunction.apply(  # x and residual unflattened: NormFunction flattens them
            x, weight, bias, residual, *args, return_mean, return_rstd, rms, bool(residual_in_fp32),
            bool(return_residual), out_dtype,
        )
    else:
        x2d = _rows_view(x)
        residual2d = _rows_view(residual) if residual is not None else None
        if compiling:  # torch.compile traces the custom op vibe_kernels::norm_fwd instead of NormFunction
            from ._ops import compiled_norm

            out, h, mean, rstd = compiled_norm(x2d, weight, bias, residual2d, *args, return_mean, return_rstd,
                                               rms, bool(residual_in_fp32), bool(return_residual), out_dtype)
        else:
            out, h, stats, ran = _forward_features(
                x2d, weight, bias, *args, return_mean or return_rstd, rms, residual2d, residual_in_fp32,
                bool(return_residual), out_dtype,
            )
            mean, rstd = _split_stats(stats, rms)
            if rms and residual2d is None and out_dtype is None and not return_residual:  # plain RMSNorm
                _record_repeat(x, weight_in, bias_in, eps, return_rstd, False, backend, ran, x2d, out, None, rstd,
                               rms=True)
    result = [out.view(x.shape)]
    if return_residual:
        result.append(h.view(x.shape))
    stats_shape = x.shape[:-1]
    if return_rstd:
        result.append(rstd.view(stats_shape))
    if return_mean:
        result.append(mean.view(stats_shape))
    return result[0] if len(result) == 1 else tuple(result)


# ----------------------------------------------------------------------------------------------------------------
# Repeat calls of the plain forward without autograd (host time, issue 6)
# ----------------------------------------------------------------------------------------------------------------
# The first no-grad call with a given signature takes the full path (checks, backend choice, the backend's launcher)
# and records a launcher from the backend that ran (``fwd_launcher``). A later call with the same signature has
# passed the same checks (the signature holds everything they look at except eps, which is checked on each call),
# so it allocates the outputs and launches. Anything else (autograd, torch.compile, tensor subclasses and DLPack
# arrays, features, flags that are not bools) takes the full path.


def _param_signature(param):
    return None if param is None else (param.__class__, param.dtype, param.device, param.shape, param.stride(),
                                       param.data_ptr() & 15)


def _repeat_signature(x, weight, bias, return_rstd, return_mean, backend, rms=False):
    """What check_inputs, the backend choice and the backends' launch plans depend on in a plain forward call:
    raises AttributeError/RuntimeError/TypeError for inputs that cannot be signed (the full path reports them)."""
    current = torch.cuda.current_device() if x.is_cuda else -1
    return (rms, backend, return_rstd, return_mean, x.device, current, x.dtype, x.shape, x.stride(),
            x.data_ptr() & 15, _param_signature(weight), _param_signature(bias))


def _repeat_forward(x, weight, bias, eps, return_rstd, return_mean, backend, rms=False):
    """``layernorm``'s (``rms``: ``rmsnorm``'s) result for a call whose signature an earlier no-grad call recorded;
    None when there is no record or the call needs the full path."""
    if (torch.compiler.is_compiling() or x.__class__ is not torch.Tensor or not _repeatable_eps(eps)
            or return_rstd.__class__ is not bool or return_mean.__class__ is not bool):
        return None
    try:
        if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)
                                        or (bias is not None and bias.requires_grad)):
            return None
        plan = repeat_fwd_plans.get(_repeat_signature(x, weight, bias, return_rstd, return_mean, backend, rms))
    except (AttributeError, RuntimeError, TypeError):  # not tensors, or not signable: the full path says why
        return None
    if plan is None:
        return None
    launch, rows, contiguous = plan
    out = torch.empty_like(x) if contiguous else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not (return_rstd or return_mean):
        launch(x, weight, bias, out, None, None, eps)
        return out
    if rms:  # rstd only
        rstd = torch.empty((rows,), dtype=torch.float32, device=x.device)
        launch(x, weight, bias, out, None, rstd, eps)
        return out, rstd.view(x.shape[:-1])
    stats = torch.empty((2, rows), dtype=torch.float32, device=x.device)
    mean, rstd = stats.unbind(0)
    launch(x, weight, bias, out, mean, rstd, eps)
    return _with_stats(out, mean, rstd, x.shape[:-1], return_rstd, return_mean)


def _repeatable_eps(eps) -> bool:
    """An eps the repeat path takes as it is (a float in range); anything else goes the full way, every call."""
    return eps.__class__ is float and FP32_TINY <= eps < math.inf


def _record_repeat(x, weight, bias, eps, return_rstd, return_mean, backend, ran, x2d, out2d, mean, rstd,
                   rms=False) -> None:
    """After a no-grad plain forward (``ran``: the backend that ran it; ``rms``: RMSNorm) into ``out2d``: records a
    launcher for repeats of the call, if they can take the repeat path (eps a float; x contiguous or 2-D with unit
    column stride; weight and bias dense, as passed; x on the current device)."""
    if (not _repeatable_eps(eps) or x.__class__ is not torch.Tensor or x2d.shape[0] == 0
            or not (x.is_contiguous() or x.dim() == 2)
            or x2d.data_ptr() != x.data_ptr() or any(p is not None and p.stride(0) != 1 for p in (weight, bias))
            or (x.is_cuda and x.device.index != torch.cuda.current_device())):
        return
    launcher = load_backend(ran).fwd_launcher
    try:
        signature = _repeat_signature(x, weight, bias, return_rstd, return_mean, backend, rms)
    except (AttributeError, RuntimeError, TypeError):
        return
    if len(repeat_fwd_plans) >= MAX_REPEAT_FWD_PLANS:
        repeat_fwd_plans.clear()
    repeat_fwd_plans[signature] = (launcher(x2d, weight, bias, out2d, mean, rstd, rms=rms), x2d.shape[0],
                                   x.is_contiguous())


def _with_stats(out, mean, rstd, stats_shape, return_rstd, return_mean):
    """``(out, [rstd], [mean])`` with the statistics in x's leading shape."""
    result = [out]
    if return_rstd:
        result.append(rstd.view(stats_shape))
    if return_mean:
        result.append(mean.view(stats_shape))
    return tuple(result)


def layernorm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor] = None,
    *,
    eps: float = 1e-6,
    return_rstd: bool = False,
    return_mean: bool = False,
    backend: str = "auto",
    residual: Optional[torch.Tensor] = None,
    residual_in_fp32: bool = False,
    return_residual: bool = False,
    out_dtype: Optional[torch.dtype] = None,
):
    """LayerNorm over the last dim of ``x``.

    x: (..., N) float16/bfloat16/float32 with a contiguous last dim (rows may be strided).
    weight, bias: (N,) in float32 or x's dtype, or None (no affine).
    Returns ``out`` (x's shape, x's dtype or ``out_dtype``), followed, in this order and only when asked, by
    ``h`` (return_residual), ``rstd`` (return_rstd) and ``mean`` (return_mean): ``out``, ``(out, rstd)``,
    ``(out, mean)``, ``(out, rstd, mean)``, ``(out, h)``, ``(out, h, rstd)``, ``(out, h, rstd, mean)``...
    mean/rstd are float32 of shape x.shape[:-1] (non-differentiable). Differentiable in x, weight, bias and
    residual.

    residual: (..., N) like x, in x's dtype or float32: the fused pre-norm residual. h = x + residual is normalized
    instead of x, in the same pass; h is summed in fp32 and rounded to x's dtype (exactly the unfused
    ``x + residual``; out is the unfused ``layernorm(x + residual)``, to one ulp where the two take different
    kernels), or kept and returned in float32 with ``residual_in_fp32=True``.
    ``return_residual=True`` also returns h; the gradient flowing into h adds to the one through the norm, and x and
    residual both get that sum.
    out_dtype: write out in another float dtype (float16/bfloat16/float32); the gradient flows back in x's dtype.
    backend: "auto" (CuTeDSL on sm_90+, else Triton on CUDA, else torch), "cutedsl", "triton" or "torch".
    The CuTeDSL kernels cover N up to 262144 with every feature (RMSNorm, the fused residual, out_dtype): above
    that backend="cutedsl" raises NotImplementedError and backend="auto" runs Triton (any N).
    A repeated no-grad call whose tensors have the same metadata as an earlier one (shapes, strides, dtypes,
    devices, pointer alignment, flags) skips the checks and lookups (``_repeat_forward``; eps is checked again).

    x may also be any array with ``__dlpack__`` (NumPy, CuPy, JAX, ...), and weight/bias too: they are viewed as
    tensors without a copy, and out/rstd/mean come back as arrays of x's kind, again without a copy (interop.py;
    CUDA streams are ordered by the DLPack handshake; no gradients on that path).
    Under torch.compile the call traces to the custom ops ``vibe_kernels::layernorm_fwd``/``layernorm_bwd``
    (_ops.py; fullgraph and dynamic shapes work); eager calls never go through them.
    """
    if residual is None and out_dtype is None and return_residual is False and residual_in_fp32 is False:
        result = _repeat_forward(x, weight, bias, eps, return_rstd, return_mean, backend)
        if result is not None:
            return result
    if residual is not None or residual_in_fp32 or return_residual or out_dtype is not None:
        if not isinstance(x, torch.Tensor) and hasattr(x, "__dlpack__"):
            from .interop import call_on_dlpack

            return call_on_dlpack(layernorm, x, weight, bias, eps=eps, return_rstd=return_rstd,
                                  return_mean=return_mean, backend=backend, residual=residual,
                                  residual_in_fp32=residual_in_fp32, return_residual=return_residual,
                                  out_dtype=out_dtype)
        return _norm(x, weight, bias, eps, return_rstd, return_mean, backend, False, residual, residual_in_fp32,
                     return_residual, out_dtype)
    if not isinstance(x, torch.Tensor) and hasattr(x, "__dlpack__"):  # CuPy, JAX, NumPy...: zero-copy round trip
        from .interop import call_on_dlpack

        return call_on_dlpack(layernorm, x, weight, bias, eps=eps, return_rstd=return_rstd,
                              return_mean=return_mean, backend=backend)
    if return_rstd.__class__ is not bool or return_mean.__class__ is not bool:
        _check_flags(return_rstd=return_rstd, return_mean=return_mean)
    compiling = torch.compiler.is_compiling()
    if compiling:  # the same checks and backend choice, in a form dynamo traces without a graph break (see _ops.py)
        from ._ops import check_inputs_traceable, resolve_backend_traceable

        check_inputs_traceable(x, weight, bias, eps)
        concrete = resolve_backend_traceable(backend, x.device)
    else:
        check_inputs(x, weight, bias, eps)
        concrete = resolve_backend(backend, x.device)
    x2d = _rows_view(x)
    weight_in, bias_in = weight, bias
    # The kernels index weight and bias as dense vectors: a strided view (w[::2]) is copied (differentiably).
    weight = weight.contiguous() if weight is not None and weight.stride(0) != 1 else weight
    bias = bias.contiguous() if bias is not None and bias.stride(0) != 1 else bias
    params = (x, weight, bias)
    if compiling:  # torch.compile traces the torch.library custom ops instead of LayerNormFunction
        from ._ops import compiled_layernorm

        out, mean, rstd = compiled_layernorm(
            x2d, weight, bias, float(eps), concrete, backend == "auto", return_mean, return_rstd
        )
    elif torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params):
        result = LayerNormFunction.apply(
            x2d, weight, bias, float(eps), concrete, backend == "auto", return_mean, return_rstd
        )
        out, mean, rstd = result if (return_mean or return_rstd) else (result, None, None)
    else:  # inference: skip the autograd.Function machinery (a few µs of host time per call)
        out, mean, rstd, ran = _forward(x2d, weight, bias, float(eps), concrete, backend == "auto",
                                        return_mean or return_rstd)
        _record_repeat(x, weight_in, bias_in, eps, return_rstd, return_mean, backend, ran, x2d, out, mean, rstd)
    if out.dim() != x.dim():
        out = out.view(x.shape)
    if not (return_rstd or return_mean):
        return out
    return _with_stats(out, mean, rstd, x.shape[:-1], return_rstd, return_mean)


def cutedsl_layernorm(x, weight, bias=None, *, eps=1e-6, return_rstd=False, return_mean=False, **kwargs):
    """``layernorm`` pinned to the CuTeDSL backend (Hopper, sm_90+; N <= 262144, else NotImplementedError)."""
    return layernorm(x, weight, bias, eps=eps, return_rstd=return_rstd, return_mean=return_mean, backend="cutedsl",
                     **kwargs)


def triton_layernorm(x, weight, bias=None, *, eps=1e-6, return_rstd=False, return_mean=False, **kwargs):
    """``layernorm`` pinned to the Triton backend (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    return layernorm(x, weight, bias, eps=eps, return_rstd=return_rstd, return_mean=return_mean, backend="triton",
                     **kwargs)


def torch_layernorm(x, weight, bias=None, *, eps=1e-6, return_rstd=False, return_mean=False, **kwargs):
    """``layernorm`` pinned to the PyTorch backend (any device; fp32 math)."""
    return layernorm(x, weight, bias, eps=eps, return_rstd=return_rstd, return_mean=return_mean, backend="torch",
                     **kwargs)


def rmsnorm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor] = None,
    *,
    eps: float = 1e-6,
    return_rstd: bool = False,
    backend: str = "auto",
    residual: Optional[torch.Tensor] = None,
    residual_in_fp32: bool = False,
    return_residual: bool = False,
    out_dtype: Optional[torch.dtype] = None,
):
    """RMSNorm over the last dim of ``x``: out = x * rstd * weight (+ bias), rstd = 1 / sqrt(mean(x^2) + eps).

    The same inputs, backends, autograd and validation as ``layernorm`` (weight/bias (N,) in float32 or x's dtype,
    or None). Returns ``out``, followed when asked by ``h`` (return_residual) and ``rstd`` (return_rstd): ``out``,
    ``(out, rstd)``, ``(out, h)``, ``(out, h, rstd)``. ``residual``/``residual_in_fp32``/``return_residual`` (the
    fused pre-norm residual) and ``out_dtype`` behave as in ``layernorm``; so do the backends (CuTeDSL: N up
    to 262144, every feature; above that backend="auto" runs Triton).
    """
    if residual is None and out_dtype is None and return_residual is False and residual_in_fp32 is False:
        result = _repeat_forward(x, weight, bias, eps, return_rstd, False, backend, rms=True)
        if result is not None:
            return result
    if not isinstance(x, torch.Tensor) and hasattr(x, "__dlpack__"):  # CuPy, JAX, NumPy...: zero-copy round trip
        from .interop import call_on_dlpack

        extra = {} if residual is None and out_dtype is None and not (residual_in_fp32 or return_residual) else dict(
            residual=residual, residual_in_fp32=residual_in_fp32, return_residual=return_residual,
            out_dtype=out_dtype)
        return call_on_dlpack(rmsnorm, x, weight, bias, eps=eps, return_rstd=return_rstd, backend=backend, **extra)
    return _norm(x, weight, bias, eps, return_rstd, False, backend, True, residual, residual_in_fp32,
                 return_residual, out_dtype)


def cutedsl_rmsnorm(x, weight, bias=None, *, eps=1e-6, return_rstd=False, **kwargs):
    """``rmsnorm`` pinned to the CuTeDSL backend."""
    return rmsnorm(x, weight, bias, eps=eps, return_rstd=return_rstd, backend="cutedsl", **kwargs)


def triton_rmsnorm(x, weight, bias=None, *, eps=1e-6, return_rstd=False, **kwargs):
    """``rmsnorm`` pinned to the Triton backend (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    return rmsnorm(x, weight, bias, eps=eps, return_rstd=return_rstd, backend="triton", **kwargs)


def torch_rmsnorm(x, weight, bias=None, *, eps=1e-6, return_rstd=False, **kwargs):
    """``rmsnorm`` pinned to the PyTorch backend (any device; fp32 math)."""
    return rmsnorm(x, weight, bias, eps=eps, return_rstd=return_rstd, backend="torch", **kwargs)
