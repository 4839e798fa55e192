"""The ecosystem on a GPU: CUDA graph capture and replay, torch.compile with inductor (default and reduce-overhead),
and CuPy / JAX arrays through DLPack, zero-copy. Every test here needs CUDA (marked ``gpu``); CuPy and JAX tests
skip when the library (or JAX's GPU backend) is missing."""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from vibe_kernels.layernorm import LayerNorm, is_cutedsl_layernorm_available, layernorm, rmsnorm
from vibe_kernels.layernorm.interop import call_on_dlpack

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("fresh_dynamo")]

KERNEL_BACKENDS = [
    "triton",
    pytest.param("cutedsl", marks=pytest.mark.skipif(
        not is_cutedsl_layernorm_available(), reason="CuTeDSL needs nvidia-cutlass-dsl and an sm_90+ GPU")),
]


def _norm(hidden, backend, seed=0):
    """Our LayerNorm on CUDA with non-trivial fp32 affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    norm = LayerNorm(hidden, device="cuda", backend=backend)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(hidden, generator=gen))
        norm.bias.copy_(0.5 * torch.randn(hidden, generator=gen))
    return norm


def _eager_step(norm, x, dy):
    """Reference: the same forward+backward on fresh leaves, eagerly: (out, dx, dw, db)."""
    x = x.detach().clone().requires_grad_()
    weight = norm.weight.detach().clone().requires_grad_()
    bias = norm.bias.detach().clone().requires_grad_()
    out = layernorm(x, weight, bias, eps=norm.eps, backend=norm.backend)
    out.backward(dy)
    return out.detach(), x.grad, weight.grad, bias.grad


# ----------------------------------------------------------------------------------------------------------------
# CUDA graphs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cuda_graph_forward_backward_replays_like_eager(backend, dtype):
    rows, hidden = 256, 1024
    norm = _norm(hidden, backend)
    static_x = torch.randn(rows, hidden, device="cuda", dtype=dtype, requires_grad=True)
    static_dy = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    leaves = (static_x, norm.weight, norm.bias)

    def step():
        out = norm(static_x)
        out.backward(static_dy)
        return out

    # Warm up on a side stream (kernels compiled and cached, configs chosen) before capturing.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for leaf in leaves:
                leaf.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)

    for leaf in leaves:  # grads allocated inside the capture: each replay rewrites them
        leaf.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()

    gen = torch.Generator(device="cuda").manual_seed(1)
    for replay in range(2):
        new_x = torch.randn(rows, hidden, device="cuda", dtype=dtype, generator=gen) * (1 + replay) + replay
        new_dy = torch.randn(rows, hidden, device="cuda", dtype=dtype, generator=gen)
        with torch.no_grad():
            static_x.copy_(new_x)
            static_dy.copy_(new_dy)
        graph.replay()
        out, dx, dw, db = _eager_step(norm, new_x, new_dy)
        for name, got, expected in (("out", static_out, out), ("dx", static_x.grad, dx),
                                    ("dw", norm.weight.grad, dw), ("db", norm.bias.grad, db)):
            torch.testing.assert_close(got, expected, msg=f"{name} after replay {replay} ({backend}, {dtype})")


# ----------------------------------------------------------------------------------------------------------------
# torch.compile with inductor
# ----------------------------------------------------------------------------------------------------------------


def _model(backend):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 512), LayerNorm(512, backend=backend), torch.nn.GELU(), torch.nn.Linear(512, 16)
    ).cuda()


def _compare_step(eager, compiled_model, compiled, *inputs, rtol=1e-4, atol=1e-5, grad_atol=1e-5):
    """One step of both models on ``inputs``: outputs and parameter gradients of the compiled one as eager's."""
    out_e, out_c = eager(*inputs), compiled(*inputs)
    torch.testing.assert_close(out_c, out_e, rtol=rtol, atol=atol)
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=rtol, atol=grad_atol, msg=f"grad of {name}")
        p_e.grad = p_c.grad = None


@pytest.mark.parametrize("backend", ["auto", *KERNEL_BACKENDS])
def test_inductor_fullgraph_matches_eager_without_recompiling(backend):
    eager, compiled_model = _model(backend), _model(backend)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True, dynamic=True)
    frames_after_first = None
    for batch in (32, 48, 100):
        _compare_step(eager, compiled_model, compiled, torch.randn(batch, 64, device="cuda"))
        frames_after_first = frames_after_first or counter.frame_count
    assert counter.frame_count == frames_after_first, "a new batch size recompiled"
    assert any("vibe_kernels.layernorm_fwd" in graph.code for graph in counter.graphs)


class _PreNormBlock(torch.nn.Module):
    """A pre-norm residual block on the feature ops: h, normed = rmsnorm(x + r) (h kept in fp32), a Linear on
    normed, then a LayerNorm writing fp32 out of a bf16 input."""

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.norm_weight = torch.nn.Parameter(1 + 0.1 * torch.randn(256))
        self.proj = torch.nn.Linear(256, 256)
        self.out_weight = torch.nn.Parameter(1 + 0.1 * torch.randn(256))

    def forward(self, x, r):
        normed, h = rmsnorm(x, self.norm_weight, residual=r, residual_in_fp32=True, return_residual=True,
                            backend=self.backend)
        y = self.proj(normed.float()).to(torch.bfloat16)
        return layernorm(y, self.out_weight, out_dtype=torch.float32, backend=self.backend) + h


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_inductor_fullgraph_feature_ops_match_eager(backend):
    """RMSNorm with the fused residual and a LayerNorm with out_dtype (vibe_kernels::norm_fwd/norm_bwd) under
    inductor, fullgraph and dynamic batch: values and parameter gradients as eager's, no recompile."""
    torch.manual_seed(0)
    eager = _PreNormBlock(backend).cuda()
    compiled_model = _PreNormBlock(backend).cuda()
    compiled_model.load_state_dict(eager.state_dict())
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True, dynamic=True)
    frames_after_first = None
    for batch in (16, 40, 72):
        x = torch.randn(batch, 256, device="cuda").to(torch.bfloat16)
        r = torch.randn(batch, 256, device="cuda").to(torch.bfloat16)
        _compare_step(eager, compiled_model, compiled, x, r, rtol=2e-2, atol=2e-2, grad_atol=2e-3)
        frames_after_first = frames_after_first or counter.frame_count
    assert counter.frame_count == frames_after_first, "a new batch size recompiled"
    assert any("vibe_kernels.norm_fwd" in graph.code for graph in counter.graphs)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_inductor_reduce_overhead_matches_eager(backend):
    """mode="reduce-overhead": inductor's CUDA graph trees record the custom ops' kernels and replay them."""
    eager, compiled_model = _model(backend), _model(backend)
    compiled = torch.compile(compiled_model, mode="reduce-overhead", fullgraph=True)
    gen = torch.Generator(device="cuda").manual_seed(2)
    for _ in range(4):  # warm-up runs, recording, then replays
        _compare_step(eager, compiled_model, compiled, torch.randn(64, 64, device="cuda", generator=gen))


# ----------------------------------------------------------------------------------------------------------------
# CuPy and JAX through DLPack
# ----------------------------------------------------------------------------------------------------------------


def _spy(record):
    def run(x, weight, bias, **kwargs):
        record["inputs"] = [None if t is None else t.data_ptr() for t in (x, weight, bias)]
        result = layernorm(x, weight, bias, **kwargs)
        record["outputs"] = [t.data_ptr() for t in result]
        record["tensors"] = (x, weight, bias, *result)
        return result

    return run


def _check_values(tensors, check):
    x, weight, bias, out, rstd, mean = (t.detach() for t in tensors)
    check.out(out, x, weight, bias, 1e-5)
    check.stats(mean, rstd, x, 1e-5)


@pytest.mark.parametrize("backend", ["auto", *KERNEL_BACKENDS])
def test_cupy_zero_copy_on_its_own_stream(backend, check):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    rows, hidden = 256, 768
    cupy.random.seed(0)
    record = {}
    with cupy.cuda.Stream(non_blocking=True) as stream:  # produced, consumed and read back on a non-torch stream
        x = (cupy.random.standard_normal((rows, hidden), dtype=cupy.float32) + 0.5).astype(cupy.float16)
        weight = (1 + 0.5 * cupy.random.standard_normal(hidden, dtype=cupy.float32)).astype(cupy.float32)
        bias = (0.5 * cupy.random.standard_normal(hidden, dtype=cupy.float32)).astype(cupy.float32)
        out, rstd, mean = call_on_dlpack(_spy(record), x, weight, bias, eps=1e-5, return_rstd=True,
                                         return_mean=True, backend=backend)
        assert all(isinstance(a, cupy.ndarray) for a in (out, rstd, mean))
        assert record["inputs"] == [x.data.ptr, weight.data.ptr, bias.data.ptr], "an input was copied"
        assert [a.data.ptr for a in (out, rstd, mean)] == record["outputs"], "an output was copied"
        assert out.dtype == cupy.float16 and out.shape == (rows, hidden) and rstd.shape == mean.shape == (rows,)
        host_out = cupy.asnumpy(out, stream=stream)
        stream.synchronize()
    _check_values(record["tensors"], check)
    torch.testing.assert_close(torch.from_numpy(host_out), record["tensors"][3].cpu(), rtol=0, atol=0)
    # And through the public entry point.
    assert isinstance(layernorm(x, weight, bias, backend=backend), cupy.ndarray)


def _jax_gpu():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory to torch's allocator
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    try:
        return jax, jax.devices("gpu")[0]
    except RuntimeError as exc:
        pytest.skip(f"JAX has no GPU backend here: {exc}")


@pytest.mark.parametrize("backend", ["auto", *KERNEL_BACKENDS])
def test_jax_zero_copy(backend, check):
    jax, gpu = _jax_gpu()
    import jax.numpy as jnp

    rows, hidden = 256, 768
    key_x, key_w, key_b = jax.random.split(jax.random.PRNGKey(0), 3)
    with jax.default_device(gpu):
        x = (jax.random.normal(key_x, (rows, hidden), dtype=jnp.float32) + 0.5).astype(jnp.float16)
        weight = 1 + 0.5 * jax.random.normal(key_w, (hidden,), dtype=jnp.float32)
        bias = 0.5 * jax.random.normal(key_b, (hidden,), dtype=jnp.float32)
    record = {}
    out, rstd, mean = call_on_dlpack(_spy(record), x, weight, bias, eps=1e-5, return_rstd=True, return_mean=True,
                                     backend=backend)
    assert all(isinstance(a, jax.Array) for a in (out, rstd, mean))
    assert record["inputs"] == [a.unsafe_buffer_pointer() for a in (x, weight, bias)], "an input was copied"
    assert [a.unsafe_buffer_pointer() for a in (out, rstd, mean)] == record["outputs"], "an output was copied"
    assert out.dtype == jnp.float16 and out.shape == (rows, hidden) and rstd.shape == mean.shape == (rows,)
    _check_values(record["tensors"], check)
    host_out = torch.from_numpy(jax.device_get(out).astype("float32"))
    torch.testing.assert_close(host_out, record["tensors"][3].float().cpu(), rtol=0, atol=0)
    assert isinstance(layernorm(x, weight, bias, backend=backend), jax.Array)
