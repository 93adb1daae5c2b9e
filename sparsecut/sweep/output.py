"""A sweep's table — rows the variants (input, precision, channel mode), columns the devices, each cell the p50
and the speedup against the dense baseline timed beside it on that device — as Markdown, JSON and a plot (speedup
per device; latency against parameters, the Pareto front per device)."""

from __future__ import annotations

import os
from pathlib import Path

from sparsecut.modelfile import atomic_write_text
from sparsecut.report import SweepReport, write_json

__all__ = ["markdown", "table", "write_outputs"]

FILES = ("sweep.json", "report.md", "sweep.png")


def table(report: SweepReport) -> tuple[list[str], list[list[str]]]:
    """Columns and rows: variant, params, MACs, drift, then per device `p50 ms (speedup [low–high])`."""
    columns = ["input", "precision", "mode", "params", "MACs", "drift", *report.devices]
    rows: dict[tuple[str, str, str], list[str]] = {}
    for cell in report.cells:
        for row in cell.rows:
            key = (cell.input, cell.precision, row.mode)
            line = rows.setdefault(
                key, [*key, f"{row.params:,}", f"{row.macs:,}", row.drift, *([""] * len(report.devices))]
            )
            s = row.speedup
            text = f"{row.p50_ms:.3f} ms" + (
                "" if row.mode == "dense" else f" ({s.value:.2f}× [{s.low:.2f}–{s.high:.2f}])"
            )
            line[6 + report.devices.index(cell.device)] = text
        if cell.status != "ok":
            key = (cell.input, cell.precision, "(cell)")
            line = rows.setdefault(key, [*key, "", "", "", *([""] * len(report.devices))])
            line[6 + report.devices.index(cell.device)] = f"failed: {cell.reason}"
    return columns, list(rows.values())


def markdown(report: SweepReport) -> str:
    columns, rows = table(report)
    lines = [
        f"# sparsecut sweep ({report.executor})",
        "",
        "Each device's column: p50, and the speedup against the dense baseline (the same input and precision "
        "through every pass but channel removal) timed interleaved with it on that device, with its 95 % interval.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows),
        "",
        "| cell | node | attempts | started → ended (s) |",
        "|---|---|---|---|",
    ]
    first = min((c.started for c in report.cells if c.started), default=0.0)
    for c in report.cells:
        span = f"{c.started - first:.1f} → {c.ended - first:.1f}" if c.started else "-"
        lines.append(f"| {c.key} | {c.node or '-'} | {c.attempts} | {span} |")
    return "\n".join(lines) + "\n"


def write_outputs(report: SweepReport, out: Path) -> list[Path]:
    write_json(report, out / FILES[0])
    atomic_write_text(out / FILES[1], markdown(report))
    _plot(report, out / FILES[2])
    return [out / name for name in FILES]


def _plot(report: SweepReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, pareto) = plt.subplots(1, 2, figsize=(13, 5))
    variants = sorted({(c.input, c.precision, r.mode) for c in report.cells for r in c.rows if r.mode != "dense"})
    width = 0.8 / max(1, len(report.devices))
    for d, device in enumerate(report.devices):
        values, lows, highs = [], [], []
        for variant in variants:
            row = next((r for c in report.cells for r in c.rows if c.device == device and
                        (c.input, c.precision, r.mode) == variant), None)  # fmt: skip
            values.append(row.speedup.value if row else 0.0)
            lows.append(row.speedup.value - row.speedup.low if row else 0.0)
            highs.append(row.speedup.high - row.speedup.value if row else 0.0)
        xs = [i + d * width for i in range(len(variants))]
        bars.bar(xs, values, width, yerr=[lows, highs], label=device, capsize=2)
        points = [(r.params, r.p50_ms) for c in report.cells if c.device == device for r in c.rows]
        if points:
            pareto.scatter([p for p, _ in points], [ms for _, ms in points], label=device, s=18)
            front, best = [], float("inf")
            for params, ms in sorted(points):
                if ms < best:
                    front.append((params, ms))
                    best = ms
            pareto.plot([p for p, _ in front], [ms for _, ms in front], linewidth=1)
    bars.axhline(1.0, color="grey", linewidth=0.8)
    bars.set_xticks([i + width * (len(report.devices) - 1) / 2 for i in range(len(variants))])
    bars.set_xticklabels([" ".join(v) for v in variants], rotation=30, ha="right", fontsize=7)
    bars.set_ylabel("speedup vs dense on the device (95 % interval)")
    bars.legend(fontsize=7)
    pareto.set_xlabel("parameters")
    pareto.set_ylabel("p50 ms")
    pareto.set_title("latency vs parameters (line: each device's Pareto front)", fontsize=9)
    pareto.legend(fontsize=7)
    figure.tight_layout()
    staged = path.with_name(f".{path.name}.part.png")
    figure.savefig(staged, dpi=110)
    plt.close(figure)
    os.replace(staged, path)
