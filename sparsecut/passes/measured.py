"""`optimize --target`: channel counts chosen by latency on the target, then verified end to end.

1. The graph is folded as the pipeline folds it, and `plan_counts` chooses per channel space how many channels
   to keep, from a latency table of the layers involved, measured on the target where unknown (channel_counts.py).
2. Lean candidates are written, each through the whole pipeline and its equivalence gate: with the measured
   counts, and with the fixed alignments 1, 8 and 16 (and `--align`) — the per-layer table cannot see everything
   the whole model does (onnxruntime's NCHWc layout changes between layers), so the decision is checked against
   them end to end.
3. The input and the candidates are timed interleaved on the target (the same runner and interval as
   `compare`); the fastest candidate is written. Unless it beats the input beyond noise, the report says plainly
   that pruning does not pay on this target — the file is still written, flagged so in the report and JSON.
4. With `--precision int8` (and no `--int8-format`), the chosen lean graph is also quantized in every other int8
   format the target offers (its types and Q/DQ placement: sparsecut/quantization.py) and kept in fp32; those are
   timed interleaved and the fastest int8 format is written. Unless it beats fp32 beyond noise, the report says
   "int8 does not pay on this target" — written as asked, flagged.

Measurements only decide how many dead channels stay; exactness is the gate's, unchanged. This module asks a
target for timings through `Tuning` (built by `targets/tuning.py`) and imports no target.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sparsecut.errors import GraphError
from sparsecut.modelfile import check_output_path, load_model, publish
from sparsecut.passes.channel_counts import CountPlan, plan_counts
from sparsecut.passes.dead_channels import prepare_for_analysis
from sparsecut.passes.latency_table import LatencyTable, LayerTimer
from sparsecut.passes.pipeline import OptimizeOptions, optimize_model
from sparsecut.passes.registry import Setting, make_pass, parse_passes
from sparsecut.report import MeasuredDecision, MeasuredVariant, OptimizeReport

__all__ = ["FIXED", "Tuning", "optimize_measured"]

FIXED = (1, 8, 16)  # fixed alignments timed beside the measured counts (and the one asked for by --align)

Compare = Callable[[list[Path]], list[MeasuredVariant]]  # p50 and speedup vs the first, for each file


@dataclasses.dataclass(frozen=True)
class Tuning:
    target: str
    timer: LayerTimer
    compare: Compare
    batch: int = 1
    int8_formats: tuple[str, ...] = ()  # what the target runs fast, best first (sparsecut/quantization.py)
    table: Path | None = None  # the latency table file; None keeps it in memory only
    budget: float = 30.0  # seconds of layer measurements
    progress: Callable[[str, int, int], None] | None = None


def optimize_measured(
    source: Path, output: Path, options: OptimizeOptions, tuning: Tuning, fp32_twin: Path | None = None
) -> OptimizeReport:
    """`fp32_twin`: where to also write the chosen lean graph in fp32 (same channels) when `options` asks for
    another precision — the like-for-like reference of the precision's own speedup."""
    source, output = Path(source), Path(output)
    check_output_path(output, source)
    names = parse_passes(options.passes)
    if tuning.budget <= 0:
        raise GraphError(f"--tune-budget {tuning.budget}: give a positive number of seconds")
    start = time.perf_counter()
    choose_format = options.precision == "int8" and not options.int8_format and len(tuning.int8_formats) > 1
    if options.precision == "int8" and not options.int8_format and tuning.int8_formats:
        options = dataclasses.replace(options, int8_format=tuning.int8_formats[0])
    table = LatencyTable(tuning.table, tuning.timer.context())
    plan = _plan(source, names, options, table, tuning)
    table.save()
    candidates = {f"align {a}": dataclasses.replace(options, align=a) for a in sorted({options.align, *FIXED})}
    candidates["measured"] = dataclasses.replace(options, counts=tuple(sorted(plan.counts.items())))
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = {}
        reports = {}
        for i, (name, variant_options) in enumerate(candidates.items()):
            (Path(tmp) / str(i)).mkdir()
            staged[name] = Path(tmp) / str(i) / output.name
            reports[name] = optimize_model(source, staged[name], variant_options)
        timed = tuning.compare([source, *staged.values()])
        variants = [
            dataclasses.replace(v, name=name, model=str(source if name == "input" else output))
            for v, name in zip(timed, ("input", *staged), strict=True)
        ]
        best = min(variants[1:], key=lambda v: v.p50_ms)
        written, fp32_file, int8_pays = staged[best.name], None, None
        formats: list[MeasuredVariant] = []
        if choose_format:
            chosen = candidates[best.name]
            written, fp32_file, formats, reports[best.name] = _choose_format(
                source, Path(tmp), output, chosen, tuning, (staged[best.name], reports[best.name]), fp32_twin
            )
            fastest = min(formats[1:], key=lambda v: v.p50_ms)
            int8_pays = fastest.speedup.low > 1.0  # formats[0] is fp32: every speedup is against it
        publish(written, output)
        if fp32_twin is not None and options.precision != "fp32":
            if fp32_file is not None:  # the format round made it already
                publish(fp32_file, fp32_twin)
            else:
                optimize_model(source, fp32_twin, dataclasses.replace(candidates[best.name], precision="fp32"))
    pays = best.speedup.low > 1.0
    verdict = (
        f"{best.name} written: {best.speedup.describe()} faster than the input"
        if pays
        else f"pruning does not pay on this target: the fastest lean variant ({best.name}) is "
        f"{best.speedup.describe()} vs the input; written anyway, flagged"
    )
    if int8_pays is False:
        verdict += (
            f"; int8 does not pay on this target: the fastest int8 format is "
            f"{min(formats[1:], key=lambda v: v.p50_ms).speedup.describe()} vs fp32; written as asked, flagged"
        )
    decision = MeasuredDecision(
        target=tuning.target,
        context=table.context,
        groups=plan.decisions,
        variants=variants,
        written=best.name,
        pays=pays,
        verdict=verdict,
        table=str(tuning.table) if tuning.table else None,
        table_hits=table.hits,
        table_misses=table.misses,
        measuring_seconds=table.measuring_seconds,
        budget_exhausted=plan.budget_exhausted,
        formats=formats,
        int8_pays=int8_pays,
    )
    return dataclasses.replace(
        reports[best.name], output=str(output), decision=decision, seconds=time.perf_counter() - start
    )


def _choose_format(
    source: Path,
    folder: Path,
    output: Path,
    options: OptimizeOptions,
    tuning: Tuning,
    built: tuple[Path, OptimizeReport],
    fp32_twin: Path | None,
) -> tuple[Path, Path, list[MeasuredVariant], OptimizeReport]:
    """The lean graph of `options` in fp32 and in each int8 format of the target, timed interleaved (fp32 first,
    every speedup against it). `built`: the graph already written in `options`' format (the target's first); the
    fp32 one is staged under `fp32_twin`'s name, where it goes. Returns the fastest int8 file, the fp32 file, the timings and the fastest one's report."""
    first = f"int8 {options.int8_format}"
    staged: dict[str, Path] = {}
    reports: dict[str, OptimizeReport] = {}
    for name, variant in (("fp32", dataclasses.replace(options, precision="fp32", int8_format="")),
                          *((f"int8 {f}", dataclasses.replace(options, int8_format=f)) for f in tuning.int8_formats)):  # fmt: skip
        if name == first:
            staged[name], reports[name] = built
            continue
        (folder / f"format-{len(staged)}").mkdir()
        file_name = fp32_twin.name if name == "fp32" and fp32_twin is not None else output.name
        staged[name] = folder / f"format-{len(staged)}" / file_name
        reports[name] = optimize_model(source, staged[name], variant)
    timed = tuning.compare(list(staged.values()))
    variants = [dataclasses.replace(v, name=name, model=name) for v, name in zip(timed, staged, strict=True)]
    fastest = min(variants[1:], key=lambda v: v.p50_ms)
    return staged[fastest.name], staged["fp32"], variants, reports[fastest.name]


def _plan(source: Path, names: list[str], options: OptimizeOptions, table: LatencyTable, tuning: Tuning) -> CountPlan:
    """The graph as remove-dead-channels will see it (the passes before it applied), and the counts for it."""
    if "remove-dead-channels" not in names:
        raise GraphError("--target decides channel counts: the pipeline needs remove-dead-channels")
    model = load_model(source, infer_shapes=True)
    before = names[: names.index("remove-dead-channels")]
    for index, name in enumerate(before):
        make_pass(name, options, Setting(folded="fold-constants" in names[:index]))(model)
    prepare_for_analysis(model, fold="fold-constants" not in before)
    progress = None
    if tuning.progress is not None:
        report = tuning.progress
        progress = lambda done, total: report("timing layers", done, total)  # noqa: E731
    return plan_counts(model, table, tuning.timer, tuning.batch, tuning.budget, progress)
