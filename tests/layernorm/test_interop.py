"""DLPack interop on the CPU: ``layernorm`` on NumPy arrays returns NumPy arrays, zero-copy both ways (interop.py).
CuPy and JAX arrays on CUDA are in test_gpu_ecosystem.py."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from vibe_kernels.layernorm import layernorm, triton_unavailable_reason
from vibe_kernels.layernorm.interop import call_on_dlpack

np = pytest.importorskip("numpy")


def _ptr(array) -> int:
    return array.__array_interface__["data"][0]


def _spy(record: dict):
    """``layernorm`` that records the data pointers of the tensors it is given and of those it returns."""

    def run(x, weight, bias, **kwargs):
        record["inputs"] = [None if t is None else t.data_ptr() for t in (x, weight, bias)]
        record["types"] = [type(t) for t in (x, weight, bias)]
        result = layernorm(x, weight, bias, **kwargs)
        record["outputs"] = [t.data_ptr() for t in (result if isinstance(result, tuple) else (result,))]
        return result

    return run


def _arrays(gen, shape, dtype=np.float32):
    hidden = shape[-1]
    x = (torch.randn(shape, generator=gen) + 0.5).numpy().astype(dtype)
    weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).numpy()
    bias = (0.5 * torch.randn(hidden, generator=gen)).numpy()
    return x, weight, bias


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_numpy_zero_copy_round_trip(gen, check, backend):
    if backend == "triton" and triton_unavailable_reason(torch.device("cpu")):  # GPU machines: no interpreter
        pytest.skip(f"Triton on CPU arrays: {triton_unavailable_reason(torch.device('cpu'))}")
    x, weight, bias = _arrays(gen, (2, 3, 32))
    record = {}
    out, rstd, mean = call_on_dlpack(_spy(record), x, weight, bias, eps=1e-5, return_rstd=True, return_mean=True,
                                     backend=backend)
    assert record["types"] == [torch.Tensor] * 3
    assert record["inputs"] == [_ptr(x), _ptr(weight), _ptr(bias)], "an input was copied on the way in"
    assert all(isinstance(a, np.ndarray) for a in (out, rstd, mean))
    assert [_ptr(a) for a in (out, rstd, mean)] == record["outputs"], "an output was copied on the way out"
    assert out.shape == x.shape and out.dtype == np.float32
    assert rstd.shape == mean.shape == x.shape[:-1] and rstd.dtype == mean.dtype == np.float32
    tx, tw, tb = (torch.from_numpy(a.copy()) for a in (x, weight, bias))
    check.out(torch.from_numpy(out), tx, tw, tb, 1e-5)
    check.stats(torch.from_numpy(mean), torch.from_numpy(rstd), tx, 1e-5)


def test_numpy_through_layernorm(gen, check):
    """The public entry point dispatches arrays with __dlpack__ to interop: fp16 x with strided rows, fp32 weight,
    a torch bias (mixed inputs are fine), a plain ndarray back."""
    x16, weight, bias = _arrays(gen, (6, 40), np.float16)
    x = x16[:, :32]  # rows strided by 40 elements: the view is imported as it is
    bias_t = torch.from_numpy(bias[:32].copy())
    out = layernorm(x, weight[:32].copy(), bias_t, eps=1e-5, backend="torch")
    assert isinstance(out, np.ndarray) and out.dtype == np.float16 and out.shape == (6, 32)
    check.out(torch.from_numpy(out), torch.from_numpy(x.copy()), torch.from_numpy(weight[:32].copy()), bias_t, 1e-5)


def test_numpy_with_torch_parameters_needing_grad(gen):
    """A parameter that requires grad does not break the export: the call runs under no_grad (plain arrays back)."""
    x, weight, _ = _arrays(gen, (4, 16))
    out = layernorm(x, torch.from_numpy(weight).requires_grad_(), backend="torch")
    assert isinstance(out, np.ndarray)


def test_numpy_errors_name_the_problem(gen):
    x, weight, _ = _arrays(gen, (4, 16))
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16 or float32, got torch.float64"):
        layernorm(x.astype(np.float64), None)
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor or None, got list"):
        layernorm(x, list(weight))
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\)"):
        layernorm(x, weight[:8])
    with pytest.raises(TypeError, match=r"x is a ndarray with __dlpack__, but torch.from_dlpack cannot import it"):
        layernorm(np.array([[1.0, "a"]], dtype=object), None)


class _Carrier:
    """A DLPack producer from a library that has no from_dlpack to return results with."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack__(self, stream=None, **kwargs):
        return self.tensor.__dlpack__()

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()


def test_unknown_producer_without_from_dlpack():
    carrier_type = type("Carrier", (_Carrier,), {"__module__": "nosucharrays.core"})
    with pytest.raises(TypeError, match=r"x is a nosucharrays\.core\.Carrier: it has __dlpack__, but its module "
                                        r"'nosucharrays' has no from_dlpack"):
        layernorm(carrier_type(torch.ones(2, 4)), None)


def test_unknown_producer_with_from_dlpack(monkeypatch):
    """Any other library: its top-level module's from_dlpack brings the results back."""
    module = types.ModuleType("fakearrays")
    carrier_type = type("Carrier", (_Carrier,), {"__module__": "fakearrays._core"})
    module.from_dlpack = lambda obj: carrier_type(torch.from_dlpack(obj))
    monkeypatch.setitem(sys.modules, "fakearrays", module)
    source = torch.randn(3, 8)
    out, rstd = layernorm(carrier_type(source), None, return_rstd=True, backend="torch")
    assert type(out) is carrier_type and type(rstd) is carrier_type
    torch.testing.assert_close(out.tensor, layernorm(source, None, backend="torch"), rtol=0, atol=0)
