"""Shared test setup: the Triton interpreter on machines without CUDA, the ``device`` fixture, the ``gpu`` marker,
and the one tolerance table (per dtype) that every numerics test uses; on a GPU, cached memory released after tests
that leave much of it reserved (parallel workers share the device).

Without CUDA, TRITON_INTERPRET=1 must be set before anything imports triton (triton decides at import time whether
``@triton.jit`` builds compiled or interpreted kernels), so it is set here, at conftest import, before any test
module is collected.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
# CuTeDSL writes --keep-ptx files (read back as compiled.__ptx__) into one dump directory under names that do not
# encode the kernel's config: parallel test workers need a directory each, chosen before cutlass is imported.
os.environ["CUTE_DSL_DUMP_DIR"] = tempfile.mkdtemp(prefix="vk-cute-dump-")
# The CuTeDSL disk cache of compiled kernels goes to a per-process scratch directory, never the user's ~/.cache.
os.environ.setdefault("VIBE_KERNELS_CACHE_DIR", tempfile.mkdtemp(prefix="vk-cute-cache-"))

from vibe_kernels.layernorm import (  # noqa: E402 (imports no triton)
    layernorm_mean_ref,
    layernorm_ref,
    layernorm_rstd_ref,
    rmsnorm_ref,
    rmsnorm_rstd_ref,
)

# True when Triton kernels run under the interpreter (CPU tensors): bf16 stores there truncate instead of rounding.
INTERPRETED = not CUDA


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def fresh_dynamo():
    """The test compiles from scratch and leaves no cached frames behind for the next (the torch.compile tests)."""
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# Parallel GPU workers share one device: each keeps what its caching allocator reserved (up to ~9 GB a worker at
# 14 workers on the H100, eighteenth session), so a worker returns it once a test leaves more than this reserved.
GPU_RESERVED_LIMIT_BYTES = 2 << 30


@pytest.fixture(autouse=True)
def _release_cached_gpu_memory():
    yield
    if CUDA and torch.cuda.memory_reserved() > GPU_RESERVED_LIMIT_BYTES:
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if CUDA else "cpu"


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator seeded from the test's id: fresh, reproducible inputs per test (move them to the device)."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**31)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# The tolerance table
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """Allowed error of a result in ``dtype``, compared with the fp64 reference ``ref``:

        |result - ref| <= ulps * eps(dtype) * |ref|  +  arith_ulps(N) * eps(fp32) * terms  (+ fp16's subnormal step)

    The first part is the rounding of the result to its dtype (eps = one ulp at 1.0, so eps * |ref| >= one ulp of
    ref): one ulp for out, the interpreter's truncating bf16 store adds one more. The second part is the kernels'
    fp32 arithmetic, relative to the magnitude of the terms that produced the result (not the result itself, which
    can cancel to ~0): out: (|x| + |mean|) * rstd * |w| + |b|; dx: rstd * (|g| + (1 + |x_hat|) * rms_row(g)),
    g = dy * w; dw, db: sqrt(M) * rms over rows of the summed terms (dy * x_hat, dy), so it grows with sqrt(M).
    Its ulps grow with log2(N): tree reductions over a row (mean, variance, the pivot-shifted sums of the chunked
    kernel, the backward's row coefficients) lose about an ulp per level.
    """

    out_ulps: float
    dx_ulps: float
    param_ulps: float


TOLERANCES = {
    torch.float32: Tolerance(out_ulps=1, dx_ulps=1, param_ulps=1),
    torch.float16: Tolerance(out_ulps=1, dx_ulps=1, param_ulps=1),
    torch.bfloat16: Tolerance(out_ulps=1 + INTERPRETED, dx_ulps=1 + INTERPRETED, param_ulps=1 + INTERPRETED),
}


def ulp(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def arith_ulps(hidden: int) -> float:
    return 8 + 2 * math.ceil(math.log2(max(hidden, 1)))


def bound(dtype: torch.dtype, ulps: float, ref: torch.Tensor, terms, hidden: int) -> torch.Tensor:
    floor = 2.0**-24 if dtype == torch.float16 else 0.0  # fp16 below 2**-14 is subnormal, spaced 2**-24
    return ulps * ulp(dtype) * ref.abs() + arith_ulps(hidden) * ulp(torch.float32) * terms + floor


def assert_within(actual: torch.Tensor, ref: torch.Tensor, allowed, what: str) -> None:
    """Every element: finite, and |actual - ref| <= allowed (computed in fp64 on ref's device). Reports the worst
    offender."""
    assert tuple(actual.shape) == tuple(ref.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    ref64 = ref.detach().double()
    actual64 = actual.detach().to(device=ref64.device, dtype=torch.float64)
    allowed = torch.as_tensor(allowed, dtype=torch.float64, device=ref64.device).expand_as(ref64)
    finite = torch.isfinite(actual64)
    assert bool(finite.all()), f"{what}: {int((~finite).sum())} non-finite values (unwritten output?)"
    err = (actual64 - ref64).abs()
    excess = err - allowed
    if excess.numel() and bool(excess.max() > 0):
        idx = int(excess.flatten().argmax())
        bad = int((excess > 0).sum())
        raise AssertionError(
            f"{what}: {bad}/{err.numel()} elements out of tolerance; worst at flat index {idx}: got "
            f"{actual64.flatten()[idx].item()!r}, expected {ref64.flatten()[idx].item()!r}, error "
            f"{err.flatten()[idx].item():.3e} > allowed {allowed.flatten()[idx].item():.3e}"
        )


def _f64(t):
    return None if t is None else t.detach().double()


class Checker:
    """Compares kernel results with fp64 references under TOLERANCES. The ``*_reference`` methods return
    (reference, allowed error) pairs; the others assert. ``rms=True``: RMSNorm instead of LayerNorm (no mean:
    x_hat = x * rstd)."""

    table = TOLERANCES
    interpreted = INTERPRETED
    within = staticmethod(assert_within)

    def out_reference(self, x, weight, bias, eps, dtype, rms=False):
        x64, w64, b64 = _f64(x), _f64(weight), _f64(bias)
        if rms:
            ref = rmsnorm_ref(x64, w64, b64, eps)
            terms = x64.abs() * rmsnorm_rstd_ref(x64, eps).unsqueeze(-1)
        else:
            ref = layernorm_ref(x64, w64, b64, eps)
            # The fp32 mean's rounding error scales with the row's mean |x| (what its sum adds up), not with |mean|:
            # rows whose mean cancels to ~0 would otherwise get no room for it.
            mean_abs = x64.abs().mean(dim=-1, keepdim=True)
            terms = (x64.abs() + mean_abs) * layernorm_rstd_ref(x64, eps).unsqueeze(-1)
        terms = terms * (w64.abs() if w64 is not None else 1.0) + (b64.abs() if b64 is not None else 0.0)
        return ref, bound(dtype, self.table[dtype].out_ulps, ref, terms, x.shape[-1])

    def out(self, out, x, weight, bias, eps, rms=False, out_dtype=None):
        """``out`` (in ``out_dtype``, default x's dtype) against the fp64 reference computed from ``x``."""
        expected = out_dtype or x.dtype
        assert out.dtype == expected, f"out dtype {out.dtype}, expected {expected}"
        ref, allowed = self.out_reference(x, weight, bias, eps, out.dtype, rms)
        assert_within(out, ref, allowed, f"out ({out.dtype})")

    def stats(self, mean, rstd, x, eps, rms=False):
        """mean/rstd (either may be None): fp32, shape x.shape[:-1], within arith_ulps(N) fp32 ulps of fp64."""
        x64 = _f64(x)
        if rms:
            assert mean is None, "RMSNorm has no mean"
            ref = rmsnorm_rstd_ref(x64, eps)
            checks = (("rstd", rstd, ref, ref),)
        else:
            checks = (
                ("mean", mean, layernorm_mean_ref(x64), x64.abs().mean(dim=-1)),
                ("rstd", rstd, layernorm_rstd_ref(x64, eps), layernorm_rstd_ref(x64, eps)),
            )
        for name, value, ref, terms in checks:
            if value is None:
                continue
            assert value.dtype == torch.float32, f"{name} dtype {value.dtype}, expected float32"
            assert value.shape == x.shape[:-1], f"{name} shape {tuple(value.shape)}, expected {tuple(x.shape[:-1])}"
            assert_within(value, ref, bound(torch.float32, 0, ref, terms, x.shape[-1]), name)

    def grad_references(self, x, weight, bias, dy, eps, dtypes, rms=False):
        """{"dx"|"dw"|"db": (reference, allowed)} from torch autograd through layernorm_ref (rmsnorm_ref) in fp64;
        ``dtypes`` maps each wanted name to the dtype of the result being checked."""
        x64 = _f64(x).requires_grad_()
        w64 = _f64(weight).requires_grad_() if weight is not None else None
        b64 = _f64(bias).requires_grad_() if bias is not None else None
        dy64 = _f64(dy)
        ref_out = (rmsnorm_ref if rms else layernorm_ref)(x64, w64, b64, eps)
        inputs = [t for t in (x64, w64, b64) if t is not None]
        ref_grads = iter(torch.autograd.grad(ref_out, inputs, dy64))
        refs = {"dx": next(ref_grads)}
        refs["dw"] = next(ref_grads) if w64 is not None else None
        refs["db"] = next(ref_grads) if b64 is not None else None

        hidden = x.shape[-1]
        rows = x.numel() // hidden
        x2 = x64.detach().reshape(rows, hidden)
        dy2 = dy64.reshape(rows, hidden)
        if rms:
            rstd = rmsnorm_rstd_ref(x2, eps).unsqueeze(-1)
            mean = torch.zeros_like(rstd)
        else:
            rstd = layernorm_rstd_ref(x2, eps).unsqueeze(-1)
            mean = x2.mean(dim=-1, keepdim=True)
        xhat = (x2 - mean) * rstd
        g = dy2 * w64.detach() if w64 is not None else dy2
        rms_g = g.pow(2).mean(dim=-1, keepdim=True).sqrt()
        xhat_terms = (x2.abs() + mean.abs()) * rstd  # the fp32 x_hat is accurate to this magnitude, not to |x_hat|
        terms = {
            "dx": (rstd * (g.abs() + (1 + xhat.abs()) * rms_g)).reshape(x.shape),
            "dw": (rows**0.5) * (dy2 * xhat_terms).pow(2).mean(dim=0).sqrt() if rows else x2.new_zeros(hidden),
            "db": (rows**0.5) * dy2.pow(2).mean(dim=0).sqrt() if rows else x2.new_zeros(hidden),
        }
        result = {}
        for name, dtype in dtypes.items():
            assert refs[name] is not None, f"{name} wanted but its parameter is None"
            tol = self.table[dtype]
            ulps = tol.dx_ulps if name == "dx" else tol.param_ulps
            result[name] = refs[name], bound(dtype, ulps, refs[name], terms[name], hidden)
        return result

    def grads(self, x, weight, bias, dy, eps, dx, dw, db, rms=False):
        """dx/dw/db (each may be None: not checked) against torch autograd through layernorm_ref in fp64."""
        given = {name: t for name, t in (("dx", dx), ("dw", dw), ("db", db)) if t is not None}
        refs = self.grad_references(x, weight, bias, dy, eps, {name: t.dtype for name, t in given.items()}, rms)
        rows = x.numel() // x.shape[-1]
        for name, value in given.items():
            ref, allowed = refs[name]
            assert_within(value, ref, allowed, f"{name} ({value.dtype}, M={rows})")


@pytest.fixture(scope="session")
def check() -> Checker:
    return Checker()
