"""The equivalence gate: the input file and the staged output run in onnxruntime (graph optimizations off) on
seeded random inputs (batch 1 and 2, or the model's fixed batch) and on the user's `--data`; every output must
satisfy max |after − before| ≤ atol + rtol · max |before|. If not, nothing is written, and the error names the
pass that broke it and, for remove-dead-channels, the channel group (found by bisecting over the groups applied).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsecut.checking import checking_session, compare_outputs
from sparsecut.errors import GraphError, InputError
from sparsecut.feeds import model_input_specs, read_arrays, synthetic_inputs
from sparsecut.modelfile import is_external, load_model, reads_external_data, save_model
from sparsecut.passes.dead_channels import RemoveDeadChannelsPass
from sparsecut.passes.registry import Step
from sparsecut.report import OutputCheck

if TYPE_CHECKING:
    from sparsecut.passes.pipeline import OptimizeOptions

__all__ = [
    "BackgroundRuns",
    "Feeds",
    "Reference",
    "Unrunnable",
    "compare_files",
    "diagnose",
    "gate_inputs",
    "loadable_reference",
    "run_feeds",
]

log = logging.getLogger(__name__)

Reference = concurrent.futures.Future  # the input graph's outputs on the gate's feeds, computed in the background
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


@dataclasses.dataclass(frozen=True)
class Unrunnable:
    """onnxruntime could not load or run a graph: why, in its own words (the message's first line)."""

    reason: str


Outputs = list[list[np.ndarray]]


def run_feeds(model: ir.Model | Path, feeds: Feeds, held: list[object] | None = None) -> Outputs | Unrunnable:
    """Outputs for every feed, or why onnxruntime cannot load or run the graph (which fails the gate too).
    `held`: the session is put there, to be released when its holder drops it, instead of on return."""
    try:
        with checking_session(model) as session:
            outputs = [session.run(None, inputs) for _, inputs in feeds]  # type: ignore[attr-defined]
            if held is not None:
                held.append(session)
            return outputs
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.debug("onnxruntime cannot run the graph: %s", reason)  # (said once, by the caller's one-line error)
        return Unrunnable(re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", reason))


class BackgroundRuns:
    """The gate's two runs in the background, for a model small enough to be in memory three times (for a moment,
    the graph and both sessions): the input's while the passes work, the output's as soon as it is written, while
    the report is made. onnxruntime releases the GIL while it builds and runs a session; releasing one, it does
    not (0.08 s at 15k nodes: the Python work on the main thread stops meanwhile). So the input's session is held
    until `release_input`, called where the main thread would only wait for the output's — which runs on a thread
    of its own: a session released while another is built on the thread that built the first slowed that build
    by a third (measured; on another thread it did not)."""

    def __init__(self) -> None:
        self._input_thread = concurrent.futures.ThreadPoolExecutor(1)
        self._output_thread = concurrent.futures.ThreadPoolExecutor(1)
        self._held: list[object] = []

    def __enter__(self) -> BackgroundRuns:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._input_thread.shutdown()
        self._output_thread.shutdown()
        self._held.clear()

    def run_input(self, source: Path, feeds: Feeds) -> Reference:
        return self._input_thread.submit(run_feeds, source, feeds, self._held)

    def run_output(self, staged: Path, feeds: Feeds) -> Reference:
        return self._output_thread.submit(run_feeds, staged, feeds)

    def release_input(self) -> None:
        """Release the input's session if it has run (if not, it is released when this object closes)."""
        self._held.clear()


def _checks(
    reference: Outputs | Unrunnable,
    candidate: Outputs | Unrunnable,
    feeds: Feeds,
    options: OptimizeOptions,
    source: Path,
) -> list[OutputCheck]:
    if isinstance(reference, Unrunnable):
        raise GraphError(
            f"{source}: onnxruntime cannot run it ({reference.reason[:300]}), so the equivalence gate has nothing "
            "to compare the result with; register its custom ops with onnxruntime, or pass --no-verify to write "
            "the result unchecked"
        )
    if isinstance(candidate, Unrunnable):
        return [OutputCheck(0, float("inf"), float("inf"), False)]
    return [
        compare_outputs(
            ref, got, options.rtol, options.atol, batch=int(next(iter(inputs.values())).shape[0]) if inputs else 0
        )
        for ref, got, (_, inputs) in zip(reference, candidate, feeds, strict=True)
    ]


def compare_files(
    source: Path,
    staged: Path,
    feeds: Feeds,
    options: OptimizeOptions,
    reference: Reference | None = None,
    candidate: Reference | None = None,
    parallel: bool = False,
    runs_as: Path | None = None,
) -> list[OutputCheck]:
    """Run both graphs and compare. `reference`, `candidate`: the source's and the staged file's outputs, already
    on their way; `parallel`: both at once in two threads (onnxruntime releases the GIL) — for small models only,
    so that a big one never has two copies of its weights in memory; `runs_as`: the file onnxruntime runs for
    `source` (`loadable_reference`)."""
    run = runs_as or source
    if reference is not None:
        got = candidate.result() if candidate is not None else run_feeds(staged, feeds)
        return _checks(reference.result(), got, feeds, options, source)
    if not parallel:
        return _checks(run_feeds(run, feeds), run_feeds(staged, feeds), feeds, options, source)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reference, candidate = pool.submit(run_feeds, run, feeds), pool.submit(run_feeds, staged, feeds)
        return _checks(reference.result(), candidate.result(), feeds, options, source)


def diagnose(
    source: Path,
    output: Path,
    steps: Sequence[Step],
    feeds: Feeds,
    options: OptimizeOptions,
    checks: list[OutputCheck],
    runs_as: Path | None = None,
) -> str:
    """Find the first pass (and dead-channel group) whose result differs; return the one-line error. `steps`: the
    pipeline as it ran (`registry.compose`), replayed one pass at a time."""
    worst = max(checks, key=lambda c: c.max_rel_error)
    head = (
        f"{output}: not written: the optimized graph differs from {source.name} "
        f"(max abs {worst.max_abs_error:.3g}, rel {worst.max_rel_error:.3g} > rtol {options.rtol:g})"
    )
    reference = run_feeds(runs_as or source, feeds)

    def differs(model: ir.Model) -> bool:
        return not all(c.passed for c in _checks(reference, run_feeds(model, feeds), feeds, options, source))

    model = load_model(source)
    for index, step in enumerate(steps):
        step.make()(model)
        if differs(model):
            if step.name != RemoveDeadChannelsPass.name:
                return f"{head}; pass {step.name!r} broke it"
            group = _bisect_groups(source, steps[:index], step, differs)
            return f"{head}; pass 'remove-dead-channels' broke it{group}"
    return f"{head}; no single pass reproduces it"


def _bisect_groups(source: Path, prefix: Sequence[Step], step: Step, differs: Callable[[ir.Model], bool]) -> str:
    """Smallest prefix of the groups that, applied alone, changes the outputs: its last group is the culprit."""

    def prepared() -> ir.Model:
        model = load_model(source)
        for earlier in prefix:
            earlier.make()(model)
        return model

    probe = step.make()
    probe(prepared())
    assert isinstance(probe, RemoveDeadChannelsPass)
    assert probe.analysis is not None
    groups = [g for g in probe.analysis.group_reports() if g.channels_after < g.channels_before]
    lo, hi = 1, len(groups)
    while lo < hi:
        mid = (lo + hi) // 2
        model = prepared()
        step.make(enabled_groups={g.group for g in groups[:mid]})(model)
        if differs(model):
            hi = mid
        else:
            lo = mid + 1
    if not groups:
        return ""
    culprit = groups[lo - 1]
    return f", in channel group {culprit.location} ({culprit.channels_before} → {culprit.channels_after} channels)"


def loadable_reference(model: ir.Model, source: Path, folder: Path) -> Path:
    """The input as onnxruntime can load it for the gate. A model saved with every tensor external
    (`size_threshold=0`) keeps even its shape constants in the data file, which onnxruntime refuses to read while
    it builds the graph ("Cannot parse data from external tensors"); such a model is written into `folder` (the
    staging folder) with its small tensors inline and read from there. Any other model is read where it is."""
    small = [
        v
        for v in model.graph.initializers.values()
        if v.const_value is not None and is_external(v.const_value) and v.const_value.nbytes <= _SMALL_EXTERNAL_BYTES
    ]
    if not small:
        return source
    for value in small:  # read now, held in memory (the same values: the passes see no difference)
        assert value.const_value is not None
        value.const_value = ir.Tensor(value.const_value.numpy(), name=value.name)
    copy = folder / source.name
    save_model(model, copy, external_data=reads_external_data(model))  # the big ones into the copy's own file
    return copy


_SMALL_EXTERNAL_BYTES = 1024
