"""CuTeDSL backend: LayerNorm forward/backward kernels for Hopper, with launchers into preallocated outputs.

Importing this package does not import cutlass (about 3 s on a GPU machine): the DSL is loaded on the first call.
Kernels are in ``kernels.py``, reductions in ``reduce.py``, configs in ``config.py``, compile cache and launchers in
``launch.py``.
"""

from __future__ import annotations

import functools
import importlib.util

from .._backends import rows_launcher
from .config import MAX_N


def is_available() -> tuple[bool, str]:
    """(True, "") when nvidia-cutlass-dsl is installed and a CUDA GPU of compute capability >= 9.0 is present."""
    if importlib.util.find_spec("cutlass") is None:
        return False, "the 'nvidia-cutlass-dsl' package (module 'cutlass') is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    major, minor = torch.cuda.get_device_capability()
    if major < 9:
        return False, f"CuTeDSL kernels target Hopper (sm_90) or newer; this GPU is sm_{major}{minor}"
    return True, ""


def _check_hidden(hidden: int) -> None:
    if hidden > MAX_N:
        raise NotImplementedError(f"CuTeDSL layernorm: N={hidden} is not supported yet (max {MAX_N})")


@functools.lru_cache(maxsize=1)
def _launch_module():
    """launch.py, imported (with cutlass) on the first call."""
    from . import launch

    return launch


def layernorm_fwd(x, weight, bias, eps: float, out, mean, rstd, *, residual=None, residual_out=None,
                  residual_in_fp32: bool = False, rms: bool = False) -> None:
    """out = (x - mean) * rstd * weight + bias over the rows of x (M, N), in out's dtype (x's or another float
    dtype); mean, rstd (M,) fp32 stored unless None. rms: RMSNorm (out = x * rstd * weight + bias; mean None).
    residual (M, N) or None: normalize h = x + residual (rounded to x's dtype unless residual_in_fp32), written to
    residual_out unless None."""
    _check_hidden(x.shape[1])
    _launch_module().layernorm_fwd(x, weight, bias, eps, out, mean, rstd, rms=rms, residual=residual,
                                   residual_out=residual_out, residual_in_fp32=residual_in_fp32)


def fwd_launcher(x, weight, bias, out, mean, rstd, rms: bool = False):
    """After a plain forward (``rms``: RMSNorm) ran with these tensors: a repeat launcher (see _backends), the
    compiled kernel called directly when it has a plan (launch.fwd_launcher), else ``layernorm_fwd`` on (M, N)
    views."""
    launch = _launch_module().fwd_launcher(x, weight, bias, out, mean, rstd, rms=rms)
    return launch if launch is not None else rows_launcher(layernorm_fwd, *x.shape, rms=rms)


def layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, *, rms: bool = False, dresidual=None,
                  dresidual_in=None) -> None:
    """dx (M, N) and dweight/dbias (N,) unless None, from dy (M, N; the forward's out dtype), x (the normalized
    input: h with a residual) and the forward's mean (None for RMSNorm), rstd (M,) fp32. dresidual: the gradient
    of h, added to dx; dresidual_in: dx again in the residual's dtype (both optional)."""
    _check_hidden(x.shape[1])
    _launch_module().layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, rms=rms, dresidual=dresidual,
                                   dresidual_in=dresidual_in)


__all__ = ["is_available", "layernorm_fwd", "layernorm_bwd", "fwd_launcher", "MAX_N"]
