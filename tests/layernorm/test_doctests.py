"""The examples in the docstrings of the config heuristics and helpers run as written (they document the configs the
heuristics pick, so a rule change that forgets its docstring fails here)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "vibe_kernels.layernorm._cutedsl.config",
    "vibe_kernels.layernorm._cutedsl.launch",
    "vibe_kernels.layernorm._triton",
    "vibe_kernels.layernorm.bench",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.endswith("launch"):
        pytest.importorskip("cutlass")
    if name.endswith("_triton"):
        pytest.importorskip("triton")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name}: no examples found"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (see the output above)"
