"""The Triton fast-launch cache (``_triton._launch``): its key must separate every argument property Triton
specializes a compiled kernel on, or a kernel compiled for aligned pointers would run on misaligned ones."""

import pytest
import torch

_triton = pytest.importorskip("vibe_kernels.layernorm._triton")


@pytest.fixture
def key():
    """_launch_key for one stand-in kernel id, with constexprs N and FLAG."""
    return lambda *args, N=64, FLAG=True, num_warps=4, device=0: _triton._launch_key(
        12345, device, num_warps, args, {"N": N, "FLAG": FLAG})


def _at_offset(elements: int, dtype=torch.float16) -> torch.Tensor:
    """A tensor whose data pointer is ``elements`` elements past a 16-byte aligned allocation."""
    base = torch.empty(64, dtype=dtype)
    assert base.data_ptr() % 16 == 0
    return base[elements:]


def test_same_properties_share_a_key(key):
    a, b = torch.empty(32, dtype=torch.float16), torch.empty(48, dtype=torch.float16)
    assert key(a, None, 3, 1e-6) == key(b, None, 5, 1e-5)  # other aligned pointers, other plain ints, other floats


def test_pointer_alignment_and_dtype_split_the_key(key):
    aligned = _at_offset(0)
    assert key(aligned) != key(_at_offset(1))  # 2 bytes off
    assert key(aligned) == key(_at_offset(8))  # 16 bytes off: aligned again
    assert key(aligned) != key(_at_offset(0, torch.bfloat16))
    assert key(aligned) != key(None)


@pytest.mark.parametrize("a, b", [(1, 3), (16, 17), (32, 48 + 1), (2**31 - 16, 2**31), (-16, 2**63)])
def test_integer_specializations_split_the_key(key, a, b):
    assert key(a) != key(b)


def test_constexprs_options_and_device_split_the_key(key):
    x = torch.empty(8)
    base = key(x)
    assert base != key(x, N=65)
    assert base != key(x, FLAG=False)
    assert base != key(x, num_warps=8)
    assert base != key(x, device=1)
    assert base != _triton._launch_key(54321, 0, 4, (x,), {"N": 64, "FLAG": True})  # another kernel


def test_unknown_argument_types_are_refused(key):
    with pytest.raises(TypeError, match="unsupported kernel argument type str"):
        key("not a kernel argument")


def test_interpreted_kernels_take_the_plain_path(monkeypatch):
    """Under the interpreter (or for any non-JITFunction) ``_launch`` is ``kernel[grid](...)`` and caches nothing."""
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    before = dict(_triton._compiled_kernels)
    _triton._launch(Recorder(), (3,), 4, "x", 7, N=5)
    assert calls == [((3,), ("x", 7), {"num_warps": 4, "N": 5})]
    assert _triton._compiled_kernels == before


def test_pipelining_lowered_until_shared_memory_fits():
    """A launch whose NUM_STAGES needs more shared memory than the device has (Triton raises OutOfResources at the
    first launch) is retried with one stage fewer until it fits; other kernels' errors, and one stage that does not
    fit, propagate."""
    from triton.runtime.errors import OutOfResources

    calls = []

    class NeedsAtMostTwoStages:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append(kwargs.get("NUM_STAGES"))
                if kwargs.get("NUM_STAGES", 1) > 2 or kwargs.get("TOO_BIG"):
                    raise OutOfResources(300000, 232448, "shared memory")
                return "compiled"
            return launch

    result, constexprs = _triton._jit_call(NeedsAtMostTwoStages(), (1,), 4, ("x",), {"N": 8, "NUM_STAGES": 4})
    assert (result, constexprs, calls) == ("compiled", {"N": 8, "NUM_STAGES": 2}, [4, 3, 2])
    with pytest.raises(OutOfResources):
        _triton._jit_call(NeedsAtMostTwoStages(), (1,), 4, (), {"NUM_STAGES": 2, "TOO_BIG": True})
    with pytest.raises(OutOfResources):
        _triton._jit_call(NeedsAtMostTwoStages(), (1,), 4, (), {"TOO_BIG": True})
    assert calls[3:] == [2, 1, None]


def test_alignment_bits_mark_given_aligned_tensors():
    """The forward plan's pointer signature: one bit per tensor, set when given and 16-byte aligned."""
    aligned, off = _at_offset(0), _at_offset(1)
    assert _triton._alignment_bits((aligned, off, None, aligned)) == 0b1001
    assert _triton._alignment_bits((off, aligned)) != _triton._alignment_bits((aligned, off))
    assert _triton._alignment_bits((aligned, _at_offset(8))) == 0b11
