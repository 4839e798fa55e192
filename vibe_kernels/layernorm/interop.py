"""Zero-copy DLPack interop: ``layernorm`` on NumPy, CuPy, JAX (any ``__dlpack__``) arrays, results of the same kind.

``layernorm(x, ...)`` with a non-torch ``x`` that has ``__dlpack__`` lands here. The arrays are wrapped as torch
tensors with ``torch.from_dlpack`` (no copy: the tensor views the producer's buffer, strides included), the torch
API runs on them, and every output tensor is handed back through the producer's own ``from_dlpack`` (again no
copy: the returned array views the buffer torch allocated, which stays alive as long as that array does).

Streams (CUDA producers): DLPack's ``__dlpack__(stream=...)`` handshake orders the work. ``torch.from_dlpack(x)``
passes torch's current stream, and the producer (CuPy, JAX) makes that stream wait until x is ready; our kernels
then run on torch's current stream; ``cupy.from_dlpack`` / ``jax.dlpack.from_dlpack`` pass their own stream to the
output tensor's ``__dlpack__``, and torch makes that stream wait for the kernels. Nothing here synchronizes the
host, and a caller who uses each library's current stream needs no extra synchronization either.

Gradients do not cross DLPack: the call runs under ``torch.no_grad()`` and returns plain arrays.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

# The function that imports a torch tensor back into the producer's array type, by the producer type's top-level
# module. JAX arrays are ``jaxlib`` classes (``jaxlib.xla_extension.ArrayImpl`` or ``jaxlib._jax.ArrayImpl``).
_IMPORTERS = {
    "numpy": ("numpy", "from_dlpack"),
    "cupy": ("cupy", "from_dlpack"),
    "jax": ("jax.dlpack", "from_dlpack"),
    "jaxlib": ("jax.dlpack", "from_dlpack"),
}


def _importer_for(array: Any) -> Callable[[torch.Tensor], Any]:
    """The producer's ``from_dlpack`` for ``array``'s type: the known ones above, else ``from_dlpack`` of the type's
    top-level module when it has one; TypeError otherwise."""
    kind = type(array)
    top = kind.__module__.split(".")[0]
    module_name, attr = _IMPORTERS.get(top, (top, "from_dlpack"))
    try:
        importer = getattr(importlib.import_module(module_name), attr, None)
    except ImportError:
        importer = None
    if not callable(importer):
        raise TypeError(
            f"x is a {kind.__module__}.{kind.__qualname__}: it has __dlpack__, but its module {top!r} has no "
            "from_dlpack to return the results as the same kind of array; pass torch.from_dlpack(x) instead"
        )
    return importer


def _as_tensor(name: str, value: Any) -> Any:
    """A DLPack array as a torch tensor view of it; torch tensors and None (and anything else, which check_inputs
    then rejects by name) unchanged."""
    if value is None or isinstance(value, torch.Tensor) or not hasattr(value, "__dlpack__"):
        return value
    try:
        return torch.from_dlpack(value)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} is a {type(value).__name__} with __dlpack__, but torch.from_dlpack cannot import it: {exc}"
        ) from exc


def call_on_dlpack(fn: Callable[..., Any], x: Any, weight: Any, bias: Any, **kwargs: Any) -> Any:
    """``fn(x, weight, bias, **kwargs)`` (``layernorm``) on DLPack arrays, zero-copy both ways.

    x, and weight/bias when they are DLPack arrays rather than torch tensors, are imported with ``torch.from_dlpack``;
    each tensor ``fn`` returns (out, or the tuple with rstd/mean) is exported with the producer's ``from_dlpack``,
    picked by x's type (NumPy -> numpy.from_dlpack, CuPy -> cupy.from_dlpack, JAX -> jax.dlpack.from_dlpack, else
    the type's module's ``from_dlpack``). The importer is looked up first, so an unsupported type fails before any
    kernel runs. See the module docstring for streams.
    """
    to_producer = _importer_for(x)
    x_t = _as_tensor("x", x)
    if "residual" in kwargs:  # the fused residual's other input may be a DLPack array too
        kwargs["residual"] = _as_tensor("residual", kwargs["residual"])
    with torch.no_grad():
        result = fn(x_t, _as_tensor("weight", weight), _as_tensor("bias", bias), **kwargs)
    if isinstance(result, tuple):
        return tuple(to_producer(t) for t in result)
    return to_producer(result)
