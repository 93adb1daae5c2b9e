"""`sparsecut run`: checkpoint → verified ONNX → lean ONNX → built artifacts → dense vs lean measured interleaved,
with every file and one report (JSON, Markdown, plot) in one folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from sparsecut.exporter import ExportOptions, export_checkpoint
from sparsecut.modelfile import atomic_write_text
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.report import BuildReport, PrecisionReport, RunReport, write_json
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models, get_target

__all__ = ["RunOptions", "build_for_target", "markdown_summary", "run_workflow"]

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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dense, lean = out_dir / "dense.onnx", out_dir / "lean.onnx"

    step("export")
    exported = export_checkpoint(checkpoint, dense, arch=arch, model_factory=model_factory, options=options.export)
    step("optimize")
    optimized = optimize_model(dense, lean, dataclasses.replace(options.optimize, precision=options.precision))
    step("build")
    suffix = ".plan" if options.target == "tensorrt" else ".ort.onnx"
    # the lean graph carries its precision now; the dense one is the reference, built as exported
    builds = [
        build_for_target(dense, out_dir / f"dense{suffix}", options.target, BuildOptions(sparsity=options.sparsity))[0],
        build_for_target(
            lean, out_dir / f"lean{suffix}", options.target, BuildOptions(precision="best", sparsity=options.sparsity)
        )[0],
    ]
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


def build_for_target(
    model: Path, output: Path, target_name: str, options: BuildOptions, calibration: Path | None = None
) -> tuple[BuildReport, PrecisionReport | None]:
    """Build `model` for a target; when the target needs the precision in the graph (onnxruntime always,
    TensorRT 11's strongly typed networks) and the graph lacks it, the to-fp16 / quantize-int8 pass runs first and
    its graph is saved beside the artifact (`<name>.fp16.onnx` / `<name>.int8.onnx`)."""
    from sparsecut.passes.precision import PrecisionOptions, convert_precision
    from sparsecut.targets.onnxruntime import _precision_of

    model, output = Path(model), Path(output)
    target = get_target(target_name)
    converted = None
    wanted = options.precision
    if (
        wanted in ("fp16", "int8")
        and model.exists()
        and _precision_of(model) != wanted
        and _graph_needs_it(target_name)
    ):
        prepared = output.with_name(f"{output.name.split('.')[0]}.{wanted}.onnx")
        converted = convert_precision(model, prepared, PrecisionOptions(wanted, calibration))
        model = prepared
    _, report = target.build(model, output, options)
    return report, converted


def _graph_needs_it(target_name: str) -> bool:
    """onnxruntime runs what the graph says; TensorRT ≤ 10 can still be told by builder flags."""
    if target_name != "tensorrt":
        return True
    try:
        import tensorrt as trt
    except ImportError:
        return False  # the build itself will say that TensorRT is missing
    return not hasattr(trt.BuilderFlag, "FP16")


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
