"""`optimize` and `inspect`: run a pipeline of passes, then the equivalence gate, then write — or refuse.

The gate runs the input file and the staged output in onnxruntime on seeded random inputs (batch 1 and 2) and on
the user's `--data`; every output must satisfy max |after − before| ≤ atol + rtol · max |before|. If not, nothing
is written, and the error names the pass that broke it and, for remove-dead-channels, the channel group (found
by bisecting over the groups applied).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from sparsecut.checking import checking_session, compare_outputs
from sparsecut.cost import count_costs
from sparsecut.errors import GraphError, InputError, VerificationError
from sparsecut.feeds import model_input_specs, read_arrays, synthetic_inputs
from sparsecut.modelfile import (
    check_output_path,
    initializer_bytes,
    load_model,
    publish,
    reads_external_data,
    save_model,
)
from sparsecut.passes.channels import DeadChannelAnalysis
from sparsecut.passes.cleanup import CleanupPass
from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.dead_channels import RemoveDeadChannelsPass
from sparsecut.passes.enforce_two_four import EnforceTwoFourPass
from sparsecut.passes.fold_batchnorm import FoldBatchNormPass
from sparsecut.passes.permute_two_four import PermuteForTwoFourPass
from sparsecut.passes.precision import QUANTIZED_OPS, PrecisionOptions, convert_precision
from sparsecut.passes.two_four import AnnotateTwoFourPass
from sparsecut.report import EnforcedLayer, ModelCost, OptimizeReport, OutputCheck, PassReport
from sparsecut.shapes import infer_shapes

__all__ = ["DEFAULT_PASSES", "PASSES", "OptimizeOptions", "inspect_model", "optimize_model"]

log = logging.getLogger(__name__)

PASSES: dict[str, str] = {
    "fold-constants": "compute constant subgraphs (dynamo's computed zero biases) into initializers",
    "fold-batchnorm": "fold BatchNormalization into the preceding Conv/Gemm",
    "remove-dead-channels": "physically remove zero/constant channels across coupled groups",
    "cleanup": "remove identities and unused nodes, sort topologically",
    "annotate-2to4": "label 2:4-sparse weights for TensorRT (metadata and SPARSE_2_4 doc string)",
}
DEFAULT_PASSES = ("fold-constants", "fold-batchnorm", "remove-dead-channels", "cleanup", "annotate-2to4")
METADATA_PREFIX = "pkg.sparsecut."
LARGE_MODEL_PARAMS = 64_000_000  # ≈ 256 MB of fp32 weights
PARALLEL_GATE_BYTES = 256 << 20  # weights up to this size: the gate runs both graphs at once
Reference = concurrent.futures.Future  # the input graph's outputs on the gate's feeds, computed in the background


@dataclasses.dataclass(frozen=True)
class OptimizeOptions:
    passes: tuple[str, ...] = DEFAULT_PASSES
    align: int = 8
    rtol: float = 1e-4
    atol: float = 1e-5
    verify: bool = True
    data: Path | None = None  # .npz of real inputs, checked in addition to the random ones
    seed: int = 0
    precision: str = "fp32"  # fp16 / int8: converted after the gate, drift reported (see precision.py)
    enforce_2to4: bool = False  # after the gate: changes the model (see enforce_two_four.py)
    min_channels: int = 64
    permutation_budget: float = 0.5  # seconds per channel space for enforce-2to4's reorder search; 0 turns it off
    calibration: Path | None = None
    counts: tuple[tuple[str, int], ...] = ()  # measured decisions: (space, channels kept), replacing align there


def _parse_passes(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise GraphError(f"unknown pass {unknown[0]!r}; known: {', '.join(PASSES)}")
    return list(names)


def _make_pass(
    name: str, options: OptimizeOptions, enabled_groups: set[int] | None = None, folded: bool = False
) -> ir.passes.PassBase:
    """`folded`: fold-constants ran earlier in this pipeline (remove-dead-channels need not fold again)."""
    if name == "fold-constants":
        return FoldConstantsPass()
    if name == "fold-batchnorm":
        return FoldBatchNormPass()
    if name == "remove-dead-channels":
        return RemoveDeadChannelsPass(options.align, enabled_groups, fold=not folded, counts=dict(options.counts))
    if name == "annotate-2to4":
        return AnnotateTwoFourPass()
    return CleanupPass()


def _run_passes(model: ir.Model, names: Sequence[str], options: OptimizeOptions) -> list[PassReport]:
    reports = []
    for index, name in enumerate(names):
        step = _make_pass(name, options, folded="fold-constants" in names[:index])
        start = time.perf_counter()
        result = step(model)
        reports.append(_pass_report(name, step, result.modified, time.perf_counter() - start))
    return reports


def _pass_report(name: str, step: ir.passes.PassBase, modified: bool, seconds: float) -> PassReport:
    if isinstance(step, RemoveDeadChannelsPass) and step.analysis is not None:
        analysis = step.analysis
        groups = analysis.group_reports()
        dead = sum(g.dead for g in groups)
        summary = f"{analysis.total_removed} channel(s) removed of {dead} dead, in {sum(1 for g in groups if g.channels_after < g.channels_before)} group(s)"
        restored = [r for r in step.two_four if r.restored]
        if step.two_four:
            summary += f"; 2:4 kept by reordering channels for {len(restored)} of {len(step.two_four)} weight group(s)"
        return PassReport(
            name,
            modified,
            seconds,
            summary,
            groups,
            dict(analysis.barriers),
            two_four=step.two_four,
            rule_errors=list(analysis.rule_errors),
        )
    if isinstance(step, AnnotateTwoFourPass):
        sparse = [layer for layer in step.layers if layer.is_2to4]
        summary = f"{len(sparse)} of {len(step.layers)} weight(s) are 2:4 along their reduction axis"
        return PassReport(name, modified, seconds, summary, sparsity=step.layers)
    if isinstance(step, FoldBatchNormPass):
        return PassReport(name, modified, seconds, f"{step.folded} BatchNormalization folded")
    return PassReport(name, modified, seconds, "changed the graph" if modified else "nothing to do")


def _load_checked(path: Path) -> ir.Model:
    model = load_model(path, infer_shapes=True)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise GraphError(f"{path}: fails the ONNX checker ({first[:200]})") from exc
    return model


def optimize_model(source: Path, output: Path, options: OptimizeOptions = OptimizeOptions()) -> OptimizeReport:
    """Run the pipeline on `source` and write `output` — only if the equivalence gate passes (or is off).

    Every step writes into a staging folder beside `output`; only the last result is moved into place. The
    in-memory graph is dropped before the gate runs, so the gate's onnxruntime sessions do not add to it.
    """
    source, output = Path(source), Path(output)
    check_output_path(output, source)
    names = _parse_passes(options.passes)
    if options.precision not in ("fp32", "fp16", "int8"):
        raise GraphError(f"unknown --precision {options.precision!r}; known: fp32, fp16, int8")
    start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        lossless = _stage(Path(tmp), "lossless", output)
        feeds, before, after, reports, lost, reference = _transform(source, lossless, names, options, pool)
        if before.params > LARGE_MODEL_PARAMS:  # onnx-ir graphs hold reference cycles: free big weights before
            gc.collect()  # the gate loads its own copy (a full collection costs ~0.5 s, so only where it pays)
        checks: list[OutputCheck] = []
        if options.verify:
            checks = _compare_files(source, lossless, feeds, options, reference)
            if not all(c.passed for c in checks):
                raise VerificationError(_diagnose(source, output, names, feeds, options, checks))
        else:
            log.warning("equivalence gate skipped (--no-verify): %s is NOT checked against %s", output, source)
        current, precision = lossless, None
        enforced: list[EnforcedLayer] = []
        if options.enforce_2to4:  # the steps that change the numbers by design come after the gate
            current, enforced = _enforce_two_four(current, Path(tmp), output, feeds, options)
        if options.precision != "fp32":
            converted = _stage(Path(tmp), "precision", output)
            precision = convert_precision(
                current, converted, PrecisionOptions(options.precision, options.calibration, seed=options.seed)
            )
            current = converted
        publish(current, output)
    return OptimizeReport(
        input=str(source),
        output=str(output),
        passes=reports,
        before=before,
        after=after,
        checks=checks,
        verified=options.verify,
        rtol=options.rtol,
        atol=options.atol,
        seconds=time.perf_counter() - start,
        precision=precision,
        enforced=enforced,
        lost_two_four=lost,
    )


def _stage(folder: Path, step: str, output: Path) -> Path:
    """A staging path for one step; it bears the output's name so that external data references stay right."""
    (folder / step).mkdir()
    return folder / step / output.name


def _transform(
    source: Path, staged: Path, names: list[str], options: OptimizeOptions, pool: concurrent.futures.Executor
) -> tuple[Feeds, ModelCost, ModelCost, list[PassReport], list[str], Reference | None]:
    """Load, run the lossless passes, write `staged`. The graph is local: it is gone when this returns.

    For a small model the gate's reference outputs are computed in `pool` meanwhile (onnxruntime releases the
    GIL); for a big one they wait, so that only one copy of the weights is in memory at a time."""
    model = _load_checked(source)
    overridable = [v.name for v in model.graph.inputs if v.is_initializer()]
    if overridable:  # IR < 4 style: a caller may feed other values, so their shapes are part of the interface
        raise GraphError(
            f"{source}: {len(overridable)} initializer(s) are also graph inputs ({', '.join(map(str, overridable[:3]))}"
            f"{' …' if len(overridable) > 3 else ''}), so a caller may replace them and sparsecut cannot change "
            "them without changing the model's interface; re-export it, or remove them from the graph inputs "
            "(onnx's IR ≥ 4 keeps initializers out of the inputs) if no caller feeds them"
        )
    external = reads_external_data(model) or None  # weights that came external stay external
    if options.precision == "int8" and QUANTIZED_OPS & {node.op_type for node in model.graph}:
        raise GraphError(
            f"{source}: the model is already quantized (it has Q/DQ or integer ops); refusing to quantize twice"
        )
    feeds = gate_inputs(model, options, source)
    reference = None
    if options.verify and initializer_bytes(model) <= PARALLEL_GATE_BYTES:
        reference = pool.submit(_run, source, feeds)
    before = count_costs(model)
    sparse_before = _two_four_weights(model)
    reports = _run_passes(model, names, options)
    lost = sorted(sparse_before - _two_four_weights(model))
    if lost:
        log.warning(
            "%d weight(s) were 2:4 before and are not after channel removal: %s", len(lost), ", ".join(lost[:5])
        )
    after = count_costs(model)
    model.metadata_props[METADATA_PREFIX + "optimize.passes"] = ",".join(names)
    model.metadata_props[METADATA_PREFIX + "optimize.align"] = str(options.align)
    verified = f"rtol={options.rtol:g},atol={options.atol:g}" if options.verify else "no (--no-verify)"
    model.metadata_props[METADATA_PREFIX + "optimize.verified"] = verified
    save_model(model, staged, external_data=external)
    return feeds, before, after, reports, lost, reference


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
        checks = _compare_files(
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


def _two_four_weights(model: ir.Model) -> set[str]:
    """Names of the weights that are 2:4 along their reduction axis (changes nothing)."""
    from sparsecut.passes.two_four import _reduction_weight, is_two_four

    names = set()
    for node in model.graph:
        found = _reduction_weight(node)
        if found is not None and found[0].name and is_two_four(found[1], found[2]):
            names.add(found[0].name)
    return names


def inspect_model(source: Path, align: int = 8) -> OptimizeReport:
    """What `optimize` would remove, without changing or writing anything."""
    source = Path(source)
    start = time.perf_counter()
    model = _load_checked(source)
    before = count_costs(model)
    names = ["fold-constants", "fold-batchnorm"]
    reports = _run_passes(model, names, OptimizeOptions(align=align))
    infer_shapes(model)
    reports += _run_passes(model, ["annotate-2to4"], OptimizeOptions())
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
            dict(analysis.barriers),
            rule_errors=list(analysis.rule_errors),
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


# ------------------------------------------------------------------------------------------------ the gate
Feeds = list[tuple[str, dict[str, np.ndarray]]]  # (label, inputs by name)


def gate_inputs(model: ir.Model, options: OptimizeOptions, source: Path) -> Feeds:
    """Seeded random inputs at batch 1 and 2 (the first axis is the batch), plus the user's data file. With data,
    inputs of symbolic non-batch shape are fed the data alone."""
    try:
        specs = model_input_specs(model)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    if not specs:
        raise InputError(f"{source}: the model has no inputs; there is nothing to verify it on")
    feeds: Feeds = []
    symbolic = any(isinstance(d, str) for spec in specs for d in spec.shape[1:])
    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int)}
    batches = sorted(fixed) if len(fixed) == 1 else (1, 2)  # a model exported with a fixed batch runs only that
    if not (symbolic and options.data is not None):
        for batch in batches:
            feeds.append((f"random batch {batch}", synthetic_inputs(specs, batch, options.seed + batch - 1, source)))
    if options.data is not None:
        feeds.append((f"data {options.data.name}", read_arrays(options.data, specs, "--data")))
    return feeds


def _run(model: ir.Model | Path, feeds: Feeds) -> list[list[np.ndarray]] | None:
    """Outputs for every feed; None when onnxruntime cannot load or run the graph (which fails the gate too)."""
    try:
        with checking_session(model) as session:
            return [session.run(None, inputs) for _, inputs in feeds]  # type: ignore[attr-defined]
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        log.warning("onnxruntime cannot run the graph: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return None


def _checks(
    reference: list[list[np.ndarray]] | None,
    candidate: list[list[np.ndarray]] | None,
    feeds: Feeds,
    options: OptimizeOptions,
) -> list[OutputCheck]:
    if reference is None:
        raise GraphError("onnxruntime cannot run the input graph; nothing to compare against")
    if candidate is None:
        return [OutputCheck(0, float("inf"), float("inf"), False)]
    return [
        compare_outputs(
            ref, got, options.rtol, options.atol, batch=int(next(iter(inputs.values())).shape[0]) if inputs else 0
        )
        for ref, got, (_, inputs) in zip(reference, candidate, feeds, strict=True)
    ]


def _compare_files(
    source: Path,
    staged: Path,
    feeds: Feeds,
    options: OptimizeOptions,
    reference: Reference | None = None,
    parallel: bool = False,
) -> list[OutputCheck]:
    """Run both graphs and compare. `reference`: the source's outputs, already on their way; `parallel`: both at
    once in two threads (onnxruntime releases the GIL) — for small models only, so that a big one never has two
    copies of its weights in memory."""
    if reference is not None:
        return _checks(reference.result(), _run(staged, feeds), feeds, options)
    if not parallel:
        return _checks(_run(source, feeds), _run(staged, feeds), feeds, options)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reference, candidate = pool.submit(_run, source, feeds), pool.submit(_run, staged, feeds)
        return _checks(reference.result(), candidate.result(), feeds, options)


def _diagnose(
    source: Path, output: Path, names: list[str], feeds: Feeds, options: OptimizeOptions, checks: list[OutputCheck]
) -> str:
    """Find the first pass (and dead-channel group) whose result differs; return the one-line error."""
    worst = max(checks, key=lambda c: c.max_rel_error)
    head = (
        f"{output}: not written: the optimized graph differs from {source.name} "
        f"(max abs {worst.max_abs_error:.3g}, rel {worst.max_rel_error:.3g} > rtol {options.rtol:g})"
    )
    reference = _run(source, feeds)

    def differs(model: ir.Model) -> bool:
        return not all(c.passed for c in _checks(reference, _run(model, feeds), feeds, options))

    model = load_model(source)
    for index, name in enumerate(names):
        _make_pass(name, options)(model)
        if differs(model):
            if name != "remove-dead-channels":
                return f"{head}; pass {name!r} broke it"
            group = _bisect_groups(source, names[:index], options, differs)
            return f"{head}; pass 'remove-dead-channels' broke it{group}"
    return f"{head}; no single pass reproduces it"


def _bisect_groups(
    source: Path, prefix: list[str], options: OptimizeOptions, differs: Callable[[ir.Model], bool]
) -> str:
    """Smallest prefix of the groups that, applied alone, changes the outputs: its last group is the culprit."""

    def prepared() -> ir.Model:
        model = load_model(source)
        for name in prefix:
            _make_pass(name, options)(model)
        return model

    probe = RemoveDeadChannelsPass(options.align, counts=dict(options.counts))
    probe(prepared())
    assert probe.analysis is not None
    groups = [g for g in probe.analysis.group_reports() if g.channels_after < g.channels_before]
    lo, hi = 1, len(groups)
    while lo < hi:
        mid = (lo + hi) // 2
        model = prepared()
        RemoveDeadChannelsPass(options.align, {g.group for g in groups[:mid]}, counts=dict(options.counts))(model)
        if differs(model):
            hi = mid
        else:
            lo = mid + 1
    if not groups:
        return ""
    culprit = groups[lo - 1]
    return f", in channel group {culprit.location} ({culprit.channels_before} → {culprit.channels_after} channels)"
