"""Backend registry: which kernel implementations exist, whether each can run on a given tensor, and why not.

A backend is a module exposing ``layernorm_fwd(x, weight, bias, eps, out, mean, rstd)`` and
``layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias)``, both writing into preallocated outputs, and
``fwd_launcher(x, weight, bias, out, mean, rstd, rms=False)``: called after a plain forward (LayerNorm, or RMSNorm
with ``rms``) ran with those tensors, it returns ``launch(x, weight, bias, out, mean, rstd, eps)``, which repeats
that forward for tensors of the same metadata with the least host work (the API's repeat-call path). Heavy imports
(triton, cutlass) happen only when a backend is first used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "cutedsl", "triton", "torch")

# Backward, both GPU backends: up to this many rows (and more than one dw/db partial row), dw and db are summed
# straight from the rows (the Triton backend's column programs: in the dx launch itself, or
# ``weight_grads_from_rows`` after a kernel that writes dx only), instead of from fp32 partial rows. With about one
# partial row per row, the partials' fp32 bytes (written, then read) are four times the 16-bit rows that the direct
# sum reads again.
WEIGHT_GRADS_FROM_ROWS_MAX_ROWS = 256

# Backward kernels that sum their dw/db partial rows in their own launch (the CuTeDSL backend's sum CTAs, the Triton
# backend's sum programs with BwdConfig.fused_sum) count the row CTAs' arrivals here: a pair of int32 (arrivals,
# departures) per (device, stream), zero before each launch and left at zero by it. Launches on one stream run one
# after another, so they can share a pair; launches on other streams get their own. Never under CUDA graph capture (a
# graph may replay on any stream, beside eager launches on its capture stream): the kernels' callers use a second
# launch there.
_sum_counters: dict[tuple[int, int], torch.Tensor] = {}


def sum_counter(device: torch.device, index: int, stream: int) -> torch.Tensor:
    """The arrival counter pair of stream handle ``stream`` on device ``index`` (``device``), created zeroed on the
    current stream (the one that launches next) the first time."""
    counter = _sum_counters.get((index, stream))
    if counter is None:
        counter = _sum_counters.setdefault((index, stream), torch.zeros(2, dtype=torch.int32, device=device))
    return counter


@functools.lru_cache(maxsize=None)
def _installed(module: str) -> bool:
    # find_spec walks sys.path: seconds over a long PYTHONPATH if repeated on every call, so once per process.
    return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def _device_index(device: torch.device | None) -> int:
    return device.index if device is not None and device.index is not None else torch.cuda.current_device()


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(device: torch.device | None = None) -> str:
    """Empty string when the Triton backend can run on ``device`` (default: the current CUDA device), else why not."""
    if not _installed("triton"):
        return "the 'triton' package is not installed"
    if device is not None and device.type == "cpu":
        if _triton_interpreter_on():
            return ""
        return "x is a CPU tensor; Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for the interpreter)"
    if device is not None and device.type != "cuda":
        return f"x is on a {device.type} device; Triton kernels need a CUDA tensor"
    if not torch.cuda.is_available() and not _triton_interpreter_on():
        return "no CUDA device is available"
    return ""


def cutedsl_unavailable_reason(device: torch.device | None = None) -> str:
    """Empty string when the CuTeDSL backend can run on ``device`` (default: the current CUDA device), else why not."""
    if not _installed("cutlass"):
        return "the 'nvidia-cutlass-dsl' package (module 'cutlass') is not installed"
    if device is not None and device.type != "cuda":
        return f"x is on a {device.type} device; CuTeDSL kernels need a CUDA tensor"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    major, minor = _capability(_device_index(device))
    if major < 9:
        return f"CuTeDSL kernels target Hopper (sm_90) or newer; this GPU is sm_{major}{minor}"
    return ""


_UNAVAILABLE_REASON = {
    "cutedsl": cutedsl_unavailable_reason,
    "triton": triton_unavailable_reason,
    "torch": lambda device=None: "",
}
_MODULE_NAME = {"cutedsl": "._cutedsl", "triton": "._triton", "torch": "._torch"}


@functools.lru_cache(maxsize=None)
def load_backend(name: str) -> ModuleType:
    return importlib.import_module(_MODULE_NAME[name], __package__)


_resolved_cuda: dict = {}


def resolve_backend(name: str, device: torch.device) -> str:
    """Maps a requested backend name to a concrete one for ``device``; raises RuntimeError if it cannot run.
    Answers for CUDA devices are cached (they cannot change within a process); CPU answers depend on
    TRITON_INTERPRET and are recomputed."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if device.type == "cuda":
        key = (name, device)
        concrete = _resolved_cuda.get(key)
        if concrete is None:
            concrete = _resolved_cuda[key] = _resolve(name, device)
        return concrete
    return _resolve(name, device)


def _resolve(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type != "cuda":
            return "torch"
        for candidate in ("cutedsl", "triton"):
            if not _UNAVAILABLE_REASON[candidate](device):
                return candidate
        return "torch"
    reason = _UNAVAILABLE_REASON[name](device)
    if reason:
        raise RuntimeError(f"backend={name!r} cannot run: {reason}")
    return name


# The API's repeat-call plans (api._repeat_forward): a plain forward call's signature -> what to launch. Here, with
# the registry, so that whatever changes the backends' configs (_triton.load_tuned_configs) can clear them. Bounded.
repeat_fwd_plans: dict = {}
MAX_REPEAT_FWD_PLANS = 256


def rows_launcher(layernorm_fwd, rows: int, hidden: int, rms: bool = False):
    """A ``fwd_launcher`` result that calls ``layernorm_fwd`` (``rms``: as RMSNorm) on (rows, hidden) views of x and
    out (the backend's own checks and lookups included): for backends, or calls, with nothing cheaper to repeat."""
    features = {"rms": True} if rms else {}

    def launch(x, weight, bias, out, mean, rstd, eps):
        layernorm_fwd(x.reshape(rows, hidden), weight, bias, eps, out.view(rows, hidden), mean, rstd, **features)

    return launch
