"""Compile cache and launchers for the CuTeDSL LayerNorm kernels (imports cutlass; loaded on first use).

Kernels are compiled once per (dtype, N, weight/bias dtypes, which outputs are wanted, vector width, config,
GPU arch). The batch size M and the row strides are runtime arguments, so a new batch size or a strided view never
recompiles. The vector width is the alignment class: the widest power-of-two number of elements (16 bytes at most)
that divides N, every row stride, and every base address, so each vector access is naturally aligned.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import os
import threading
import warnings

import cuda.bindings.driver as cuda
import cutlass
import cutlass.base_dsl.common
import cutlass.cute as cute
import torch
from cutlass import Float32
from cutlass.cute.runtime import load_module, make_fake_stream, make_ptr

from .._backends import WEIGHT_GRADS_FROM_ROWS_MAX_ROWS, sum_counter
from .config import BwdConfig, FwdConfig, bwd_config, fwd_config, rows_class
from .kernels import LayerNormBwd, LayerNormFwd

_CUTE_DTYPE = {torch.float16: cutlass.Float16, torch.bfloat16: cutlass.BFloat16, torch.float32: cutlass.Float32}
_GMEM = cute.AddressSpace.gmem


# ----------------------------------------------------------------------------------------------------------------
# Alignment class
# ----------------------------------------------------------------------------------------------------------------


def vector_width(elem_bytes: int, hidden: int, row_strides: tuple[int, ...], addresses: tuple[tuple[int, int], ...]) -> int:
    """Widest vector (elements) such that every access of every tensor is aligned to its own size.

    row_strides: the row strides (elements) of the (M, N) tensors; addresses: (data_ptr, element bytes) of every
    tensor read or written with vectors (weight/bias included, whose vectors are vec * its element size bytes).

    >>> vector_width(2, 4096, (4096, 8192), ((0x7F0000000000, 2),))
    8
    >>> vector_width(2, 4096, (4100,), ((0x7F0000000000, 2),))
    4
    >>> vector_width(2, 769, (769,), ((0x7F0000000000, 2),))
    1
    >>> vector_width(4, 4096, (4096,), ((0x7F0000000004, 4),))
    1
    """
    vec = 16 // elem_bytes
    while vec > 1:
        ok = hidden % vec == 0 and all(s % vec == 0 for s in row_strides)
        ok = ok and all(addr % min(16, vec * nbytes) == 0 for addr, nbytes in addresses)
        if ok:
            break
        vec //= 2
    return vec


def _arch_of(device: torch.device) -> str:
    return _arch_of_index(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _arch_of_index(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}a" if major in (9, 10) else f"sm_{major}{minor}"


def _placeholder(dtype, align: int):
    return make_ptr(dtype, 0, _GMEM, assumed_align=align)


def _ptr_align(dtype, vec: int) -> int:
    return min(16, vec * dtype.width // 8)


# Calls through Apache TVM FFI cost a few microseconds (raw addresses and the stream handle pass as integers); the
# DSL's own ctypes path costs about 100 us per call. TVM FFI is used when importable, unless VIBE_CUTEDSL_TVM_FFI=0.
_TVM_FFI = importlib.util.find_spec("tvm_ffi") is not None and os.environ.get("VIBE_CUTEDSL_TVM_FFI", "1") != "0"
if _TVM_FFI:
    # Imported with the DSL, as part of loading this backend, rather than by the first load of a cached kernel
    # (the DSL's load_module imports it): 50-150 ms on the GPU machine, most of a warm first call otherwise.
    import tvm_ffi  # noqa: F401


def uses_tvm_ffi() -> bool:
    return _TVM_FFI


def _options(arch: str, keep_ptx: bool, tvm_ffi: bool) -> str:
    return f"--gpu-arch {arch}" + (" --keep-ptx" if keep_ptx else "") + (" --enable-tvm-ffi" if tvm_ffi else "")


# ----------------------------------------------------------------------------------------------------------------
# Compile (cached in memory, and on disk for the TVM FFI path)
# ----------------------------------------------------------------------------------------------------------------

_lock = threading.Lock()


class _CompileOnce:
    """Memoizes a compile function; concurrent first calls with the same arguments compile once (the others wait
    for that result) instead of each compiling, as ``functools.lru_cache`` would. Hits take no lock."""

    CacheInfo = collections.namedtuple("CacheInfo", "currsize")

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._cache: dict = {}
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items()))) if kwargs else args
        try:
            return self._cache[key]
        except KeyError:
            pass
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._fn(*args, **kwargs)
            return self._cache[key]

    def cache_info(self):
        return self.CacheInfo(len(self._cache))

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()

# Disk cache: a TVM FFI compile is exported as an object file (``export_to_c``) that a fresh process loads with
# ``cutlass.cute.runtime.load_module`` in milliseconds instead of compiling again (~0.3-0.6 s per variant). Files are
# named by a hash of the variant, the kernel sources and the DSL version, so an edit or an upgrade never loads a
# stale kernel. VIBE_KERNELS_CACHE_DIR moves the cache; VIBE_KERNELS_CACHE_DIR=0 (or "") turns it off.
CACHE_DIR_ENV = "VIBE_KERNELS_CACHE_DIR"


def cache_dir() -> str | None:
    value = os.environ.get(CACHE_DIR_ENV)
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "vibe_kernels", "cutedsl")
    return None if value in ("", "0") else value


@functools.lru_cache(maxsize=1)
def _source_fingerprint() -> str:
    digest = hashlib.sha256(str(getattr(cutlass, "__version__", "")).encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as source:
                digest.update(name.encode() + source.read())
    return digest.hexdigest()


def _disk_cached(kind: str, variant: tuple, build):
    """``build()`` (a TVM FFI compile), or the same function loaded from the disk cache; stores what it builds.
    Any cache failure (unwritable directory, corrupt file) falls back to compiling: the cache can only save time."""
    directory = cache_dir()
    if directory is None:
        return build()
    name = "vk_" + kind + "_" + hashlib.sha256((repr(variant) + _source_fingerprint()).encode()).hexdigest()[:32]
    path = os.path.join(directory, name + ".o")
    if os.path.exists(path):
        try:
            return getattr(load_module(path, enable_tvm_ffi=True), name)
        except Exception as exc:  # noqa: BLE001 - a bad cache file must not break the call
            warnings.warn(f"CuTeDSL layernorm: ignoring unreadable cache file {path} ({exc!r}); recompiling")
    compiled = build()
    try:
        os.makedirs(directory, exist_ok=True)
        partial = os.path.join(directory, f"{name}.{os.getpid()}.{threading.get_ident()}.partial.o")
        compiled.export_to_c(partial, name)
        os.replace(partial, path)  # atomic: concurrent processes never read a half-written file
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"CuTeDSL layernorm: could not write the kernel cache in {directory} ({exc!r})")
    return compiled


def _callable(compiled):
    """The bare TVM FFI function behind a compiled kernel (skips the DSL's Python argument wrapper) when there is
    one; our calls pass every argument positionally as plain integers and floats, which is what it takes."""
    bare = getattr(compiled, "__tvm_ffi_object__", None)
    bare = bare() if callable(bare) else None
    return bare if bare is not None else compiled


def _row_placeholder(dtype, vec: int):
    """A placeholder pointer for an (M, N) or (N,) tensor read/written in vectors (None when absent)."""
    return None if dtype is None else _placeholder(dtype, _ptr_align(dtype, vec))


@_CompileOnce
def compile_fwd(dtype, hidden: int, weight_dtype, bias_dtype, store_stats: bool, vec: int, config: FwdConfig,
                arch: str, keep_ptx: bool = False, tvm_ffi: bool = False, out_dtype=None, rms: bool = False,
                residual_dtype=None, residual_out_dtype=None, round_residual: bool = False):
    """Compiled forward for one variant; ``dtype``/``weight_dtype``/``bias_dtype``/``out_dtype`` are cutlass types
    (or None; out_dtype None: x's). rms: RMSNorm (store_stats then stores rstd only). residual_dtype (None: no
    residual), residual_out_dtype (None: h not stored), round_residual: the fused residual (LayerNormFwd)."""
    out_dtype = out_dtype if out_dtype is not None else dtype
    build = functools.partial(_compile_fwd, dtype, hidden, weight_dtype, bias_dtype, store_stats, vec, config, arch,
                              keep_ptx, tvm_ffi, out_dtype, rms, residual_dtype, residual_out_dtype, round_residual)
    if not tvm_ffi or keep_ptx:
        return build()
    variant = (str(dtype), hidden, str(weight_dtype), str(bias_dtype), store_stats, vec, config, arch,
               str(out_dtype), rms, str(residual_dtype), str(residual_out_dtype), round_residual)
    return _callable(_disk_cached("fwd", variant, build))


def _compile_fwd(dtype, hidden, weight_dtype, bias_dtype, store_stats, vec, config, arch, keep_ptx, tvm_ffi,
                 out_dtype, rms, residual_dtype, residual_out_dtype, round_residual):
    kernel = LayerNormFwd(dtype, hidden, weight_dtype, bias_dtype, store_stats, config, out_dtype, rms,
                          residual_dtype, residual_out_dtype, round_residual)
    stat = _placeholder(Float32, 4) if store_stats else None
    row = cutlass.Int64(hidden)
    with _lock:
        return cute.compile(
            kernel, _row_placeholder(dtype, vec), _row_placeholder(weight_dtype, vec),
            _row_placeholder(bias_dtype, vec), _row_placeholder(out_dtype, vec), None if rms else stat, stat,
            _row_placeholder(residual_dtype, vec), _row_placeholder(residual_out_dtype, vec), cutlass.Int32(1),
            row, row, row, row, Float32(1e-5), cutlass.Int32(1), make_fake_stream(),
            options=_options(arch, keep_ptx, tvm_ffi),
        )


@_CompileOnce
def compile_bwd(dtype, hidden: int, weight_dtype, want_dw: bool, want_db: bool, vec: int, config: BwdConfig,
                arch: str, keep_ptx: bool = False, tvm_ffi: bool = False, dy_dtype=None, rms: bool = False,
                dx_dtype=None, dres_dtype=None, dres_in_dtype=None, dw_dtype=None, db_dtype=None):
    """Compiled backward for one variant (dw/db partials in fp32); dy_dtype / dx_dtype: dy's / dx's cutlass type
    (None: x's); rms: RMSNorm (no mean); dres_dtype, dres_in_dtype (None: absent): the fused residual's gradient
    into h (added to dx) and the second copy of dx (LayerNormBwd). dw_dtype / db_dtype: with column CTAs
    (``config.column_tile``) or sum CTAs (``config.fused_column_sum``) the kernel writes the gradients themselves,
    in these types (None: fp32); otherwise they do not matter (fp32 partial rows), and the launcher passes None."""
    dy_dtype = dy_dtype if dy_dtype is not None else dtype
    dx_dtype = dx_dtype if dx_dtype is not None else dtype
    build = functools.partial(_compile_bwd, dtype, hidden, weight_dtype, want_dw, want_db, vec, config, arch,
                              keep_ptx, tvm_ffi, dy_dtype, rms, dx_dtype, dres_dtype, dres_in_dtype, dw_dtype,
                              db_dtype)
    if not tvm_ffi or keep_ptx:
        return build()
    variant = (str(dtype), hidden, str(weight_dtype), want_dw, want_db, vec, config, arch, str(dy_dtype), rms,
               str(dx_dtype), str(dres_dtype), str(dres_in_dtype), str(dw_dtype), str(db_dtype))
    return _callable(_disk_cached("bwd", variant, build))


def _grad_placeholder(want: bool, grad_dtype, column_tile: int, vec: int):
    """The dw (db) pointer's placeholder: fp32 partial rows read in vectors, or with column CTAs the gradient itself,
    written one element at a time (no alignment assumed beyond its element)."""
    if not want:
        return None
    if column_tile:
        dtype = grad_dtype if grad_dtype is not None else Float32
        return _placeholder(dtype, dtype.width // 8)
    return _row_placeholder(Float32, vec)


def _sum_output_placeholder(want: bool, grad_dtype, config: BwdConfig):
    """The gradient pointer the sum CTAs write (``config.fused_column_sum``), one element at a time; else None."""
    if not (want and config.fused_column_sum):
        return None
    dtype = grad_dtype if grad_dtype is not None else Float32
    return _placeholder(dtype, dtype.width // 8)


def _compile_bwd(dtype, hidden, weight_dtype, want_dw, want_db, vec, config, arch, keep_ptx, tvm_ffi, dy_dtype, rms,
                 dx_dtype, dres_dtype, dres_in_dtype, dw_dtype, db_dtype):
    kernel = LayerNormBwd(dtype, hidden, weight_dtype, want_dw, want_db, config, dy_dtype, rms, dx_dtype, dres_dtype,
                          dres_in_dtype)
    stat = _placeholder(Float32, 4)
    row = cutlass.Int64(hidden)
    with _lock:
        return cute.compile(
            kernel, _row_placeholder(dy_dtype, vec), _row_placeholder(dtype, vec), _row_placeholder(weight_dtype, vec),
            None if rms else stat, stat, _row_placeholder(dx_dtype, vec),
            _grad_placeholder(want_dw, dw_dtype, config.column_tile, vec),
            _grad_placeholder(want_db, db_dtype, config.column_tile, vec),
            _row_placeholder(dres_dtype, vec), _row_placeholder(dres_in_dtype, vec),
            _sum_output_placeholder(want_dw, dw_dtype, config), _sum_output_placeholder(want_db, db_dtype, config),
            _placeholder(cutlass.Int32, 4) if config.fused_column_sum and (want_dw or want_db) else None,
            cutlass.Int32(1), row, row, row, row, row, cutlass.Int32(1), make_fake_stream(),
            options=_options(arch, keep_ptx, tvm_ffi),
        )


# ----------------------------------------------------------------------------------------------------------------
# Launchers (outputs preallocated by the caller)
# ----------------------------------------------------------------------------------------------------------------


def _ptr(t: torch.Tensor | None, vec: int):
    if t is None:
        return None
    dtype = _CUTE_DTYPE[t.dtype]
    return make_ptr(dtype, t.data_ptr(), _GMEM, assumed_align=_ptr_align(dtype, vec))


def _element_ptr(t: torch.Tensor | None):
    """A pointer aligned to its element only (tensors written one element at a time)."""
    if t is None:
        return None
    dtype = cutlass.Int32 if t.dtype == torch.int32 else _CUTE_DTYPE[t.dtype]
    return make_ptr(dtype, t.data_ptr(), _GMEM, assumed_align=t.element_size())


def _stat_ptr(t: torch.Tensor | None):
    return None if t is None else make_ptr(Float32, t.data_ptr(), _GMEM, assumed_align=4)


def _addr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


@functools.lru_cache(maxsize=16)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _dtype_of(t: torch.Tensor | None):
    return None if t is None else t.dtype


def _cute(t: torch.Tensor | None):
    return None if t is None else _CUTE_DTYPE[t.dtype]


def _raw_stream(device_index: int) -> int:
    """The current CUDA stream's handle; torch's raw accessor (what Triton uses) skips building a Stream object."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device_index) if raw is not None else torch.cuda.current_stream(device_index).cuda_stream


def _run(compile_fn, compile_args: tuple, compile_kwargs: dict, tvm_args: tuple, ptr_args,
         device: torch.device) -> None:
    """Launches on ``device``'s current stream, through TVM FFI when available (falling back for good to the
    DSL's own call path if a TVM FFI call fails before launching). ``ptr_args`` is a callable returning the DSL
    path's arguments: building cute pointers costs tens of µs, so only that path builds them."""
    global _TVM_FFI
    current = torch.cuda.current_device()
    index = device.index if device.index is not None else current
    stream = _raw_stream(index)
    switch = index != current
    with torch.cuda.device(device) if switch else contextlib.nullcontext():
        if _TVM_FFI:
            compiled = compile_fn(*compile_args, tvm_ffi=True, **compile_kwargs)
            try:
                compiled(*tvm_args, stream)
                return
            except (TypeError, ValueError, cutlass.base_dsl.common.DSLRuntimeError) as exc:
                warnings.warn(f"CuTeDSL layernorm: TVM FFI call failed ({exc!r}); using the slower DSL call path")
                _TVM_FFI = False
        compiled = compile_fn(*compile_args, tvm_ffi=False, **compile_kwargs)
        compiled(*ptr_args(), cuda.CUstream(stream))


def _bind_primary_context(device_index: int) -> None:
    """Make the device's primary context (torch's) current in this thread if none is. Autograd runs the backward in
    a thread of its own, where torch's runtime calls need not have bound a context before this driver-level query:
    it then failed with CUDA_ERROR_INVALID_CONTEXT (a warning in GPU test logs since 2026-11-25) and the launcher fell
    back to SMs / cluster size, which can exceed the clusters that fit at once. Capture-safe: no synchronization."""
    err, current = cuda.cuCtxGetCurrent()
    if err == cuda.CUresult.CUDA_SUCCESS and int(current) != 0:
        return
    err, device = cuda.cuDeviceGet(device_index)
    if err != cuda.CUresult.CUDA_SUCCESS:
        return
    err, primary = cuda.cuDevicePrimaryCtxRetain(device)
    if err == cuda.CUresult.CUDA_SUCCESS:
        cuda.cuCtxSetCurrent(primary)


@functools.lru_cache(maxsize=64)
def _resident_clusters(device_index: int, cluster_n: int) -> int | None:
    """How many clusters of ``cluster_n`` one-CTA-per-SM CTAs (all of an SM's shared memory each) the GPU runs at
    once (cuOccupancyMaxActiveClusters), or None if the driver cannot say. A 16-CTA cluster needs 16 SMs of one
    GPC, so an H100's 132 SMs hold fewer than 132 / 16 of them."""
    try:
        from cutlass.utils import HardwareInfo

        with torch.cuda.device(device_index), _lock:  # the query compiles a placeholder kernel
            _bind_primary_context(device_index)
            return int(HardwareInfo(device_index).get_max_active_clusters(cluster_n))
    except Exception as exc:  # noqa: BLE001 - an occupancy query must not break the call
        warnings.warn(f"CuTeDSL layernorm: cluster occupancy query failed ({exc!r}); assuming SMs / cluster size")
        return None


def bwd_grid_clusters(config: BwdConfig, rows: int, device_index: int, column_ctas: int = 0) -> int:
    """Clusters of the backward's persistent grid (= fp32 dw/db partial rows): the config's count for this M, and
    never more than ctas_per_sm waves of the clusters the GPU holds at once, so every wave is full. With
    ``column_ctas`` (few rows: they follow the row CTAs in the grid, see BwdConfig.column_tile) the row CTAs leave
    that many SMs to them, each striding over more row tiles, so that the whole grid is one wave."""
    sms = _sm_count(device_index)
    num_clusters = config.partial_rows(sms, rows)
    if config.tiling.cluster_n > 1:
        resident = _resident_clusters(device_index, config.tiling.cluster_n)
        if resident:
            num_clusters = min(num_clusters, resident * config.ctas_per_sm)
    if column_ctas:
        num_clusters = min(num_clusters, sms - column_ctas)
    return max(1, num_clusters)


def _check_config(config, vec: int):
    if vec % config.tiling.vec:
        raise ValueError(f"config.tiling.vec={config.tiling.vec} must divide the alignment's vector width {vec}")


# Forward launch plans: a forward call's signature -> the bare TVM FFI function, so that a repeated call skips the
# alignment class, the config and the compile-cache key (a hash of frozen config dataclasses), most of the
# launcher's host time. The signature holds every input of those: the device, N, dtypes, which stats are stored,
# RMSNorm or not, the row strides, each address modulo 16 (the vector width depends on nothing finer), M's class
# (config.rows_class: the config depends on it), and with a residual its dtypes, rounding, strides and addresses
# modulo 16. M itself is a runtime argument. Bounded like the Triton backend's.
_fwd_plans: dict = {}  # signature -> (bare TVM FFI function, its config: the persistent kernel's grid depends on M)
MAX_FWD_PLANS = 256


def _fwd_grid_clusters(config: FwdConfig, rows: int, device_index: int) -> int:
    """The persistent forward's grid: one cluster a row tile up to the clusters of one CTA per SM the GPU holds at
    once (``config.persistent_ctas_per_sm`` CTAs per SM for unclustered rows; 1 for the other forward kernels, whose
    grid follows M)."""
    if not config.persistent:
        return 1
    cluster_n = config.tiling.cluster_n
    resident = _resident_clusters(device_index, cluster_n) if cluster_n > 1 else None
    if not resident:
        resident = _sm_count(device_index) // cluster_n * config.persistent_ctas_per_sm
    return max(1, min(-(-rows // config.tiling.rows_per_cta), resident))


def _stride0(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.stride(0)


def _widest(*tensors) -> int:
    return max(t.element_size() for t in tensors if t is not None)


def _fwd_plan_key(x, weight, bias, out, store_stats: bool, rms: bool, residual=None, residual_out=None,
                  round_residual: bool = False) -> tuple | None:
    """The forward plan signature of a call (see ``_fwd_plans``), its first item the current device's index; None
    when calls are not planned (not on TVM FFI, or x on another device than the current one)."""
    if not _TVM_FFI:
        return None
    current = torch.cuda.current_device()
    index = x.device.index
    if index is not None and index != current:
        return None
    key = (current, x.shape[1], x.dtype, out.dtype, _dtype_of(weight), _dtype_of(bias), store_stats, rms,
           rows_class(x.shape[0]), x.stride(0), out.stride(0), x.data_ptr() & 15,
           out.data_ptr() & 15, (_addr(weight) or 0) & 15, (_addr(bias) or 0) & 15)
    if residual is not None:
        key += (residual.dtype, _dtype_of(residual_out), round_residual, residual.stride(0), _stride0(residual_out),
                residual.data_ptr() & 15, (_addr(residual_out) or 0) & 15)
    return key


def fwd_launcher(x, weight, bias, out, mean, rstd, rms: bool = False):
    """After a plain ``layernorm_fwd(x, weight, bias, eps, out, mean, rstd)`` (LayerNorm, or RMSNorm with ``rms``;
    no residual, default config) ran: a function ``launch(x, weight, bias, out, mean, rstd, eps)`` that launches
    the same compiled kernel again for tensors of the same plan signature (sizes, row strides, dtypes, alignment
    class, device; x and out may have any leading dims that flatten to these rows), skipping every lookup; None
    when the call has no plan (not on TVM FFI). The caller guarantees the signature matches."""
    store_stats = rstd is not None
    key = _fwd_plan_key(x, weight, bias, out, store_stats, rms)
    plan = _fwd_plans.get(key) if key is not None else None
    if plan is None:
        return None
    compiled, config = plan
    index, rows, x_stride, out_stride = key[0], x.shape[0], x.stride(0), out.stride(0)
    grid = _fwd_grid_clusters(config, rows, index)
    raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or _raw_stream

    def launch(x, weight, bias, out, mean, rstd, eps):
        compiled(x.data_ptr(), None if weight is None else weight.data_ptr(),
                 None if bias is None else bias.data_ptr(), out.data_ptr(), None if mean is None else mean.data_ptr(),
                 None if rstd is None else rstd.data_ptr(), None, None, rows, x_stride, out_stride, 0, 0, eps, grid,
                 raw_stream(index))

    return launch


def layernorm_fwd(x, weight, bias, eps, out, mean, rstd, *, config: FwdConfig | None = None, rms: bool = False,
                  residual=None, residual_out=None, residual_in_fp32: bool = False) -> None:
    """x (M, N); out (M, N) in x's or another float dtype; mean/rstd (M,) fp32 or None (both or neither; RMSNorm
    (``rms``): mean None, rstd optional). residual (M, N) or None: normalize h = x + residual, rounded to x's dtype
    unless ``residual_in_fp32``; residual_out (M, N) or None: where h is written."""
    rows, hidden = x.shape
    store_stats = rstd is not None
    if rms and mean is not None:
        raise ValueError("RMSNorm has no mean: pass mean=None")
    if not rms and store_stats != (mean is not None):
        raise ValueError("mean and rstd must both be given or both be None")
    if residual is None and residual_out is not None:
        raise ValueError("residual_out needs a residual")
    x_addr, out_addr = x.data_ptr(), out.data_ptr()
    w_addr, b_addr = _addr(weight), _addr(bias)
    r_addr, h_addr = _addr(residual), _addr(residual_out)
    # Rounding h to fp32 x's dtype is a no-op: one variant for both.
    round_residual = residual is not None and not residual_in_fp32 and x.dtype != torch.float32
    tail = (rows, x.stride(0), out.stride(0), _stride0(residual), _stride0(residual_out), float(eps))
    plan_key = None
    if config is None:
        plan_key = _fwd_plan_key(x, weight, bias, out, store_stats, rms, residual, residual_out, round_residual)
        plan = _fwd_plans.get(plan_key) if plan_key is not None else None
        if plan is not None:
            compiled, planned = plan
            grid = _fwd_grid_clusters(planned, rows, plan_key[0])
            compiled(x_addr, w_addr, b_addr, out_addr, _addr(mean), _addr(rstd), r_addr, h_addr, *tail, grid,
                     _raw_stream(plan_key[0]))
            return
    row_tensors = [t for t in (x, out, residual, residual_out) if t is not None]
    addresses = [(t.data_ptr(), t.element_size()) for t in row_tensors + [weight, bias] if t is not None]
    # Vectors of at most 16 bytes of every row tensor (bf16 in, fp32 out or residual: 4 elements).
    widest = _widest(*row_tensors)
    vec = vector_width(widest, hidden, tuple(t.stride(0) for t in row_tensors), tuple(addresses))
    elem = x.element_size()
    if config is None:
        affine_bytes = sum(t.element_size() for t in (weight, bias) if t is not None)
        config = fwd_config(hidden, elem, vec, rows=rows, residual=residual is not None, widest_elem_bytes=widest,
                            affine_bytes=affine_bytes)
    _check_config(config, vec)
    vec = config.tiling.vec
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    tail = tail + (_fwd_grid_clusters(config, rows, index),)
    compile_args = (_CUTE_DTYPE[x.dtype], hidden, _cute(weight), _cute(bias), store_stats, vec, config, _arch_of(x.device))
    compile_kwargs = {"out_dtype": _CUTE_DTYPE[out.dtype], "rms": bool(rms), "residual_dtype": _cute(residual),
                      "residual_out_dtype": _cute(residual_out), "round_residual": round_residual}
    _run(
        compile_fwd, compile_args, compile_kwargs,
        (x_addr, w_addr, b_addr, out_addr, _addr(mean), _addr(rstd), r_addr, h_addr) + tail,
        lambda: (_ptr(x, vec), _ptr(weight, vec), _ptr(bias, vec), _ptr(out, vec), _stat_ptr(mean),
                 _stat_ptr(rstd), _ptr(residual, vec), _ptr(residual_out, vec)) + tail,
        x.device,
    )
    if plan_key is not None and _TVM_FFI:  # still on TVM FFI: the call did not fall back to the DSL path
        if len(_fwd_plans) >= MAX_FWD_PLANS:
            _fwd_plans.clear()
        _fwd_plans[plan_key] = (compile_fwd(*compile_args, tvm_ffi=True, **compile_kwargs), config)


def _partial_rows(grad: torch.Tensor | None, num_clusters: int, hidden: int) -> torch.Tensor | None:
    """The fp32 dw (or db) partial rows the backward writes, one per cluster; with a single cluster (small M) an
    fp32, contiguous, 16-byte-aligned gradient is its own partial row: the kernel writes it directly and the
    column-sum pass (a launch, ~3 µs of GPU time at M = 1) is skipped."""
    if grad is None:
        return None
    if num_clusters == 1 and grad.dtype == torch.float32 and grad.is_contiguous() and grad.data_ptr() % 16 == 0:
        return grad
    return torch.empty((num_clusters, hidden), dtype=torch.float32, device=grad.device)


def layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, *, config: BwdConfig | None = None,
                  rms: bool = False, dresidual=None, dresidual_in=None) -> None:
    """dy (M, N) in any float dtype (the forward's out dtype); x (M, N: the normalized input, h with a residual) and
    dx (M, N), each in its own float dtype; mean (None for RMSNorm) and rstd (M,) fp32; dweight/dbias (N,) or None.
    dresidual (M, N) or None: the gradient flowing into the residual output h, added to dx; dresidual_in (M, N) or
    None: dx written a second time in its dtype (the residual input's gradient)."""
    rows, hidden = x.shape
    if rms != (mean is None):
        raise ValueError("mean must be None exactly for RMSNorm (rms=True)")
    row_tensors = [t for t in (dy, x, dx, dresidual, dresidual_in) if t is not None]
    addresses = [(t.data_ptr(), t.element_size()) for t in row_tensors + [weight] if t is not None]
    vec = vector_width(_widest(*row_tensors), hidden, tuple(t.stride(0) for t in row_tensors), tuple(addresses))
    if config is None:
        config = bwd_config(hidden, x.element_size(), vec, residual=dresidual is not None or dresidual_in is not None,
                            rows=rows)
    _check_config(config, vec)
    vec = config.tiling.vec
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    want_dw, want_db = dweight is not None, dbias is not None
    grads = [g for g in (dweight, dbias) if g is not None]
    if config.column_tile and not all(g.is_contiguous() for g in grads):
        config = dataclasses.replace(config, column_tile=0)  # column CTAs write (N,) gradients of unit stride
    column_ctas = config.column_ctas(hidden) if grads else 0
    num_clusters = bwd_grid_clusters(config, rows, index, column_ctas)
    from_rows = None
    if not column_ctas and grads and num_clusters > 1 and rows <= WEIGHT_GRADS_FROM_ROWS_MAX_ROWS:
        # Few rows, about one fp32 partial row each: the kernel writes dx only, and dw/db are summed from the rows.
        from_rows = _triton_weight_grads_from_rows()
        if from_rows is not None:
            want_dw = want_db = False
    dweight_here = dweight if want_dw else None
    dbias_here = dbias if want_db else None
    if config.fused_column_sum and not (num_clusters > 1 and (want_dw or want_db)
                                        and all(g.is_contiguous() for g in grads)
                                        and not torch.cuda.is_current_stream_capturing()):
        # One partial row (written as the gradient itself, or summed by a launch), no gradient wanted, strided
        # gradients, or CUDA graph capture: the separate column-sum launch.
        config = dataclasses.replace(config, fused_column_sum=False)
    counter = None
    if config.fused_column_sum:
        counter = sum_counter(x.device, index, _raw_stream(index))
    if column_ctas:
        # The column CTAs write dw / db themselves, in their dtypes: no partial rows, no column-sum pass.
        dw_partial, db_partial = dweight_here, dbias_here
    else:
        dw_partial = _partial_rows(dweight_here, num_clusters, hidden)
        db_partial = _partial_rows(dbias_here, num_clusters, hidden)
    compile_args = (_CUTE_DTYPE[x.dtype], hidden, _cute(weight), want_dw, want_db, vec, config, _arch_of(x.device))
    compile_kwargs = {"dy_dtype": _CUTE_DTYPE[dy.dtype], "rms": bool(rms), "dx_dtype": _CUTE_DTYPE[dx.dtype],
                      "dres_dtype": _cute(dresidual), "dres_in_dtype": _cute(dresidual_in),
                      # Only the column or sum CTAs write the gradients' own dtypes: one compiled variant otherwise.
                      "dw_dtype": _cute(dweight_here) if column_ctas or counter is not None else None,
                      "db_dtype": _cute(dbias_here) if column_ctas or counter is not None else None}
    # The gradients the sum CTAs write, and their counter (None without sum CTAs).
    sum_outputs = (dweight_here, dbias_here, counter) if counter is not None else (None, None, None)
    tail = (rows, dy.stride(0), x.stride(0), dx.stride(0), _stride0(dresidual), _stride0(dresidual_in), num_clusters)
    _run(
        compile_bwd, compile_args, compile_kwargs,
        (dy.data_ptr(), x.data_ptr(), _addr(weight), _addr(mean), rstd.data_ptr(), dx.data_ptr(),
         _addr(dw_partial), _addr(db_partial), _addr(dresidual), _addr(dresidual_in))
        + tuple(_addr(t) for t in sum_outputs) + tail,
        lambda: (_ptr(dy, vec), _ptr(x, vec), _ptr(weight, vec), _stat_ptr(mean), _stat_ptr(rstd), _ptr(dx, vec),
                 _ptr(dw_partial, vec), _ptr(db_partial, vec), _ptr(dresidual, vec), _ptr(dresidual_in, vec))
        + tuple(_element_ptr(t) for t in sum_outputs) + tail,
        x.device,
    )
    if from_rows is not None:
        from_rows(dy, x, mean, rstd, dweight, dbias)
        return
    if column_ctas or counter is not None:
        return
    # Second pass: a fixed-order fp32 column sum over the partials (deterministic, no atomics).
    _column_sums(None if dw_partial is dweight else dw_partial, None if db_partial is dbias else db_partial,
                 dweight, dbias)


def _column_sums(dw_partial, db_partial, dweight, dbias) -> None:
    """dweight/dbias = the column sums of their (P, N) fp32 partial rows (a pair with no partial is skipped), in a
    fixed order: one launch for both (the Triton backend's column-sum kernel) when Triton can launch, else
    torch.sum for each."""
    if dw_partial is None and db_partial is None:
        return
    sum_partials = _triton_column_sum()
    if sum_partials is not None:
        sum_partials(dw_partial, db_partial, dweight if dw_partial is not None else None,
                     dbias if db_partial is not None else None)
        return
    for partial, grad in ((dw_partial, dweight), (db_partial, dbias)):
        if partial is None:
            continue
        if grad.dtype == torch.float32:
            torch.sum(partial, dim=0, out=grad)
        else:
            grad.copy_(partial.sum(dim=0))


@functools.lru_cache(maxsize=1)
def _triton_weight_grads_from_rows():
    """The Triton backend's ``weight_grads_from_rows``, or None where the Triton backend cannot run."""
    from .._backends import triton_unavailable_reason

    if triton_unavailable_reason():
        return None
    from .._triton import weight_grads_from_rows

    return weight_grads_from_rows


@functools.lru_cache(maxsize=1)
def _triton_column_sum():
    """The Triton backend's ``sum_partials``, or None where the Triton backend cannot run (not installed)."""
    from .._backends import triton_unavailable_reason

    if triton_unavailable_reason():
        return None
    from .._triton import sum_partials

    return sum_partials
