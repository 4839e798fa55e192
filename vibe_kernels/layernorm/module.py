"""LayerNorm module: a drop-in torch.nn.LayerNorm running on vibe_kernels."""

from __future__ import annotations

import math

import torch

from .api import layernorm


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


def patch(model: torch.nn.Module, *, backend: str = "auto") -> int:
    """Makes every ``torch.nn.LayerNorm`` inside ``model`` (exactly that class, not user subclasses) run on our
    kernels, in place: the modules keep their parameters, buffers and hooks (their class is swapped), so optimizer
    state stays valid. Returns how many modules were patched; ``unpatch`` undoes it."""
    patched = 0
    for module in model.modules():
        if type(module) is torch.nn.LayerNorm:
            module.__class__ = LayerNorm
            module.backend = backend
            patched += 1
    return patched


def unpatch(model: torch.nn.Module) -> int:
    """Turns the modules that ``patch`` changed (and any of our LayerNorm modules) back into ``torch.nn.LayerNorm``,
    keeping their parameters. Returns how many modules were restored."""
    restored = 0
    for module in model.modules():
        if type(module) is LayerNorm:
            module.__class__ = torch.nn.LayerNorm
            module.__dict__.pop("backend", None)
            restored += 1
    return restored
