"""``python -m vibe_kernels.layernorm.validate``: the seed's "Numeric Validation" table, reproduced and extended.

For each config and each available backend of ours, max |Δ| of out / rstd / mean and the fraction of bit-identical
out elements, against Quack when quack-kernels is installed and always against the fp32 reference. Exits 1 when a
backend raises or exceeds the per-dtype tolerance against the fp32 reference (the Quack comparison informs, it
does not gate). Without a GPU it runs small configs on CPU: the torch backend, and Triton under TRITON_INTERPRET=1.

The tolerance helpers here are shared with the bench command's output check.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ._anchors import EPS, PROVIDERS, VIBE_BACKENDS, Case, dtype_name, make_inputs, quack_forward_with_stats
from .api import layernorm
from .reference import layernorm_mean_ref, layernorm_ref, layernorm_rstd_ref

# ----------------------------------------------------------------------------------------------------------------
# Tolerances and comparison (pure helpers)
# ----------------------------------------------------------------------------------------------------------------

# Output tolerance: one ulp of the dtype at |ref|, never less than OUT_ATOL (about one ulp at |ref| ~ 2-4, where
# most outputs lie). A correctly rounded result is within half an ulp of the fp32 reference; one ulp also admits a
# rounding that went the other way (the Triton interpreter truncates fp32 -> bf16). fp32 outputs differ by
# reduction order only, hence a floor well above their ulp.
OUT_ATOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-5}
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}
# rstd relative to itself; mean relative to the row's scale max(|mean|, std): the mean of centred data is ~0.
STATS_RTOL = 1e-5


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` numbers at |values| (for normal numbers), in fp32.

    >>> ulp(torch.tensor([1.0, 3.0, 4.0]), torch.bfloat16).tolist()
    [0.0078125, 0.015625, 0.03125]
    """
    _, exponent = torch.frexp(values.float().abs())
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent - 1 - MANTISSA_BITS[dtype])


def out_allowance(expected: torch.Tensor, dtype: torch.dtype, slack: float = 1.0) -> torch.Tensor:
    """Per-element allowed |Δ| for a result stored in ``dtype``: slack * max(OUT_ATOL[dtype], ulp at |expected|).

    >>> out_allowance(torch.tensor([1.0, 5.0]), torch.bfloat16).tolist()
    [0.019999999552965164, 0.03125]
    """
    return slack * torch.clamp(ulp(expected, dtype), min=OUT_ATOL[dtype])


def rstd_allowance(rstd_ref: torch.Tensor) -> torch.Tensor:
    return STATS_RTOL * rstd_ref.abs()


def mean_allowance(mean_ref: torch.Tensor, rstd_ref: torch.Tensor) -> torch.Tensor:
    return STATS_RTOL * torch.maximum(mean_ref.abs(), 1.0 / rstd_ref)


@dataclass(frozen=True)
class Discrepancy:
    """How far ``actual`` is from ``expected``: max |Δ|, the worst |Δ| / allowed (<= 1 is within tolerance; 0 when
    no tolerance applies), and how many elements equal ``expected`` rounded to actual's dtype. Merge chunks with
    ``merged``."""

    max_abs: float = 0.0
    worst_ratio: float = 0.0
    identical: int = 0
    count: int = 0

    @property
    def within_tolerance(self) -> bool:
        return self.worst_ratio <= 1.0

    @property
    def identical_fraction(self) -> float:
        return self.identical / self.count if self.count else 1.0

    def merged(self, other: "Discrepancy") -> "Discrepancy":
        return Discrepancy(
            max(self.max_abs, other.max_abs),
            max(self.worst_ratio, other.worst_ratio),
            self.identical + other.identical,
            self.count + other.count,
        )


def compare(actual: torch.Tensor, expected: torch.Tensor, allowed: Optional[torch.Tensor] = None) -> Discrepancy:
    """Elementwise comparison in fp32; NaN differences count as infinitely far."""
    diff = torch.nan_to_num((actual.float() - expected.float()).abs(), nan=math.inf)
    if diff.numel() == 0:
        return Discrepancy()
    worst_ratio = (diff / allowed).max().item() if allowed is not None else 0.0
    identical = (actual == expected.to(actual.dtype)).sum().item()
    return Discrepancy(diff.max().item(), worst_ratio, int(identical), diff.numel())


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------

# The seed's four configs, then an odd N (not a multiple of the vector width) and fp32.
GPU_CONFIGS = (
    Case(1024, 4096, torch.float16, False),
    Case(1024, 4096, torch.bfloat16, False),
    Case(2048, 8192, torch.float16, False),
    Case(4096, 8192, torch.float16, True),
    Case(4095, 5000, torch.float16, True),
    Case(8192, 8192, torch.float32, True),
)
# The same kinds of configs at sizes the CPU (and the Triton interpreter) runs in seconds.
CPU_CONFIGS = (
    Case(16, 256, torch.float16, False),
    Case(16, 256, torch.bfloat16, False),
    Case(32, 512, torch.float16, False),
    Case(32, 512, torch.float16, True),
    Case(15, 500, torch.float16, True),
    Case(32, 512, torch.float32, True),
)

AGAINST_REFERENCE = "fp32 ref"
AGAINST_QUACK = "quack"


@dataclass(frozen=True)
class ValidationRow:
    """One table row: ``backend`` against ``against``; gating rows decide the exit status."""

    case: Case
    backend: str
    against: str
    out: Optional[Discrepancy] = None
    rstd: Optional[Discrepancy] = None
    mean: Optional[Discrepancy] = None
    error: str = ""
    gating: bool = False

    @property
    def failed(self) -> bool:
        if not self.gating:
            return False
        return bool(self.error) or not all(d.within_tolerance for d in (self.out, self.rstd, self.mean))


def error_text(error: BaseException) -> str:
    """The exception's type and first message line, for a table note."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _rows_for_output(case, name, stats, reference, quack_stats, gating) -> list[ValidationRow]:
    out, rstd, mean = stats
    ref_out, ref_rstd, ref_mean = reference
    rows = []
    if quack_stats is not None:
        q_out, q_rstd, q_mean = quack_stats
        rows.append(ValidationRow(case, name, AGAINST_QUACK, compare(out, q_out), compare(rstd, q_rstd),
                                  compare(mean, q_mean)))
    rows.append(ValidationRow(
        case, name, AGAINST_REFERENCE,
        compare(out, ref_out, out_allowance(ref_out, case.dtype)),
        compare(rstd, ref_rstd, rstd_allowance(ref_rstd)),
        compare(mean, ref_mean, mean_allowance(ref_mean, ref_rstd)),
        gating=gating,
    ))
    return rows


def validate_case(case: Case, backends: Sequence[str], device: torch.device, with_quack: bool) -> list[ValidationRow]:
    """Rows for one config: each backend against Quack (when ``with_quack``) and against the fp32 reference; then
    Quack itself against the reference (informational)."""
    x, weight, bias, _ = make_inputs(case, device)
    reference = (
        layernorm_ref(x, weight, bias, EPS, out_dtype=torch.float32),
        layernorm_rstd_ref(x, EPS),
        layernorm_mean_ref(x),
    )
    quack_stats, quack_error = None, ""
    if with_quack:
        try:
            quack_stats = quack_forward_with_stats(x, weight, bias)
        except Exception as error:  # noqa: BLE001 - a refusal is reported in the table, not raised
            quack_error = error_text(error)
    rows = []
    for name in backends:
        try:
            stats = layernorm(x, weight, bias, eps=EPS, return_rstd=True, return_mean=True, backend=name)
        except Exception as error:  # noqa: BLE001
            rows.append(ValidationRow(case, name, AGAINST_REFERENCE, error=error_text(error), gating=True))
            continue
        rows.extend(_rows_for_output(case, name, stats, reference, quack_stats, gating=True))
    if quack_stats is not None:
        rows.extend(_rows_for_output(case, "quack", quack_stats, reference, None, gating=False))
    elif quack_error:
        rows.append(ValidationRow(case, "quack", AGAINST_REFERENCE, error=quack_error))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def render_table(header: Sequence[str], align: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A padded Markdown table; ``align`` holds "l", "r" or "c" per column."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    widths = [max(width, 3) for width in widths]
    rule = {"l": lambda w: ":" + "-" * (w - 1), "r": lambda w: "-" * (w - 1) + ":",
            "c": lambda w: ":" + "-" * (w - 2) + ":"}

    def line(cells):
        padded = [cell.rjust(w) if a == "r" else cell.ljust(w) for cell, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([line(header), "|" + "|".join(rule[a](w + 2) for a, w in zip(align, widths)) + "|"]
                     + [line(row) for row in body])


def _verdict(row: ValidationRow) -> str:
    if row.error:
        return "fails"
    if not row.gating:
        return "-"
    return "ok" if not row.failed else "EXCEEDS"


def format_validation_table(rows: Sequence[ValidationRow]) -> str:
    header = ["Rows", "Hidden", "Dtype", "Backend", "Against", "Max |Δ| Out", "Max |Δ| RSTD", "Max |Δ| Mean",
              "Identical Out", "Tolerance"]
    align = ["r", "r", "l", "l", "l", "r", "r", "r", "r", "l"]
    body = []
    for row in rows:
        dtype = dtype_name(row.case.dtype) + (" + bias" if row.case.bias else "")
        if row.error:
            measured = ["fails", "fails", "fails", "-"]
        else:
            measured = [f"{row.out.max_abs:.3e}", f"{row.rstd.max_abs:.3e}", f"{row.mean.max_abs:.3e}",
                        f"{100 * row.out.identical_fraction:.2f}%"]
        body.append([str(row.case.rows), str(row.case.hidden), dtype, row.backend, row.against, *measured,
                     _verdict(row)])
    return render_table(header, align, body)


def tolerance_note() -> str:
    atols = ", ".join(f"{dtype_name(d)} {a:g}" for d, a in OUT_ATOL.items())
    return (f"Tolerance against the fp32 reference: out |Δ| <= max(atol, 1 ulp of the dtype at |ref|) with atol "
            f"{atols}; rstd {STATS_RTOL:g} relative; mean {STATS_RTOL:g} relative to max(|mean|, std). "
            "Against Quack: reported, not gated. Identical Out: fraction of out elements bit-identical to the "
            "other side (the fp32 reference rounded to the dtype).")


def errors_section(rows: Sequence[ValidationRow]) -> list[str]:
    return [f"fails: {row.backend} at {row.case.label}: {row.error}" for row in rows if row.error]


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _backend_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in VIBE_BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(VIBE_BACKENDS)}; got {text!r}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vibe_kernels.layernorm.validate",
        description="Numeric validation of the LayerNorm backends against Quack and the fp32 reference.",
    )
    parser.add_argument("--backends", type=_backend_list, default=None,
                        help=f"comma list of {', '.join(VIBE_BACKENDS)} (layernorm(backend=...)); "
                             "default: every one available")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    requested = args.backends or VIBE_BACKENDS
    reasons = {name: PROVIDERS[name].unavailable_reason(device) for name in requested}
    backends = [name for name in requested if not reasons[name]]
    with_quack = not PROVIDERS["quack"].unavailable_reason(device)

    print("# vibe_kernels LayerNorm numeric validation")
    if on_gpu:
        print(f"Device: {torch.cuda.get_device_name(device)}; eps {EPS:g}; x ~ randn, weight (and bias) ~ randn fp32;"
              " torch.manual_seed(0).")
    else:
        print("CPU run (no GPU): small configs; the torch backend, and triton only under TRITON_INTERPRET=1.")
    for name in requested:
        if reasons[name]:
            print(f"unavailable: {name} ({reasons[name]})")
    if not with_quack:
        print(f"quack: not compared ({PROVIDERS['quack'].unavailable_reason(device)})")
    print()

    rows: list[ValidationRow] = []
    for case in GPU_CONFIGS if on_gpu else CPU_CONFIGS:
        rows.extend(validate_case(case, backends, device, with_quack))
    print(format_validation_table(rows))
    print()
    print(tolerance_note())
    for line in errors_section(rows):
        print(line)
    failed = [row for row in rows if row.failed]
    if not backends:
        print("FAIL: no backend could run")
        return 1
    if failed:
        print("FAIL: " + "; ".join(f"{row.backend} at {row.case.label}" for row in failed))
        return 1
    print(f"PASS: {', '.join(backends)} within tolerance of the fp32 reference on every config")
    return 0


if __name__ == "__main__":
    sys.exit(main())
