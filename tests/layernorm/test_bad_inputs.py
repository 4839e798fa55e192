"""Issue 8, bad-input matrix: every public entry point x every bad (or unusual but valid) input.

Entry points: ``layernorm`` with backend torch / triton / auto, ``torch_layernorm``, ``triton_layernorm``,
``cutedsl_layernorm`` and the ``LayerNorm`` module's forward (backend torch / triton / auto). Each case either
raises a TypeError/ValueError whose message names the culprit, or gives its documented result. In every case the
caller's tensors are left untouched: same values (bitwise, NaNs included) and same ``_version`` (no in-place write),
no ``.grad`` appearing. Outputs are allocated by the API, so there is no caller-provided output that could be
partially written.

``cutedsl_layernorm`` where CuTeDSL cannot run (a CPU tensor, or no cutlass): input validation comes first (a bad
input gets the same TypeError/ValueError as everywhere), and a valid input raises RuntimeError saying why the
backend cannot run, before any other effect: no backend is loaded, nothing is allocated or imported.

Tensors are tiny (M=3, N=8): the matrix runs in a few seconds under the Triton interpreter.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from vibe_kernels.layernorm import (
    LayerNorm,
    api,
    cutedsl_layernorm,
    layernorm,
    layernorm_ref,
    torch_layernorm,
    triton_layernorm,
)
from vibe_kernels.layernorm._backends import cutedsl_unavailable_reason

M, N = 3, 8
REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND_CHOICES = r"backend must be one of \('auto', 'cutedsl', 'triton', 'torch'\), got "


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    backend: str  # the backend it runs on: "torch", "triton", "cutedsl" or "auto"
    is_module: bool = False
    takes_backend: bool = False  # layernorm(..., backend=) and LayerNorm(..., backend=)
    fn: Optional[Callable] = None  # functional entry points: fn(x, weight, bias, **kwargs)


ENTRIES = [
    Entry("layernorm[torch]", "torch", takes_backend=True),
    Entry("layernorm[triton]", "triton", takes_backend=True),
    Entry("layernorm[auto]", "auto", takes_backend=True),
    Entry("torch_layernorm", "torch", fn=torch_layernorm),
    Entry("triton_layernorm", "triton", fn=triton_layernorm),
    Entry("cutedsl_layernorm", "cutedsl", fn=cutedsl_layernorm),
    Entry("LayerNorm[torch]", "torch", is_module=True, takes_backend=True),
    Entry("LayerNorm[triton]", "triton", is_module=True, takes_backend=True),
    Entry("LayerNorm[auto]", "auto", is_module=True, takes_backend=True),
]


class Call:
    """One call of an entry point on a case's inputs. For the module, the caller's tensors are the module's
    parameters (the case's weight/bias wrapped as Parameters, sharing their storage) and its input."""

    def __init__(self, entry: Entry, inputs: dict):
        self.entry = entry
        self.x = inputs["x"]
        self.weight = inputs.get("weight")
        self.bias = inputs.get("bias")
        self.eps = inputs.get("eps", 1e-5)
        self.flags = inputs.get("flags", {})
        self.backend = inputs.get("backend", entry.backend)
        self.module = None
        if entry.is_module:
            x = self.x
            hidden = x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() >= 1 and not x.is_nested else N
            self.module = LayerNorm(hidden, eps=1e-5, backend=self.backend)
            self.module.weight = self._param(self.weight)
            self.module.bias = self._param(self.bias)
            self.module.eps = self.eps
            self.weight, self.bias = self.module.weight, self.module.bias

    @staticmethod
    def _param(t):
        if t is None:
            return None
        can_grad = t.is_floating_point() or t.is_complex()
        return torch.nn.Parameter(t, requires_grad=can_grad and t.requires_grad)

    def tensors(self) -> dict:
        """The caller's tensors, by name."""
        return {k: t for k, t in (("x", self.x), ("weight", self.weight), ("bias", self.bias))
                if isinstance(t, torch.Tensor)}

    def __call__(self):
        if self.module is not None:
            return self.module(self.x)
        if self.entry.fn is not None:
            return self.entry.fn(self.x, self.weight, self.bias, eps=self.eps, **self.flags)
        return layernorm(self.x, self.weight, self.bias, eps=self.eps, backend=self.backend, **self.flags)


# ----------------------------------------------------------------------------------------------------------------
# Untouched-ness
# ----------------------------------------------------------------------------------------------------------------


def _dense_readable(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and not t.is_nested and t.device.type != "meta"


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (NaN-safe bitwise comparison), on the CPU."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def snapshot(tensors: dict) -> dict:
    return {name: (t._version, _bits(t).clone() if _dense_readable(t) else None, t.grad)
            for name, t in tensors.items()}


def assert_untouched(tensors: dict, before: dict, *, grads_allowed: bool = False) -> None:
    for name, t in tensors.items():
        version, bits, grad = before[name]
        assert t._version == version, f"{name} was written in place (_version {version} -> {t._version})"
        if bits is not None:
            assert torch.equal(_bits(t), bits), f"{name}'s values changed"
        if not grads_allowed:
            assert t.grad is grad, f"{name}.grad changed"


# ----------------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """build(device, gen) -> inputs {x, weight, bias, eps, flags, backend}. ``error``: (type, regex) expected from
    every applicable entry (``module_error`` overrides it for the module); None: a valid input whose documented
    result ``check(call, result)`` asserts. ``applies(entry)``: False where the case makes no sense (N/A)."""

    id: str
    build: Callable
    error: Optional[tuple] = None
    module_error: Optional[tuple] = None
    check: Optional[Callable] = None
    applies: Callable = field(default=lambda entry: True)


def _x(gen, device, shape=(M, N), dtype=torch.float32):
    return (torch.randn(shape, generator=gen) + 0.5).to(dtype).to(device)


def _p(gen, device, shape=(N,), dtype=torch.float32):
    return (1 + 0.3 * torch.randn(shape, generator=gen)).to(dtype).to(device)


def _other_device(device: str) -> str:
    return "meta" if device == "cpu" else "cpu"


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (t * 3).to(dtype) if not (dtype.is_floating_point or dtype.is_complex) else t.to(dtype)


def _functional(entry: Entry) -> bool:
    return not entry.is_module


def _layernorm_or_module(entry: Entry) -> bool:
    # "unknown backend" needs an entry point that takes one; the three layernorm[...] entries are the same call
    return entry.is_module or entry.name == "layernorm[auto]"


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


CASES: list[Case] = []

# -- shapes of weight and bias -------------------------------------------------------------------------------------
for length in (N - 1, N + 1):
    CASES.append(Case(
        f"weight_len_{length}", lambda g, d, n=length: dict(x=_x(g, d), weight=_p(g, d, (n,))),
        (ValueError, rf"weight must have shape \({N},\) to match x's last dim, got \({length},\)")))
CASES += [
    Case("weight_2d", lambda g, d: dict(x=_x(g, d), weight=_p(g, d, (1, N))),
         (ValueError, rf"weight must have shape \({N},\) .*got \(1, {N}\)")),
    Case("weight_0d", lambda g, d: dict(x=_x(g, d), weight=_p(g, d, ())),
         (ValueError, rf"weight must have shape \({N},\) .*got \(\)")),
    Case("bias_len_4", lambda g, d: dict(x=_x(g, d), weight=_p(g, d), bias=_p(g, d, (4,))),
         (ValueError, rf"bias must have shape \({N},\) to match x's last dim, got \(4,\)")),
    Case("bias_2d", lambda g, d: dict(x=_x(g, d), weight=None, bias=_p(g, d, (N, 1))),
         (ValueError, rf"bias must have shape \({N},\) .*got \({N}, 1\)")),
]

# -- dtypes --------------------------------------------------------------------------------------------------------
for dtype in (torch.int32, torch.int64, torch.bool, torch.uint8, torch.float64, torch.complex64):
    CASES.append(Case(
        f"x_{_dtype_id(dtype)}", lambda g, d, dt=dtype: dict(x=_cast(_x(g, d), dt), weight=None),
        (TypeError, rf"x must be float16, bfloat16 or float32, got {re.escape(str(dtype))}")))
for which in ("weight", "bias"):
    for dtype in (torch.int32, torch.int64, torch.bool, torch.float64, torch.complex64, torch.float16):
        CASES.append(Case(
            f"{which}_{_dtype_id(dtype)}",
            lambda g, d, dt=dtype, w=which: {"x": _x(g, d), w: _cast(_p(g, d), dt)},
            (TypeError, rf"{which} must be float32 or x's dtype \(torch.float32\), got {re.escape(str(dtype))}")))

# -- devices -------------------------------------------------------------------------------------------------------
for which in ("weight", "bias"):
    CASES.append(Case(
        f"{which}_on_other_device",
        lambda g, d, w=which: {"x": _x(g, d), w: _p(g, d).to(_other_device(d))},
        (ValueError, rf"{which} is on OTHER\S* but x is on DEVICE\S*; put them on the same device")))
CASES.append(Case(
    "x_on_other_device", lambda g, d: dict(x=_x(g, d).to(_other_device(d)), weight=_p(g, d)),
    (ValueError, r"weight is on DEVICE\S* but x is on OTHER\S*; put them on the same device")))

# -- dimensions and layout -----------------------------------------------------------------------------------------
CASES += [
    Case("x_0d", lambda g, d: dict(x=torch.tensor(1.5, device=d), weight=None),
         (ValueError, r"x must have at least 1 dimension \(\.\.\., N\), got a 0-d tensor"),
         module_error=(ValueError, rf"LayerNorm expects input of shape \(\*, {N}\), got \(\)")),
    Case("x_N0", lambda g, d: dict(x=torch.empty(M, 0, device=d), weight=None),
         (ValueError, rf"x's last dim \(the normalized one\) must be >= 1, got shape \({M}, 0\)")),
    Case("x_M0_N0", lambda g, d: dict(x=torch.empty(0, 0, device=d), weight=None),
         (ValueError, r"x's last dim \(the normalized one\) must be >= 1, got shape \(0, 0\)")),
    Case("x_transposed", lambda g, d: dict(x=_x(g, d, (N, M)).t(), weight=None),
         (ValueError, rf"x's last dim must be contiguous \(stride 1\), got stride {M} for shape \({M}, {N}\); "
                      r"call x.contiguous\(\) first")),
    Case("x_every_other_column", lambda g, d: dict(x=_x(g, d, (M, 2 * N))[:, ::2], weight=None),
         (ValueError, rf"x's last dim must be contiguous \(stride 1\), got stride 2 for shape \({M}, {N}\)")),
    Case("x_expanded_last_dim", lambda g, d: dict(x=_x(g, d, (M, 1)).expand(M, N), weight=None),
         (ValueError, rf"x's last dim must be contiguous \(stride 1\), got stride 0 for shape \({M}, {N}\)")),
    Case("x_3d_permuted", lambda g, d: dict(x=_x(g, d, (2, N, M)).permute(0, 2, 1), weight=None),
         (ValueError, rf"x's last dim must be contiguous \(stride 1\), got stride {M} for shape \(2, {M}, {N}\)")),
    # Not dense: today sparse x gets a misleading "stride 0" message (or RuntimeError), sparse weight a
    # RuntimeError from .contiguous(), nested x an internal RuntimeError (a layout check is needed in check_inputs).
    Case("x_sparse_coo", lambda g, d: dict(x=_x(g, d).to_sparse(), weight=None),
         (TypeError, r"x must be a dense \(strided\) tensor, got layout torch.sparse_coo")),
    Case("x_sparse_csr", lambda g, d: dict(x=_x(g, d).to_sparse_csr(), weight=None),
         (TypeError, r"x must be a dense \(strided\) tensor, got layout torch.sparse_csr")),
    Case("x_nested", lambda g, d: dict(x=torch.nested.nested_tensor([_x(g, d, (2, N)), _x(g, d, (1, N))]),
                                       weight=None),
         (TypeError, r"x must be a dense \(strided\) tensor, got a nested tensor"),
         applies=_functional),  # the module's own shape check reads input.shape first (see the report)
    Case("weight_sparse", lambda g, d: dict(x=_x(g, d), weight=_p(g, d).to_sparse()),
         (TypeError, r"weight must be a dense \(strided\) tensor, got layout torch.sparse_coo")),
    Case("bias_sparse", lambda g, d: dict(x=_x(g, d), weight=None, bias=_p(g, d).to_sparse()),
         (TypeError, r"bias must be a dense \(strided\) tensor, got layout torch.sparse_coo")),
    Case("x_not_a_tensor", lambda g, d: dict(x=[[1.0] * N] * M, weight=None),
         (TypeError, r"x must be a torch.Tensor, got list"),
         module_error=(TypeError, r"(x|input) must be a torch.Tensor, got list")),
    Case("weight_not_a_tensor", lambda g, d: dict(x=_x(g, d), weight=[1.0] * N),
         (TypeError, r"weight must be a torch.Tensor or None, got list"), applies=_functional),
]

# -- eps -------------------------------------------------------------------------------------------------------------
for eps in (0.0, -1e-5, math.nan, math.inf, -math.inf):
    CASES.append(Case(f"eps_{eps}", lambda g, d, e=eps: dict(x=_x(g, d), weight=None, eps=e),
                      (ValueError, rf"eps must be a finite number > 0, got {eps}")))
for eps in (True, False, "1e-5", None, 1j):
    CASES.append(Case(f"eps_{type(eps).__name__}_{eps}", lambda g, d, e=eps: dict(x=_x(g, d), weight=None, eps=e),
                      (TypeError, rf"eps must be a float, got {type(eps).__name__}")))
CASES.append(Case("eps_tensor", lambda g, d: dict(x=_x(g, d), weight=None, eps=torch.tensor(1e-5)),
                  (TypeError, r"eps must be a float, got Tensor")))
CASES += [
    # 1e-50 is > 0 but is 0 in float32, where the kernels add it to the variance: a constant row (a zero-padding
    # row) then gives 0 * rsqrt(0) = NaN silently. Needs a check (see the report).
    Case("eps_underflows_float32", lambda g, d: dict(x=torch.zeros(M, N, device=d), weight=None, eps=1e-50),
         (ValueError, r"eps.*float32")),
    # An int too large for a float: OverflowError from math.isfinite today.
    Case("eps_huge_int", lambda g, d: dict(x=_x(g, d), weight=None, eps=10**400),
         (ValueError, r"eps must be a finite number > 0")),
]

# -- return flags ----------------------------------------------------------------------------------------------------
for flag, value in (("return_rstd", "False"), ("return_mean", "yes"), ("return_rstd", None), ("return_mean", 1)):
    CASES.append(Case(
        f"{flag}_{type(value).__name__}", lambda g, d, f=flag, v=value: dict(x=_x(g, d), weight=None, flags={f: v}),
        (TypeError, rf"{flag} must be a bool, got {type(value).__name__}"), applies=_functional))

# -- backend names ---------------------------------------------------------------------------------------------------
for name in ("cuda", "Triton", "", None):
    CASES.append(Case(f"backend_{name!r}", lambda g, d, b=name: dict(x=_x(g, d), weight=None, backend=b),
                      (ValueError, BACKEND_CHOICES + re.escape(repr(name))), applies=_layernorm_or_module))


# -- valid inputs with a documented result -------------------------------------------------------------------------


def _check_empty_rows(call: Call, result) -> None:
    """M = 0: empty outputs (and statistics) of the right shapes and dtypes; backward gives zero dw/db."""
    x = call.x
    out, *stats = result if isinstance(result, tuple) else (result,)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    for s in stats:
        assert s.shape == x.shape[:-1] and s.dtype == torch.float32
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for p in (call.weight, call.bias):
        assert p.grad is not None and p.grad.dtype == p.dtype
        assert torch.equal(p.grad, torch.zeros_like(p)), "dw/db of an empty batch must be zeros"


def _build_empty(shape, dtype):
    def build(g, d):
        return dict(x=_x(g, d, shape, dtype).requires_grad_(), weight=_p(g, d).requires_grad_(),
                    bias=_p(g, d).requires_grad_(), flags=dict(return_rstd=True, return_mean=True))
    return build


def _check_nan_column(column: int, backward: bool):
    def check(call: Call, out) -> None:
        """A NaN weight (or bias) entry makes exactly that output column NaN; dw/db do not involve the weight,
        so they stay finite."""
        nan = torch.isnan(out)
        assert nan[:, column].all(), f"column {column} should be NaN"
        others = torch.ones(out.shape[-1], dtype=torch.bool, device=out.device)
        others[column] = False
        assert not nan[:, others].any() and torch.isfinite(out[:, others]).all(), "NaN leaked out of its column"
        if backward:
            out.backward(torch.ones_like(out))
            for p in (call.weight, call.bias):
                assert p.grad is not None and torch.isfinite(p.grad).all(), "dw/db must stay finite"
    return check


def _nan_at(t: torch.Tensor, column: int) -> torch.Tensor:
    t = t.detach().clone()
    t[column] = float("nan")
    return t.requires_grad_()


def _check_n1(call: Call, out) -> None:
    """N = 1: each row normalizes to 0, so out is exactly the bias (any last-dim stride is fine for N = 1)."""
    assert out.shape == call.x.shape
    torch.testing.assert_close(out, call.bias.detach().expand_as(out), rtol=0, atol=0)


def _check_matches_reference(call: Call, out) -> None:
    ref = layernorm_ref(call.x.detach().double(), None if call.weight is None else call.weight.detach().double(),
                        None if call.bias is None else call.bias.detach().double(), float(call.eps))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


CASES += [
    Case("empty_rows", _build_empty((0, N), torch.float32), check=_check_empty_rows, applies=_functional),
    Case("empty_rows_3d_fp16", _build_empty((2, 0, N), torch.float16), check=_check_empty_rows, applies=_functional),
    Case("empty_rows_module", lambda g, d: dict(x=_x(g, d, (0, N)).requires_grad_(), weight=_p(g, d).requires_grad_(),
                                                bias=_p(g, d).requires_grad_()),
         check=_check_empty_rows, applies=lambda e: e.is_module),
    Case("nan_in_weight", lambda g, d: dict(x=_x(g, d), weight=_nan_at(_p(g, d), 5), bias=_p(g, d).requires_grad_()),
         check=_check_nan_column(5, backward=True)),
    Case("nan_in_bias", lambda g, d: dict(x=_x(g, d), weight=_p(g, d), bias=_nan_at(_p(g, d), 2)),
         check=_check_nan_column(2, backward=False)),
    Case("N1_transposed", lambda g, d: dict(x=_x(g, d, (1, M)).t(), weight=_p(g, d, (1,)), bias=_p(g, d, (1,))),
         check=_check_n1),
    Case("rows_expanded", lambda g, d: dict(x=_x(g, d, (1, N)).expand(M, N), weight=_p(g, d), bias=_p(g, d)),
         check=_check_matches_reference),
    Case("eps_int_1", lambda g, d: dict(x=_x(g, d), weight=_p(g, d), eps=1), check=_check_matches_reference),
]


def _resolve_regex(regex: str, device: str) -> str:
    return regex.replace("OTHER", re.escape(_other_device(device))).replace("DEVICE", re.escape(device))


def _cannot_run(entry: Entry, device: str) -> Optional[str]:
    """Why ``entry`` cannot run on ``device`` (its RuntimeError message), or None."""
    if entry.backend == "cutedsl":
        reason = cutedsl_unavailable_reason(torch.device(device))
        if reason:
            return "backend='cutedsl' cannot run: " + reason
    return None


PARAMS = [pytest.param(entry, case, id=f"{entry.name}-{case.id}")
          for case in CASES for entry in ENTRIES if case.applies(entry)]


@pytest.mark.parametrize("entry, case", PARAMS)
def test_bad_input_matrix(entry, case, gen, device, monkeypatch):
    inputs = case.build(gen, device)
    call = Call(entry, inputs)
    tensors = call.tensors()
    before = snapshot(tensors)
    loaded = []
    real_load = api.load_backend
    monkeypatch.setattr(api, "load_backend", lambda name: loaded.append(name) or real_load(name))

    error = (case.module_error or case.error) if entry.is_module else case.error
    if error is None and _cannot_run(entry, device):
        # A valid input on a backend that cannot run here: RuntimeError saying why, before any other effect.
        error = (RuntimeError, re.escape(_cannot_run(entry, device)))
    if error is not None:
        exc_type, regex = error
        with pytest.raises(exc_type, match=_resolve_regex(regex, device)):
            call()
        assert not loaded, f"a backend was loaded ({loaded}) before the input was rejected"
        assert_untouched(tensors, before)
        return

    result = call()
    case.check(call, result)
    assert_untouched(tensors, before, grads_allowed=True)


def test_every_case_reaches_every_entry_point():
    """No case silently skips all entry points, and each entry point meets at least 40 cases."""
    for case in CASES:
        assert any(case.applies(e) for e in ENTRIES), case.id
    for entry in ENTRIES:
        assert sum(case.applies(entry) for case in CASES) >= 40, entry.name


def test_cutedsl_refusal_has_no_side_effects():
    """cutedsl_layernorm on CPU tensors in a fresh interpreter: RuntimeError naming the reason, and nothing else
    happened -- neither cutlass nor triton imported, no autograd graph, the inputs untouched."""
    code = r"""
import sys, torch
import vibe_kernels.layernorm as ln
x = torch.randn(3, 8, requires_grad=True)
w = torch.randn(8, requires_grad=True)
versions = (x._version, w._version)
try:
    ln.cutedsl_layernorm(x, w, return_rstd=True)
except RuntimeError as exc:
    message = str(exc)
else:
    raise SystemExit("no RuntimeError")
assert message.startswith("backend='cutedsl' cannot run: "), message
assert "cutlass" not in sys.modules and "triton" not in sys.modules, "a backend was imported before refusing"
assert (x._version, w._version) == versions and x.grad is None and w.grad is None
print("OK", message)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stdout + proc.stderr
