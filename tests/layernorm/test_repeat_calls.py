"""The repeat-call path of the plain no-grad forward of layernorm and rmsnorm (api._repeat_forward): a call whose
signature an earlier call recorded skips the checks and the backend's lookups. These tests run it for real (the
torch backend, and Triton under the interpreter on the CPU; CUDA backends on a GPU) and check that it gives the full
path's results, that it is taken, and that every call it must not take goes the full way (its checks and errors
included)."""

from __future__ import annotations

import pytest
import torch

from vibe_kernels.layernorm import _backends, api, layernorm, rmsnorm
from vibe_kernels.layernorm._backends import resolve_backend

EPS = 1e-5


def _backends_here(device):
    names = ["torch", "triton"]
    if device == "cuda":
        names.append("cutedsl")
    return names


def _require(backend, device):
    try:
        resolve_backend(backend, torch.device(device))
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def plans():
    _backends.repeat_fwd_plans.clear()
    yield _backends.repeat_fwd_plans
    _backends.repeat_fwd_plans.clear()


@pytest.fixture
def full_path_counter(monkeypatch):
    """Counts the calls that go through the full path's checks (api.check_inputs)."""
    calls = []
    original = api.check_inputs

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "check_inputs", counting)
    return calls


def _fill(gen, t):
    """New random values into t in place (same storage, same metadata: the same signature)."""
    t.copy_(torch.randn(t.shape, generator=gen).to(t.dtype))


# Layouts of x: (shape, how to make it from a fresh buffer). 2-D rows with a padded stride qualify; so do N-D
# contiguous tensors.
LAYOUTS = {
    "2d": lambda buf: buf[: 6 * 48].view(6, 48),
    "3d": lambda buf: buf[: 6 * 48].view(2, 3, 48),
    "padded_rows": lambda buf: buf[: 5 * 56 + 48].as_strided((6, 48), (56, 1)),
    "offset_2_elements": lambda buf: buf[2 : 2 + 6 * 48].view(6, 48),
}


@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["out", "rstd", "mean", "rstd_mean"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("params", ["fp32_wb", "x_dtype_w", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("backend", ["torch", "triton", "cutedsl"])
def test_repeats_match_the_reference_on_fresh_inputs(gen, device, check, plans, full_path_counter, backend, norm,
                                                     dtype, params, layout, flags):
    if backend not in _backends_here(device):
        pytest.skip("CuTeDSL kernels need a GPU")
    _require(backend, device)
    return_rstd, return_mean = flags
    rms = norm == "rmsnorm"
    if rms and return_mean:
        pytest.skip("RMSNorm has no mean")
    buf = torch.empty(6 * 56 + 8, dtype=dtype, device=device)
    x = LAYOUTS[layout](buf)
    hidden = x.shape[-1]
    weight = bias = None
    if params != "none":
        pdtype = torch.float32 if params == "fp32_wb" else dtype
        weight = torch.empty(hidden, dtype=pdtype, device=device)
        bias = torch.empty(hidden, dtype=pdtype, device=device) if params == "fp32_wb" else None
    for call in range(3):
        for t in (buf, weight, bias):  # new values every call, in the same tensors: a stale launch would fail
            if t is not None:
                _fill(gen, t)
        if rms:
            result = rmsnorm(x, weight, bias, eps=EPS, backend=backend, return_rstd=return_rstd)
        else:
            result = layernorm(x, weight, bias, eps=EPS, backend=backend, return_rstd=return_rstd,
                               return_mean=return_mean)
        out = result[0] if isinstance(result, tuple) else result
        assert out.shape == x.shape and out.is_contiguous()
        check.out(out, x, weight, bias, EPS, rms=rms)
        rstd = result[1] if return_rstd else None
        mean = result[-1] if return_mean else None
        if return_rstd or return_mean:
            assert len(result) == 1 + return_rstd + return_mean
            check.stats(mean, rstd, x, EPS, rms=rms)
    assert len(full_path_counter) == 1, "the second and third calls should have taken the repeat path"
    assert len(plans) == 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_changed_signature_takes_the_full_path(gen, device, plans, full_path_counter, backend):
    _require(backend, device)
    x = torch.randn(4, 64, generator=gen).to(device)
    weight = torch.randn(64, generator=gen).to(device)
    layernorm(x, weight, backend=backend)
    variants = [
        lambda: layernorm(x.to(torch.float16), weight, backend=backend),  # dtype
        lambda: layernorm(x[:3], weight, backend=backend),  # rows
        lambda: layernorm(x, weight.to(torch.float16).float(), torch.zeros(64, device=device), backend=backend),
        lambda: layernorm(x, None, backend=backend),  # no weight
        lambda: layernorm(x, weight, backend=backend, return_rstd=True),  # flags
        lambda: layernorm(x.view(2, 2, 64), weight, backend=backend),  # shape
        lambda: layernorm(x, weight, backend="auto" if backend != "auto" else "torch"),  # requested backend
        lambda: rmsnorm(x, weight, backend=backend),  # the other norm: its own signature
    ]
    for run in variants:
        before = len(full_path_counter)
        run()
        assert len(full_path_counter) == before + 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_checks_still_fire_after_a_plan_exists(gen, device, plans, backend):
    _require(backend, device)
    x = torch.randn(4, 64, generator=gen).to(device)
    weight = torch.randn(64, generator=gen).to(device)
    layernorm(x, weight, eps=EPS, backend=backend)
    layernorm(x, weight, eps=EPS, backend=backend)  # a repeat
    with pytest.raises(ValueError, match="eps"):
        layernorm(x, weight, eps=0.0, backend=backend)
    with pytest.raises(ValueError, match="eps"):
        layernorm(x, weight, eps=float("nan"), backend=backend)
    with pytest.raises(TypeError, match="eps"):
        layernorm(x, weight, eps="1e-5", backend=backend)
    with pytest.raises(ValueError, match="shape"):
        layernorm(x, weight[:32], eps=EPS, backend=backend)
    with pytest.raises(TypeError, match="return_rstd"):
        layernorm(x, weight, eps=EPS, backend=backend, return_rstd=1)
    with pytest.raises(TypeError, match="weight"):
        layernorm(x, weight.tolist(), eps=EPS, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_autograd_calls_never_take_the_repeat_path(gen, device, check, plans, backend):
    _require(backend, device)
    x = torch.randn(4, 64, generator=gen).to(device)
    weight = torch.randn(64, generator=gen).to(device)
    layernorm(x, weight, eps=EPS, backend=backend)
    leaf = x.clone().requires_grad_()
    wleaf = weight.clone().requires_grad_()
    for inputs in ((leaf, weight), (x, wleaf)):
        out = layernorm(*inputs, eps=EPS, backend=backend)
        assert out.grad_fn is not None
        dy = torch.randn(out.shape, generator=gen).to(device)
        out.backward(dy)
    refs = check.grad_references(x, weight, None, dy, EPS, {"dw": torch.float32})
    check.within(wleaf.grad, *refs["dw"], "dw")
    with torch.no_grad():  # the same tensors without autograd: repeats are fine again
        out = layernorm(leaf, wleaf, eps=EPS, backend=backend)
    assert out.grad_fn is None
    check.out(out, x, weight, None, EPS)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_inputs_that_are_never_recorded(gen, device, check, plans, backend):
    """A strided weight (the full path copies it), x whose rows cannot be viewed without a copy, a subclass and
    empty x: right results, no record."""
    _require(backend, device)
    weight2 = torch.randn(128, generator=gen).to(device)
    x = torch.randn(4, 64, generator=gen).to(device)
    permuted = torch.randn(3, 2, 64, generator=gen).to(device).transpose(0, 1)
    for _ in range(2):
        check.out(layernorm(x, weight2[::2], eps=EPS, backend=backend), x, weight2[::2], None, EPS)
        check.out(layernorm(permuted, None, eps=EPS, backend=backend), permuted, None, None, EPS)
        layernorm(x[:0], None, eps=EPS, backend=backend)
        param = torch.nn.Parameter(x.clone(), requires_grad=False)
        check.out(layernorm(param, None, eps=EPS, backend=backend), x, None, None, EPS)
    assert len(plans) == 0


def test_plans_are_bounded(gen, device, plans, monkeypatch):
    monkeypatch.setattr(api, "MAX_REPEAT_FWD_PLANS", 4)
    weight = torch.randn(32, generator=gen).to(device)
    for rows in range(1, 11):
        layernorm(torch.randn(rows, 32, generator=gen).to(device), weight, backend="torch")
        assert len(plans) <= 4


def test_loading_tuned_triton_configs_clears_the_plans(tmp_path, gen, device, plans):
    pytest.importorskip("triton")
    from vibe_kernels.layernorm import _triton

    weight = torch.randn(32, generator=gen).to(device)
    layernorm(torch.randn(2, 32, generator=gen).to(device), weight, backend="torch")
    assert len(plans) == 1
    path = tmp_path / "configs.json"
    path.write_text('{"format": "vibe_kernels.triton_configs/1", "configs": []}')
    _triton.load_tuned_configs(str(path))
    assert len(plans) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cutedsl"])
def test_cuda_graph_captures_a_repeat_call(check, plans, full_path_counter, backend):
    """An inference step captured in a CUDA graph after warm-up (so the capture takes the repeat path) replays on
    new inputs like eager."""
    _require(backend, "cuda")
    rows, hidden = 64, 1024
    static_x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(hidden, device="cuda")
    bias = torch.randn(hidden, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):
            layernorm(static_x, weight, bias, eps=EPS, backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = layernorm(static_x, weight, bias, eps=EPS, backend=backend)
    assert len(full_path_counter) == 1
    gen = torch.Generator(device="cuda").manual_seed(3)
    for replay in range(2):
        static_x.copy_(torch.randn(rows, hidden, device="cuda", generator=gen) * (1 + replay) + replay)
        static_out.fill_(float("nan"))
        graph.replay()
        check.out(static_out, static_x, weight, bias, EPS)
