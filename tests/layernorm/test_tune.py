"""The opt-in Triton tuner: candidates, the JSON round trip, the override of the heuristic, and the CLI (CPU run
under the interpreter at tiny shapes: every candidate is checked; timings there are not performance figures)."""

from __future__ import annotations

import json

import pytest
import torch

from vibe_kernels.layernorm import _triton, tune


@pytest.fixture
def restore_tuned():
    saved = dict(_triton._TUNED)
    yield
    _triton._TUNED.clear()
    _triton._TUNED.update(saved)
    _triton.fwd_config.cache_clear()
    _triton.bwd_config.cache_clear()


@pytest.mark.parametrize("hidden", [256, 5000, 16384, 65536])
def test_candidates_start_with_the_heuristic_and_are_unique(hidden):
    for candidates, heuristic in ((tune.fwd_candidates(hidden, torch.bfloat16), _triton.fwd_config(hidden, torch.bfloat16)),
                                  (tune.bwd_candidates(hidden, torch.bfloat16), _triton.bwd_config(hidden, torch.bfloat16))):
        assert candidates[0] == heuristic
        assert len(candidates) == len(set(candidates)) >= 2


def test_saved_configs_override_the_heuristic(tmp_path, restore_tuned):
    fwd = _triton.FwdConfig(2, 1024, 4, False)
    bwd = _triton.BwdConfig(1, 1024, 8, False, 1)
    path = tmp_path / "tuned.json"
    _triton.save_tuned_configs(str(path), {("fwd", 1000, "bfloat16"): fwd, ("bwd", 1000, "bfloat16"): bwd})
    assert _triton.load_tuned_configs(str(path)) == 2
    assert _triton.fwd_config(1000, torch.bfloat16) == fwd
    assert _triton.bwd_config(1000, torch.bfloat16) == bwd
    assert _triton.fwd_config(1000, torch.float16) != fwd  # other dtypes keep the heuristic


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="not a vibe_kernels Triton config file"):
        _triton.load_tuned_configs(str(path))


def test_cli_checks_candidates_and_writes_loadable_configs(tmp_path, device, restore_tuned, capsys):
    if device != "cpu":
        pytest.skip("the CPU path of the CLI; on a GPU the tuner times real shapes")
    out = tmp_path / "tuned.json"
    assert tune.main(["--shapes", "3x200", "--dtype", "fp32", "--mode", "both", "--allow-cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "NOT PERFORMANCE FIGURES" in printed.out and "MISMATCH" not in printed.err
    assert _triton.load_tuned_configs(str(out)) == 2


def test_cli_refuses_cpu_without_flag(tmp_path, device):
    if device != "cpu":
        pytest.skip("only meaningful without a GPU")
    assert tune.main(["--shapes", "2x64", "--out", str(tmp_path / "t.json")]) == 2


@pytest.mark.parametrize("hidden", [256, 1024, 4096])
def test_bwd_candidates_can_be_limited_to_one_program_per_sm(hidden):
    limited = tune.bwd_candidates(hidden, torch.bfloat16, max_programs_per_sm=1)
    assert limited[0] == _triton.bwd_config(hidden, torch.bfloat16)  # the heuristic stays first, as the reference
    assert len(limited) >= 3 and all(cfg.programs_per_sm == 1 for cfg in limited[1:] if not cfg.chunked)
    assert set(limited) <= set(tune.bwd_candidates(hidden, torch.bfloat16))
