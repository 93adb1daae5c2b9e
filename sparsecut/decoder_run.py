"""`sparsecut run DIR` for a Hugging Face decoder folder: export (the genai builder or optimum-onnx, verified against
transformers) → lean (optimize, gated by generation) → timed as generators run them, exported vs lean, interleaved
→ report.json and report.md in one folder.

With `--target onnxruntime-genai` the lean graph is built into the folder onnxruntime-genai generates from (the
export's genai_config.json and tokenizer carried) and both are timed through its generator; with `onnxruntime`,
through sparsecut's own loop (decoding.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from sparsecut.exporter.decoders import DecoderExportOptions, export_decoder_folder
from sparsecut.modelfile import atomic_write_text
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.precision import PrecisionRequest, convert_precision
from sparsecut.passes.registry import baseline_passes
from sparsecut.precision import Precision
from sparsecut.report import DecoderCompareReport, ExportReport, OptimizeReport, PrecisionReport, Report, write_json
from sparsecut.targets.decoding import DecodeOptions, compare_decoders

__all__ = ["DECODER_RUN_FILES", "DecoderRunReport", "run_decoder"]

DECODER_RUN_FILES = ("exported", "baseline", "lean", "baseline-int4", "lean-int4", "report.json", "report.md")
DECODER_STEPS = ("export", "optimize", "build", "compare")


@dataclasses.dataclass(frozen=True)
class DecoderRunReport(Report):
    """`sparsecut run DIR`: the export, the lean graph, and exported vs lean timed as generators run them."""

    export: ExportReport
    optimize: OptimizeReport
    compare: DecoderCompareReport
    int4: list[PrecisionReport] = dataclasses.field(default_factory=list)  # exported, lean: their drift (the 2×2)


def run_decoder(
    folder: Path,
    out: Path,
    export: DecoderExportOptions,
    decode: DecodeOptions,
    target: str = "onnxruntime",
    int4: Precision | None = None,
    align: int = 8,
    step: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    relocate: Callable[[str], str] | None = None,
) -> DecoderRunReport:
    """Write `out/exported/` (the exporter's folder), `out/lean/` (the lean model, and for onnxruntime-genai its
    config and tokenizer) and the reports; `out` is a staged folder that exists, and `relocate` names a staged path
    as its destination in the reports."""
    say = step or (lambda name: None)
    say("export")
    exported = out / "exported"
    exported.mkdir()
    export_report = export_decoder_folder(folder, exported, export)
    say("optimize")
    baseline, lean = out / "baseline", out / "lean"
    baseline.mkdir()
    lean.mkdir()
    options = OptimizeOptions(align=align)
    # the like-for-like reference: every pass but channel removal (what lean's speedup is credited against)
    optimize_model(exported / "model.onnx", baseline / "model.onnx",
                   dataclasses.replace(options, passes=baseline_passes(options.passes)))  # fmt: skip
    optimize_report = optimize_model(exported / "model.onnx", lean / "model.onnx", options)
    say("build")
    folders, labels = [exported, baseline, lean], ["exported", "dense baseline", "lean"]
    quantized: list[PrecisionReport] = []
    if int4 is not None:  # the 2×2: baseline and lean in weight-only int4 too (its block size and method)
        for folder_fp32, name in ((baseline, "baseline-int4"), (lean, "lean-int4")):
            (out / name).mkdir()
            request = PrecisionRequest(int4)
            quantized.append(convert_precision(folder_fp32 / "model.onnx", out / name / "model.onnx", request))
            folders.append(out / name)
            labels.append(name.replace("baseline", "dense baseline").replace("-", " "))
    models = [f / "model.onnx" for f in folders]
    if target == "onnxruntime-genai":
        from sparsecut.targets import BuildOptions
        from sparsecut.targets.onnxruntime_genai import CONFIG, GenaiOptions, OnnxRuntimeGenaiTarget

        for folder_ in folders:
            if (folder_ / CONFIG).is_file():
                continue  # (the genai builder's export already is such a folder)
            built = out / f"{folder_.name}.genai"
            OnnxRuntimeGenaiTarget().build(
                folder_ / "model.onnx", built, BuildOptions(backends=(GenaiOptions(tokenizer=exported),))
            )
            for path in built.iterdir():  # the folder onnxruntime-genai reads: the model beside its config
                path.replace(folder_ / path.name)
            built.rmdir()
        models = folders
    say("compare")
    ratios = [("graph cleanup", 0, 1), ("total", 0, 2)]
    if int4 is not None:
        ratios += [("pruning at int4", 3, 4), ("int4 (lean)", 2, 4), ("total: exported fp32 → lean int4", 0, 4)]
    compare = compare_decoders(models, decode, 1, progress, target=target, labels=labels, ratios=ratios)
    report = DecoderRunReport(export_report, optimize_report, compare, quantized)
    if relocate is not None:
        report = report.map_strings(relocate)
    write_json(report, out / "report.json")
    atomic_write_text(out / "report.md", markdown(report))
    return report


def markdown(report: DecoderRunReport) -> str:
    """report.md: what was exported, what went, and how much faster it generates — lean against the same graph
    without channel removal (the dense baseline)."""
    base = report.compare.variants[report.compare.baseline]
    lean = next(v for v in report.compare.variants if v.label == "lean")
    steps = next((p for p in report.optimize.passes if p.name == "remove-dead-channels"), None)
    lines = [
        f"# {report.export.checkpoint}: a pruned decoder, physically smaller",
        "",
        f"Exported by {report.export.exporter}; {report.export.checks[0].label} (max rel "
        f"{report.export.checks[0].max_rel_error:.1e}).",
        "",
        f"Lean: parameters {report.optimize.before.params:,} → {report.optimize.after.params:,}; "
        + (f"{steps.summary}; " if steps is not None else "")
        + f"verified on {report.optimize.checks[0].label} (max rel {report.optimize.checks[0].max_rel_error:.1e}).",
        "",
        f"K/V heads per layer: {'/'.join(map(str, base.kv_heads))} → {'/'.join(map(str, lean.kv_heads))}; KV cache "
        f"{base.kv_bytes_per_token:,} → {lean.kv_bytes_per_token:,} bytes per token.",
        "",
        f"## Timed on {report.compare.device} ({report.compare.target}, {report.compare.rounds} interleaved rounds)",
        "",
        "The dense baseline is the exported graph through every pass but channel removal: the pruning speedup is "
        "dense baseline / lean.",
        "",
        "| | dense baseline | lean | pruning speedup (95 % interval) |",
        "|---|---|---|---|",
        f"| weights | {base.weight_bytes / 1e6:.1f} MB | {lean.weight_bytes / 1e6:.1f} MB | "
        f"{base.weight_bytes / lean.weight_bytes:.2f}× fewer bytes |",
    ]
    for p in base.prefill_ms:
        s = lean.prefill_speedup[p]
        lines.append(f"| prefill {p} tokens | {base.prefill_ms[p]:.1f} ms | {lean.prefill_ms[p]:.1f} ms | "
                     f"{s.value:.2f}× ({s.low:.2f}–{s.high:.2f}) |")  # fmt: skip
    for c in base.decode_ms:
        s = lean.decode_speedup[c]
        lines.append(f"| decode at context {c} | {base.tokens_per_s(int(c)):.1f} tokens/s | "
                     f"{lean.tokens_per_s(int(c)):.1f} tokens/s | {s.value:.2f}× ({s.low:.2f}–{s.high:.2f}) |")  # fmt: skip
    lines += ["", "## More ratios (same rounds)", "", "| | decode | prefill |", "|---|---|---|"]
    for ratio in report.compare.ratios:
        decode = ", ".join(f"@{c} {s.value:.2f}× ({s.low:.2f}–{s.high:.2f})" for c, s in ratio.decode.items())
        prefill = ", ".join(f"{p} {s.value:.2f}× ({s.low:.2f}–{s.high:.2f})" for p, s in ratio.prefill.items())
        lines.append(f"| {ratio.name} ({ratio.candidate} vs {ratio.reference}) | {decode} | {prefill} |")
    for drift in report.int4:
        lines += ["", f"int4 drift: {'; '.join(drift.notes)}"]
    return "\n".join(lines) + "\n"
