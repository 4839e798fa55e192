"""CPU tests of the bench command: parsing, arithmetic, tables, the output check, the regression check, and one
end-to-end run in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vibe_kernels.layernorm import bench
from vibe_kernels.layernorm._anchors import PROVIDERS, AutogradRunner, Case, Provider, StepOutput, make_inputs

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
FP16, BF16, FP32 = torch.float16, torch.bfloat16, torch.float32


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


def test_shape_list_accepts_presets_and_explicit_shapes():
    assert bench.parse_shape_list("seed") == ("seed",)
    assert bench.parse_shape_list("4096x8192, 1x4096,sweep") == ((4096, 8192), (1, 4096), "sweep")
    assert bench.parse_shape_list("4X64") == ((4, 64),)


@pytest.mark.parametrize("text", ["", "4x", "x64", "0x64", "4x0", "4096*8192", "seeds", "-4x64"])
def test_shape_list_rejects_bad_items(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        bench.parse_shape_list(text)


def test_seed_preset_is_the_seed_table():
    cases = bench.resolve_cases(["seed"], None, None)
    assert cases == [
        Case(4096, 8192, FP16, True),
        Case(4096, 8192, BF16, False),
        Case(4096, 16384, FP16, False),
        Case(4096, 4096, FP16, True),
    ]


def test_sweep_preset_covers_every_anchor_shape():
    cases = bench.resolve_cases(["sweep"], None, None)
    shapes = {(c.rows, c.hidden, c.dtype) for c in cases}
    assert {(32768, n, BF16) for n in (256, 1024, 4096, 8192, 16384, 32768, 65536)} <= shapes
    assert {(16384, 131072, BF16), (8192, 262144, BF16), (8192, 8192, FP32), (4095, 5000, FP16)} <= shapes
    assert {(1, 4096, BF16), (128, 4096, BF16)} <= shapes  # the latency rows
    assert all(c.bias for c in cases)


def test_all_is_seed_then_sweep_without_duplicates():
    everything = bench.resolve_cases(["all", "seed"], None, None)
    assert everything == bench.resolve_cases(["seed"], None, None) + bench.resolve_cases(["sweep"], None, None)


def test_overrides_and_explicit_defaults():
    assert bench.resolve_cases([(4, 64)], None, None) == [Case(4, 64, bench.EXPLICIT_SHAPE_DTYPE, True)]
    assert bench.resolve_cases([(4, 64)], FP32, False) == [Case(4, 64, FP32, False)]
    assert {c.dtype for c in bench.resolve_cases(["seed"], FP32, None)} == {FP32}
    assert not any(c.bias for c in bench.resolve_cases(["seed"], None, False))


def test_parser_defaults_and_flags():
    args = bench.build_parser().parse_args([])
    assert (args.shapes, args.mode, args.backends, args.repeats, args.bias, args.tolerance) == (
        None, None, None, None, None, 0.07)
    args = bench.build_parser().parse_args(
        ["--shapes", "seed,8x128", "--mode", "fwd,bwd", "--backends", "torch,quack", "--dtype", "bf16",
         "--no-bias", "--repeats", "3", "--tolerance", "0.1"])
    assert args.shapes == ("seed", (8, 128))
    assert args.mode == ("fwd", "bwd")
    assert args.backends == ("torch", "quack")
    assert (args.dtype, args.bias, args.repeats, args.tolerance) == (BF16, False, 3, 0.1)


@pytest.mark.parametrize("argv, message", [
    (["--backends", "torch,flash"], "--backends: expected a comma list of backends"),
    (["--mode", "forward"], "--mode: expected a comma list of modes"),
    (["--dtype", "int8"], "--dtype: expected one of"),
    (["--repeats", "0"], "--repeats: expected a positive integer"),
    (["--tolerance", "-0.1"], "--tolerance: expected a number >= 0"),
    (["--shapes", "4096by8192"], "--shapes: expected MxN"),
])
def test_bad_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_check_refuses_shape_flags(tmp_path, capsys):
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"results": [_record(4, 64, "fwd", "torch", 1.0)]}))
    with pytest.raises(SystemExit):
        bench.main(["--check", str(baseline), "--shapes", "seed"])
    assert "--check takes the shapes and modes from the baseline" in capsys.readouterr().err


def test_check_rejects_a_file_without_results(tmp_path, capsys):
    baseline = tmp_path / "base.json"
    baseline.write_text("{}")
    with pytest.raises(SystemExit):
        bench.main(["--check", str(baseline)])
    assert "has no 'results' list" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------------------------


def test_bytes_moved_per_mode():
    case = Case(4096, 8192, FP16, True)
    elements = 4096 * 8192
    assert bench.bytes_moved(case, "fwd") == 2 * elements * 2
    assert bench.bytes_moved(case, "fwdbwd") == 5 * elements * 2
    assert bench.bytes_moved(case, "bwd") == 3 * elements * 2
    assert bench.bytes_moved(Case(8, 8, FP32, False), "fwd") == 2 * 64 * 4


def test_gbps_and_percent_of_sol():
    assert bench.gb_per_s(134_217_728, 0.0498) == pytest.approx(2695.1, rel=1e-4)  # anchors.md's copy at 4096x8192
    assert bench.percent_of_sol(0.0498, 0.0794) == pytest.approx(62.72, rel=1e-3)
    result = bench.Result(Case(4096, 8192, FP16, True), "fwd", "torch", sol_ms=0.05, repeat_ms=[0.2, 0.1, 0.3])
    assert result.median_ms == 0.2
    assert result.gbps == pytest.approx(134_217_728 / 0.2e-3 / 1e9)
    assert result.pct_sol == pytest.approx(25.0)


def test_failed_result_has_no_rates():
    result = bench.Result(Case(4, 64, FP16, True), "fwd", "liger", sol_ms=0.01, repeat_ms=[], error="ValueError")
    assert (result.median_ms, result.gbps, result.pct_sol) == (None, None, None)


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def _results_for_table():
    case = Case(4096, 8192, FP16, True)
    return case, [
        bench.Result(case, "fwd", "torch", sol_ms=0.05, repeat_ms=[0.1143]),
        bench.Result(case, "fwd", "cutedsl", sol_ms=0.05, repeat_ms=[0.1746], mismatch="out max|Δ| 1"),
        bench.Result(case, "fwd", "liger", sol_ms=0.05, error="RuntimeError: too wide"),
    ]


def test_mode_table_has_the_seed_columns_and_markers():
    case, results = _results_for_table()
    table = bench.format_mode_table("fwd", [case], ["torch", "cutedsl", "liger"], results)
    header = table.splitlines()[0]
    for column in ("Rows", "Hidden", "Dtype", "Bias", "Torch (ms)", "CuTeDSL (ms)", "Triton (ms)", "Torch/CuTeDSL",
                   "Liger (ms)", "SOL (ms)", "Torch GB/s", "Torch % SOL", "CuTeDSL GB/s", "Liger % SOL"):
        assert column in header
    assert "Triton GB/s" not in header  # only backends that ran get rate columns
    assert header.index("Torch/CuTeDSL") < header.index("Liger (ms)")  # the seed's columns come first
    row = table.splitlines()[2]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:8] == ["4096", "8192", "float16", "✅", "0.1143", "0.1746!", "N/A", "0.65×"]
    assert cells[8] == "fails"
    assert "44%" in cells  # torch: 0.05 / 0.1143


def test_mode_table_ratio_is_na_without_cutedsl():
    case = Case(4, 64, BF16, False)
    results = [bench.Result(case, "fwdbwd", "torch", sol_ms=0.01, repeat_ms=[0.02])]
    table = bench.format_mode_table("fwdbwd", [case], ["torch"], results)
    cells = [cell.strip() for cell in table.splitlines()[2].strip("|").split("|")]
    assert cells[3] == "❌" and cells[5:8] == ["N/A", "N/A", "N/A"]


def test_report_lists_mismatches_and_host_table():
    case, results = _results_for_table()
    overheads = [bench.HostOverhead("torch", 12.0, 15.5), bench.HostOverhead("liger", error="ImportError: x")]
    text = bench.report_text([case], ["fwd"], ["torch", "cutedsl", "liger"], results, overheads, 2000, on_gpu=True)
    assert "### Forward-only (no gradients)" in text
    assert "MISMATCH: cutedsl fwd at 4096x8192 float16 +bias" in text
    assert "Host dispatch overhead" in text and "12.0" in text and "fails" in text
    assert bench.NOT_PERFORMANCE_BANNER not in text


# ---------------------------------------------------------------------------------------------------------------
# Output check and measurement on CPU
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd", "bwd"])
def test_torch_provider_matches_the_reference(mode):
    x, weight, bias, dy = make_inputs(Case(6, 96, BF16, True), CPU)
    runner = PROVIDERS["torch"].runner(x, weight, bias, dy)
    assert bench.reference_mismatch(x, runner.weight, runner.bias, dy, runner.step(mode)()) == ""


def test_wrong_output_and_grads_are_reported():
    x, weight, bias, dy = make_inputs(Case(6, 96, FP32, True), CPU)
    runner = PROVIDERS["torch"].runner(x, weight, bias, dy)
    out, grads = runner.step("fwdbwd")()
    bad = StepOutput(out + 0.5, grads._replace(dweight=grads.dweight * 2))
    message = bench.reference_mismatch(x, weight, bias, dy, bad)
    assert "out max|Δ| 0.5" in message and "dweight" in message and "dx" not in message


def _fake_provider(name, make_runner):
    return Provider(name, name.title(), False, lambda device: "", make_runner)


def test_refusing_and_wrong_providers_become_fails_and_mismatch(monkeypatch):
    def refuse(*_):
        raise RuntimeError("shape too wide\nsecond line")

    zeros = lambda x, weight, bias, dy: AutogradRunner(lambda x, w, b: x * 0, x, weight, bias, dy)  # noqa: E731
    monkeypatch.setitem(PROVIDERS, "liger", _fake_provider("liger", refuse))
    monkeypatch.setitem(PROVIDERS, "quack", _fake_provider("quack", zeros))
    timer = bench.Timer(on_gpu=False, warmup_ms=1, rep_ms=1)
    case = Case(4, 64, FP16, True)
    results = bench.measure_case(case, ["fwd"], ["torch", "liger", "quack"], timer, 2, CPU)
    by_backend = {r.backend: r for r in results}
    assert by_backend["liger"].error == "RuntimeError: shape too wide"
    assert by_backend["quack"].mismatch.startswith("out max|Δ|")
    assert len(by_backend["quack"].repeat_ms) == 2  # a wrong provider is still timed
    assert not by_backend["torch"].error and not by_backend["torch"].mismatch
    row = bench.format_mode_table("fwd", [case], ["torch", "liger", "quack"], results).splitlines()[2]
    assert "fails" in row and "!" in row


def test_cpu_timer_and_sol_are_positive():
    timer = bench.Timer(on_gpu=False, warmup_ms=1, rep_ms=1)
    x, _, _, dy = make_inputs(Case(4, 64, FP16, True), CPU)
    sol = bench.measure_sol(x, dy, ["fwd", "fwdbwd", "bwd"], timer, 1)
    assert set(sol) == {"fwd", "fwdbwd", "bwd"}
    assert sol["fwdbwd"] == pytest.approx(sol["fwd"] + sol["bwd"])
    assert bench.measure_sol(x, dy, ["fwd"], timer, 1).keys() == {"fwd"}


def test_host_overhead_measures_both_autograd_settings_and_the_step():
    (entry,) = bench.measure_host_overhead(["torch"], CPU, calls=3)
    assert entry.us_no_grad > 0 and entry.us_grad > 0 and entry.us_fwdbwd > 0 and not entry.error
    table = bench.format_host_table([entry])
    assert "fwd+bwd step (µs)" in table.splitlines()[0] and f"{entry.us_fwdbwd:.1f}" in table


def test_host_hiding_spin_covers_the_host_time_and_is_capped():
    for host_ms in (0.0, 0.01, 0.3, 2.0):
        stall = bench.stall_ms_for(host_ms)
        assert stall >= bench.HOST_STALL_FACTOR * host_ms + bench.HOST_STALL_MARGIN_MS - 1e-12
    assert bench.stall_ms_for(1e3) == bench.MAX_HOST_STALL_MS


def test_timed_call_count_fits_the_budget_with_a_floor():
    assert bench.timed_call_count(100.0, 0.01, 0.24) == 400
    assert bench.timed_call_count(100.0, 40.0, 0.5) == bench.MIN_TIMED_CALLS
    assert bench.timed_call_count(100.0, 0.0, 0.0) >= bench.MIN_TIMED_CALLS


def test_timer_says_how_it_times():
    assert "spin kernel" in bench.Timer(on_gpu=True, warmup_ms=1, rep_ms=1).describe()
    assert "not hidden" in bench.Timer(on_gpu=True, warmup_ms=1, rep_ms=1, hide_host=False).describe()
    assert "perf_counter" in bench.Timer(on_gpu=False, warmup_ms=1, rep_ms=1).describe()


# ---------------------------------------------------------------------------------------------------------------
# Regression check (pure function, synthetic baselines)
# ---------------------------------------------------------------------------------------------------------------


def _record(rows, hidden, mode, backend, ms, dtype="bfloat16", bias=True):
    return {"rows": rows, "hidden": hidden, "dtype": dtype, "bias": bias, "mode": mode, "backend": backend,
            "median_ms": ms}


def test_within_tolerance_passes():
    baseline = [_record(4096, 8192, "fwd", "triton", 1.0), _record(4096, 8192, "fwdbwd", "triton", 2.0)]
    current = [_record(4096, 8192, "fwd", "triton", 1.069), _record(4096, 8192, "fwdbwd", "triton", 1.5)]
    report = bench.compare_with_baseline(baseline, current, 0.07)
    assert report.passed and report.compared == 2 and not report.regressions


def test_slower_than_tolerance_fails_and_names_the_shape():
    baseline = [_record(4096, 8192, "fwd", "triton", 1.0), _record(32768, 256, "fwd", "triton", 1.0)]
    current = [_record(4096, 8192, "fwd", "triton", 1.0), _record(32768, 256, "fwd", "triton", 1.08)]
    report = bench.compare_with_baseline(baseline, current, 0.07)
    assert not report.passed
    (regression,) = report.regressions
    assert regression.key == (32768, 256, "bfloat16", True, "fwd", "triton")
    assert regression.slowdown == pytest.approx(0.08)
    text = bench.format_check_report(report, Path("base.json"))
    assert "REGRESSION 32768x256 bfloat16 +bias fwd triton: 1.0000 ms -> 1.0800 ms (+8.0%)" in text
    assert "FAIL" in text


def test_backend_missing_from_the_new_run_is_listed_not_failed():
    baseline = [_record(4096, 8192, "fwd", "triton", 1.0), _record(4096, 8192, "fwd", "liger", 1.0)]
    current = [_record(4096, 8192, "fwd", "triton", 0.9)]
    report = bench.compare_with_baseline(baseline, current, 0.07)
    assert report.passed
    assert report.not_measured == ((4096, 8192, "bfloat16", True, "fwd", "liger"),)
    assert "not measured in this run (not compared): 4096x8192 bfloat16 +bias fwd liger" in (
        bench.format_check_report(report, Path("b.json")))


def test_a_cell_that_now_fails_is_a_regression_and_failed_baseline_cells_are_skipped():
    baseline = [_record(8, 8, "fwd", "quack", 1.0), _record(8, 8, "fwd", "liger", None)]
    current = [_record(8, 8, "fwd", "quack", None), _record(8, 8, "fwd", "liger", None)]
    report = bench.compare_with_baseline(baseline, current, 0.07)
    assert report.compared == 1
    (regression,) = report.regressions
    assert regression.current_ms is None and regression.slowdown == float("inf")
    assert "fails now" in bench.format_check_report(report, Path("b.json"))


def test_nothing_compared_does_not_pass():
    report = bench.compare_with_baseline([_record(8, 8, "fwd", "quack", 1.0)], [], 0.07)
    assert not report.passed and "nothing was compared" in bench.format_check_report(report, Path("b.json"))


def test_baseline_plan_reads_cases_modes_backends():
    records = [_record(4, 64, "fwd", "torch", 1.0, dtype="float16"), _record(4, 64, "bwd", "triton", 1.0,
               dtype="float16"), _record(8, 128, "fwd", "torch", 1.0, bias=False)]
    cases, modes, backends = bench.baseline_plan(records)
    assert cases == [Case(4, 64, FP16, True), Case(8, 128, BF16, False)]
    assert modes == ("fwd", "bwd") and backends == ("torch", "triton")


def test_check_end_to_end_in_process(tmp_path, capsys):
    """--check re-measures the baseline's cell: an impossibly fast baseline regresses, a slow one passes."""
    baseline = tmp_path / "base.json"
    for baseline_ms, expected_exit in ((1e-9, 1), (1e9, 0)):
        baseline.write_text(json.dumps({"results": [_record(4, 64, "fwd", "torch", baseline_ms, dtype="float16")]}))
        assert bench.main(["--check", str(baseline), "--repeats", "1"]) == expected_exit
        out = capsys.readouterr().out
        assert ("REGRESSION 4x64 float16 +bias fwd torch" in out) == (expected_exit == 1)
        assert "Host dispatch overhead" not in out  # off by default under --check


def test_check_times_as_the_baseline_was_timed(tmp_path, monkeypatch):
    """A baseline without host hiding (older runs) is re-measured without it; one with it, with it."""
    seen = []
    real_timer = bench.Timer

    def recording_timer(on_gpu, warmup_ms, rep_ms, hide_host=True):
        seen.append(hide_host)
        return real_timer(on_gpu, warmup_ms, rep_ms, hide_host)

    monkeypatch.setattr(bench, "Timer", recording_timer)
    baseline = tmp_path / "base.json"
    for host_hidden in (None, False, True):
        document = {"results": [_record(4, 64, "fwd", "torch", 1e9, dtype="float16")]}
        if host_hidden is not None:
            document["host_hidden"] = host_hidden
        baseline.write_text(json.dumps(document))
        assert bench.main(["--check", str(baseline), "--repeats", "1"]) == 0
    assert seen == [False, False, True]
    assert bench.main(["--check", str(baseline), "--repeats", "1", "--no-hide-host"]) == 0
    assert seen[-1] is False


# ---------------------------------------------------------------------------------------------------------------
# End to end (subprocess)
# ---------------------------------------------------------------------------------------------------------------


def test_command_runs_on_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""  # the no-GPU path, also when this suite runs on a GPU machine
    out_json, baseline = tmp_path / "run.json", tmp_path / "baseline.json"
    completed = subprocess.run(
        [sys.executable, "-m", "vibe_kernels.layernorm.bench", "--shapes", "4x64", "--backends", "torch",
         "--json", str(out_json), "--save-baseline", str(baseline), "--host-calls", "5"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "NOT PERFORMANCE FIGURES (no GPU)" in completed.stdout
    assert "### Forward-only (no gradients)" in completed.stdout and "### Forward + Backward" in completed.stdout
    assert "0.0251 ms" in completed.stdout  # the note on the seed's asynchronous-dispatch figure
    assert "[1/1] 4x64 bfloat16 +bias" in completed.stderr  # progress goes to stderr
    document = json.loads(out_json.read_text())
    assert document == json.loads(baseline.read_text())  # a baseline is a bench JSON
    assert {r["mode"] for r in document["results"]} == {"fwd", "fwdbwd"}
    record = document["results"][0]
    for field in ("median_ms", "repeat_ms", "gbps", "pct_sol", "sol_ms", "mismatch", "error"):
        assert field in record
    assert record["mismatch"] is False and record["error"] is None
    assert document["environment"]["gpu"] is False and "torch" in document["environment"]["versions"]


# ---------------------------------------------------------------------------------------------------------------
# Variants: RMSNorm, the fused residual, out_dtype
# ---------------------------------------------------------------------------------------------------------------

from vibe_kernels.layernorm._anchors import PLAIN, ResidualStepOutput, Variant, variant_inputs  # noqa: E402

RMS_RESIDUAL = Variant("rmsnorm", residual=True)


def test_variant_flags_parse():
    args = bench.build_parser().parse_args(["--op", "rmsnorm", "--residual", "--out-dtype", "fp32"])
    assert (args.op, args.residual, args.out_dtype) == ("rmsnorm", True, FP32)
    args = bench.build_parser().parse_args([])
    assert (args.op, args.residual, args.out_dtype) == (None, None, None)


def test_residual_inputs_flag(capsys):
    assert bench.build_parser().parse_args(["--residual", "--residual-inputs", "leaves"]).residual_inputs == "leaves"
    assert bench.build_parser().parse_args(["--residual"]).residual_inputs is None
    with pytest.raises(SystemExit):
        bench.main(["--residual-inputs", "leaves", "--shapes", "tiny"])
    assert "--residual-inputs needs --residual" in capsys.readouterr().err
    leaves = Variant(residual=True, leaf_inputs=True)
    assert bench.variant_from_json(leaves.to_json()) == leaves
    assert bench.variant_from_json(Variant(residual=True).to_json()) == Variant(residual=True)
    # Bench JSON written before the flag existed: its residual runs had leaves.
    assert bench.variant_from_json({"op": "rmsnorm", "residual": True, "out_dtype": None}).leaf_inputs


def test_bad_variant_flags(capsys):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--op", "batchnorm"])
    assert "--op: invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--out-dtype", "int8"])
    assert "--out-dtype: expected one of" in capsys.readouterr().err


def test_variant_bytes():
    case = Case(4096, 8192, BF16, True)
    elements = 4096 * 8192
    for mode in ("fwd", "bwd", "fwdbwd"):  # RMSNorm alone moves what LayerNorm moves
        assert bench.bytes_moved(case, mode, Variant("rmsnorm")) == bench.bytes_moved(case, mode)
    # residual: fwd reads x, r, writes out, h; bwd reads h, dy, dh, writes dx
    assert bench.bytes_moved(case, "fwd", RMS_RESIDUAL) == 4 * 2 * elements
    assert bench.bytes_moved(case, "bwd", RMS_RESIDUAL) == 4 * 2 * elements
    assert bench.bytes_moved(case, "fwdbwd", RMS_RESIDUAL) == 8 * 2 * elements
    # bf16 in, fp32 out: fwd 2 + 4 bytes, bwd x 2 + dy 4 + dx 2
    out32 = Variant(out_dtype=FP32)
    assert bench.bytes_moved(case, "fwd", out32) == 6 * elements
    assert bench.bytes_moved(case, "bwd", out32) == 8 * elements
    result = bench.Result(case, "fwd", "triton", sol_ms=0.1, repeat_ms=[0.2], variant=RMS_RESIDUAL)
    assert result.gbps == pytest.approx(8 * elements / 0.2e-3 / 1e9)
    assert result.to_json()["op"] == "rmsnorm" and result.to_json()["residual"] is True


def test_same_bytes_sol_on_cpu():
    timer = bench.Timer(on_gpu=False, warmup_ms=1, rep_ms=1)
    case = Case(4, 64, BF16, True)
    x, _, _, dy = make_inputs(case, CPU)
    sol = bench.measure_sol(x, dy, ["fwd", "fwdbwd", "bwd"], timer, 1, case, RMS_RESIDUAL)
    assert set(sol) == {"fwd", "fwdbwd", "bwd"} and sol["fwdbwd"] == pytest.approx(sol["fwd"] + sol["bwd"])
    assert bench.measure_sol(x, dy, ["fwd"], timer, 1, case, Variant(out_dtype=FP32)).keys() == {"fwd"}


@pytest.mark.parametrize("variant", [Variant("rmsnorm"), RMS_RESIDUAL, Variant(residual=True),
                                     Variant(residual=True, leaf_inputs=True), Variant(out_dtype=FP32),
                                     Variant("rmsnorm", True, FP32)],
                         ids=lambda v: v.label)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_variant_providers_match_the_reference(device, variant, backend):
    # The device fixture: the Triton interpreter on CPU, compiled kernels on a GPU. fp16 x: the interpreter rounds
    # fp16 like torch (its bf16 truncation would move h by an ulp).
    case = Case(5, 96, FP16, True)
    x, weight, bias, dy = make_inputs(case, torch.device(device))
    residual, dh, dy = variant_inputs(case, variant, dy)
    runner = PROVIDERS[backend].runner(x, weight, bias, dy, variant, residual, dh)
    for mode in ("fwd", "fwdbwd", "bwd"):
        output = runner.step(mode)()
        assert bench.reference_mismatch(x, runner.weight, runner.bias, dy, output, variant, residual, dh) == ""
        if variant.residual and mode != "bwd":
            assert isinstance(output, ResidualStepOutput) and output.h.shape == x.shape
        if mode != "fwd" and variant.residual:
            assert output.grads.dresidual is not None
            # Computed x and r (as in a model) share one gradient tensor: the kernel writes it once. Leaves get two.
            assert (output.grads.dx is output.grads.dresidual) != variant.leaf_inputs
        if variant.out_dtype is not None and mode != "bwd":
            assert output.out.dtype == variant.out_dtype


def test_wrong_h_and_dresidual_are_reported():
    case = Case(4, 64, FP32, True)
    x, weight, bias, dy = make_inputs(case, CPU)
    residual, dh, dy = variant_inputs(case, RMS_RESIDUAL, dy)
    runner = PROVIDERS["torch"].runner(x, weight, bias, dy, RMS_RESIDUAL, residual, dh)
    out, grads, h = runner.step("fwdbwd")()
    bad = ResidualStepOutput(out, grads._replace(dresidual=grads.dresidual + 1), h + 0.5)
    message = bench.reference_mismatch(x, weight, bias, dy, bad, RMS_RESIDUAL, residual, dh)
    assert "h max|Δ| 0.5" in message and "dresidual max|Δ| 1" in message and "out" not in message


def test_providers_without_a_variant_refuse():
    x, weight, bias, dy = make_inputs(Case(4, 64, BF16, True), CPU)
    with pytest.raises(NotImplementedError, match="quack has no public LayerNorm"):
        PROVIDERS["quack"].runner(x, weight, bias, dy, Variant(residual=True), x, x)
    with pytest.raises(NotImplementedError, match="liger: plain RMSNorm only"):
        PROVIDERS["liger"].runner(x, weight, bias, dy, RMS_RESIDUAL, x, x)
    fake = Provider("fake", "Fake", False, lambda device: "", lambda *args: None)
    with pytest.raises(NotImplementedError, match="fake has no rmsnorm"):
        fake.runner(x, weight, bias, dy, Variant("rmsnorm"))


def test_variant_measure_case_and_tables():
    timer = bench.Timer(on_gpu=False, warmup_ms=1, rep_ms=1)
    case = Case(4, 64, FP32, False)
    results = bench.measure_case(case, ["fwd", "fwdbwd"], ["torch"], timer, 1, CPU, RMS_RESIDUAL)
    assert all(not r.error and not r.mismatch and r.variant == RMS_RESIDUAL for r in results)
    text = bench.report_text([case], ["fwd"], ["torch"], results, [], 5, on_gpu=False, variant=RMS_RESIDUAL)
    assert "### Forward-only (no gradients) — rmsnorm, fused residual" in text
    header = "\n".join(bench.variant_lines(RMS_RESIDUAL))
    assert "Variant: rmsnorm, fused residual." in header and "same bytes" in header
    assert bench.variant_lines(PLAIN) == []


def test_variant_json_round_trip():
    assert bench.variant_from_json(None) == PLAIN
    for variant in (PLAIN, RMS_RESIDUAL, Variant("layernorm", False, BF16)):
        assert bench.variant_from_json(variant.to_json()) == variant


def test_check_refuses_variant_flags(tmp_path, capsys):
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"results": [_record(4, 64, "fwd", "torch", 1.0)]}))
    with pytest.raises(SystemExit):
        bench.main(["--check", str(baseline), "--op", "rmsnorm"])
    assert "drop --op" in capsys.readouterr().err


def test_variant_command_runs_on_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    out_json = tmp_path / "run.json"
    completed = subprocess.run(
        [sys.executable, "-m", "vibe_kernels.layernorm.bench", "--shapes", "4x64", "--backends", "torch",
         "--op", "rmsnorm", "--residual", "--out-dtype", "float32", "--json", str(out_json), "--host-calls", "3"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Variant: rmsnorm, fused residual, out float32." in completed.stdout
    assert "[1/1] 4x64 bfloat16 no bias" in completed.stderr  # RMSNorm: no bias unless --bias
    document = json.loads(out_json.read_text())
    assert document["variant"] == {"op": "rmsnorm", "residual": True, "out_dtype": "float32", "leaf_inputs": False}
    assert all(r["op"] == "rmsnorm" and not r["mismatch"] and r["error"] is None for r in document["results"])
