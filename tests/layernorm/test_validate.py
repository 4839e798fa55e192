"""CPU tests of the validate command: tolerances, comparisons, rows, the table, exit status, and one subprocess run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vibe_kernels.layernorm import validate
from vibe_kernels.layernorm._anchors import Case

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def test_ulp_per_dtype():
    values = torch.tensor([1.0, 3.0, 4.0, -5.0])
    assert validate.ulp(values, torch.bfloat16).tolist() == [2**-7, 2**-6, 2**-5, 2**-5]
    assert validate.ulp(values, torch.float16).tolist() == [2**-10, 2**-9, 2**-8, 2**-8]
    assert validate.ulp(torch.tensor([1.0]), torch.float32).item() == 2**-23


def test_out_allowance_is_one_ulp_with_a_floor():
    expected = torch.tensor([0.001, 1.0, 5.0, 20.0])
    bf16 = validate.out_allowance(expected, torch.bfloat16)
    assert bf16.tolist() == pytest.approx([2e-2, 2e-2, 2**-5, 2**-3])
    assert validate.out_allowance(expected, torch.float16)[:2].tolist() == pytest.approx([4e-3, 4e-3])
    assert validate.out_allowance(expected, torch.float32)[1].item() == pytest.approx(1e-5)
    assert validate.out_allowance(expected, torch.float32, slack=3.0)[1].item() == pytest.approx(3e-5)


def test_a_correctly_rounded_result_is_within_tolerance_in_every_dtype():
    torch.manual_seed(0)
    exact = torch.randn(4096) * 6
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        rounded = exact.to(dtype)
        assert validate.compare(rounded, exact, validate.out_allowance(exact, dtype)).within_tolerance
        two_ulps_off = (exact + 2 * validate.ulp(exact, dtype).clamp(min=validate.OUT_ATOL[dtype])).to(dtype)
        assert not validate.compare(two_ulps_off, exact, validate.out_allowance(exact, dtype)).within_tolerance


def test_compare_counts_identical_elements_and_nan_is_infinitely_far():
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0])
    actual = torch.tensor([1.0, 2.0, 3.5, float("nan")])
    diff = validate.compare(actual, expected, torch.full((4,), 1.0))
    assert diff.identical == 2 and diff.count == 4 and diff.identical_fraction == 0.5
    assert math.isinf(diff.max_abs) and math.isinf(diff.worst_ratio) and not diff.within_tolerance
    untoleranced = validate.compare(actual[:3], expected[:3])
    assert untoleranced.max_abs == 0.5 and untoleranced.worst_ratio == 0.0 and untoleranced.within_tolerance


def test_discrepancies_merge_over_chunks():
    first = validate.Discrepancy(max_abs=0.1, worst_ratio=0.5, identical=3, count=4)
    second = validate.Discrepancy(max_abs=0.2, worst_ratio=0.25, identical=1, count=4)
    assert first.merged(second) == validate.Discrepancy(0.2, 0.5, 4, 8)
    assert validate.Discrepancy().identical_fraction == 1.0


def test_mean_tolerance_follows_the_row_scale():
    mean = torch.tensor([0.0, 100.0])
    rstd = torch.tensor([0.5, 1.0])
    assert validate.mean_allowance(mean, rstd).tolist() == pytest.approx([2e-5, 1e-3])
    assert validate.rstd_allowance(rstd).tolist() == pytest.approx([5e-6, 1e-5])


def test_configs_include_the_seed_odd_n_and_fp32():
    shapes = {(c.rows, c.hidden, c.dtype, c.bias) for c in validate.GPU_CONFIGS}
    assert {(1024, 4096, torch.float16, False), (1024, 4096, torch.bfloat16, False),
            (2048, 8192, torch.float16, False), (4096, 8192, torch.float16, True)} <= shapes
    assert any(c.hidden == 5000 and c.rows == 4095 for c in validate.GPU_CONFIGS)
    assert any(c.dtype == torch.float32 and c.rows == c.hidden == 8192 for c in validate.GPU_CONFIGS)
    assert {c.dtype for c in validate.CPU_CONFIGS} == {c.dtype for c in validate.GPU_CONFIGS}


def test_torch_backend_rows_are_within_tolerance():
    rows = validate.validate_case(Case(8, 200, torch.bfloat16, True), ["torch"], CPU, with_quack=False)
    (row,) = rows
    assert (row.backend, row.against, row.gating) == ("torch", validate.AGAINST_REFERENCE, True)
    assert not row.failed and row.out.identical_fraction == 1.0


def test_row_failure_rules():
    case = Case(8, 64, torch.float16, False)
    good, bad = validate.Discrepancy(0.0, 0.5, 1, 1), validate.Discrepancy(1.0, 2.0, 0, 1)
    assert validate.ValidationRow(case, "triton", "fp32 ref", bad, good, good, gating=True).failed
    assert not validate.ValidationRow(case, "triton", "quack", bad, good, good).failed  # informational
    assert validate.ValidationRow(case, "cutedsl", "fp32 ref", error="RuntimeError: x", gating=True).failed


def test_table_has_the_seed_columns_and_marks_failures():
    case = Case(4096, 8192, torch.float16, True)
    same = validate.Discrepancy(0.0, 0.0, 10, 10)
    rows = [validate.ValidationRow(case, "cutedsl", "quack", same, same, same),
            validate.ValidationRow(case, "triton", "fp32 ref", error="RuntimeError: boom", gating=True)]
    table = validate.format_validation_table(rows)
    header = table.splitlines()[0]
    for column in ("Rows", "Hidden", "Dtype", "Max |Δ| Out", "Max |Δ| RSTD", "Max |Δ| Mean", "Identical Out"):
        assert column in header
    assert "float16 + bias" in table and "0.000e+00" in table and "100.00%" in table
    assert table.splitlines()[3].count("fails") == 4
    assert validate.errors_section(rows) == ["fails: triton at 4096x8192 float16 +bias: RuntimeError: boom"]


def test_exit_status_is_one_when_a_backend_exceeds_the_tolerance(monkeypatch, capsys):
    real_layernorm = validate.layernorm

    def off_by_a_lot(*args, **kwargs):
        out, rstd, mean = real_layernorm(*args, **kwargs)
        return out + 1, rstd, mean

    assert validate.main(["--backends", "torch"]) == 0
    assert "PASS" in capsys.readouterr().out
    monkeypatch.setattr(validate, "layernorm", off_by_a_lot)
    assert validate.main(["--backends", "torch"]) == 1
    out = capsys.readouterr().out
    assert "EXCEEDS" in out and "FAIL: torch at" in out


def test_bad_backend_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate.build_parser().parse_args(["--backends", "quack"])
    assert exit_info.value.code == 2
    assert "expected a comma list of cutedsl, triton, torch" in capsys.readouterr().err


def test_command_runs_on_cpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""  # the no-GPU path, also when this suite runs on a GPU machine
    completed = subprocess.run(
        [sys.executable, "-m", "vibe_kernels.layernorm.validate"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "CPU run (no GPU)" in completed.stdout
    assert "Max |Δ| Out" in completed.stdout and "PASS" in completed.stdout
