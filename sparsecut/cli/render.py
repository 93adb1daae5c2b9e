"""How the CLI shows each report: one typed renderer per report, printing rich tables on the console. Nothing
here computes: every number is in the report (and in its JSON)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from sparsecut.cli.app import console
from sparsecut.report import (
    AdviceReport,
    BuildReport,
    CompareReport,
    DecoderCompareReport,
    EnforcedLayer,
    ExportReport,
    LatencyReport,
    LayerDiffReport,
    LayerDrift,
    LayerTime,
    MeasuredDecision,
    OptimizeReport,
    OutputDrift,
    PassReport,
    PrecisionReport,
    RunReport,
    Speedup,
)

__all__ = [
    "render_build",
    "render_compare",
    "render_decision",
    "render_decoder_compare",
    "render_export",
    "render_latency",
    "render_layer_diff",
    "render_optimize",
    "render_precision",
    "render_run",
]


def render_export(report: ExportReport) -> None:
    table = Table(title=f"export: {report.checkpoint} → {report.output}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    exporter = report.exporter + (f" ({report.exporter_note})" if report.exporter_note else "")
    decoder = not report.input_shape  # a Hugging Face decoder folder: its exporter's own graph, no masks to fold
    nodes = f"{report.nodes_exported} as torch.onnx wrote them → {report.nodes} after folding constants"
    rows = [
        ("architecture", report.architecture),
        ("exporter", exporter),
        ("opset", str(report.opset)),
        ("graph nodes", str(report.nodes) if decoder else nodes),
        ("input shape", "token ids, KV cache (dynamic)" if decoder else "×".join(map(str, report.input_shape)) + " (batch dynamic)"),
        ("parameters", f"{report.parameters:,} ({report.zero_parameters:,} exactly zero)"),
        *([] if decoder else [("masks folded", str(len(report.folded_masks))),
                              ("layers resized", str(len(report.resized_layers)))]),
        ("sha256", report.checkpoint_sha256[:16] + "…" if report.checkpoint_sha256 else "-"),
        ("export time", f"{report.export_seconds:.1f} s"),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    for check in report.checks:
        verdict = "[green]ok[/green]" if check.passed else "[red]FAILED[/red]"
        table.add_row(
            check.label or f"check batch {check.batch_size}",
            f"{verdict}  max abs {check.max_abs_error:.2e}, rel {check.max_rel_error:.2e} (rtol {report.rtol:g})",
        )
    console.print(table)


def render_optimize(report: OptimizeReport, inspecting: bool = False) -> None:
    """`inspecting` (or --verbose) shows the 2:4 table in full; otherwise it is shown only when some weight is
    2:4 (a table of "no" says nothing the summary line does not)."""
    full = inspecting or logging.getLogger().isEnabledFor(logging.INFO)
    for step in report.passes:
        _render_pass(step, full)
    _render_totals(report)
    _render_two_four_kept_and_lost(report)
    if report.enforced:
        _render_enforced(report.enforced)
    if report.precision is not None:
        render_precision(report.precision)
    if report.decision is not None:
        render_decision(report.decision)
    if report.output is None:
        console.print("inspect only: nothing written")
    elif report.verified:
        worst = max(report.checks, key=lambda c: c.max_rel_error)
        fed = "; ".join(c.label for c in report.checks if c.label) or f"{len(report.checks)} input set(s)"
        console.print(
            f"[green]verified[/green] on {fed}: max abs {worst.max_abs_error:.2e}, "
            f"rel {worst.max_rel_error:.2e} (rtol {report.rtol:g}, atol {report.atol:g}) → {report.output}"
        )
    else:
        console.print(f"[bold red]NOT verified[/bold red] (--no-verify) → {report.output}")


def _render_pass(step: PassReport, full: bool) -> None:
    """One pass: its summary, its channel groups and attention heads, its 2:4 table, and where channels stopped."""
    console.print(f"[bold]{step.name}[/bold]: {step.summary} ({step.seconds:.2f} s)")
    if step.groups:
        table = Table(title_justify="left")
        for column in ("group", "channels", "dead", "kept dead: why"):
            table.add_column(column)
        for group in step.groups:
            why = "; ".join(f"{n}× {reason}" for reason, n in group.kept_dead.items()) or "-"
            table.add_row(group.location, f"{group.channels_before} → {group.channels_after}", str(group.dead), why)
        console.print(table)
    if step.heads:
        heads = Table(title="attention heads", title_justify="left")
        for column in ("block (output projection)", "heads", "K/V heads", "dead", "removed", "head dim q/k, v",
                       "dead kept: why"):  # fmt: skip
            heads.add_column(column)
        for block in step.heads:
            why = "; ".join(f"{n}× {reason}" for reason, n in block.kept.items()) or "-"
            dims = f"{block.head_dim} → {block.qk_dim_after}, {block.v_dim_after}"
            kept_kv = next(iter(block.cache.values()), None)
            kv = f"{block.kv_heads} → {len(kept_kv)}" if kept_kv is not None else str(block.kv_heads)
            heads.add_row(block.location, str(block.heads), kv, str(block.dead),
                          str(block.removable), dims, why)  # fmt: skip
        console.print(heads)
        changed = [block for block in step.heads if block.cache]
        if changed:
            console.print(
                "  KV caches with fewer K/V heads — the model's interface: a generator feeds the lean model its own "
                "presents as pasts:"
            )
            for block in changed:
                kept = next(iter(block.cache.values()))
                console.print(f"    {', '.join(sorted(block.cache))}: {block.kv_heads} → {len(kept)} heads "
                              f"(kept {', '.join(map(str, kept))})")  # fmt: skip
    if step.sparsity and (full or any(layer.is_2to4 for layer in step.sparsity)):
        sparse = Table(title_justify="left")
        for column in ("layer", "weight", "reduction", "2:4", "violating", "note"):
            sparse.add_column(column)
        for layer in step.sparsity[: None if full else 40]:
            notes = [n for n, on in (("padded to ×4", layer.padded), ("< 256 ch", layer.too_small)) if on]
            sparse.add_row(layer.node, layer.weight, str(layer.reduction), "yes" if layer.is_2to4 else "no",
                           f"{100 * layer.violating_share:.0f} %", "; ".join(notes))  # fmt: skip
        console.print(sparse)
    if step.barriers:
        stops = ", ".join(f"{op} ×{n}" for op, n in sorted(step.barriers.items()))
        console.print(f"  channels stopped at ops without a rule: {stops}")
    if step.declined:
        console.print("  channels stopped where a rule declined:")
        for why, n in sorted(step.declined.items()):
            console.print(f"    {escape(why)} ×{n}")
    for failure in step.rule_errors:
        console.print(f"  [yellow]warning:[/yellow] a channel rule gave up, its channels are kept: {escape(failure)}")


def _render_totals(report: OptimizeReport) -> None:
    totals = Table(title="totals (per sample)", title_justify="left")
    for column in ("", "before", "after", "after/before"):
        totals.add_column(column)
    for name, b, a in (
        ("params", report.before.params, report.after.params),
        ("MACs", report.before.macs, report.after.macs),
    ):
        totals.add_row(name, f"{b:,}", f"{a:,}", f"{a / b:.3f}" if b else "-")
    console.print(totals)
    for note in report.notes:
        console.print(f"note: {escape(note)}")


def _render_two_four_kept_and_lost(report: OptimizeReport) -> None:
    restores = [r for p in report.passes for r in p.two_four]
    reordered = [w for r in restores if r.restored and r.reordered for w in r.weights]
    if reordered:
        console.print(
            f"2:4 kept by reordering channels (outputs unchanged) for {len(reordered)} weight(s): "
            f"{', '.join(reordered[:5])}{' …' if len(reordered) > 5 else ''}"
        )
    if report.lost_two_four:
        reasons = {w: r.reason for r in restores if not r.restored for w in r.weights}
        console.print(
            f"[yellow]{len(report.lost_two_four)} weight(s) were 2:4 in the input and lost it to channel removal:[/yellow]"
        )
        for weight in report.lost_two_four[:10]:
            console.print(
                f"  [yellow]{weight}: {reasons.get(weight) or 'its channels could not be reordered'}[/yellow]"
            )


def _render_enforced(enforced: list[EnforcedLayer]) -> None:
    pruned = [e for e in enforced if e.pruned]
    console.print(
        f"[bold red]enforce-2to4[/bold red]: pruned {len(pruned)} of {len(enforced)} weights to 2:4: the "
        "output does NOT compute what the input computes (the lossless steps before it were verified)"
    )
    if not pruned:
        console.print("  [yellow]no layer was eligible; nothing pruned[/yellow]")
        return
    table = Table(title="enforce-2to4: share of |w| kept", title_justify="left")
    for column in ("weight", "kept", "without reorder", "channel reorder"):
        table.add_column(column)
    for layer in pruned:
        table.add_row(
            layer.weight,
            f"{100 * layer.magnitude_kept:.2f} %",
            f"{100 * layer.magnitude_kept_without_permutation:.2f} %",
            layer.permutation,
        )
    console.print(table)


def render_precision(p: PrecisionReport, layers_shown: int = 10) -> None:
    """The drift a precision conversion caused: per output, and the quantized layers that lost most."""
    if p.precision == "int4":  # weight-only: no calibration; the drift is measured on generation (its notes)
        console.print(f"[bold]int4[/bold] {p.format}, weight-only: drift vs fp32 (not gated: precision changes the "
                      "numbers by design)")  # fmt: skip
    else:
        how = f", {p.format}, {p.method} calibration" if p.format else ""
        console.print(
            f"[bold]{p.precision}[/bold]{how} on {escape(p.calibration)}: drift vs fp32 on {p.held_out} held-out "
            "sample(s) (not gated: precision changes the numbers by design)"
        )
    outputs = Table(title_justify="left")
    for column in OutputDrift.COLUMNS:
        outputs.add_column(column, justify="left" if column == "output" else "right")
    for o in p.outputs:
        outputs.add_row(*o.cells())
    console.print(outputs)
    if p.layers:
        shown = p.layers[:layers_shown]
        layers = Table(title=f"quantized layers that lose most ({len(shown)} of {len(p.layers)}; all in --json)",
                       title_justify="left")  # fmt: skip
        for column in LayerDrift.COLUMNS:
            layers.add_column(column, justify="right" if "dB" in column else "left")
        for layer in shown:
            layers.add_row(*layer.cells())
        console.print(layers)
    if p.kept_fp32:
        fallback = f" ({len(p.fallback)} put back by --max-drift)" if p.fallback else ""
        shown_kept = ", ".join(p.kept_fp32[:8]) + (" …" if len(p.kept_fp32) > 8 else "")
        console.print(f"kept in fp32: {len(p.kept_fp32)} layer(s){fallback}: {shown_kept}")
    if p.bound:
        console.print(f"--max-drift: {p.bound}")
    for note in p.notes:
        console.print(f"  [yellow]{escape(note)}[/yellow]")


def render_decision(decision: MeasuredDecision) -> None:
    context = escape(", ".join(f"{k} {v}" for k, v in decision.context.items()))
    if decision.groups:
        table = Table(title=f"channel counts measured on {context}", title_justify="left")
        in_context = any(g.in_context_ms for g in decision.groups)
        timed = "in the whole model" if in_context else "predicted (one layer alone)"
        columns = ("space", "live", "chosen", "original", f"{timed}: count ms ± noise")
        for column in columns + (("one-layer table proposed",) if in_context else ()):
            table.add_column(column, justify="left" if column in (columns[0], columns[4]) else "right")
        for g in decision.groups:
            times, noise = (g.in_context_ms, g.in_context_noise_ms) if in_context else (g.predicted_ms, g.noise_ms)
            best = sorted(times.items(), key=lambda item: item[1])[:4]
            cells = [g.location, str(g.live), str(g.chosen), str(g.original),
                     "  ".join(f"{c}: {ms:.3f} ± {noise.get(c, 0.0):.3f}" for c, ms in best)]  # fmt: skip
            if in_context:
                cells.append("-" if g.proposed is None else str(g.proposed))
            table.add_row(*cells)
        console.print(table)
    reference = decision.variants[0].name
    end = Table(title=f"end to end, interleaved: {reference} and the lean candidates", title_justify="left")
    for column in ("variant", "p50 ms", f"speedup vs {reference.split(' (')[0]} (95 % interval)"):
        end.add_column(column, justify="left" if column == "variant" else "right")
    for v in decision.variants:
        name = v.name + (f" (= {v.same_as}'s graph)" if v.same_as else "")
        end.add_row(
            name + (" (written)" if v.name == decision.written else ""), f"{v.p50_ms:.3f}", v.speedup.describe()
        )
    console.print(end)
    if decision.formats:
        formats = Table(title="the lean graph in each precision, interleaved", title_justify="left")
        for column in ("precision", "p50 ms", "speedup vs fp32 (95 % interval)", "accuracy (held out)"):
            formats.add_column(column, justify="right" if column == "p50 ms" else "left")
        for v in decision.formats:
            name = v.name + (" (written)" if v.name == decision.precision_written else "")
            ratio = "reference" if v.name == "fp32" else v.speedup.describe()
            formats.add_row(name, f"{v.p50_ms:.3f}", ratio, escape(v.drift))
        for name, why in decision.refused.items():
            formats.add_row(name, "-", "refused by --max-drift, not timed", escape(why))
        console.print(formats)
    budget = "; the budget ran out (undecided spaces kept the fixed alignment)" if decision.budget_exhausted else ""
    console.print(
        f"latency table {decision.table or '(memory)'}: {decision.table_hits} hits, {decision.table_misses} "
        f"measured in {decision.measuring_seconds:.1f} s{budget}"
    )
    style = "green" if decision.pays and decision.int8_pays is not False else "bold yellow"
    console.print(f"[{style}]{decision.verdict}[/{style}]")


def render_build(report: BuildReport) -> None:
    table = Table(title=f"build: {report.source} → {report.artifact}", show_header=False, title_justify="left")
    for name, value in (("target", report.target), ("precision", report.precision), ("sparsity", str(report.sparsity)),
                        ("build time", f"{report.seconds:.1f} s"), *(("note", n) for n in report.notes),
                        ("sparse layers", ", ".join(report.sparse_layers) or "-")):  # fmt: skip
        table.add_row(name, value)
    console.print(table)


def render_layer_diff(report: LayerDiffReport, top: int) -> None:
    table = Table(
        title=f"per layer, {Path(report.before).name} → {Path(report.after).name} on {report.device} "
        f"({report.target}; top {top} by time before)",
        title_justify="left",
    )
    for column in ("layer", "ms before", "ms after", "MACs ratio", "time ratio", "why time fell less than MACs"):
        table.add_column(column, justify="left" if column in ("layer", "why time fell less than MACs") else "right")
    shown = sorted(report.layers[:top] + [d for d in report.layers[top:] if d.flags], key=lambda d: -d.ms_before)
    for d in shown:
        name = f"{d.module} ({d.node})" if d.module else d.node
        style = "bold yellow" if d.flags else ""
        table.add_row(name, f"{d.ms_before:.3f}", f"{d.ms_after:.3f}", f"{d.mac_ratio:.2f}",
                      f"[{style}]{d.time_ratio:.2f}[/{style}]" if style else f"{d.time_ratio:.2f}",
                      "; ".join(d.flags) or "-")  # fmt: skip
    console.print(table)
    flagged = sum(1 for d in report.layers if d.flags)
    console.print(
        f"{report.paired} layers paired; {flagged} fell in time much less than in MACs. Per-layer sums "
        f"{report.layers_before_ms:.3f} → {report.layers_after_ms:.3f} ms, end to end p50 {report.p50_before_ms:.3f} "
        f"→ {report.p50_after_ms:.3f} ms (timed one after the other: `compare` gives the interval)"
    )
    if report.shrunk:
        console.print(report.split(), markup=False)


def render_latency(report: LatencyReport, top: int) -> None:
    table = Table(
        title=f"{report.model} on {report.device} ({report.target}, batch {report.batch})", title_justify="left"
    )
    for column in ("min", "p50", "p90", "p99", "mean", "max", "throughput", "iterations"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{v:.3f} ms" for v in (report.min_ms, report.p50_ms, report.p90_ms, report.p99_ms,
                   report.mean_ms, report.max_ms)), f"{report.throughput:.1f}/s", str(report.iterations))  # fmt: skip
    console.print(table)
    if report.layers:
        layers = Table(title=f"per layer (top {top} by time): where MACs and time disagree", title_justify="left")
        for column in ("layer", "op", "ms", "time %", "MACs %", "GMAC/s"):
            layers.add_column(column, justify="left" if column in ("layer", "op") else "right")
        for layer in report.layers[:top]:
            layers.add_row(_layer_label(layer), layer.op_type, f"{layer.ms:.3f}", f"{layer.time_pct:.1f}",
                           f"{layer.macs_pct:.1f}", f"{layer.gmacs_per_s:.1f}" if layer.macs else "-")  # fmt: skip
        console.print(layers)


def _layer_label(layer: LayerTime) -> str:
    """A profiled kernel as the user knows it: by its module where known, a reorder of the backend's own by the
    tensor it sits on."""
    if layer.module:
        return f"{layer.module} ({layer.name})"
    return f"{layer.name} (on {layer.tensors[0]})" if layer.tensors else layer.name


def render_compare(report: CompareReport) -> None:
    base = report.variants[report.baseline]
    table = Table(
        title=f"compare on {report.device} ({report.target}, {report.rounds} interleaved rounds); ratios vs "
        f"{base.label or Path(base.model).name}",
        title_justify="left",
    )
    targets = report.targets
    several = len(targets) > 1
    columns = ["model", *(["backend"] if several else []), "params", "MACs", "p50 ms", "p90 ms",
               "speedup (95 % interval)", *([f"vs {targets[0]}"] if several else []), "MACs ratio"]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "backend") else "right")
    per_backend = len(report.variants) // len(targets)
    for i, v in enumerate(report.variants):
        name = f"{v.label} ({Path(v.model).name})" if v.label else Path(v.model).name
        ratio = "baseline" if i % per_backend == report.baseline else v.speedup.describe()
        across = [] if not several else ["-" if v.target == targets[0] or v.backend_speedup is None
                                         else v.backend_speedup.describe()]  # fmt: skip
        table.add_row(name, *([v.target] if several else []), f"{v.params:,}", f"{v.macs:,}",
                      f"{v.latency.p50_ms:.3f}", f"{v.latency.p90_ms:.3f}", ratio, *across,
                      f"{v.macs_ratio:.3f}")  # fmt: skip
    console.print(table)
    if report.plot:
        console.print(f"plot → {report.plot}")


def render_decoder_compare(report: DecoderCompareReport) -> None:
    base = report.variants[report.baseline]
    table = Table(
        title=f"decoders on {report.device} ({report.target}, {report.rounds} interleaved rounds, {report.steps} "
        f"decode steps each); ratios vs {base.label} [95 % interval; ≈: within noise]",
        title_justify="left",
    )
    prompts, contexts = list(base.prefill_ms), list(base.decode_ms)
    columns = ["model", "params", "weights MB", "memory MB", "KV heads", "KV bytes/token",
               *(f"prefill {p} ms" for p in prompts), *(f"decode @{c} tok/s" for c in contexts)]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for i, v in enumerate(report.variants):
        heads = "/".join(map(str, v.kv_heads)) if len(set(v.kv_heads)) > 1 else f"{v.kv_heads[0]} ×{len(v.kv_heads)}"
        pre = [f"{v.prefill_ms[p]:.2f}" + ("" if i == report.baseline else f" {_ratio(v.prefill_speedup[p])}")
               for p in prompts]  # fmt: skip
        dec = [f"{1000 / v.decode_ms[c]:.1f}" + ("" if i == report.baseline else f" {_ratio(v.decode_speedup[c])}")
               for c in contexts]  # fmt: skip
        memory = f"{v.memory_mb:.0f}" if v.memory_mb is not None else "-"
        table.add_row(v.label, f"{v.params:,}", f"{v.weight_bytes / 1e6:.1f}", memory, heads,
                      f"{v.kv_bytes_per_token:,}", *pre, *dec)  # fmt: skip
    console.print(table)
    for ratio in report.ratios:
        decode = ", ".join(f"@{c} {_ratio(s)}" for c, s in ratio.decode.items())
        prefill = ", ".join(f"{p} {_ratio(s)}" for p, s in ratio.prefill.items())
        console.print(f"{ratio.name} ({ratio.candidate} vs {ratio.reference}): decode {decode}; prefill {prefill}")
    if base.decode_layers:
        _render_decode_layers(report)


def _render_decode_layers(report: DecoderCompareReport) -> None:
    """Where a decode step's time goes: per op type for every variant, then the baseline's costliest nodes beside
    each variant's time for the same node (a node the variant lacks: -)."""
    base = report.variants[report.baseline]
    context = next(iter(base.decode_ms))
    by_op = [v.decode_by_op for v in report.variants]
    ops = list(by_op[report.baseline])
    table = Table(
        title=f"a decode step at context {context}, ms per op type (onnxruntime's profiler)", title_justify="left"
    )
    table.add_column("op")
    for v in report.variants:
        table.add_column(v.label, justify="right")
    for op in ops:
        table.add_row(op, *(f"{found.get(op, 0.0):.3f}" for found in by_op))
    console.print(table)
    nodes = Table(title=f"{base.label}'s costliest nodes in a decode step, ms", title_justify="left")
    nodes.add_column("node")
    nodes.add_column("op")
    for v in report.variants:
        nodes.add_column(v.label, justify="right")
    times = [{layer.name: layer.ms for layer in v.decode_layers} for v in report.variants]
    for layer in base.decode_layers[: report.layers]:
        nodes.add_row(layer.name, layer.op_type, *(f"{t[layer.name]:.3f}" if layer.name in t else "-" for t in times))
    console.print(nodes)


def _ratio(speedup: Speedup) -> str:
    """A speedup in a table cell: value and 95 % interval, flagged where the interval holds 1."""
    return f"{speedup.value:.2f}× [{speedup.low:.2f}–{speedup.high:.2f}]" + ("≈" if speedup.within_noise else "")


def render_run(report: RunReport, out_dir: Path) -> None:
    from sparsecut.workflow import PRECISION_PLOT, speedup_lines  # the workflow brings torch: only when shown

    render_export(report.export)
    render_optimize(report.optimize)
    render_compare(report.compare)
    for line in speedup_lines(report):
        console.print(line.removeprefix("- ").replace("**", ""))
    grid = f", pruning × precision → {out_dir / PRECISION_PLOT}" if report.quantization is not None else ""
    console.print(
        f"report → {out_dir / 'report.json'}, {out_dir / 'report.md'}, plot → {out_dir / 'compare.png'}{grid}"
    )


def render_advice(report: AdviceReport) -> None:
    context = escape(", ".join(f"{k} {v}" for k, v in report.context.items()))
    table = Table(title=f"channel counts on {context}: the layers of each group in the whole model",
                  title_justify="left")  # fmt: skip
    for column in ("group", "channels", "live", "round_to", "count: ms ± noise (largest first)"):
        table.add_column(
            column, justify="left" if column in ("group", "count: ms ± noise (largest first)") else "right"
        )
    for g in report.groups:
        steps = "  ".join(f"{s.count}: {s.ms:.3f}±{s.noise_ms:.3f}" for s in g.staircase)
        table.add_row(escape(g.location), str(g.original), str(g.live), str(g.round_to), steps)
    console.print(table)
    for location, why in report.skipped.items():
        console.print(f"  [yellow]{escape(location)}: {escape(why)}[/yellow]")
    console.print(
        f"full width: {report.dense_ms:.3f} ± {report.dense_noise_ms:.3f} ms in the layers profiled; "
        f"Torch-Pruning: round_to={report.torch_pruning['round_to']}"
    )
    if report.plan is not None:
        p = report.plan
        console.print(
            f"[green]plan for {p.ratio:g} × the full-width latency: {p.removed} channel(s) removed, predicted "
            f"{p.predicted_ms:.3f} of {p.dense_ms:.3f} ms[/green]"
        )
        for module, count in p.counts.items():
            console.print(f"  {escape(module)}: keep {count}")
        console.print(
            "Torch-Pruning: MetaPruner(..., pruning_ratio=0.0, pruning_ratio_dict={module: ratio}) with the JSON's "
            "plan.pruning_ratio_dict keeps exactly these counts"
        )
