"""Providers for the bench and validate commands: our backends and the third-party anchors behind one interface.

A provider turns a case's tensors into a ``Runner`` whose ``step(mode)`` is the callable that gets timed:

* ``"fwd"``     forward only, under ``torch.no_grad()``;
* ``"fwdbwd"``  forward then backward of ``dy``; x, weight and bias require grad, their grads are set to None at
                the start of every step (inside the timed call, the same for every provider);
* ``"bwd"``     backward only, through a graph built once and retained.

Each step returns a ``StepOutput`` (out and/or grads) so the caller can check it against the fp32 reference.

Anchors: torch = ``F.layer_norm`` (native CUDA kernel); compile = ``torch.compile`` of the fp32-upcast reference;
quack = quack-kernels' ``layernorm_fwd``/``layernorm_bwd`` (CuTeDSL; no autograd Function for LayerNorm, so the
backward is called explicitly with the stats the forward returned); liger = liger-kernel's
``LigerLayerNormFunction`` (Triton). Third-party packages are imported on first use, never at module import.

Variants (``Variant``): RMSNorm instead of LayerNorm, the fused pre-norm residual (out, h = norm(x + r), h = x + r
returned and differentiated too, as in a pre-norm block), and an output dtype other than x's. Every provider that
has the variant runs it through autograd (``VariantRunner``); one that lacks it raises NotImplementedError (a
"fails" cell). torch = the unfused composition (``x + r``, ``F.layer_norm``/``F.rms_norm``, ``.to(out_dtype)``);
(upcast first for a wider out_dtype); compile = ``torch.compile`` of the same composition over the fp32 references; quack = ``quack.rmsnorm.rmsnorm``
(RMSNorm only, with its residual / out_dtype; prenorm=True returns h); liger = ``LigerRMSNormFunction`` (RMSNorm
only, no bias, no residual, no out_dtype; "gemma" casting = fp32 math, not in place).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._backends import cutedsl_unavailable_reason, triton_unavailable_reason
from .api import layernorm, rmsnorm
from .reference import layernorm_ref, rmsnorm_ref

EPS = 1e-6
MODES = ("fwd", "fwdbwd", "bwd")

Tensor = torch.Tensor


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> "float16"."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Case:
    """One benchmark/validation problem: an (rows, hidden) input of ``dtype``, with or without a bias."""

    rows: int
    hidden: int
    dtype: torch.dtype
    bias: bool

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.hidden} {dtype_name(self.dtype)} {'+bias' if self.bias else 'no bias'}"


def make_inputs(case: Case, device: torch.device) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """(x, weight, bias, dy) under torch.manual_seed(0): x, dy ~ randn in the case's dtype; weight, bias ~ randn
    fp32 (bias None when the case has none). x then weight first, as in the seed's validation script."""
    torch.manual_seed(0)
    x = torch.randn(case.rows, case.hidden, device=device, dtype=case.dtype)
    weight = torch.randn(case.hidden, device=device, dtype=torch.float32)
    bias = torch.randn(case.hidden, device=device, dtype=torch.float32) if case.bias else None
    dy = torch.randn(case.rows, case.hidden, device=device, dtype=case.dtype)
    return x, weight, bias, dy


@dataclass(frozen=True)
class Variant:
    """What is benchmarked: ``op`` "layernorm" or "rmsnorm"; ``residual``: the fused pre-norm residual (h = x + r in
    x's dtype, returned and differentiated); ``out_dtype``: the output's dtype (None: x's). ``leaf_inputs`` (with the
    residual): x and r are autograd leaves, so x.grad and r.grad must be two tensors (the gradient is written or
    copied twice); otherwise they are outputs of an upstream op, as in a model, whose backward takes the one
    gradient (``Produced``)."""

    op: str = "layernorm"
    residual: bool = False
    out_dtype: Optional[torch.dtype] = None
    leaf_inputs: bool = False

    @property
    def plain_layernorm(self) -> bool:
        return self.op == "layernorm" and not self.residual and self.out_dtype is None

    @property
    def same_bytes_sol(self) -> bool:
        """The residual and out_dtype variants are measured against a copy of the same bytes (see bench)."""
        return self.residual or self.out_dtype is not None

    @property
    def label(self) -> str:
        parts = [self.op]
        if self.residual:
            parts.append("fused residual" + (" (x, r leaves)" if self.leaf_inputs else ""))
        if self.out_dtype is not None:
            parts.append(f"out {dtype_name(self.out_dtype)}")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"op": self.op, "residual": self.residual,
                "out_dtype": dtype_name(self.out_dtype) if self.out_dtype is not None else None,
                "leaf_inputs": self.leaf_inputs}


PLAIN = Variant()
OPS = ("layernorm", "rmsnorm")


def variant_inputs(case: Case, variant: Variant, dy: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], Tensor]:
    """(residual, dh, dy) for ``variant``: the residual and h's gradient (x's dtype, None without the residual) and
    dy in the output's dtype, under torch.manual_seed(1)."""
    torch.manual_seed(1)
    residual = dh = None
    if variant.residual:
        residual = torch.randn_like(dy)
        dh = torch.randn_like(dy)
    if variant.out_dtype is not None:
        dy = dy.to(variant.out_dtype)
    return residual, dh, dy


class Grads(NamedTuple):
    dx: Tensor
    dweight: Optional[Tensor]
    dbias: Optional[Tensor]
    dresidual: Optional[Tensor] = None  # the residual variant only


class StepOutput(NamedTuple):
    out: Optional[Tensor]  # None in "bwd" mode
    grads: Optional[Grads]  # None in "fwd" mode


class ResidualStepOutput(NamedTuple):
    """The residual variant's step: StepOutput plus h = x + r (None in "bwd" mode)."""

    out: Optional[Tensor]
    grads: Optional[Grads]
    h: Optional[Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------------------------------------------


class Runner:
    """Base: subclasses define the three steps; ``step(mode)`` picks one."""

    def _forward(self) -> StepOutput:
        raise NotImplementedError

    def _forward_backward(self) -> StepOutput:
        raise NotImplementedError

    def _retained_backward(self) -> Callable[[], StepOutput]:
        raise NotImplementedError

    def forward_tracking_grad(self) -> Tensor:
        """One forward with the inputs requiring grad (builds the graph where there is one; no backward)."""
        raise NotImplementedError

    def step(self, mode: str) -> Callable[[], StepOutput]:
        if mode == "fwd":
            return self._forward
        if mode == "fwdbwd":
            return self._forward_backward
        if mode == "bwd":
            return self._retained_backward()
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class _LeafRunner(Runner):
    """A runner whose inputs are autograd leaves (``self._leaves``, None where absent): their grads, cleared and
    collected once per step."""

    _leaves: list

    def _grads(self) -> Grads:
        return Grads(*(t.grad if t is not None else None for t in self._leaves))

    def _clear_grads(self) -> None:
        for leaf in self._leaves:
            if leaf is not None:
                leaf.grad = None


class AutogradRunner(_LeafRunner):
    """A provider differentiable through torch autograd: ``fn(x, weight, bias) -> out``."""

    def __init__(self, fn: Callable, x: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor):
        self.fn, self.x, self.weight, self.bias, self.dy = fn, x, weight, bias, dy
        self._leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias)]

    def _forward(self) -> StepOutput:
        with torch.no_grad():
            return StepOutput(self.fn(self.x, self.weight, self.bias), None)

    def _forward_backward(self) -> StepOutput:
        self._clear_grads()
        out = self.fn(*self._leaves)
        out.backward(self.dy)
        return StepOutput(out, self._grads())

    def _retained_backward(self) -> Callable[[], StepOutput]:
        out = self.fn(*self._leaves)

        def backward() -> StepOutput:
            self._clear_grads()
            out.backward(self.dy, retain_graph=True)
            return StepOutput(None, self._grads())

        return backward

    def forward_tracking_grad(self) -> Tensor:
        return self.fn(*self._leaves)


class Produced(torch.autograd.Function):
    """x (or the residual) as the output of an upstream op, as in a model: its backward takes the gradient and
    ends there, keeping it (by reference, no copy, no kernel) in ``sink[name]`` for the check; the gradient is then
    never a leaf's .grad. The forward returns a view (no kernel)."""

    @staticmethod
    def forward(ctx, t, sink, name):
        ctx.sink, ctx.name = sink, name
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        ctx.sink[ctx.name] = grad
        return None, None, None


class VariantRunner(_LeafRunner):
    """A variant through torch autograd: ``fn(x, weight, bias, residual) -> out`` or ``(out, h)`` with a residual.
    The backward sends dy into out and dh into h; x, weight, bias and the residual require grad. With a residual and
    ``leaf_inputs`` False, x and the residual reach ``fn`` through ``Produced`` (computed tensors, as in a model);
    else they are leaves."""

    def __init__(self, fn: Callable, x: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor,
                 residual: Optional[Tensor] = None, dh: Optional[Tensor] = None, leaf_inputs: bool = False):
        self.fn, self.x, self.weight, self.bias, self.dy = fn, x, weight, bias, dy
        self.residual, self.dh = residual, dh
        self._leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias, residual)]
        self._produced = residual is not None and not leaf_inputs
        self._sink: dict = {}

    def _split(self, result) -> tuple[Tensor, Optional[Tensor]]:
        return result if self.residual is not None else (result, None)

    def _call(self, tensors) -> tuple[Tensor, Optional[Tensor]]:
        if self._produced and tensors is self._leaves:
            x, weight, bias, residual = tensors
            tensors = (Produced.apply(x, self._sink, "x"), weight, bias, Produced.apply(residual, self._sink, "r"))
        return self._split(self.fn(*tensors))

    def _grads(self) -> Grads:
        if not self._produced:
            return super()._grads()
        return Grads(self._sink.get("x"), self._leaves[1].grad, self._leaves[2].grad if self.bias is not None
                     else None, self._sink.get("r"))

    def _clear_grads(self) -> None:
        super()._clear_grads()
        self._sink.clear()

    def _output(self, out, grads, h):
        return StepOutput(out, grads) if self.residual is None else ResidualStepOutput(out, grads, h)

    def _forward(self) -> StepOutput:
        with torch.no_grad():
            out, h = self._call((self.x, self.weight, self.bias, self.residual))
        return self._output(out, None, h)

    def _backward(self, out: Tensor, h: Optional[Tensor], retain: bool) -> None:
        outputs, grads = ([out], [self.dy]) if h is None else ([out, h], [self.dy, self.dh])
        torch.autograd.backward(outputs, grads, retain_graph=retain)

    def _forward_backward(self) -> StepOutput:
        self._clear_grads()
        out, h = self._call(self._leaves)
        self._backward(out, h, False)
        return self._output(out, self._grads(), h)

    def _retained_backward(self) -> Callable[[], StepOutput]:
        out, h = self._call(self._leaves)

        def backward() -> StepOutput:
            self._clear_grads()
            self._backward(out, h, True)
            return self._output(None, self._grads(), None)

        return backward

    def forward_tracking_grad(self) -> Tensor:
        return self._call(self._leaves)[0]


class QuackRunner(Runner):
    """quack-kernels 0.6.x: ``layernorm_fwd`` and ``layernorm_bwd`` called explicitly (fp32 weight and bias)."""

    def __init__(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor):
        self._quack = _import_quack_rmsnorm()
        self.x, self.weight, self.bias, self.dy = x, weight, bias, dy

    def _forward(self) -> StepOutput:
        return StepOutput(self._quack.layernorm_fwd(self.x, self.weight, self.bias, eps=EPS), None)

    def _backward(self, rstd: Tensor, mean: Tensor) -> Grads:
        return Grads(*self._quack.layernorm_bwd(
            self.x, self.weight, self.dy, rstd, mean, has_bias=self.bias is not None
        ))

    def _forward_with_stats(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._quack.layernorm_fwd(self.x, self.weight, self.bias, eps=EPS, return_rstd=True, return_mean=True)

    def _forward_backward(self) -> StepOutput:
        out, rstd, mean = self._forward_with_stats()
        return StepOutput(out, self._backward(rstd, mean))

    def _retained_backward(self) -> Callable[[], StepOutput]:
        _, rstd, mean = self._forward_with_stats()
        return lambda: StepOutput(None, self._backward(rstd, mean))

    def forward_tracking_grad(self) -> Tensor:
        x = self.x.detach().requires_grad_()
        return self._quack.layernorm_fwd(x, self.weight, self.bias, eps=EPS)


# ----------------------------------------------------------------------------------------------------------------
# Third-party imports (lazy)
# ----------------------------------------------------------------------------------------------------------------


def _import_quack_rmsnorm():
    return importlib.import_module("quack.rmsnorm")


def quack_forward_with_stats(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Quack's LayerNorm forward returning (out, rstd, mean): ``quack.rmsnorm.layernorm_fwd`` in quack 0.6.x,
    ``quack.layernorm.layernorm`` in older releases (which take no bias: NotImplementedError then)."""
    try:
        quack_rmsnorm = _import_quack_rmsnorm()
        forward = quack_rmsnorm.layernorm_fwd
    except (ImportError, AttributeError):
        forward = None
    if forward is not None:
        return forward(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True)
    legacy = importlib.import_module("quack.layernorm")
    if bias is not None:
        raise NotImplementedError("quack.layernorm.layernorm (quack < 0.6) has no bias argument")
    return legacy.layernorm(x, weight, eps=EPS, return_rstd=True, return_mean=True)


def _liger_fn() -> Callable:
    liger_function = importlib.import_module("liger_kernel.ops.layer_norm").LigerLayerNormFunction

    def liger_layernorm(x, weight, bias):
        # Liger's kernels always read a bias: a zero bias (not trained) stands in when the case has none.
        if bias is None:
            bias = torch.zeros_like(weight, requires_grad=False)
        return liger_function.apply(x, weight, bias, EPS)

    return liger_layernorm


def _compiled_reference_fn() -> Callable:
    # One compiled function per case: dynamo's cache lives on layernorm_ref's code object and would otherwise hit
    # its recompile limit across a sweep's shapes (and fall back to eager without saying so).
    torch._dynamo.reset()
    # The bench's bwd-only mode backpropagates through one graph repeatedly (retain_graph=True), which AOTAutograd
    # forbids for graphs compiled with donated buffers (a memory saving only; kernel times are unaffected).
    torch._functorch.config.donated_buffer = False
    compiled = torch.compile(layernorm_ref, dynamic=False)
    return lambda x, weight, bias: compiled(x, weight, bias, EPS)


def _torch_fn(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)


def _vibe_fn(backend: str) -> Callable:
    return lambda x, weight, bias: layernorm(x, weight, bias, eps=EPS, backend=backend)


# Variant functions: ``fn(x, weight, bias, residual) -> out`` or ``(out, h)``; NotImplementedError when the
# provider lacks the variant.


def _vibe_variant_fn(backend: str) -> Callable[[Variant], Callable]:
    def make(variant: Variant) -> Callable:
        norm = rmsnorm if variant.op == "rmsnorm" else layernorm

        def fn(x, weight, bias, residual):
            if residual is None:
                return norm(x, weight, bias, eps=EPS, out_dtype=variant.out_dtype, backend=backend)
            return norm(x, weight, bias, eps=EPS, out_dtype=variant.out_dtype, backend=backend, residual=residual,
                        return_residual=True)

        return fn

    return make


def _torch_variant_fn(variant: Variant) -> Callable:
    # A wider out_dtype: upcast first (else the output would carry only x's precision); a narrower one: cast the
    # result.
    upcast = variant.out_dtype is not None and torch.finfo(variant.out_dtype).bits > 16

    def fn(x, weight, bias, residual):
        h = x + residual if residual is not None else x
        shape = (x.shape[-1],)
        src = h.to(variant.out_dtype) if upcast else h
        if upcast:
            weight = weight.to(variant.out_dtype) if weight is not None else None
            bias = bias.to(variant.out_dtype) if bias is not None else None
        if variant.op == "rmsnorm":
            out = F.rms_norm(src, shape, weight, EPS)
            if bias is not None:
                out = out + bias
        else:
            out = F.layer_norm(src, shape, weight, bias, EPS)
        if variant.out_dtype is not None:
            out = out.to(variant.out_dtype)
        return (out, h) if residual is not None else out

    return fn


def _compiled_variant_fn(variant: Variant) -> Callable:
    torch._dynamo.reset()
    torch._functorch.config.donated_buffer = False
    ref = rmsnorm_ref if variant.op == "rmsnorm" else layernorm_ref

    def composition(x, weight, bias, residual):
        h = x + residual if residual is not None else x
        out = ref(h, weight, bias, EPS, out_dtype=variant.out_dtype)
        return (out, h) if residual is not None else out

    return torch.compile(composition, dynamic=False)


def _quack_variant_fn(variant: Variant) -> Callable:
    if variant.op != "rmsnorm":
        raise NotImplementedError("quack has no public LayerNorm with a residual or an out_dtype")
    quack_rmsnorm = _import_quack_rmsnorm().rmsnorm

    def fn(x, weight, bias, residual):
        return quack_rmsnorm(x, weight, bias, residual=residual, out_dtype=variant.out_dtype, eps=EPS,
                             prenorm=residual is not None)

    return fn


def _liger_variant_fn(variant: Variant) -> Callable:
    if variant.op != "rmsnorm" or variant.residual or variant.out_dtype is not None:
        raise NotImplementedError("liger: plain RMSNorm only (no residual, no out_dtype) besides LayerNorm")
    liger_function = importlib.import_module("liger_kernel.ops.rms_norm").LigerRMSNormFunction

    def fn(x, weight, bias, residual):
        if bias is not None:
            raise NotImplementedError("liger's RMSNorm has no bias")
        return liger_function.apply(x, weight, EPS, 0.0, "gemma", False)

    return fn


# ----------------------------------------------------------------------------------------------------------------
# Availability
# ----------------------------------------------------------------------------------------------------------------


def _missing_package(module: str, pip_name: str) -> str:
    return "" if importlib.util.find_spec(module) is not None else f"the '{pip_name}' package is not installed"


def _needs_cuda(device: torch.device) -> str:
    return "" if device.type == "cuda" else "needs a CUDA device"


def _needs_hopper(device: torch.device) -> str:
    if device.type != "cuda":
        return "needs a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    return "" if major >= 9 else f"needs Hopper (sm_90) or newer; this GPU is sm_{major}{minor}"


def _first_reason(*checks: Callable[[], str]) -> str:
    for check in checks:
        reason = check()
        if reason:
            return reason
    return ""


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """name: the CLI name; title: the table column; params_in_x_dtype: weight/bias are cast to x's dtype (the
    provider needs it), else passed as fp32."""

    name: str
    title: str
    params_in_x_dtype: bool
    unavailable_reason: Callable[[torch.device], str]
    make_runner: Callable[[Tensor, Tensor, Optional[Tensor], Tensor], Runner]
    # Variant -> fn(x, weight, bias, residual) (raises NotImplementedError for a variant it lacks); None: none.
    variant_fn: Optional[Callable[[Variant], Callable]] = None

    def runner(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor, variant: Variant = PLAIN,
               residual: Optional[Tensor] = None, dh: Optional[Tensor] = None) -> Runner:
        """x, dy (M, N) in the case's dtype (dy in the variant's out_dtype); weight, bias (N,) fp32 (cast here when
        the provider needs it); residual, dh for the residual variant."""
        if self.params_in_x_dtype:
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        if variant.plain_layernorm:
            return self.make_runner(x, weight, bias, dy)
        if self.variant_fn is None:
            raise NotImplementedError(f"{self.name} has no {variant.label}")
        return VariantRunner(self.variant_fn(variant), x, weight, bias, dy, residual, dh, variant.leaf_inputs)


def _autograd(fn_factory: Callable[[], Callable]):
    return lambda x, weight, bias, dy: AutogradRunner(fn_factory(), x, weight, bias, dy)


PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        Provider("torch", "Torch", True, lambda device: "", _autograd(lambda: _torch_fn), _torch_variant_fn),
        Provider("cutedsl", "CuTeDSL", False, cutedsl_unavailable_reason, _autograd(lambda: _vibe_fn("cutedsl")),
                 _vibe_variant_fn("cutedsl")),
        Provider("triton", "Triton", False, triton_unavailable_reason, _autograd(lambda: _vibe_fn("triton")),
                 _vibe_variant_fn("triton")),
        Provider(
            "quack", "Quack", False,
            lambda device: _first_reason(lambda: _missing_package("quack", "quack-kernels"),
                                         lambda: _needs_hopper(device)),
            QuackRunner, _quack_variant_fn,
        ),
        Provider(
            "liger", "Liger", True,
            lambda device: _first_reason(lambda: _missing_package("liger_kernel", "liger-kernel"),
                                         lambda: _needs_cuda(device)),
            _autograd(_liger_fn), _liger_variant_fn,
        ),
        Provider(
            "compile", "Compile", False,
            lambda device: _first_reason(lambda: _needs_cuda(device)),
            _autograd(_compiled_reference_fn), _compiled_variant_fn,
        ),
    )
}

# Our own backends, in the order the validate command reports them.
VIBE_BACKENDS = ("cutedsl", "triton", "torch")


def unavailable_reason(name: str, device: torch.device) -> str:
    """Empty when provider ``name`` can run on ``device``, else why not."""
    return PROVIDERS[name].unavailable_reason(device)
