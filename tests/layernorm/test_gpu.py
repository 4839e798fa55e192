"""Realistic shapes on a CUDA GPU (skipped without one, see conftest.py): the seed's usage example, and the Triton
and auto backends forward + backward against the fp32/fp64 reference, with poisoned outputs for launcher calls."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from vibe_kernels.layernorm import (
    _triton,
    cutedsl_layernorm,
    is_cutedsl_layernorm_available,
    layernorm,
    layernorm_mean_ref,
    layernorm_ref,
    layernorm_rstd_ref,
)

pytestmark = pytest.mark.gpu

SHAPES = [  # (M, N, dtype)
    (4096, 8192, torch.bfloat16),
    (32768, 256, torch.bfloat16),
    (4, 65536, torch.bfloat16),
    (2, 262144, torch.float16),
    (300, 131072, torch.bfloat16),  # CuTeDSL backward: 8-CTA clusters, w and dw/db in shared memory
    (100, 139264, torch.bfloat16),  # CuTeDSL: a 12-CTA cluster (the fewest that cover the row), its last CTA ragged
    (1024, 151936, torch.bfloat16),  # CuTeDSL forward at M >= 1024: 8 CTAs of 5 vectors a thread instead of 13 of 3
    (1024, 180000, torch.float16),  # CuTeDSL forward at M >= 1024: 15 CTAs, weight and bias before the statistics
    (300, 36864, torch.float16),  # CuTeDSL: 3-CTA clusters (one a row forward), the backward's 5 ragged
    (64, 100000, torch.float16),  # CuTeDSL backward: 7 CTAs of 64 bytes a thread, w and dw/db in shared memory
    (4095, 5000, torch.float16),
    (1, 4096, torch.bfloat16),  # one CTA (CuTeDSL: the fp32 dw/db written directly, no column sum)
    (7, 1024, torch.float32),  # several rows in one CTA, one partial row
    (600, 16384, torch.bfloat16),  # Triton backward: x and dy re-read, pipelined row loop
    (300, 12000, torch.float16),  # the same, padded to 16384 lanes
]


def _inputs(gen, rows, hidden, dtype, requires_grad=False):
    x = (torch.randn(rows, hidden, generator=gen, device="cuda") * 1.5 + 0.25).to(dtype)
    weight = 1 + 0.5 * torch.randn(hidden, generator=gen, device="cuda")
    bias = (0.5 * torch.randn(hidden, generator=gen, device="cuda")).to(dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (x, weight, bias))


@pytest.fixture
def cuda_gen(gen):
    # Fresh per-test inputs generated on the GPU (CPU generation of 4096 x 8192 would dominate the test).
    return torch.Generator(device="cuda").manual_seed(int(torch.randint(2**31, (1,), generator=gen)))


def test_seed_usage_example(check):
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend unavailable (needs nvidia-cutlass-dsl and sm_90+)")
    x = torch.randn(1024, 8192, device='cuda', dtype=torch.float16)
    weight = torch.randn(8192, device='cuda', dtype=torch.float32)
    out, rstd, mean = cutedsl_layernorm(x, weight, return_rstd=True, return_mean=True)
    assert out.shape == (1024, 8192) and out.dtype == torch.float16
    assert rstd.shape == mean.shape == (1024,) and rstd.dtype == mean.dtype == torch.float32
    check.out(out, x, weight, None, 1e-6)
    check.stats(mean, rstd, x, 1e-6)


@pytest.mark.parametrize("backend", ["triton", "auto", "cutedsl"])
@pytest.mark.parametrize("rows, hidden, dtype", SHAPES, ids=lambda v: str(v).replace("torch.", ""))
def test_forward_backward_realistic(cuda_gen, check, backend, rows, hidden, dtype):
    x, weight, bias = _inputs(cuda_gen, rows, hidden, dtype, requires_grad=True)
    if backend == "cutedsl":
        if not is_cutedsl_layernorm_available():
            pytest.skip("CuTeDSL backend unavailable (needs nvidia-cutlass-dsl and sm_90+)")
        from vibe_kernels.layernorm._cutedsl import MAX_N

        if hidden > MAX_N:
            # The one refusal the backend documents (api._run_forward: "auto" defers such shapes to Triton).
            with pytest.raises(NotImplementedError, match=rf"N={hidden} is not supported"):
                layernorm(x, weight, bias, eps=1e-5, backend=backend)
            return
    out, rstd, mean = layernorm(x, weight, bias, eps=1e-5, return_rstd=True, return_mean=True, backend=backend)
    check.out(out, x, weight, bias, 1e-5)
    check.stats(mean, rstd, x, 1e-5)
    dy = torch.randn(out.shape, generator=cuda_gen, device="cuda").to(dtype)
    out.backward(dy)
    check.grads(x, weight, bias, dy, 1e-5, x.grad, weight.grad, bias.grad)


@pytest.mark.parametrize("rows, hidden, dtype", SHAPES, ids=lambda v: str(v).replace("torch.", ""))
def test_launchers_write_every_element(cuda_gen, check, rows, hidden, dtype):
    x, weight, bias = _inputs(cuda_gen, rows, hidden, dtype)
    nan = float("nan")
    out = torch.full_like(x, nan)
    mean = torch.full((rows,), nan, device="cuda")
    rstd = torch.full((rows,), nan, device="cuda")
    _triton.layernorm_fwd(x, weight, bias, 1e-5, out, mean, rstd)
    check.out(out, x, weight, bias, 1e-5)
    check.stats(mean, rstd, x, 1e-5)

    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype)
    dx = torch.full_like(x, nan)
    dweight = torch.full_like(weight, nan)
    dbias = torch.full_like(bias, nan)
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias)
    check.grads(x, weight, bias, dy, 1e-5, dx, dweight, dbias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_against_fp32_reference_and_plain_pytorch(cuda_gen, dtype):
    # flash-attention's criterion: no worse than twice PyTorch's own error in the same dtype.
    x, weight, bias = _inputs(cuda_gen, 4096, 8192, dtype)
    weight = weight.to(dtype)
    ref = layernorm_ref(x.float(), weight.float(), bias.float(), 1e-5, out_dtype=torch.float32)
    ours = layernorm(x, weight, bias, eps=1e-5, backend="triton")
    plain = torch.nn.functional.layer_norm(x, (8192,), weight, bias, 1e-5)
    err, plain_err = (ours.float() - ref).abs().max(), (plain.float() - ref).abs().max()
    assert err <= 2 * plain_err + 1e-6, f"max error {err:.3e} vs PyTorch's {plain_err:.3e}"


def test_backward_pipelining_lowered_to_fit_shared_memory(cuda_gen):
    """A backward config with more pipeline stages than shared memory holds (fp32 dy and residual gradient on
    16384-wide rows) runs with fewer (Triton's OutOfResources at the first launch, then a retry) and gives the bits
    of the unpipelined kernel, on this call and the next (the fast-launch cache keeps the kernel that fit)."""
    rows, hidden = 300, 16384
    x, weight, _ = _inputs(cuda_gen, rows, hidden, torch.bfloat16)
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda")
    dres = torch.randn(x.shape, generator=cuda_gen, device="cuda")
    mean, rstd = torch.empty(rows, device="cuda"), torch.empty(rows, device="cuda")
    _triton.layernorm_fwd(x, weight, None, 1e-5, torch.empty_like(x), mean, rstd)
    plain = _triton.BwdConfig(1, hidden, 16, False, 1, reread=True)
    results = []
    for config in (plain, dataclasses.replace(plain, stages=8), dataclasses.replace(plain, stages=8)):
        dx = torch.full_like(x, float("nan"))
        dw = torch.full_like(weight, float("nan"))
        _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, None, config=config, dresidual=dres)
        results.append((dx, dw))
    for variant in results[1:]:
        for reference, got in zip(results[0], variant):
            assert not reference.isnan().any()
            assert torch.equal(reference, got)


@pytest.mark.parametrize("rows, hidden, dtype, residual", [
    (4096, 8192, torch.bfloat16, False), (1000, 4096, torch.float16, True), (600, 65536, torch.bfloat16, False),
    (300, 5000, torch.float16, False), (129, 262144, torch.bfloat16, False), (700, 2048, torch.float32, False),
], ids=str)
def test_cutedsl_backward_prefetch_gives_the_same_bits(cuda_gen, rows, hidden, dtype, residual):
    """The CuTeDSL backward's prefetch (the next row tile's loads issued while this one computes; on by default for
    one CTA per SM) runs the same arithmetic: dx, dw and db (and dx + the residual's gradient) bit-identical to the
    kernel without it."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, _ = _inputs(cuda_gen, rows, hidden, dtype)
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype)
    dres = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype) if residual else None
    mean, rstd = layernorm_mean_ref(x).float(), layernorm_rstd_ref(x, 1e-5).float()
    vec = cutedsl_launch.vector_width(x.element_size(), hidden, (x.stride(0),),
                                      ((x.data_ptr(), x.element_size()), (weight.data_ptr(), weight.element_size())))
    # The register path (stages = 1, so no staged statistics), where the default stages the loads instead
    # (BwdConfig.stages).
    default = dataclasses.replace(cutedsl_config.bwd_config(hidden, x.element_size(), vec, residual=residual,
                                                            rows=rows), stages=1, staged_stats=False)
    results = []
    for config in (dataclasses.replace(default, prefetch=False), dataclasses.replace(default, prefetch=True)):
        dx = torch.full_like(x, float("nan"))
        dw, db = torch.full_like(weight, float("nan")), torch.full_like(weight, float("nan"))
        cutedsl_launch.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=config, dresidual=dres)
        results.append((dx, dw, db))
    for reference, got in zip(*results):
        assert not reference.isnan().any()
        assert torch.equal(reference, got)


@pytest.mark.parametrize("rows, hidden, dtype, rms, stages, affine", [
    (4096, 8192, torch.float16, False, 3, "fp32"), (1000, 4096, torch.bfloat16, False, 2, "fp32"),
    (2049, 256, torch.bfloat16, False, 3, "fp32"), (700, 8192, torch.float32, False, 3, "fp32"),
    (300, 32768, torch.bfloat16, True, 3, "fp32"), (131, 1024, torch.float16, False, 4, "fp32"),
    (4095, 5000, torch.float16, False, 3, "fp32"), (1500, 1000, torch.bfloat16, False, 2, "fp32"),  # ragged rows
    # the default's own cases (2 stages): no weight, a weight in x's dtype, dw without db
    (1031, 4096, torch.float16, False, 2, "none"), (600, 8192, torch.bfloat16, False, 2, "same"),
    (777, 6144, torch.bfloat16, True, 2, "dw only"),
], ids=str)
def test_cutedsl_backward_stages_give_the_same_bits(cuda_gen, rows, hidden, dtype, rms, stages, affine):
    """The staged backward (BwdConfig.stages: x and dy of the next row tiles in flight as cp.async copies into
    shared memory) runs the same arithmetic as the kernel that loads them into registers: dx, dw and db
    bit-identical, ragged last tiles and several tiles per CTA included, with and without a weight; and so does it
    with each tile's mean and rstd copied into the stage with x and dy (BwdConfig.staged_stats)."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, _ = _inputs(cuda_gen, rows, hidden, dtype)
    weight = {"fp32": weight, "same": weight.to(dtype), "dw only": weight, "none": None}[affine]
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype)
    mean = None if rms else layernorm_mean_ref(x).float()
    rstd = (torch.rsqrt(x.double().square().mean(-1) + 1e-5) if rms else layernorm_rstd_ref(x, 1e-5)).float()
    vec = cutedsl_launch.vector_width(x.element_size(), hidden, (x.stride(0),), ((x.data_ptr(), x.element_size()),))
    default = cutedsl_config.bwd_config(hidden, x.element_size(), vec)
    if affine != "fp32":  # these cases are the default's own at this M
        assert cutedsl_config.bwd_config(hidden, x.element_size(), vec, rows=rows).stages == stages
    results = []
    plain = dataclasses.replace(default, prefetch=False, l2_hints=False, staged_stats=False)  # 8192: staged_stats
    for config in (dataclasses.replace(plain, stages=1), dataclasses.replace(plain, stages=stages),
                   dataclasses.replace(plain, stages=stages, staged_stats=True)):
        dx = torch.full_like(x, float("nan"))
        grads = [None if weight is None else torch.full((hidden,), float("nan"), device="cuda", dtype=weight.dtype)
                 for _ in range(2)]
        if affine == "dw only":
            grads[1] = None
        cutedsl_launch.layernorm_bwd(dy, x, weight, mean, rstd, dx, *grads, config=config, rms=rms)
        results.append([dx] + [g for g in grads if g is not None])
    for other in results[1:]:
        for reference, got in zip(results[0], other):
            assert not reference.isnan().any()
            assert torch.equal(reference, got)


@pytest.mark.parametrize("rows, hidden, dtype, rms, dres_in, grad_dtype", [
    (4096, 4096, torch.float16, False, None, None), (4095, 5000, torch.float16, False, None, None),
    (1000, 8192, torch.bfloat16, True, None, None), (2049, 1024, torch.bfloat16, False, None, None),
    (777, 4096, torch.float32, False, torch.bfloat16, None), (1000, 4096, torch.float16, False, torch.bfloat16, None),
    (1000, 3000, torch.float32, False, None, torch.bfloat16), (513, 4096, torch.float32, True, torch.float16,
                                                                torch.float16),
], ids=str)
def test_cutedsl_residual_backward_stages_give_the_same_bits(cuda_gen, rows, hidden, dtype, rms, dres_in,
                                                             grad_dtype):
    """The fused residual's backward with x, dy and dh staged through shared memory (BwdConfig.stages with a
    residual; with the statistics staged too, and with the column sum in the same launch: the default for rows of
    one or two a tile) gives the unstaged kernel's bits: dx (= the norm's gradient + dh), the residual input's
    gradient in its own dtype, dw and db; ragged last tiles, several tiles per CTA, and dy and dh narrower than x
    (``grad_dtype``: 8-byte cp.async.ca copies beside x's 16-byte ones) included."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, _ = _inputs(cuda_gen, rows, hidden, dtype)
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(grad_dtype or dtype)
    dres = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(grad_dtype or dtype)
    mean = None if rms else layernorm_mean_ref(x).float()
    rstd = (torch.rsqrt(x.double().square().mean(-1) + 1e-5) if rms else layernorm_rstd_ref(x, 1e-5)).float()
    vec = cutedsl_launch.vector_width(x.element_size(), hidden, (x.stride(0),), ((x.data_ptr(), x.element_size()),))
    default = cutedsl_config.bwd_config(hidden, x.element_size(), vec, residual=True, rows=rows)
    assert (default.stages == 2 or default.tiling.rows_per_cta > 2) and not default.prefetch  # 1024: 8 rows a tile
    base = dataclasses.replace(default, stages=1, staged_stats=False, fused_column_sum=False)
    results = []
    for config in (base, dataclasses.replace(base, stages=2), dataclasses.replace(base, stages=3, staged_stats=True),
                   dataclasses.replace(base, stages=2, staged_stats=True, fused_column_sum=True)):
        dx = torch.full_like(x, float("nan"))
        dx_in = None if dres_in is None else torch.full(x.shape, float("nan"), device="cuda", dtype=dres_in)
        grads = [torch.full((hidden,), float("nan"), device="cuda") for _ in range(2)]
        if rms:
            grads[1] = None
        cutedsl_launch.layernorm_bwd(dy, x, weight, mean, rstd, dx, *grads, config=config, rms=rms, dresidual=dres,
                                     dresidual_in=dx_in)
        results.append([t for t in (dx, dx_in, *grads) if t is not None])
    for reference, got in zip(results[0], results[1]):
        assert not reference.isnan().any()
        assert torch.equal(reference, got)
    for other in results[2:]:  # the staged statistics / the fused sum: dx exact, dw / db within summation order
        assert torch.equal(results[0][0], other[0])
        for reference, got in zip(results[0][1:], other[1:]):
            assert not got.isnan().any()
            assert torch.allclose(reference.float(), got.float(), rtol=1e-5, atol=1e-4)


def _check_fused_column_sum(run, x, dy, mean, rstd, rms):
    """What both backends' fused column sums must do. ``run(fused, stream=None)`` runs one backward (outputs
    poisoned) and returns [dx, dw, db] (None where not wanted): dx bit-identical to the two-launch path, dw and db
    within fp32 summation-order noise of it and of an fp64 reference; three launches in a row give the same bits
    (the counter is back at zero after each), and so do launches on two streams at once (a counter per stream)."""
    two_launches = run(False)
    fused = run(True)
    assert torch.equal(two_launches[0], fused[0]) and not fused[0].isnan().any()
    xhat = (x.double() - (0 if rms else mean.double()[:, None])) * rstd.double()[:, None]
    references = [(dy.double() * xhat).sum(0), dy.double().sum(0)]
    scales = [(dy.double() * xhat).abs().sum(0), dy.double().abs().sum(0)]
    for got, other, reference, scale in zip(fused[1:], two_launches[1:], references, scales):
        if got is None:
            continue
        assert not got.isnan().any()
        ulp = 2.0 ** -23 if got.dtype == torch.float32 else 2.0 ** -7
        tolerance = scale * 2.0 ** -18 + reference.abs() * ulp
        assert ((got.double() - reference).abs() <= tolerance).all()
        assert ((got.double() - other.double()).abs() <= tolerance).all()
    for _ in range(3):
        again = run(True)
        assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(fused, again))
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    concurrent = [run(True, stream) for stream in streams for _ in range(2)]
    torch.cuda.synchronize()
    for result in concurrent:
        assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(fused, result))
    from vibe_kernels.layernorm import _backends

    for counter in _backends._sum_counters.values():
        assert counter.tolist() == [0, 0]


def _fused_sum_inputs(cuda_gen, rows, hidden, dtype, variant):
    """x, weight (in x's dtype for the "same" variant), dy, mean (None for "rms"), rstd and the RMSNorm flag of the
    fused column sum tests."""
    x, weight, _ = _inputs(cuda_gen, rows, hidden, dtype)
    if variant == "same":
        weight = weight.to(dtype)
    rms = variant == "rms"
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype)
    mean = None if rms else layernorm_mean_ref(x).float()
    rstd = (torch.rsqrt(x.double().square().mean(-1) + 1e-5) if rms else layernorm_rstd_ref(x, 1e-5)).float()
    return x, weight, dy, mean, rstd, rms


@pytest.mark.parametrize("rows, hidden, dtype, variant", [
    (4096, 8192, torch.float16, "fp32"), (4095, 5000, torch.float16, "fp32"), (2049, 256, torch.bfloat16, "fp32"),
    (1000, 4096, torch.float32, "fp32"), (700, 3072, torch.bfloat16, "same"), (1500, 1000, torch.bfloat16, "fp32"),
    (777, 6144, torch.bfloat16, "rms"), (1031, 4096, torch.float16, "dw only"), (300, 512, torch.float32, "db only"),
], ids=str)
def test_cutedsl_backward_fused_column_sum(cuda_gen, rows, hidden, dtype, variant):
    """The column sum in the backward's own launch (BwdConfig.fused_column_sum: sum CTAs wait on an arrival
    counter, then sum the partial rows): dx bit-identical to the two-launch path, dw and db within fp32
    summation-order noise of it and of an fp64 reference; three launches in a row give the same bits (the counter
    is back at zero after each), and so do launches on two streams at once (a counter per stream)."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, dy, mean, rstd, rms = _fused_sum_inputs(cuda_gen, rows, hidden, dtype, variant)
    vec = cutedsl_launch.vector_width(x.element_size(), hidden, (x.stride(0),),
                                      ((x.data_ptr(), x.element_size()), (weight.data_ptr(), weight.element_size())))
    default = cutedsl_config.bwd_config(hidden, x.element_size(), vec, rows=rows)

    def run(fused, stream=None):
        # Outputs poisoned on the stream that runs the backward.
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            dx = torch.full_like(x, float("nan"))
            grads = [torch.full((hidden,), float("nan"), device="cuda", dtype=weight.dtype) for _ in range(2)]
            if variant == "dw only":
                grads[1] = None
            if variant == "db only":
                grads[0] = None
            config = dataclasses.replace(default, fused_column_sum=fused)
            cutedsl_launch.layernorm_bwd(dy, x, weight, mean, rstd, dx, *grads, config=config, rms=rms)
        return [dx] + grads

    _check_fused_column_sum(run, x, dy, mean, rstd, rms)


@pytest.mark.parametrize("rows, hidden, dtype, variant", [
    (4096, 8192, torch.float16, "fp32"), (4095, 5000, torch.float16, "fp32"), (32768, 1024, torch.bfloat16, "fp32"),
    (1000, 4096, torch.float32, "fp32"), (700, 3072, torch.bfloat16, "same"), (32768, 512, torch.bfloat16, "fp32"),
    (777, 6144, torch.bfloat16, "rms"), (1031, 4096, torch.float16, "dw only"), (600, 16384, torch.bfloat16, "fp32"),
], ids=str)
def test_triton_backward_fused_sum(cuda_gen, monkeypatch, rows, hidden, dtype, variant):
    """The Triton resident backward's column sum in its own launch (BwdConfig.fused_sum: sum programs wait on an
    arrival counter, then sum the partial rows): no sum_partials launch, dx bit-identical to the two-launch path,
    dw and db within fp32 summation-order noise of it (the sum programs' tiles and warps differ from
    sum_partials') and of an fp64 reference; repeated launches give the same bits (the counter is back at zero
    after each), and so do launches on two streams at once (a counter per stream). 32768 x 512: two programs add
    into each partial row (SHARED_PARTIALS); 600 x 16384: the re-read rows."""
    x, weight, dy, mean, rstd, rms = _fused_sum_inputs(cuda_gen, rows, hidden, dtype, variant)
    default = _triton.bwd_config(hidden, dtype)
    assert not default.chunked
    sums = []
    real_sum_partials = _triton.sum_partials
    monkeypatch.setattr(_triton, "sum_partials", lambda *args: (sums.append(1), real_sum_partials(*args)))

    def run(fused, stream=None):
        # Outputs poisoned on the stream that runs the backward.
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            dx = torch.full_like(x, float("nan"))
            grads = [torch.full((hidden,), float("nan"), device="cuda", dtype=weight.dtype) for _ in range(2)]
            if variant == "dw only" or rms:
                grads[1] = None
            config = dataclasses.replace(default, fused_sum=fused)
            _triton.layernorm_bwd(dy, x, weight, mean, rstd, dx, *grads, config=config, rms=rms)
        return [dx] + grads

    _check_fused_column_sum(run, x, dy, mean, rstd, rms)
    assert sums == [1], "one sum_partials launch (the two-launch path's); the fused backward launched none"


def test_triton_backward_fused_sum_under_graph_capture(cuda_gen, monkeypatch):
    """Under CUDA graph capture the fused column sum falls back to the second launch (no per-stream counter: a graph
    may replay on any stream), and the replayed graph gives the eager fused backward's dx and dw/db within fp32
    summation-order noise."""
    rows, hidden, dtype = 4096, 4096, torch.bfloat16
    x, weight, _ = _inputs(cuda_gen, rows, hidden, dtype)
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype)
    mean, rstd = layernorm_mean_ref(x).float(), layernorm_rstd_ref(x, 1e-5).float()
    config = dataclasses.replace(_triton.bwd_config(hidden, dtype), fused_sum=True)
    outputs = [torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)]
    eager = [torch.empty_like(t) for t in outputs]
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, *eager, config=config)
    _triton.layernorm_bwd(dy, x, weight, mean, rstd, *outputs, config=dataclasses.replace(config, fused_sum=False))
    sums = []
    real_sum_partials = _triton.sum_partials
    monkeypatch.setattr(_triton, "sum_partials", lambda *args: (sums.append(1), real_sum_partials(*args)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _triton.layernorm_bwd(dy, x, weight, mean, rstd, *outputs, config=config)
    assert sums == [1]
    for t in outputs:
        t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(outputs[0], eager[0])
    for got, want in zip(outputs[1:], eager[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("rows, hidden, dtype, variant", [
    (128, 4096, torch.bfloat16, "plain"), (128, 8192, torch.bfloat16, "plain"), (256, 1024, torch.float16, "plain"),
    (200, 1000, torch.float16, "bf16 weight"), (100, 769, torch.bfloat16, "plain"), (3, 2048, torch.float32, "plain"),
    (64, 4096, torch.bfloat16, "rms"), (96, 4096, torch.bfloat16, "residual"), (130, 2048, torch.bfloat16, "dw only"),
], ids=str)
def test_cutedsl_backward_column_ctas_at_few_rows(cuda_gen, rows, hidden, dtype, variant):
    """Few rows (BwdConfig.column_tile, the default there): CTAs of the backward's own launch sum dw and db down the
    columns and write them in the gradients' dtypes. dx (and the residual gradient) bit-identical to the path
    without them (partial rows and a column sum, or the Triton backend's weight_grads_from_rows); dw and db within
    fp32 summation-order noise of an fp64 reference."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, bias = _inputs(cuda_gen, rows, hidden, dtype)
    if variant == "bf16 weight":
        weight = weight.bfloat16()
    rms = variant == "rms"
    dy = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype)
    dres = torch.randn(x.shape, generator=cuda_gen, device="cuda").to(dtype) if variant == "residual" else None
    mean = None if rms else layernorm_mean_ref(x).float()
    rstd = (torch.rsqrt(x.double().square().mean(-1) + 1e-5) if rms else layernorm_rstd_ref(x, 1e-5)).float()
    vec = cutedsl_launch.vector_width(x.element_size(), hidden, (x.stride(0),),
                                      ((x.data_ptr(), x.element_size()), (weight.data_ptr(), weight.element_size())))
    default = cutedsl_config.bwd_config(hidden, x.element_size(), vec, residual=dres is not None, rows=rows)
    assert default.column_tile > 0
    results = []
    for config in (default, dataclasses.replace(default, column_tile=0)):
        dx = torch.full_like(x, float("nan"))
        dw = torch.full_like(weight, float("nan"))
        db = None if variant == "dw only" else torch.full_like(bias, float("nan"))
        cutedsl_launch.layernorm_bwd(dy, x, weight, mean, rstd, dx, dw, db, config=config, rms=rms, dresidual=dres)
        results.append((dx, dw, db))
    (dx, dw, db), (dx_ref, dw_other, db_other) = results
    assert not dx.isnan().any() and torch.equal(dx, dx_ref)
    xhat = (x.double() - (0 if rms else mean.double()[:, None])) * rstd.double()[:, None]
    for got, other, want in ((dw, dw_other, (dy.double() * xhat).sum(0)), (db, db_other, dy.double().sum(0))):
        if got is None:
            continue
        assert got.dtype == other.dtype and not got.isnan().any()
        # Both paths sum in fp32 (in different orders) and round once to the gradient's dtype.
        ulp = torch.finfo(got.dtype).eps
        tol = max(ulp, 1e-5) * want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)
        torch.testing.assert_close(got.double(), other.double(), rtol=0, atol=tol)


@pytest.mark.parametrize("rows, hidden, dtype, variant", [
    (32768, 1024, torch.bfloat16, "plain"), (4096, 1536, torch.float16, "plain"), (4097, 2048, torch.bfloat16, "w16"),
    (8192, 1024, torch.float32, "weight only"), (4099, 1800, torch.bfloat16, "plain"),
    (5000, 512, torch.float32, "plain"),
], ids=str)
def test_cutedsl_mid_row_forward(cuda_gen, rows, hidden, dtype, variant):
    """Rows of 2-4 KB with weight and/or bias at M >= MID_ROW_MIN_ROWS (the twenty-fifth session's default): one row
    a 128-thread CTA, weight and bias after the statistics. out, mean and rstd (poisoned first) match the fp64
    reference, and the multi-row tiling of 64 bytes a thread (the default before) within one rounding of out and fp32
    noise of the statistics (the reductions add in another order); M not a multiple of anything, ragged rows (N =
    1536, 1800) included."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, bias = _inputs(cuda_gen, rows, hidden, dtype)
    if variant == "w16":
        weight, bias = weight.to(dtype), bias.to(dtype)
    if variant == "weight only":
        bias = None
    affine_bytes = sum(t.element_size() for t in (weight, bias) if t is not None)
    vec = 16 // x.element_size()
    default = cutedsl_config.fwd_config(hidden, x.element_size(), vec, rows=rows, affine_bytes=affine_bytes)
    assert (default.tiling.threads_per_row, default.tiling.rows_per_cta) == (128, 1) and default.affine_after_stats
    multi_row = cutedsl_config.fwd_config(hidden, x.element_size(), vec, rows=rows, affine_bytes=affine_bytes,
                                          bytes_per_thread=64)
    assert multi_row.tiling.rows_per_cta > 1
    results = []
    for config in (None, multi_row):  # None: the launcher's own choice
        out = torch.full_like(x, float("nan"))
        mean = torch.full((rows,), float("nan"), device="cuda")
        rstd = torch.full((rows,), float("nan"), device="cuda")
        cutedsl_launch.layernorm_fwd(x, weight, bias, 1e-5, out, mean, rstd, config=config)
        results.append((out, mean, rstd))
    (out, mean, rstd), (out_multi, mean_multi, rstd_multi) = results
    assert not out.isnan().any() and not mean.isnan().any() and not rstd.isnan().any()
    want = layernorm_ref(x.double(), weight.double(), None if bias is None else bias.double(), 1e-5)
    ulp = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6
    scale = want.abs().amax(-1, keepdim=True).clamp_min(1)
    # One rounding of the output (plus fp32 statistics' noise) against the fp64 reference, two between the tilings.
    assert ((out.double() - want).abs() <= ulp * scale).all()
    assert ((out.double() - out_multi.double()).abs() <= 2 * ulp * scale).all()
    for got, other, ref in ((mean, mean_multi, layernorm_mean_ref(x.double())),
                            (rstd, rstd_multi, layernorm_rstd_ref(x.double(), 1e-5))):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, other, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, hidden, dtype, variant", [
    (600, 65536, torch.bfloat16, "plain"), (129, 262144, torch.bfloat16, "plain"), (300, 32768, torch.float16, "w16"),
    (70, 131072, torch.float32, "plain"), (200, 65536, torch.bfloat16, "rms"), (1, 65536, torch.bfloat16, "plain"),
    (5, 262144, torch.float16, "none"), (400, 65536, torch.bfloat16, "out fp32"), (33, 16384, torch.bfloat16, "plain"),
    # unclustered rows at several CTAs per SM (the twenty-second session's defaults at N = 4096 / 8192 / 16384)
    (4096, 8192, torch.float16, "plain"), (2049, 4096, torch.bfloat16, "plain"), (1031, 16384, torch.float16, "plain"),
    (3000, 8192, torch.bfloat16, "rms"),
    # unclustered CTAs of several rows (opt-in, twenty-third session), M not a multiple of the rows a CTA
    (3001, 1024, torch.bfloat16, "plain"), (1029, 256, torch.float16, "rms"), (2051, 2048, torch.bfloat16, "none"),
], ids=str)
def test_cutedsl_persistent_forward_gives_the_same_bits(cuda_gen, rows, hidden, dtype, variant):
    """The persistent forward (FwdConfig.persistent: weight/bias once into shared memory, the next row prefetched,
    the exchange's buffers alternating by row parity) runs the arithmetic of the one-cluster-a-row kernel with
    merged statistics: out, mean and rstd bit-identical, and out right against the reference; M from 1 to many
    rows per cluster; unclustered rows with 512 threads' worth of CTAs per SM, of one or several rows a CTA."""
    if not is_cutedsl_layernorm_available():
        pytest.skip("CuTeDSL backend not available")
    from vibe_kernels.layernorm._cutedsl import config as cutedsl_config
    from vibe_kernels.layernorm._cutedsl import launch as cutedsl_launch

    x, weight, bias = _inputs(cuda_gen, rows, hidden, dtype)
    if variant == "w16":
        weight, bias = weight.to(dtype), None
    if variant == "none":
        weight = bias = None
    rms = variant == "rms"
    out_dtype = torch.float32 if variant == "out fp32" else dtype
    widest = max(x.element_size(), torch.finfo(out_dtype).bits // 8)
    vec = 16 // widest
    per_row = cutedsl_config.fwd_config(hidden, x.element_size(), vec, rows=rows, widest_elem_bytes=widest,
                                        persistent=False)
    ctas = cutedsl_config.MAX_CTA_THREADS // per_row.tiling.num_threads if per_row.tiling.cluster_n == 1 else 1
    persistent = dataclasses.replace(per_row, persistent=True, merged_stats=True, affine_after_stats=False,
                                     min_ctas_per_sm=0, l2_hints=False, persistent_ctas_per_sm=ctas)
    results = []
    for config in (dataclasses.replace(per_row, merged_stats=True), persistent):
        out = torch.full(x.shape, float("nan"), device="cuda", dtype=out_dtype)
        mean = None if rms else torch.full((rows,), float("nan"), device="cuda")
        rstd = torch.full((rows,), float("nan"), device="cuda")
        cutedsl_launch.layernorm_fwd(x, weight, bias, 1e-5, out, mean, rstd, config=config, rms=rms)
        results.append((out, mean, rstd))
    for reference, got in zip(*results):
        if reference is None:
            continue
        assert not reference.isnan().any()
        assert torch.equal(reference, got)
    if rows and not rms:
        want = layernorm_ref(x, weight, bias, 1e-5)
        torch.testing.assert_close(results[1][0].float(), want.float(), atol=2e-2 if dtype != torch.float32 else 1e-4,
                                   rtol=1e-2 if dtype != torch.float32 else 1e-4)


def test_stats_match_reference_at_scale(cuda_gen):
    x, _, _ = _inputs(cuda_gen, 2048, 8192, torch.bfloat16)
    _, rstd, mean = layernorm(x, None, eps=1e-5, return_rstd=True, return_mean=True, backend="triton")
    torch.testing.assert_close(mean, layernorm_mean_ref(x.double()).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd, layernorm_rstd_ref(x.double(), 1e-5).float(), rtol=1e-5, atol=0)


def test_fast_launch_cache_separates_alignments(check, cuda_gen):
    """The Triton fast-launch cache: after a call on 16-byte aligned rows fills it, rows starting 2 bytes off (and a
    row stride that is not a multiple of 16) must get their own compiled kernel and stay right; repeated calls reuse
    the cache (no new entries) and still match the reference."""
    hidden = 1000
    storage = torch.randn(64 * (hidden + 8) + 8, generator=cuda_gen, device="cuda").to(torch.float16)
    weight = torch.randn(hidden, generator=cuda_gen, device="cuda")
    views = {
        "aligned": storage[: 64 * hidden].view(64, hidden),
        "2 bytes off": storage[1 : 1 + 64 * hidden].view(64, hidden),
        "odd row stride": storage[: 63 * (hidden + 1) + hidden].as_strided((64, hidden), (hidden + 1, 1))[:63],
    }
    for x in views.values():
        for _ in range(3):
            out = layernorm(x, weight, backend="triton")
            check.out(out, x, weight, None, 1e-6)
    entries = len(_triton._compiled_kernels)
    assert entries >= 3  # at least one compiled kernel per alignment class
    for x in views.values():
        check.out(layernorm(x, weight, backend="triton"), x, weight, None, 1e-6)
    assert len(_triton._compiled_kernels) == entries


@pytest.mark.parametrize("backend", ["triton", "cutedsl"])
def test_forward_launch_plans_separate_alignments(check, cuda_gen, backend):
    """The forward launch plans (a call signature -> the compiled kernel, skipping the launcher's set-up): aligned
    rows, rows 2 bytes off and an odd row stride each get their own plan, and calls that reuse a plan stay right
    (fresh values every call: an output left over from a launch that did not happen would fail); with fp16 weight
    and bias instead of fp32 ones, a new plan each again."""
    if backend == "cutedsl":
        if not is_cutedsl_layernorm_available():
            pytest.skip("CuTeDSL not available")
        from vibe_kernels.layernorm._cutedsl import launch as plans_module
    else:
        plans_module = _triton
    hidden = 1000
    storage = torch.empty(64 * (hidden + 8) + 8, device="cuda", dtype=torch.float16)
    views = [
        storage[: 64 * hidden].view(64, hidden),
        storage[1 : 1 + 64 * hidden].view(64, hidden),
        storage[: 63 * (hidden + 1) + hidden].as_strided((64, hidden), (hidden + 1, 1))[:63],
    ]
    plans_module._fwd_plans.clear()
    for dtype in (torch.float32, torch.float16):
        for x in views:
            for _ in range(3):
                storage.copy_(torch.randn(storage.shape, generator=cuda_gen, device="cuda"))
                weight = torch.randn(hidden, generator=cuda_gen, device="cuda").to(dtype)
                bias = torch.randn(hidden, generator=cuda_gen, device="cuda").to(dtype)
                check.out(layernorm(x, weight, bias, backend=backend), x, weight, bias, 1e-6)
    assert len(plans_module._fwd_plans) == 2 * len(views)
