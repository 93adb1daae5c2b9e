"""`optimize` and `inspect`: run a pipeline of passes (`registry.py`), then the equivalence gate (`gate.py`), then
write — or refuse. Every step writes into a staging folder beside the output; only the last result is moved into
place, so a failure leaves nothing behind."""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveInitializersFromInputsPass

from sparsecut.cost import count_costs, count_params
from sparsecut.errors import GraphError, VerificationError
from sparsecut.gctools import PausedCollector
from sparsecut.layer_names import drop_stack_traces
from sparsecut.modelfile import (
    check_output_path,
    initializer_bytes,
    load_model,
    publish,
    reads_external_data,
    save_model,
    without_added_shapes,
)
from sparsecut.passes.channels import DeadChannelAnalysis
from sparsecut.passes.cleanup import unread_initializers
from sparsecut.passes.dead_channels import kept_cache_heads, prepare_for_analysis
from sparsecut.passes.enforce_two_four import EnforceTwoFourPass
from sparsecut.passes.gate import (
    BackgroundRuns,
    Feeds,
    Reference,
    compare_files,
    diagnose,
    gate_inputs,
    loadable_reference,
)
from sparsecut.passes.permute_two_four import PermuteForTwoFourPass
from sparsecut.passes.precision import QUANTIZED_OPS, PrecisionRequest, check_int4, convert_precision
from sparsecut.passes.registry import DEFAULT_PASSES, PASSES, Step, compose, parse_passes, run_steps
from sparsecut.passes.two_four import AnnotateTwoFourPass, two_four_weights
from sparsecut.report import EnforcedLayer, ModelCost, OptimizeReport, OutputCheck, PassReport
from sparsecut.validity import check_graph

__all__ = ["DEFAULT_PASSES", "PASSES", "OptimizeOptions", "PreparedInput", "inspect_model", "optimize_model"]

log = logging.getLogger(__name__)

METADATA_PREFIX = "pkg.sparsecut."
PARALLEL_GATE_BYTES = 256 << 20  # weights up to this size: the gate runs both graphs beside the passes


@dataclasses.dataclass(frozen=True)
class OptimizeOptions:
    passes: tuple[str, ...] = DEFAULT_PASSES
    align: int = 8
    rtol: float = 1e-4
    atol: float = 1e-5
    verify: bool = True
    data: Path | None = None  # .npz of real inputs, checked in addition to the random ones
    seed: int = 0
    # fp16 / int8: converted after the gate, drift reported (see precision.py); best: only with a target
    precision: PrecisionRequest = dataclasses.field(default_factory=PrecisionRequest)
    enforce_2to4: bool = False  # after the gate: changes the model (see enforce_two_four.py)
    min_channels: int = 64
    permutation_budget: float = 0.5  # seconds per channel space for enforce-2to4's reorder search; 0 turns it off
    counts: tuple[tuple[str, int], ...] = ()  # measured decisions: (space, channels kept), replacing align there
    keep_stack_traces: bool = False  # the exporter's per-node Python stack traces (its machine's file paths)


def _load_checked(path: Path) -> ir.Model:
    model = load_model(path, infer_shapes=True)
    check_graph(path)
    return model


def constants_from_inputs(model: ir.Model, source: Path) -> list[str]:
    """IR 3 listed every initializer among the graph inputs too (a caller could feed another value). onnx's own
    tools treat such initializers as the constants they hold; so does sparsecut — it could not shrink a weight
    that is part of the model's interface — and writes them as initializers only. Returns the report's note."""
    overridable = [v.name for v in model.graph.inputs if v.is_initializer()]
    if not overridable:
        return []
    RemoveInitializersFromInputsPass()(model)
    shown = ", ".join(map(str, overridable[:3])) + (" …" if len(overridable) > 3 else "")
    return [
        f"{len(overridable)} initializer(s) of {source.name} were also graph inputs (IR 3: {shown}); read as the "
        "constants they hold and written as initializers only"
    ]


def optimize_model(
    source: Path, output: Path, options: OptimizeOptions = OptimizeOptions(), prepared: PreparedInput | None = None
) -> OptimizeReport:
    """Run the pipeline on `source` and write `output` — only if the equivalence gate passes (or is off).

    Every step writes into a staging folder beside `output`; only the last result is moved into place. The
    in-memory graph is dropped before the gate runs, so the gate's onnxruntime sessions do not add to it.
    `prepared`: `source` already loaded and folded, for a build without the gate (`PreparedInput`).
    """
    source, output = Path(source), Path(output)
    check_output_path(output, source)
    names = parse_passes(options.passes)
    wanted = options.precision.precision  # best is measured on a target (optimize_measured), never here
    if wanted.kind not in ("fp32", "fp16", "int8", "int4"):
        raise GraphError(f"--precision {wanted}: optimize writes fp32, fp16, int8 or int4")
    if wanted.kind == "int4":
        check_int4(source)  # before any work
    start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp,
        BackgroundRuns() as runs,
        PausedCollector() as collector,
    ):
        lossless = _stage(Path(tmp), "lossless", output)
        done = _transform(source, lossless, Path(tmp), names, options, runs, prepared)
        feeds, before, after, reference = done.feeds, done.before, done.after, done.reference
        # The graph is cyclic garbage now: freed here (one young-generation collection, ~0.1 s at 15k nodes) —
        # for a big model before the gate loads its own copy of the weights, for a small one while onnxruntime
        # reads the output on another thread; and the input's session with it.
        collector.collect_and_resume()
        runs.release_input()
        if after.params > before.params:  # lossless passes only slice, fold and remove: never a weight more
            grew = (
                f"{output}: not written: it would hold more parameters than {source} ({before.params:,} → "
                f"{after.params:,}); the lossless passes never add any, so this is a sparsecut bug — please report it"
            )
            if options.verify:
                raise VerificationError(grew)
            log.warning("%s (written anyway: --no-verify)", grew.replace(": not written", "", 1))
        checks: list[OutputCheck] = []
        if options.verify:
            reference_run, candidate_run = done.gate or (None, None)
            cache_heads = kept_cache_heads([h for step in done.reports for h in step.heads])
            checks = compare_files(
                source,
                lossless,
                feeds,
                options,
                reference_run,
                candidate_run,
                runs_as=reference,
                cache_heads=cache_heads,
            )
            if not all(c.passed for c in checks):
                steps = compose(names, options)  # what _transform ran: the replay is the run
                raise VerificationError(diagnose(source, output, steps, feeds, options, checks, runs_as=reference))
        else:
            log.warning("equivalence gate skipped (--no-verify): %s is NOT checked against %s", output, source)
        current, precision = lossless, None
        enforced: list[EnforcedLayer] = []
        if options.enforce_2to4:  # the steps that change the numbers by design come after the gate
            current, enforced = _enforce_two_four(current, Path(tmp), output, feeds, options)
        if wanted.kind != "fp32":
            converted = _stage(Path(tmp), "precision", output)
            precision = convert_precision(current, converted, options.precision, seed=options.seed)
            current = converted
        publish(current, output)
    return OptimizeReport(
        input=str(source),
        output=str(output),
        passes=done.reports,
        before=before,
        after=after,
        checks=checks,
        verified=options.verify,
        rtol=options.rtol,
        atol=options.atol,
        seconds=time.perf_counter() - start,
        precision=precision,
        enforced=enforced,
        lost_two_four=done.lost,
        notes=done.notes,
    )


def _stage(folder: Path, step: str, output: Path) -> Path:
    """A staging path for one step; it bears the output's name so that external data references stay right."""
    (folder / step).mkdir()
    return folder / step / output.name


@dataclasses.dataclass(frozen=True)
class _Transformed:
    feeds: Feeds
    before: ModelCost
    after: ModelCost
    reports: list[PassReport]
    lost: list[str]  # weights 2:4 before and not after
    gate: tuple[Reference, Reference] | tuple[()]  # the gate's runs under way (small models)
    reference: Path  # the input as the gate runs it (loadable_reference)
    notes: list[str]


def _transform(
    source: Path,
    staged: Path,
    folder: Path,
    names: list[str],
    options: OptimizeOptions,
    runs: BackgroundRuns,
    prepared: PreparedInput | None = None,
) -> _Transformed:
    """Load (or take a copy of `prepared`), run the lossless passes, write `staged`. The graph is local: it is gone
    when this returns.

    For a small model the gate runs in the background (`runs`): the input's outputs while the passes run, the
    output's as soon as it is written, while the report is made here; both futures are returned. For a
    big one the gate waits, so that only one copy of the weights is in memory at a time."""
    steps = compose(names, options)
    reference, reference_file = None, source
    if prepared is None:
        model = _load_checked(source)
        notes = constants_from_inputs(model, source)
        if options.verify:
            reference_file = loadable_reference(model, source, _stage(folder, "input", source).parent)
        _refuse_quantized(_is_quantized(model), options, source)
        feeds = gate_inputs(model, options, source)
        if options.verify and initializer_bytes(model) <= PARALLEL_GATE_BYTES:
            reference = runs.run_input(reference_file, feeds)
        head = _run_head(model, steps, len(steps), notes)
    else:
        if options.verify:
            raise ValueError("a prepared input is for builds without the gate (the gate reads the input as loaded)")
        head = prepared.take(source, names)
        model = head.model
        _refuse_quantized(prepared.quantized, options, source)
        feeds = gate_inputs(model, options, source)
    reports = head.reports + run_steps(model, steps[len(head.reports) :])
    external, sparse_before, before, notes = head.external, head.sparse_before, head.before, head.notes
    for name in unread_initializers(model.graph):  # a fold's leftovers, whichever passes ran (cleanup may not have)
        del model.graph.initializers[name]
    if not options.keep_stack_traces:
        drop_stack_traces(model)
    model.metadata_props[METADATA_PREFIX + "optimize.passes"] = ",".join(names)
    model.metadata_props[METADATA_PREFIX + "optimize.align"] = str(options.align)
    if options.counts:  # measured decisions: how many channel spaces they set (the rest: align)
        model.metadata_props[METADATA_PREFIX + "optimize.measured_spaces"] = str(len(options.counts))
    verified = f"rtol={options.rtol:g},atol={options.atol:g}" if options.verify else "no (--no-verify)"
    model.metadata_props[METADATA_PREFIX + "optimize.verified"] = verified
    with without_added_shapes(model):
        save_model(model, staged, external_data=external)
    candidate = runs.run_output(staged, feeds) if reference is not None else None
    # what annotate-2to4 found as the last pass is what the graph has now: not checked twice
    last = reports[-1] if names and names[-1] == "annotate-2to4" else None
    sparse_after = (
        {layer.weight for layer in last.sparsity if layer.is_2to4} if last is not None else two_four_weights(model)
    )
    lost = sorted(sparse_before - sparse_after)
    if lost:
        log.warning(
            "%d weight(s) were 2:4 before and are not after channel removal: %s", len(lost), ", ".join(lost[:5])
        )
    after = count_costs(model)
    gate = (reference, candidate) if reference is not None and candidate is not None else ()
    return _Transformed(feeds, before, after, reports, lost, gate, reference_file, notes)


def _is_quantized(model: ir.Model) -> bool:
    """Q/DQ or integer ops in the graph (as loaded: fold-constants may fold a weight's DequantizeLinear away)."""
    return bool(QUANTIZED_OPS & {node.op_type for node in model.graph})


def _refuse_quantized(quantized: bool, options: OptimizeOptions, source: Path) -> None:
    if options.precision.precision.kind == "int8" and quantized:
        raise GraphError(
            f"{source}: the model is already quantized (it has Q/DQ or integer ops); refusing to quantize twice"
        )


@dataclasses.dataclass(frozen=True)
class _Head:
    """A loaded model after the first steps of a pipeline, with what was known of it before them."""

    model: ir.Model
    reports: list[PassReport]  # of the steps run
    notes: list[str]
    external: bool | None  # weights that came external stay external
    sparse_before: set[str]  # weights 2:4 as loaded
    before: ModelCost  # the input's cost (MACs after fold-constants, the input's own parameters)


def _run_head(model: ir.Model, steps: tuple[Step, ...], until: int, notes: list[str]) -> _Head:
    """Run `steps[:until]` on the loaded `model`. MACs before are counted where the shapes are known: after
    fold-constants, which computes what the exporter left to run time (pads, sizes) and so the spatial sizes after
    them; the parameters are the input's own."""
    external = reads_external_data(model) or None
    sparse_before = two_four_weights(model)
    params_before = count_params(model)
    first = min(until, 1 if steps[:1] and steps[0].name == "fold-constants" else 0)
    reports = run_steps(model, steps[:first])
    before = dataclasses.replace(count_costs(model), params=params_before)
    reports += run_steps(model, steps[first:until])
    return _Head(model, reports, notes, external, sparse_before, before)


class PreparedInput:
    """`source` loaded, checked and run through the passes of `names` before remove-dead-channels — once, for
    builds without the gate that differ only in channel counts (`align`, `counts`: the passes before removal do not
    read them). A measured decision builds a dozen candidates of one model; loading, checking and shape inference
    were half of each build (timm ResNet-50: 0.24–0.44 s a build prepared, 0.59–0.93 s from the file). Each build
    takes a copy of the graph (onnx-ir's clone: the weights are shared, which no pass writes into)."""

    def __init__(self, source: Path, names: Sequence[str], options: OptimizeOptions) -> None:
        self.source, self.names = Path(source), list(names)
        if "remove-dead-channels" not in self.names:
            raise ValueError("a prepared input serves builds that remove dead channels")
        model = _load_checked(self.source)
        notes = constants_from_inputs(model, self.source)
        self.quantized = _is_quantized(model)
        until = self.names.index("remove-dead-channels")
        self._head = _run_head(model, compose(self.names, options), until, notes)

    def take(self, source: Path, names: Sequence[str]) -> _Head:
        """A copy of the prepared graph, for a build of `source` with the pipeline `names`."""
        if Path(source) != self.source or list(names) != self.names:
            raise ValueError(f"prepared for {self.source} with {self.names}, not {source} with {list(names)}")
        head = self._head
        model = head.model.clone()
        model.meta.update(head.model.meta)  # (what load_model noted of the file: onnx-ir's clone leaves it out)
        return dataclasses.replace(head, model=model, reports=list(head.reports), notes=list(head.notes))

    def with_weights(self, arrays: Mapping[str, np.ndarray]) -> PreparedInput:
        """This prepared input with the named initializers — of the graph after the passes before removal: the
        advisor's input is folded already — holding `arrays` instead (its probes: a group's channels zeroed as a
        magnitude pruner would zero them). What was noted of the input as loaded (its cost, its 2:4 weights) stays
        the input's."""
        head = self.take(self.source, self.names)
        for name, array in arrays.items():
            value = head.model.graph.initializers.get(name)
            if value is None:
                raise ValueError(f"{self.source}: no initializer {name!r} after the passes before remove-dead-channels")
            value.const_value = ir.Tensor(array, name=name)
        changed = copy.copy(self)
        changed._head = head
        return changed


def _enforce_two_four(
    current: Path, folder: Path, output: Path, feeds: Feeds, options: OptimizeOptions
) -> tuple[Path, list[EnforcedLayer]]:
    """permute-2to4 (exact: checked like any lossless step), then enforce-2to4 (changes the model by design)."""
    model = load_model(current)
    external = reads_external_data(model) or None
    permuter = PermuteForTwoFourPass(options.min_channels, options.permutation_budget, options.seed)
    if permuter(model).modified and options.verify:
        permuted = _stage(folder, "permuted", output)
        save_model(model, permuted, external_data=external)
        checks = compare_files(
            current, permuted, feeds, options, parallel=initializer_bytes(model) <= PARALLEL_GATE_BYTES
        )
        if not all(c.passed for c in checks):
            worst = max(checks, key=lambda c: c.max_rel_error)
            raise VerificationError(
                f"{output}: not written: the channel reorder for 2:4 changed the outputs "
                f"(max abs {worst.max_abs_error:.3g}, rel {worst.max_rel_error:.3g}); this is a sparsecut bug"
            )
    enforcer = EnforceTwoFourPass(options.min_channels, permuter.before)
    enforcer(model)
    AnnotateTwoFourPass()(model)
    if not any(layer.pruned for layer in enforcer.layers):
        log.warning("--enforce-2to4: no layer is eligible (min channels %d); nothing pruned", options.min_channels)
    staged = _stage(folder, "sparse", output)
    save_model(model, staged, external_data=external)
    return staged, enforcer.layers


def inspect_model(source: Path, align: int = 8) -> OptimizeReport:
    """What `optimize` would remove, without changing or writing anything."""
    with PausedCollector():  # the graph is read and analyzed: nothing collectable until it is dropped
        return _inspect(Path(source), align)


def _inspect(source: Path, align: int) -> OptimizeReport:
    start = time.perf_counter()
    model = _load_checked(source)
    before = count_costs(model)
    names = ["fold-constants", "fold-batchnorm"]
    reports = run_steps(model, compose(names, OptimizeOptions(align=align)))
    prepare_for_analysis(model, fold=False)
    reports += run_steps(model, compose(["annotate-2to4"], OptimizeOptions(), ran=names))
    t0 = time.perf_counter()
    analysis = DeadChannelAnalysis(model, align)
    groups = analysis.group_reports()
    reports.append(
        PassReport(
            "remove-dead-channels (analysis only)",
            False,
            time.perf_counter() - t0,
            f"{analysis.total_removed} channel(s) removable of {sum(g.dead for g in groups)} dead",
            groups,
            dict(analysis.walk.no_rule),
            declined=dict(analysis.walk.declined),
            rule_errors=list(analysis.walk.rule_errors),
            heads=analysis.head_reports(),
        )
    )
    return OptimizeReport(
        input=str(source),
        output=None,
        passes=reports,
        before=before,
        after=before,
        checks=[],
        verified=False,
        rtol=0.0,
        atol=0.0,
        seconds=time.perf_counter() - start,
    )
