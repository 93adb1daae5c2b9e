"""`optimize --target`: channel counts chosen by latency on the target, then verified end to end.

0. At `--precision int8` without `--int8-format`, the counts are decided in the format written: the lean graph
   at `--align` is quantized in each of the target's formats and timed, interleaved, and the rest runs in the
   fastest (the target's first, unless another beats it beyond noise); step 5 times them again on the counts.
1. The graph is folded as the pipeline folds it, and `plan_counts` proposes per channel space how many channels
   to keep, from a latency table of the layers involved, measured on the target where unknown (channel_counts.py).
2. Lean candidates are built through the whole pipeline: with the fixed alignments 1, 8 and 16 (and `--align`)
   and with the table's proposal ("table"); the one written passes the equivalence gate (step 4). Candidates and
   probes start from the input loaded and folded once (`PreparedInput`: the same bytes as a build from the file).
3. In context (in_context.py, when the target profiles): the base is the fixed alignment fastest end to end;
   each space's candidate counts (the alignments', the table's) are built into probe graphs with every other
   space at the base (spaces no layer joins in one probe), profiled on the target and timed end to end beside
   the base, interleaved; a space keeps the fewest channels unless a larger count ran faster where its layers
   live beyond noise, among the probes not slower than the base as a whole — the "measured" candidate, written
   through the pipeline and its gate like the others; unless those choices together run faster than the base
   (timed end to end as long as the base was chosen: each probe's loss may be within noise and their sum not), the
   measured counts are the base's. A layer alone misses what it costs in place (onnxruntime's NCHWc reorders
   between layers, fused activations, its neighbours' counts), and a kernel profile misses part of what a layout
   change costs between kernels. The table gets TABLE_SHARE of `--tune-budget`, the probes the
   rest; a budget spent before any space was decided measures nothing more: the fixed alignments alone are timed
   and the report says so.
4. The input and the candidates are timed interleaved on the target (the same runner and interval as
   `compare`), each distinct graph once (the table's or the context's counts may give a fixed alignment's graph:
   timed twice, equals would differ by noise alone). The two fastest distinct graphs are then timed against each
   other again (`Tuning.confirm`, a run-off): a second window confirms the first (or finds the other faster only
   within noise or by less than RUN_OFF_MARGIN), else a third decides — a slow spell of a shared machine can turn
   one comparison. The fastest is built again with the equivalence gate and written. Unless it beats the input
   beyond noise, the report says plainly that pruning does not pay on this target — the file is still written,
   flagged so in the report and JSON. When the candidates are in another precision (int8, fp16), the reference is
   the input through the same pipeline and precision without channel removal: a speedup credited to pruning is
   never the precision's.
5. The precision round. With `--precision int8` (and no `--int8-format`), the chosen lean graph is also quantized
   in every other int8 format the target offers (its types and Q/DQ placement: sparsecut/quantization.py) and
   kept in fp32; each format is checked against `--max-drift` on the held-out samples (layers put back in fp32
   until it holds, or the format is refused and not timed), the rest timed interleaved and the fastest int8
   format written. Unless it beats fp32 beyond noise, the report says "int8 does not pay on this target" —
   written as asked, flagged. With `--precision best`, fp32 and fp16 join the round (the channel round runs in
   fp32) and the fastest that meets the bound is written, fp32 included (bound: `--max-drift`, else BEST_BOUND).

Measurements only decide how many dead channels stay; exactness is the gate's, unchanged. This module asks a
target for timings through `Tuning` (built by `targets/tuning.py`) and imports no target.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from sparsecut.errors import AccuracyError, GraphError
from sparsecut.logs import quieted
from sparsecut.modelfile import check_output_path, graph_digest, publish
from sparsecut.passes.channel_counts import CountPlan, plan_counts
from sparsecut.passes.channels import DeadChannelAnalysis
from sparsecut.passes.drift import DriftBound
from sparsecut.passes.in_context import (
    Profile,
    before_removal,
    colors,
    kept_counts,
    plan_in_context,
    probes,
    require_removal,
    touching_nodes,
)
from sparsecut.passes.latency_table import LatencyTable, LayerTimer
from sparsecut.passes.pipeline import OptimizeOptions, PreparedInput, optimize_model
from sparsecut.passes.registry import baseline_passes, parse_passes
from sparsecut.precision import FP32, Precision
from sparsecut.quantization import int8_format
from sparsecut.report import (
    CountDecision,
    MeasuredDecision,
    MeasuredVariant,
    OptimizeReport,
    PrecisionReport,
    RunOff,
)

__all__ = ["BEST_BOUND", "FIXED", "Tuning", "drift_in_words", "fastest_int8_format", "optimize_measured"]

log = logging.getLogger(__name__)

TABLE_SHARE = 0.25  # of --tune-budget, for the one-layer table when the context decides (the rest: probes)
FIXED = (1, 8, 16)  # fixed alignments timed beside the measured counts (and the one asked for by --align)
BEST_BOUND = DriftBound(min_sqnr_db=25.0)  # --precision best without --max-drift
RUN_OFF_MARGIN = 0.02  # a second window turns the first's choice only where the other runs this much faster

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
    profile: Profile | None = None  # whole-model profiles on the target (None: the table's proposal is the choice)
    # end to end, interleaved, in fewer rounds than `compare` (the in-context probes); `thorough=True`: more rounds
    # (the base the probes are measured against)
    quick: Callable[..., list[MeasuredVariant]] | None = None
    # the two fastest lean candidates timed against each other again (`RunOff`); None: the comparison of all
    # decides (a target that would build every engine again)
    confirm: Compare | None = None


def optimize_measured(
    source: Path, output: Path, options: OptimizeOptions, tuning: Tuning, fp32_twin: Path | None = None
) -> OptimizeReport:
    """`options.precision` may ask for the best here: fp32, fp16 and the target's int8 formats are measured and the
    fastest that meets its `max_drift` (BEST_BOUND when none is given) is written.

    `fp32_twin`: where to also write the chosen lean graph in fp32 (same channels) when another precision is
    written — the like-for-like reference of the precision's own speedup."""
    source, output = Path(source), Path(output)
    check_output_path(output, source)
    names = parse_passes(options.passes)
    if tuning.budget <= 0:
        raise GraphError(f"--tune-budget {tuning.budget}: give a positive number of seconds")
    start = time.perf_counter()
    best_asked = options.precision.best
    if best_asked and options.precision.max_drift is None:
        options = _asking(options, max_drift=BEST_BOUND)
    rounds = _precision_round(options, tuning)
    wanted = options.precision.wanted
    require_removal(names, "--target")
    prepared = PreparedInput(source, names, options)  # loaded and folded once for every build below
    if wanted is not None and wanted.kind == "int8" and wanted.format is None and tuning.int8_formats:
        fastest = fastest_int8_format(source, output, options, tuning, prepared)
        options = _asking(options, wanted=wanted.in_format(fastest))
    # the channel round: at the precision written (int8 in the format that ran fastest at --align, its bound
    # checked in the precision round), or fp32 when the precision is still to be chosen
    channel_options = _asking(options, wanted=FP32) if best_asked else options
    if rounds:
        channel_options = _asking(channel_options, max_drift=None)
    channel_precision = channel_options.precision.precision
    table = LatencyTable(tuning.table, tuning.timer.context())
    model, plan = _plan(source, names, channel_options, table, tuning)
    table.save()
    alignments = sorted({options.align, *FIXED})
    candidates = {f"align {a}": dataclasses.replace(channel_options, align=a) for a in alignments}
    measuring = bool(plan.decisions) or not plan.budget_exhausted  # a spent budget that decided nothing: no more
    in_context = measuring and tuning.profile is not None
    proposal = dataclasses.replace(channel_options, counts=tuple(sorted(plan.counts.items())))
    if measuring:
        candidates["table" if in_context else "measured"] = proposal
    groups, measured_counts, counts_align = plan.decisions, plan.counts, channel_options.align
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged: dict[str, Path] = {}
        reports: dict[str, OptimizeReport] = {}

        def stage(name: str, variant_options: OptimizeOptions) -> None:
            """A candidate, built for timing: the gate runs on the one written (below), not on every candidate."""
            staged[name] = Path(tempfile.mkdtemp(dir=tmp)) / output.name
            with quieted("sparsecut.passes.pipeline"):  # (its warning is for users who turn the gate off)
                reports[name] = optimize_model(
                    source, staged[name], dataclasses.replace(variant_options, verify=False), prepared
                )

        for name, variant_options in candidates.items():
            stage(name, variant_options)
        if in_context:
            assert tuning.profile is not None
            context = _in_context(source, prepared, model, Path(tmp), channel_options, alignments, plan, staged, tuning)
            groups, measured_counts = _merged(plan.decisions, context.decisions), context.counts
            counts_align = context.align
            candidates["measured"] = dataclasses.replace(
                channel_options, align=context.align, counts=tuple(sorted(measured_counts.items()))
            )
            stage("measured", candidates["measured"])
            base = f"align {context.align}"
            if tuning.quick is not None and measured_counts:  # probes each within noise can add up to a loss
                whole = tuning.quick([staged[base], staged["measured"]], thorough=True)[1]
                if whole.speedup.value <= 1.0:  # no faster than the base as a whole: the base's counts, the simpler
                    log.info("in context: the chosen counts run no faster than %s as a whole (%s); measured = %s",
                             base, whole.speedup.describe(), base)  # fmt: skip
                    measured_counts = {}
                    groups = [
                        dataclasses.replace(g, chosen=context.base_counts.get(g.location, g.chosen)) for g in groups
                    ]
                    candidates["measured"] = candidates[base]  # the base's graph itself: already built
                    staged["measured"], reports["measured"] = staged[base], reports[base]
        # the reference: the input — or, when the candidates are in another precision, the input through the same
        # pipeline and precision without channel removal, so that a speedup is pruning's alone, never precision's
        reference, reference_name = source, "input"
        if channel_precision.kind != "fp32":
            (Path(tmp) / "dense").mkdir()
            reference = Path(tmp) / "dense" / output.name
            dense = dataclasses.replace(channel_options, passes=baseline_passes(channel_options.passes))
            optimize_model(source, reference, dense)
            reference_name = f"dense {channel_precision.kind} (no channel removal)"
        # each distinct graph timed once (the table's counts may be a fixed alignment's, the context may fall back
        # to its base): the same graph timed twice differs only by noise, which would pick between equals
        by_path = {path: graph_digest(path) for path in set(staged.values())}  # (a fall-back shares the base's file)
        digests = {name: by_path[path] for name, path in staged.items()}
        distinct: dict[str, str] = {}  # digest → the first candidate with that graph
        for name, digest in digests.items():
            distinct.setdefault(digest, name)
        timings = tuning.compare([reference, *(staged[name] for name in distinct.values())])
        timed = dict(zip(["", *distinct], timings, strict=True))
        variants = [dataclasses.replace(timed[""], name=reference_name, model=str(source))]
        for name in staged:
            first = distinct[digests[name]]
            variants.append(dataclasses.replace(timed[digests[name]], name=name, model=str(output),
                                                same_as="" if first == name else first))  # fmt: skip
        # (candidates with one graph share a time: the measured one is named where it is among them)
        ranked = sorted(variants[1:], key=lambda v: (v.p50_ms, v.name != "measured"))
        best, run_off = ranked[0], None
        if tuning.confirm is not None:
            run_off = _run_off(ranked, digests, staged, tuning.confirm)
            if run_off is not None and run_off.winner != best.name:
                log.info("run-off: %s", run_off.describe())
                best = next(v for v in variants if v.name == run_off.winner)
        # the candidate to write, through the pipeline again with the gate as asked (the same graph: the passes are
        # deterministic); a graph that fails it is refused here, as any optimize refuses it
        reports[best.name] = optimize_model(source, staged[best.name], candidates[best.name])
        written, fp32_file, int8_pays, chosen_precision = staged[best.name], None, None, ""
        formats: list[MeasuredVariant] = []
        refused: dict[str, str] = {}
        if rounds:
            counts = _asking(candidates[best.name], max_drift=options.precision.max_drift)
            # the channel round's graph is one of the precision round's: fp32 (best), or the first int8 format
            # when no bound is to be checked
            reusable = str(channel_precision)
            built = None
            if reusable == "fp32" or options.precision.max_drift is None:
                built = (reusable, staged[best.name], reports[best.name])
            chosen = _choose_precision(source, Path(tmp), output, counts, rounds, tuning, built, fp32_twin)
            written, fp32_file, formats, refused = chosen.file, chosen.fp32_file, chosen.timed, chosen.refused
            reports[best.name], chosen_precision = chosen.report, chosen.name
            timed_int8 = [v for v in formats if v.name.startswith("int8")]
            if timed_int8:  # formats[0] is fp32: every speedup is against it
                int8_pays = min(timed_int8, key=lambda v: v.p50_ms).speedup.low > 1.0
        publish(written, output)
        if fp32_twin is not None and chosen_precision not in ("", "fp32"):
            assert fp32_file is not None
            publish(fp32_file, fp32_twin)
        elif fp32_twin is not None and channel_precision.kind != "fp32":
            optimize_model(source, fp32_twin, _asking(candidates[best.name], wanted=FP32))
    pays = best.speedup.low > 1.0
    against = "the input" if channel_precision.kind == "fp32" else variants[0].name
    verdict = (
        f"{best.name} written: {best.speedup.describe()} faster than {against}"
        if pays
        else f"pruning does not pay on this target: the fastest lean variant ({best.name}) is "
        f"{best.speedup.describe()} vs {against}; written anyway, flagged"
    )
    if run_off is not None:
        verdict += f"; {run_off.describe()}"
    verdict += _precision_verdict(formats, refused, chosen_precision, int8_pays, best_asked, options)
    if not measuring:
        verdict = (
            f"--tune-budget {tuning.budget:g} s: too small to measure even one channel group; the best fixed "
            f"alignment is written ({best.name}); " + verdict
        )
    decision = MeasuredDecision(
        target=tuning.target,
        context=table.context,
        groups=groups,
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
        precision_written=chosen_precision,
        refused=refused,
        counts=measured_counts if measuring else {},
        counts_align=counts_align,
        proposed_counts=plan.counts if in_context else {},
        run_off=run_off,
    )
    return dataclasses.replace(
        reports[best.name], output=str(output), decision=decision, seconds=time.perf_counter() - start
    )


def _run_off(
    ranked: list[MeasuredVariant], digests: dict[str, str], staged: dict[str, Path], confirm: Compare
) -> RunOff | None:
    """The fastest two distinct graphs of `ranked` (the lean candidates, fastest first in the comparison of all:
    the first window) timed against each other in a second window; where it finds the second faster beyond noise
    and by RUN_OFF_MARGIN at least, a third decides (the one faster in two of three). None when the candidates are
    one graph."""
    first = ranked[0]
    second = next((v for v in ranked if digests[v.name] != digests[first.name]), None)
    if second is None:
        return None

    def window() -> MeasuredVariant:
        """The second finalist, timed again against the first (its speedup over it)."""
        again = confirm([staged[first.name], staged[second.name]])
        ratios.append(again[1].p50_ms / again[0].p50_ms)
        return again[1]

    ratios = [second.p50_ms / first.p50_ms]
    turned = window().speedup
    if turned.low > 1.0 and turned.value >= 1.0 + RUN_OFF_MARGIN:  # else the first window stands
        window()
    winner = second if len(ratios) == 3 and ratios[2] < 1.0 else first
    return RunOff(finalists=[first.name, second.name], ratios=[round(r, 4) for r in ratios], winner=winner.name)


def _precision_round(options: OptimizeOptions, tuning: Tuning) -> dict[str, OptimizeOptions]:
    """The precisions measured against each other after the channel round (empty: nothing to choose): fp32
    first — every speedup is against it —, then fp16 (`best`) and each int8 format of the target."""
    wanted = options.precision.wanted
    choosing_format = (
        wanted is not None and wanted.kind == "int8" and wanted.format is None and len(tuning.int8_formats) > 1
    )
    if not options.precision.best and not choosing_format:
        return {}
    rounds = {"fp32": _asking(options, wanted=FP32, keep_fp32=(), max_drift=None)}
    if options.precision.best:
        rounds["fp16"] = _asking(options, wanted=Precision("fp16"), keep_fp32=())
    for name in tuning.int8_formats:
        int8 = Precision("int8").in_format(name)
        rounds[str(int8)] = _asking(options, wanted=int8)
    return rounds


def fastest_int8_format(
    source: Path, output: Path, options: OptimizeOptions, tuning: Tuning, prepared: PreparedInput | None = None
) -> str:
    """The int8 format the channel counts are decided in: of the target's formats, the one whose lean graph at
    `--align` runs fastest, interleaved — the target's first unless another beats it beyond noise. The precision
    round times the formats again on the counts chosen; deciding them in the target's first format alone had
    OpenVINO's counts for timm ResNet-18 chosen in s8s8 and written in u8s8, which ran 1.25× faster there.
    `prepared`: `source` already loaded and folded (the passes before channel removal read no precision)."""
    formats = tuning.int8_formats
    if len(formats) == 1:
        return formats[0]
    wanted = options.precision.wanted
    assert wanted is not None
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        files = []
        for name in formats:
            files.append(Path(tmp) / f"{name}.onnx")
            lean = _asking(options, wanted=wanted.in_format(name), max_drift=None)  # (its bound: the precision round's)
            with quieted("sparsecut.passes.pipeline"), quieted("sparsecut.passes.precision"):
                optimize_model(source, files[-1], dataclasses.replace(lean, verify=False), prepared)
        timed = (tuning.quick or tuning.compare)(files)  # (formats differ by 10–25 %: the probes' rounds do)
    faster = [(v.speedup.value, name) for name, v in zip(formats[1:], timed[1:], strict=True) if v.speedup.low > 1.0]
    chosen = max(faster)[1] if faster else formats[0]
    log.info("int8 format measured fastest: %s (%s)", chosen,
             ", ".join(f"{n} {v.p50_ms:.3f} ms" for n, v in zip(formats, timed, strict=True)))  # fmt: skip
    return chosen


def _asking(options: OptimizeOptions, **request: Any) -> OptimizeOptions:
    """`options` with these fields of its precision request changed."""
    return dataclasses.replace(options, precision=dataclasses.replace(options.precision, **request))


@dataclasses.dataclass(frozen=True)
class _PrecisionChoice:
    """The precision round's outcome."""

    name: str  # the round written: "fp32", "fp16", "int8 FORMAT"
    file: Path  # its graph, staged
    report: OptimizeReport
    fp32_file: Path  # the same channels in fp32 (the precision's like-for-like reference)
    timed: list[MeasuredVariant]  # every round that passed, timed interleaved (empty: one passed, nothing timed)
    refused: dict[str, str]  # rounds that could not meet --max-drift, with why


def _choose_precision(
    source: Path,
    folder: Path,
    output: Path,
    counts: OptimizeOptions,
    rounds: dict[str, OptimizeOptions],
    tuning: Tuning,
    built: tuple[str, Path, OptimizeReport] | None,
    fp32_twin: Path | None,
) -> _PrecisionChoice:
    """The lean graph with `counts`' channels in each precision of `rounds`, built (a candidate that cannot meet
    --max-drift is refused, not timed) and timed interleaved. `built`: (round, file, report) of a graph the
    channel round wrote already, reused. Written: the fastest round that passes (int8 asked: the fastest int8
    format)."""
    staged: dict[str, Path] = {}
    reports: dict[str, OptimizeReport] = {}
    refused: dict[str, str] = {}
    for name, variant in rounds.items():
        variant = dataclasses.replace(variant, align=counts.align, counts=counts.counts)
        if built is not None and name == built[0]:
            staged[name], reports[name] = built[1:]
            continue
        (folder / f"precision-{len(staged) + len(refused)}").mkdir()
        file_name = fp32_twin.name if name == "fp32" and fp32_twin is not None else output.name
        path = folder / f"precision-{len(staged) + len(refused)}" / file_name
        try:
            reports[name] = optimize_model(source, path, variant)
        except AccuracyError as exc:
            refused[name] = str(exc).removeprefix("--max-drift: ").removesuffix(" (nothing written)")
            continue
        staged[name] = path
    if not any(name.startswith("int8") for name in staged) and "fp16" not in rounds:  # int8 asked, none passes
        reasons = "; ".join(f"{name}: {why}" for name, why in refused.items())
        raise AccuracyError(f"--max-drift: no int8 format meets the bound ({reasons}); nothing written")
    if len(staged) == 1:  # fp32 alone passed (best): nothing to time it against
        only = next(iter(staged))
        return _PrecisionChoice(only, staged[only], reports[only], staged["fp32"], [], refused)
    timed = dict(zip(staged, tuning.compare(list(staged.values())), strict=True))
    variants = []
    for name in staged:
        precision = reports[name].precision
        drift = drift_in_words(precision) if precision is not None else "reference"
        variants.append(dataclasses.replace(timed[name], name=name, model=name, drift=drift))
    eligible = [v for v in variants if v.name != "fp32" or "fp16" in rounds]
    fastest = min(eligible, key=lambda v: v.p50_ms)
    return _PrecisionChoice(
        fastest.name, staged[fastest.name], reports[fastest.name], staged["fp32"], variants, refused
    )


def drift_in_words(precision: PrecisionReport) -> str:
    """A quantized graph's accuracy against fp32 in words: worst SQNR, top-1 agreement, layers put back."""
    worst = min((o.sqnr_db for o in precision.outputs if o.sqnr_db is not None), default=None)
    text = "exact" if worst is None else f"SQNR {worst:.1f} dB"
    if precision.top1_agreement is not None:
        text += f", top-1 {100 * precision.top1_agreement:.1f} %"
    if precision.fallback:
        text += f", {len(precision.fallback)} layer(s) back in fp32"
    return text


def _precision_verdict(
    formats: list[MeasuredVariant],
    refused: dict[str, str],
    chosen: str,
    int8_pays: bool | None,
    best_asked: bool,
    options: OptimizeOptions,
) -> str:
    if not formats and not refused:
        return ""
    text = ""
    if best_asked:
        written = next((v for v in formats if v.name == chosen), None)
        bound = options.precision.max_drift.describe() if options.precision.max_drift is not None else ""
        speed = f"{written.speedup.describe()} vs fp32; " if written is not None and chosen != "fp32" else ""
        text += f"; --precision best: {chosen} written ({speed}bound: {bound})"
    if int8_pays is False:
        fastest = min((v for v in formats if v.name.startswith("int8")), key=lambda v: v.p50_ms)
        text += (
            f"; int8 does not pay on this target: the fastest int8 format is {fastest.speedup.describe()} vs fp32"
            + ("" if best_asked else "; written as asked, flagged")
        )
    if refused:
        text += f"; refused by --max-drift: {', '.join(refused)}"
    return text


@dataclasses.dataclass
class _Context:
    counts: dict[str, int]
    decisions: list[CountDecision]
    align: int  # the base's alignment: spaces without a decision keep it
    base_counts: dict[str, int]  # per decided space (by location), the base's count


def _in_context(
    source: Path,
    prepared: PreparedInput,
    model: ir.Model,
    folder: Path,
    options: OptimizeOptions,
    alignments: list[int],
    plan: CountPlan,
    staged: dict[str, Path],
    tuning: Tuning,
) -> _Context:
    """Coordinate descent in the whole model (in_context.py): the base is the fixed alignment that runs fastest
    end to end; each space's candidate counts (the fixed alignments', the table's) are profiled with everything
    else at the base — the spaces of one color at once — and interleaved with the base; each space keeps the
    fewest channels unless more run faster there beyond noise. A probe slower than the base end to end beyond
    noise offers none of its counts: a kernel profile misses part of what a layout change costs between kernels
    (timm ResNet-18: counts whose kernels summed 3 % faster than align 16 ran 8 % slower). Probes are built without
    the gate (they are only timed, never written); probes not built within `--tune-budget` leave their spaces at
    the base."""
    assert tuning.profile is not None
    levels = {f"align {a}": kept_counts(model, a) for a in alignments}
    levels["table"] = kept_counts(model, options.align, plan.counts)
    fixed = [f"align {a}" for a in alignments]
    if tuning.quick is not None:
        whole = tuning.quick([staged[name] for name in fixed], thorough=True)
        base = fixed[min(range(len(fixed)), key=lambda i: whole[i].p50_ms)]
    else:  # (no end-to-end timer: the whole profile, every kernel counted)
        first = dict(zip(fixed, tuning.profile([staged[name] for name in fixed]), strict=True))
        base = min(fixed, key=lambda name: sum(t.ms for t in first[name].values()))
    analysis = DeadChannelAnalysis(model, align=1)
    varying = [s for s in levels[base] if len({counts[s] for counts in levels.values()}) > 1]
    touching = touching_nodes(analysis)
    found = probes(levels[base], levels, colors({s: touching.get(s, []) for s in varying}))
    deadline = time.monotonic() + max(0.0, tuning.budget - plan.seconds)
    built: dict[str, Path] = {}
    for i, (name, (kept, _)) in enumerate(found.items()):
        if time.monotonic() > deadline:
            log.warning("--tune-budget spent: %d of %d in-context probes built", len(built), len(found))
            break
        path = folder / f"probe-{i}" / staged[base].name
        path.parent.mkdir()
        counts = tuple(sorted((analysis.space_key(s), c) for s, c in kept.items()))
        with quieted("sparsecut.passes.pipeline"):  # (its warning is for users who turn the gate off)
            optimize_model(source, path, dataclasses.replace(options, counts=counts, verify=False), prepared)
        built[name] = path
        if tuning.progress is not None:
            tuning.progress("building in-context probes", i + 1, len(found))
    timed = dict(zip([base, *built], tuning.profile([staged[base], *built.values()]), strict=True))
    if tuning.quick is not None and built:
        verdicts = tuning.quick([staged[base], *built.values()])[1:]
        slower = [name for name, v in zip(built, verdicts, strict=True) if v.speedup.high < 1.0]
        for name in slower:
            log.info("in context: %s runs slower than %s end to end; its counts are not offered", name, base)
            del built[name]
    variants = {base: levels[base], **{name: found[name][0] for name in built}}
    scope = {s: [base, *(name for name in built if s in found[name][1])] for s in levels[base]}
    plan_here = plan_in_context(analysis, variants, timed, plan.counts, scope)
    base_counts = {analysis.location([s]): c for s, c in levels[base].items()}
    return _Context(plan_here.counts, plan_here.decisions, int(base.removeprefix("align ")), base_counts)


def _merged(table: list[CountDecision], context: list[CountDecision]) -> list[CountDecision]:
    """The context's decisions, each with the table's predictions for the same space beside it."""
    predicted = {d.location: d for d in table}
    merged = []
    for decision in context:
        proposal = predicted.get(decision.location)
        if proposal is not None:
            decision = dataclasses.replace(decision, predicted_ms=proposal.predicted_ms, noise_ms=proposal.noise_ms)
        merged.append(decision)
    return merged


def _plan(
    source: Path, names: list[str], options: OptimizeOptions, table: LatencyTable, tuning: Tuning
) -> tuple[ir.Model, CountPlan]:
    """The graph as remove-dead-channels will see it (the passes before it applied), and the counts the latency
    table proposes for it."""
    model = before_removal(source, names, options, "--target")
    progress = None
    if tuning.progress is not None:
        report = tuning.progress
        progress = lambda done, total: report("timing layers", done, total)  # noqa: E731
    precision = options.precision.precision
    if precision.kind == "int8" and precision.format is None:  # written in convert_precision's default format
        precision = precision.in_format(int8_format().name)
    budget = tuning.budget * (TABLE_SHARE if tuning.profile is not None else 1.0)
    return model, plan_counts(model, table, tuning.timer, tuning.batch, budget, progress, precision)
