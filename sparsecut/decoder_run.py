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
from sparsecut.report import DecoderCompareReport, ExportReport, OptimizeReport, Report, write_json
from sparsecut.targets.decoding import DecodeOptions, compare_decoders

__all__ = ["DECODER_RUN_FILES", "DecoderRunReport", "run_decoder"]

DECODER_RUN_FILES = ("exported", "lean", "report.json", "report.md")
DECODER_STEPS = ("export", "optimize", "build", "compare")


@dataclasses.dataclass(frozen=True)
class DecoderRunReport(Report):
    """`sparsecut run DIR`: the export, the lean graph, and exported vs lean timed as generators run them."""

    export: ExportReport
    optimize: OptimizeReport
    compare: DecoderCompareReport


def run_decoder(
    folder: Path,
    out: Path,
    export: DecoderExportOptions,
    decode: DecodeOptions,
    target: str = "onnxruntime",
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
    lean = out / "lean"
    lean.mkdir()
    optimize_report = optimize_model(exported / "model.onnx", lean / "model.onnx", OptimizeOptions(align=1))
    say("build")
    models = [exported / "model.onnx", lean / "model.onnx"]
    if target == "onnxruntime-genai":
        from sparsecut.targets import BuildOptions
        from sparsecut.targets.onnxruntime_genai import GenaiOptions, OnnxRuntimeGenaiTarget

        built = out / "lean.genai"
        OnnxRuntimeGenaiTarget().build(
            lean / "model.onnx", built, BuildOptions(backends=(GenaiOptions(tokenizer=exported),))
        )
        for path in built.iterdir():  # the folder onnxruntime-genai reads: the lean model beside its config
            path.replace(lean / path.name)
        built.rmdir()
        models = [exported, lean]
    say("compare")
    compare = compare_decoders(models, decode, 0, progress, target=target, labels=("exported", "lean"))
    report = DecoderRunReport(export_report, optimize_report, compare)
    if relocate is not None:
        report = report.map_strings(relocate)
    write_json(report, out / "report.json")
    atomic_write_text(out / "report.md", markdown(report))
    return report


def markdown(report: DecoderRunReport) -> str:
    """report.md: what was exported, what went, and how much faster it generates."""
    base, lean = report.compare.variants
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
        "| | exported | lean | speedup (95 % interval) |",
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
    return "\n".join(lines) + "\n"
