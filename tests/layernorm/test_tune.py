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


@pytest.mark.parametrize("hidden", [8192, 16384, 32768])
def test_fwd_candidates_cover_the_defaults_families(hidden):
    """The forward's candidates include the families the defaults took from probes (two-row chunked blocks, held
    chunks), and every held candidate leaves part of the row to stream (the launcher refuses the rest)."""
    candidates = tune.fwd_candidates(hidden, torch.bfloat16)
    assert any(c.chunked and c.block_m == 2 and not c.held_chunks for c in candidates)
    held = [c for c in candidates if c.held_chunks]
    assert held and all(c.chunked and c.held_chunks * c.block_n < hidden for c in held)


def test_two_row_and_held_candidates_compute_the_norm(gen, device):
    """Each two-row or held candidate at N = 16384 runs and matches the reference (3 rows: a ragged row block)."""
    rows, hidden = 3, 16384
    x = torch.randn(rows, hidden, generator=gen).to(device=device, dtype=torch.bfloat16)
    weight = torch.randn(hidden, generator=gen).to(device)
    bias = torch.randn(hidden, generator=gen).to(device)
    want = torch.nn.functional.layer_norm(x.float(), (hidden,), weight, bias, 1e-6)
    picked = [c for c in tune.fwd_candidates(hidden, torch.bfloat16)
              if c.chunked and (c.held_chunks or c.block_m == 2) and not c.l2_hints]
    assert len(picked) >= 8
    for config in picked:
        out = torch.full_like(x, float("nan"))
        mean, rstd = torch.empty(rows, device=device), torch.empty(rows, device=device)
        _triton.layernorm_fwd(x, weight, bias, 1e-6, out, mean, rstd, config=config)
        # one bf16 ulp of |out| <= ~5 (the interpreter truncates its bf16 conversions)
        torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=4e-2, msg=str(config))
