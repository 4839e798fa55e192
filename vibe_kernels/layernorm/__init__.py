"""LayerNorm and RMSNorm: one API over CuTeDSL, Triton and PyTorch backends.

``import vibe_kernels.layernorm`` imports neither triton nor cutlass; each backend loads on first use.
"""

from ._backends import cutedsl_unavailable_reason, triton_unavailable_reason
from .api import (
    cutedsl_layernorm,
    cutedsl_rmsnorm,
    layernorm,
    rmsnorm,
    torch_layernorm,
    torch_rmsnorm,
    triton_layernorm,
    triton_rmsnorm,
)
from .module import LayerNorm, RMSNorm, patch, unpatch
from .reference import layernorm_mean_ref, layernorm_ref, layernorm_rstd_ref, rmsnorm_ref, rmsnorm_rstd_ref


def is_cutedsl_layernorm_available() -> bool:
    """True when nvidia-cutlass-dsl is installed and the current CUDA device is sm_90 or newer."""
    return not cutedsl_unavailable_reason()


def is_triton_layernorm_available() -> bool:
    """True when triton is installed and a CUDA device (or TRITON_INTERPRET=1) is available."""
    return not triton_unavailable_reason()


__all__ = [
    "LayerNorm",
    "RMSNorm",
    "cutedsl_layernorm",
    "cutedsl_rmsnorm",
    "is_cutedsl_layernorm_available",
    "is_triton_layernorm_available",
    "layernorm",
    "layernorm_mean_ref",
    "layernorm_ref",
    "layernorm_rstd_ref",
    "patch",
    "rmsnorm",
    "rmsnorm_ref",
    "rmsnorm_rstd_ref",
    "torch_layernorm",
    "torch_rmsnorm",
    "triton_layernorm",
    "triton_rmsnorm",
    "unpatch",
]
