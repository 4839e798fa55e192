"""LayerNorm and RMSNorm modules: drop-ins for torch.nn.LayerNorm / torch.nn.RMSNorm running on vibe_kernels."""

from __future__ import annotations

import math

import torch

from .api import layernorm, rmsnorm


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` with the same constructor, parameters and state_dict keys, running on our kernels.

    ``backend`` picks the kernel family ("auto", "cutedsl", "triton", "torch"); multi-dim ``normalized_shape``
    normalizes over the trailing dims flattened into one.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        dims = len(self.normalized_shape)
        if tuple(input.shape[input.dim() - dims:]) != tuple(self.normalized_shape) or input.dim() < dims:
            raise ValueError(
                f"LayerNorm expects input of shape (*, {', '.join(map(str, self.normalized_shape))}), "
                f"got {tuple(input.shape)}"
            )
        weight, bias, x = self.weight, self.bias, input
        if dims > 1:
            hidden = math.prod(self.normalized_shape)
            x = input.reshape(*input.shape[: input.dim() - dims], hidden)
            weight = weight.reshape(hidden) if weight is not None else None
            bias = bias.reshape(hidden) if bias is not None else None
        out = layernorm(x, weight, bias, eps=self.eps, backend=self.backend)
        return out.view(input.shape) if dims > 1 else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` with the same constructor, parameter (``weight``) and state_dict keys, running on our
    kernels.

    ``eps=None`` follows torch's implementation: the machine epsilon of the computation dtype, which is float32 for
    float16/bfloat16/float32 inputs (torch.finfo(torch.float32).eps, ~1.19e-7; torch's docstring says the input's
    dtype, but its kernels and decomposition upcast first). ``backend`` picks the kernel family ("auto", "cutedsl",
    "triton", "torch"); multi-dim ``normalized_shape`` normalizes over the trailing dims flattened into one.
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, device=None,
                 dtype=None, *, backend: str = "auto") -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dims = len(self.normalized_shape)
        if tuple(input.shape[input.dim() - dims:]) != tuple(self.normalized_shape) or input.dim() < dims:
            raise ValueError(
                f"RMSNorm expects input of shape (*, {', '.join(map(str, self.normalized_shape))}), "
                f"got {tuple(input.shape)}"
            )
        eps = self.eps if self.eps is not None else _default_rms_eps(input.dtype)
        weight, x = self.weight, input
        if dims > 1:
            hidden = math.prod(self.normalized_shape)
            x = input.reshape(*input.shape[: input.dim() - dims], hidden)
            weight = weight.reshape(hidden) if weight is not None else None
        out = rmsnorm(x, weight, eps=eps, backend=self.backend)
        return out.view(input.shape) if dims > 1 else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


def _default_rms_eps(dtype: torch.dtype) -> float:
    """torch.nn.RMSNorm's eps=None: the epsilon of the dtype it computes in (float32 for half types)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


# torch class -> ours, for patch/unpatch
_SWAPS = ((torch.nn.LayerNorm, LayerNorm), (torch.nn.RMSNorm, RMSNorm))


def patch(model: torch.nn.Module, *, backend: str = "auto") -> int:
    """Makes every ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` inside ``model`` (exactly those classes, not user
    subclasses) run on our kernels, in place: the modules keep their parameters, buffers and hooks (their class is
    swapped), so optimizer state stays valid. Returns how many modules were patched; ``unpatch`` undoes it."""
    patched = 0
    for module in model.modules():
        for torch_cls, ours in _SWAPS:
            if type(module) is torch_cls:
                module.__class__ = ours
                module.backend = backend
                patched += 1
    return patched


def unpatch(model: torch.nn.Module) -> int:
    """Turns the modules that ``patch`` changed (and any of our LayerNorm / RMSNorm modules) back into
    ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``, keeping their parameters. Returns how many modules were
    restored."""
    restored = 0
    for module in model.modules():
        for torch_cls, ours in _SWAPS:
            if type(module) is ours:
                module.__class__ = torch_cls
                module.__dict__.pop("backend", None)
                restored += 1
    return restored
