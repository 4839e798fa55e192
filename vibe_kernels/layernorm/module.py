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
