"""`sparsecut run`: checkpoint → verified ONNX → dense baseline and lean ONNX → built artifacts → the three
measured interleaved, with every file and one report (JSON, Markdown, plot) in one folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from sparsecut.exporter import ExportOptions, export_checkpoint
from sparsecut.modelfile import atomic_write_text, graph_precision
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.measured import Tuning, fastest_int8_format, optimize_measured
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.passes.registry import baseline_passes
from sparsecut.precision import FP32, Precision
from sparsecut.report import (
    BuildReport,
    LayerDiffReport,
    LayerDrift,
    OutputDrift,
    PrecisionReport,
    RunReport,
    write_json,
)
from sparsecut.targets import Artifact, BuildOptions, ProfileOptions, Target, compare_runs, get_target
from sparsecut.targets.compare import plot_pruning_by_precision
from sparsecut.targets.noise import speedup
from sparsecut.targets.tensorrt import TensorRTOptions
from sparsecut.targets.tuning import tuning_for

__all__ = [
    "VARIANTS",
    "PlannedFile",
    "RunOptions",
    "baseline_passes",
    "build_for_target",
    "build_outputs",
    "markdown_summary",
    "run_workflow",
    "side_file",
    "speedup_lines",
]

STEPS = ("export", "baseline", "optimize", "build", "compare")
VARIANTS = ("exported", "baseline", "lean")
FP32_TWINS = ("baseline-fp32", "lean-fp32")  # with --precision fp16/int8: the same graphs in fp32 (the 2×2)
REPORT_FILES = ("report.json", "report.md", "compare.png")
PRECISION_PLOT = "precision.png"  # with --precision fp16/int8: the 2×2 of pruning × precision


def run_files(targets: Sequence[Target], precision: Precision = FP32) -> tuple[str, ...]:
    """Every file `run_workflow` writes into its folder for `targets`: models, artifacts and what they bring."""
    twins = precision.kind != "fp32"
    variants = (*VARIANTS, *FP32_TWINS) if twins else VARIANTS
    models = [f"{name}{ext}" for name in variants for ext in (".onnx", ".onnx.data")]
    for target in targets:
        for name in variants:
            artifact = Path(f"{name}{target.artifact_suffix}")
            models += [artifact.name, *(artifact.with_suffix(ext).name for ext in target.artifact_companions)]
    return (*models, *REPORT_FILES, *((PRECISION_PLOT,) if twins else ()))


@dataclasses.dataclass(frozen=True)
class RunOptions:
    target: str = "onnxruntime"  # or several, "onnxruntime,openvino": lean's counts are measured on the first
    sparsity: bool = False
    export: ExportOptions = dataclasses.field(default_factory=ExportOptions)
    optimize: OptimizeOptions = dataclasses.field(default_factory=OptimizeOptions)
    profile: ProfileOptions = dataclasses.field(
        default_factory=lambda: ProfileOptions(iterations=300, warmup=5, per_layer=False)
    )
    rounds: int = 30
    budget: float | None = None  # seconds of timing: more rounds for a tighter interval
    measured: bool = True  # lean's channel counts chosen by latency on the target (passes/measured.py)
    table: Path | None = None  # the latency table (default: in the user cache folder)
    tune_budget: float = 30.0  # seconds of layer measurements at most

    @property
    def precision(self) -> Precision:
        """What baseline and lean are written in (`optimize.precision` asks for it, with its calibration)."""
        return self.optimize.precision.precision


def run_workflow(
    checkpoint: Path,
    out_dir: Path,
    *,
    arch: str | None = None,
    model_factory: str | None = None,
    options: RunOptions | None = None,
    step: Callable[[str], None] = lambda name: None,
    progress: Callable[[int, int], None] | None = None,
    publish_as: Path | None = None,
) -> RunReport:
    """Run every step; `step(name)` is called as each one starts, `progress(round, rounds)` while timing.
    `publish_as`: where `out_dir` will be moved once everything succeeded (the report names the files there).

    Three variants are built and timed interleaved: the exported file, the dense baseline (the same pipeline
    without channel removal: every other pass, the same precision) and lean, so that what channel removal bought
    is told apart from what graph cleanup bought."""
    options = options or RunOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported_path, baseline_path, lean_path = (out_dir / f"{name}.onnx" for name in VARIANTS)
    twins = options.precision.kind != "fp32"
    variants = (*VARIANTS, *FP32_TWINS) if twins else VARIANTS
    paths = [out_dir / f"{name}.onnx" for name in variants]

    step("export")
    exported = export_checkpoint(
        checkpoint, exported_path, arch=arch, model_factory=model_factory, options=options.export
    )
    step("baseline")
    backends = [get_target(name) for name in options.target.split(",")]
    tuning = None
    if options.measured:
        tuning = tuning_for(
            backends[0].name,
            batch=options.profile.batch,
            threads=options.profile.threads,
            backends=options.profile.backends,
            table=options.table,
            budget=options.tune_budget,
            build=BuildOptions(
                sparsity=options.sparsity, threads=options.profile.threads, backends=options.profile.backends
            ),
        )
    precision = options.precision
    if precision.kind == "int8" and precision.format is None:  # one format for baseline and lean alike
        if tuning is not None:  # the one whose lean graph runs fastest on the first target
            chosen = fastest_int8_format(exported_path, lean_path, _at(options.optimize, precision), tuning)
        else:  # the one the first target names first
            chosen = backends[0].int8_formats(BuildOptions(backends=options.profile.backends))[0]
        precision = precision.in_format(chosen)
    lean_options = _at(options.optimize, precision)
    baseline_options = dataclasses.replace(lean_options, passes=baseline_passes(lean_options.passes))
    baseline = optimize_model(exported_path, baseline_path, baseline_options)
    if twins:
        optimize_model(exported_path, paths[3], _at(baseline_options, FP32))
    step("optimize")
    if tuning is not None:
        optimized = optimize_measured(exported_path, lean_path, lean_options, tuning, paths[4] if twins else None)
    else:
        optimized = optimize_model(exported_path, lean_path, lean_options)
        if twins:
            optimize_model(exported_path, paths[4], _at(lean_options, FP32))
    step("build")
    runs, builds = [], []
    for backend in backends:
        for name, path in zip(variants, paths, strict=True):
            # each engine computes what its graph carries: the exported file its own precision, the other two the
            # precision optimize put into them
            build = BuildOptions(
                precision=graph_precision(path), sparsity=options.sparsity, threads=options.profile.threads,
                backends=options.profile.backends,
            )  # fmt: skip
            artifact, built = backend.build(path, out_dir / f"{name}{backend.artifact_suffix}", build)
            runs.append((artifact, backend))
            builds.append(built)
    step("compare")
    compared = compare_runs(
        runs,
        options=options.profile,
        rounds=options.rounds,
        budget=options.budget,
        baseline=VARIANTS.index("baseline"),
        labels=variants,
        plot=out_dir / "compare.png",
        progress=progress,
    )
    rounds = {v.label: v.rounds_ms for v in reversed(compared.variants)}  # the first backend's
    report = RunReport(
        export=exported,
        optimize=optimized,
        baseline=baseline,
        builds=builds,
        compare=compared,
        pruning=compared.variant("lean", backends[0].name).speedup,
        cleanup=speedup(rounds["exported"], rounds["baseline"], seed=options.profile.seed),
        total=speedup(rounds["exported"], rounds["lean"], seed=options.profile.seed),
        quantization=speedup(rounds["lean-fp32"], rounds["lean"], seed=options.profile.seed) if twins else None,
        pruning_fp32=speedup(rounds["baseline-fp32"], rounds["lean-fp32"], seed=options.profile.seed)
        if twins
        else None,
    )
    if twins:
        plot_pruning_by_precision(compared, precision.kind, out_dir / PRECISION_PLOT, seed=options.profile.seed)
        firsts = dict(zip(variants, (artifact for artifact, _ in runs), strict=False))  # the first backend's
        layers = _pruned_layers(
            backends[0], firsts, dict(zip(variants, paths, strict=True)), precision, options.profile
        )
        report = dataclasses.replace(report, layers=layers)
    if publish_as is not None:
        report = report.map_strings(lambda text: text.replace(str(out_dir), str(publish_as)))
    write_json(report, out_dir / "report.json")
    atomic_write_text(out_dir / "report.md", markdown_summary(report))
    return report


def _pruned_layers(
    backend: Target,
    artifacts: dict[str, Artifact],
    graphs: dict[str, Path],
    precision: Precision,
    options: ProfileOptions,
) -> dict[str, LayerDiffReport]:
    """Per precision (the run's and fp32), baseline → lean profiled layer by layer: the layers pruning shrank and
    the rest (`diff_layers`). The rest does not shrink with pruning; where it weighs more in the lean model —
    int8 speeds the convolutions up, not the stem over 3 channels, pooling or the conversions — pruning pays less.
    Left out where the backend's layers do not pair with the graph's nodes (an engine that renames them)."""
    from sparsecut.errors import TargetError
    from sparsecut.targets.layer_diff import diff_layers

    per_layer = dataclasses.replace(options, per_layer=True)
    found = {}
    for kind, (before, after) in ((precision.kind, ("baseline", "lean")), ("fp32", FP32_TWINS)):
        dense, lean = (backend.profile(artifacts[name], per_layer) for name in (before, after))
        try:
            found[kind] = diff_layers(dense, lean, graphs[before], graphs[after], backend.channel_block(lean.precision))
        except TargetError:
            return {}
    return found


def _at(options: OptimizeOptions, precision: Precision) -> OptimizeOptions:
    return dataclasses.replace(options, precision=options.precision.at(precision))


def side_file(output: Path, kind: str, inputs: Sequence[Path | None] = ()) -> Path:
    """Where a command saves a graph it made on the way to `output` (`kind`: the lean graph, the graph at the
    target's precision): beside it, named after it — `r.ort.onnx` → `r.ort.lean.onnx`, `r.plan` → `r.lean.onnx` —
    and never one of `inputs` (`x.lean.onnx -o x.onnx` would otherwise save its lean graph over its input)."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    taken = {path.resolve() for path in inputs if path is not None}
    candidate, n = output.with_name(f"{stem}.{kind}.onnx"), 2
    while candidate.resolve() in taken:
        candidate, n = output.with_name(f"{stem}.{kind}-{n}.onnx"), n + 1
    return candidate


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """One file a build may write, as a command plans it before any work."""

    kind: str  # "artifact", "beside" (a companion or the surgery's graph), "lean", "fp16", "int8", "timing-cache"
    path: Path
    option: str  # the option that asks for it
    model: bool = False  # an ONNX model, which may bring its `.data`
    optional: bool = False  # written only when a step needs it (a graph still dead channels, another precision)


def build_outputs(
    target: Target, output: Path, options: BuildOptions, *, measure: bool, inputs: Sequence[Path | None]
) -> list[PlannedFile]:
    """Every file `build_for_target(…, output, options)` may write, in the order they are moved into place (the
    artifact after what it needs beside it): the target's own files (`Target.build_files`), the graph converted to
    the precision and the lean graph (`side_file`: named after the artifact, never one of `inputs`), the timing
    cache it reads and updates."""
    output = Path(output)
    _, *beside = target.build_files(output, options).items()
    files = [PlannedFile("beside", path, option, model=path.suffix == ".onnx") for path, option in beside]
    files.append(PlannedFile("artifact", output, "--output", model=output.suffix == ".onnx"))
    if options.precision is not None and options.precision.kind in ("fp16", "int8"):
        kind = options.precision.kind
        files.append(PlannedFile(kind, side_file(output, kind, inputs), "--precision", model=True, optional=True))
    if measure:
        files.append(PlannedFile("lean", side_file(output, "lean", inputs), "--measure", model=True, optional=True))
    timing_cache = options.backend(TensorRTOptions).timing_cache
    if timing_cache is not None:
        files.append(PlannedFile("timing-cache", timing_cache, "--timing-cache", optional=True))
    return files


def build_for_target(
    model: Path,
    output: Path,
    target_name: str,
    options: BuildOptions,
    converting: PrecisionRequest | None = None,
    tuning: Tuning | None = None,
    sides: dict[str, Path] | None = None,
) -> tuple[BuildReport, PrecisionReport | None]:
    """Build `model` for a target.

    - With `tuning`, a graph that still has removable dead channels has them removed first, with the channel
      counts measured on the target (passes/measured.py); that lean graph is saved beside the artifact
      (`side_file(output, "lean")`) and built instead, and the report says so.
    - When the target needs the precision in the graph (onnxruntime always, TensorRT 11's strongly typed networks)
      and the graph lacks it, the to-fp16 / quantize-int8 pass runs first and its graph is saved beside the
      artifact (`side_file(output, "fp16" / "int8")`).

    `converting`: how (calibration, --keep-fp32, --max-drift); the precision is the build's (int8 without a format:
    with `tuning`, the target's format that runs the graph fastest there; else the one it names first).
    `sides`: where those go, by kind, when the caller planned them (the CLI stages them with the artifact)."""
    from sparsecut.passes.precision import convert_precision

    model, output = Path(model), Path(output)
    calibration = converting.calibration.source if converting is not None else None
    sides = dict(sides or {})
    target = get_target(target_name)
    notes = []
    removable = tuning is not None and _removable_channels(model) > 0
    kept = _channels_kept_by_optimize(model) if removable else None
    if kept is not None:
        notes.append(f"the dead channels left are the ones `optimize` kept for the kernels ({kept}): built as given "
                     "(`optimize --target` from the masked model decides them on a target)")  # fmt: skip
    elif removable:
        assert tuning is not None
        lean = sides.get("lean") or side_file(output, "lean", [model, calibration])
        decision = optimize_measured(model, lean, OptimizeOptions(), tuning).decision
        assert decision is not None
        notes.append(f"dead channels removed first, counts measured on the target: {decision.verdict}; lean graph "
                     f"saved as {lean.name}")  # fmt: skip
        model = lean
    converted = None
    wanted = options.precision
    if (
        wanted is not None
        and wanted.kind in ("fp16", "int8")
        and model.exists()
        and graph_precision(model).kind != wanted.kind
        and target.precision_in_graph(wanted)
    ):
        prepared = sides.get(wanted.kind) or side_file(output, wanted.kind, [model, calibration])
        request = converting or PrecisionRequest()
        if wanted.kind == "int8" and wanted.format is None:
            if tuning is not None:  # measured: the format whose graph runs fastest there
                fmt = fastest_int8_format(model, prepared, OptimizeOptions(precision=request.at(wanted)), tuning)
            else:
                fmt = target.int8_formats(options)[0]
            wanted = wanted.in_format(fmt)
        converted = convert_precision(model, prepared, request.at(wanted))
        model = prepared
    _, report = target.build(model, output, options)
    return dataclasses.replace(report, notes=[*notes, *report.notes]), converted


def _channels_kept_by_optimize(model: Path) -> str | None:
    """How `optimize` chose the channel counts of a graph whose dead channels it already removed (the alignment it
    wrote down); None for any other graph. The dead channels such a graph still has were kept on purpose: measured
    again at build, they had `build` re-tune a graph `optimize --target` had just tuned (25 s for timm ResNet-18)."""
    import onnx

    from sparsecut.passes.pipeline import METADATA_PREFIX

    try:
        props = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    except Exception:  # not an ONNX file sparsecut can read: the build says why
        return None
    if "remove-dead-channels" not in props.get(METADATA_PREFIX + "optimize.passes", "").split(","):
        return None
    align = f"--align {props.get(METADATA_PREFIX + 'optimize.align', '?')}"
    measured = props.get(METADATA_PREFIX + "optimize.measured_spaces")
    return f"counts measured on a target for {measured} channel space(s), {align} elsewhere" if measured else align


def _removable_channels(model: Path) -> int:
    from sparsecut.passes import inspect_model

    return sum(g.channels_before - g.channels_after for p in inspect_model(model, align=1).passes for g in p.groups)


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
        *(f"{line}" for line in speedup_lines(report)),
        "",
        "| variant | backend | params | MACs | p50 ms | p90 ms | speedup vs baseline | MACs ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in c.variants:
        lines.append(
            f"| {v.label} ({Path(v.model).name}) | {v.target or c.target} | {v.params:,} | {v.macs:,} "
            f"| {v.latency.p50_ms:.3f} | {v.latency.p90_ms:.3f} | {v.speedup.describe()} | {v.macs_ratio:.3f} |"
        )
    lines += ["", "![MACs vs latency](compare.png)", ""]
    precision = report.optimize.precision
    if precision is not None:
        lines += ["", f"![pruning × precision]({PRECISION_PLOT})", "", *precision_markdown(precision)]
    return "\n".join(lines)


def precision_markdown(p: PrecisionReport, layers_shown: int = 10) -> list[str]:
    """The lean graph's drift from its fp32 twin, as report.md shows it: per output, and the layers that lost most."""
    how = f", format {p.format}, {p.method} calibration" if p.format else ""
    lines = [
        f"## {p.precision} accuracy (lean vs its fp32 twin)",
        "",
        f"Calibrated on {p.calibration}{how}; measured on {p.held_out} held-out sample(s).",
        "",
        *_markdown_table(OutputDrift.COLUMNS, [o.cells() for o in p.outputs], text_columns=1),
    ]
    if p.layers:
        shown = p.layers[:layers_shown]
        lines += ["", f"Quantized layers that lose most ({len(shown)} of {len(p.layers)}; all in report.json):", "",
                  *_markdown_table(LayerDrift.COLUMNS, [layer.cells() for layer in shown], text_columns=3)]  # fmt: skip
    if p.kept_fp32:
        lines += ["", f"Kept in fp32: {', '.join(p.kept_fp32)}."]
    if p.notes:
        lines += ["", *(f"- {note}" for note in p.notes)]
    return lines


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> list[str]:
    """A markdown table: the first `text_columns` left-aligned, the numbers after them right-aligned."""
    align = "|".join("---" if i < text_columns else "---:" for i in range(len(columns)))
    return [f"| {' | '.join(columns)} |", f"|{align}|", *(f"| {' | '.join(row)} |" for row in rows)]


def speedup_lines(report: RunReport) -> list[str]:
    """The three ratios of a run, in words: what channel removal bought, what cleanup bought, and both; with
    several backends, the same on each, and lean on each backend against lean on the first."""
    precision = f" and the {report.optimize.precision.precision} conversion" if report.optimize.precision else ""
    targets = report.compare.targets
    on = f" on {targets[0]}" if len(targets) > 1 else ""
    at = f" at {report.optimize.precision.precision}" if report.optimize.precision else ""
    lines = [
        f"- **pruning speedup**{at}{on} (dense baseline / lean, channel removal alone): {report.pruning.describe()}",
        f"- graph cleanup{precision}{on} (exported / dense baseline): {report.cleanup.describe()}",
        f"- total{on} (exported / lean = cleanup × pruning): {report.total.describe()}",
    ]
    if report.quantization is not None and report.pruning_fp32 is not None:
        kind = report.optimize.precision.precision if report.optimize.precision else "precision"
        lines += [
            f"- {kind} speedup{on} (lean fp32 / lean {kind}, same channels): {report.quantization.describe()}",
            f"- pruning speedup at fp32{on} (dense baseline fp32 / lean fp32): {report.pruning_fp32.describe()}",
        ]
    for kind, layers in report.layers.items():
        lines.append(
            f"- where pruning's time went at {kind}{on} (per-layer profile, dense baseline → lean): {layers.split()}"
        )
    for target in targets[1:]:
        lean = report.compare.variant("lean", target)
        exported = report.compare.variant("exported", target)
        total = speedup(exported.rounds_ms, lean.rounds_ms, seed=0)
        across = lean.backend_speedup.describe() if lean.backend_speedup is not None else "-"
        lines.append(
            f"- on {target}: **pruning speedup** {lean.speedup.describe()}; total {total.describe()}; lean on "
            f"{target} vs lean on {targets[0]}: {across}"
        )
    return lines
