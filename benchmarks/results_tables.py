"""The README's Results tables from a bench JSON (``python -m vibe_kernels.layernorm.bench --json``): per mode, each
shape's SOL and every provider's % of it (ms for ours), and the best anchor. Cells of providers that raised show
"fails"; a "!" marks an output that differed from the fp32 reference.

    python benchmarks/results_tables.py benchmarks/results/h100-2026-11-25-c/final/bench.json
"""

from __future__ import annotations

import argparse
import json

OURS = ("triton", "cutedsl")
ANCHORS = ("quack", "liger", "compile", "torch")
MODE_TITLES = {"fwd": "Forward", "fwdbwd": "Forward + backward", "bwd": "Backward"}


def _cell(record: dict | None, ours: bool) -> str:
    if record is None:
        return "N/A"
    if record.get("error"):
        return "fails"
    mark = "!" if record.get("mismatch") else ""
    pct = f"{record['pct_sol']:.0f}%{mark}"
    return f"{pct} ({record['median_ms']:.4f})" if ours else pct


def tables(document: dict) -> str:
    results = document["results"]
    modes = [m for m in MODE_TITLES if any(r["mode"] == m for r in results)]
    shapes = []
    for r in results:
        shape = (r["rows"], r["hidden"], r["dtype"], r["bias"])
        if shape not in shapes:
            shapes.append(shape)
    by_key = {(r["rows"], r["hidden"], r["dtype"], r["bias"], r["mode"], r["backend"]): r for r in results}
    lines = []
    for mode in modes:
        lines += [f"**{MODE_TITLES[mode]}** — % of the shape's SOL (ms in parentheses for ours)", "",
                  "| M | N | dtype | SOL ms | Triton | CuTeDSL | Quack | Liger | compile | torch | best anchor |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for rows, hidden, dtype, bias in shapes:
            cells = {b: by_key.get((rows, hidden, dtype, bias, mode, b)) for b in OURS + ANCHORS}
            present = [c for c in cells.values() if c is not None]
            if not present:
                continue
            sol = next(c["sol_ms"] for c in present)
            anchors = [c["pct_sol"] for b, c in cells.items()
                       if b in ANCHORS and c is not None and not c.get("error") and not c.get("mismatch")]
            best = f"{max(anchors):.0f}%" if anchors else "-"
            row = [str(rows), str(hidden), dtype + (" +b" if bias else ""), f"{sol:.4f}"]
            row += [_cell(cells[b], b in OURS) for b in OURS + ANCHORS] + [best]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a bench JSON")
    args = parser.parse_args()
    with open(args.json) as f:
        print(tables(json.load(f)))


if __name__ == "__main__":
    main()
