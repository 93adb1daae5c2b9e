"""`sparsecut run`: checkpoint → verified ONNX → lean ONNX → built artifacts → dense vs lean measured interleaved,
with every file and one report (JSON, Markdown, plot) in one folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from sparsecut.errors import NotYetAvailableError
from sparsecut.exporter import ExportOptions, export_checkpoint
from sparsecut.modelfile import atomic_write_text
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.report import RunReport, write_json
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models, get_target

__all__ = ["RunOptions", "markdown_summary", "run_workflow"]

STEPS = ("export", "optimize", "build", "compare")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    target: str = "onnxruntime"
    precision: str = "fp32"
    sparsity: bool = False
    export: ExportOptions = dataclasses.field(default_factory=ExportOptions)
    optimize: OptimizeOptions = dataclasses.field(default_factory=OptimizeOptions)
    profile: ProfileOptions = dataclasses.field(default_factory=ProfileOptions)
    rounds: int = 10


def run_workflow(
    checkpoint: Path,
    out_dir: Path,
    *,
    arch: str | None = None,
    model_factory: str | None = None,
    options: RunOptions | None = None,
    step: Callable[[str], None] = lambda name: None,
) -> RunReport:
    """Run every step; `step(name)` is called as each one starts (for progress displays)."""
    options = options or RunOptions()
    if options.precision != "fp32":
        raise NotYetAvailableError(f"`sparsecut run --precision {options.precision}` lands with the INT8/FP16 work")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dense, lean = out_dir / "dense.onnx", out_dir / "lean.onnx"

    step("export")
    exported = export_checkpoint(checkpoint, dense, arch=arch, model_factory=model_factory, options=options.export)
    step("optimize")
    optimized = optimize_model(dense, lean, options.optimize)
    step("build")
    target = get_target(options.target)
    suffix = ".plan" if options.target == "tensorrt" else ".ort.onnx"
    build_options = BuildOptions(precision=options.precision, sparsity=options.sparsity)
    builds = [target.build(m, out_dir / f"{m.stem}{suffix}", build_options)[1] for m in (dense, lean)]
    step("compare")
    compared = compare_models(
        [dense, lean],
        target=options.target,
        options=options.profile,
        rounds=options.rounds,
        plot=out_dir / "compare.png",
    )
    report = RunReport(export=exported, optimize=optimized, builds=builds, compare=compared)
    write_json(report, out_dir / "report.json")
    atomic_write_text(out_dir / "report.md", markdown_summary(report))
    return report


def markdown_summary(report: RunReport) -> str:
    c = report.compare
    lines = [
        f"# sparsecut run: {Path(report.export.checkpoint).name}",
        "",
        f"- architecture: {report.export.architecture}; exported with {report.export.exporter}, "
        f"max relative error vs PyTorch {report.export.max_rel_error:.2e}",
        f"- optimize: {'; '.join(p.summary for p in report.optimize.passes)}; verified: {report.optimize.verified}",
        f"- measured on **{c.device}** with {c.target}, batch {c.variants[0].latency.batch}, "
        f"{c.rounds} interleaved rounds",
        "",
        "| variant | params | MACs | p50 ms | p90 ms | speedup | MACs ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in c.variants:
        lines.append(
            f"| {Path(v.model).name} | {v.params:,} | {v.macs:,} | {v.latency.p50_ms:.3f} | {v.latency.p90_ms:.3f} "
            f"| {v.speedup:.2f}× | {v.macs_ratio:.3f} |"
        )
    lines += ["", "![MACs vs latency](compare.png)", ""]
    return "\n".join(lines)
