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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsecut.checking import checking_session, compare_outputs
from sparsecut.decoder import DecoderInterface, generate
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
    "Generation",
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


@dataclasses.dataclass(frozen=True)
class Generation:
    """A KV-cache decoder's feed: a greedy generation from a seeded prompt (`decoder.generate`), each graph fed
    its own presents. Its outputs: every step's logits, the final caches, and the tokens chosen."""

    interface: DecoderInterface
    prompt: np.ndarray  # [B, P] token ids
    count: int  # tokens generated: the prefill's, then count − 1 decode steps
    seed: int

    def describe(self) -> str:
        batch, length = self.prompt.shape
        return (
            f"greedy generation, batch {batch}: prefill {length} tokens (seed {self.seed}), "
            f"{self.count - 1} decode steps"
        )

    def run(self, session: object) -> list[np.ndarray]:
        done = generate(session, self.interface, self.prompt, self.count)
        return [*done.logits, *(done.caches[present] for _, present in self.interface.caches), done.tokens]


Feeds = list[tuple[str, dict[str, np.ndarray] | Generation]]  # (label, inputs by name or a generation)

GENERATION_PROMPT = 16  # prompt tokens of the gate's generation
GENERATION_TOKENS = 32  # tokens it generates


def gate_inputs(model: ir.Model, options: OptimizeOptions, source: Path) -> Feeds:
    """Seeded random inputs at batch 1 and 2 (the first axis is the batch), plus the user's data file. With data,
    inputs of symbolic non-batch shape are fed the data alone. A KV-cache decoder (without data) is driven
    instead: a greedy generation from a seeded prompt (`Generation`)."""
    decoder = DecoderInterface.of(model, source) if options.data is None else None
    if decoder is not None:
        prompt = np.random.default_rng(options.seed).integers(0, decoder.vocab, (2, GENERATION_PROMPT))
        drive = Generation(decoder, prompt, GENERATION_TOKENS, options.seed)
        return [(drive.describe(), drive)]
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
            outputs = [
                inputs.run(session) if isinstance(inputs, Generation) else session.run(None, inputs)  # type: ignore[attr-defined]
                for _, inputs in feeds
            ]
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
    cache_heads: Mapping[str, list[int]] | None = None,
) -> list[OutputCheck]:
    if isinstance(reference, Unrunnable):
        raise GraphError(
            f"{source}: onnxruntime cannot run it ({reference.reason[:300]}), so the equivalence gate has nothing "
            "to compare the result with; register its custom ops with onnxruntime, or pass --no-verify to write "
            "the result unchecked"
        )
    if isinstance(candidate, Unrunnable):
        return [OutputCheck(0, float("inf"), float("inf"), False)]
    checks = []
    for ref, got, (_, inputs) in zip(reference, candidate, feeds, strict=True):
        if isinstance(inputs, Generation):
            checks.append(_generation_check(ref, got, inputs, options, cache_heads or {}))
        else:
            batch = int(next(iter(inputs.values())).shape[0]) if inputs else 0
            checks.append(compare_outputs(ref, got, options.rtol, options.atol, batch=batch))
    return checks


def _generation_check(
    ref: list[np.ndarray],
    got: list[np.ndarray],
    drive: Generation,
    options: OptimizeOptions,
    cache_heads: Mapping[str, list[int]],
) -> OutputCheck:
    """Every step's logits and the final caches — the reference's restricted to the K/V heads the candidate kept
    (`cache_heads`: present name → kept heads) — within tolerance, and the same greedy tokens."""
    steps = len(ref) - 1 - len(drive.interface.caches)
    ref_tokens, got_tokens = ref[-1], got[-1]
    restricted = list(ref[:steps])
    for (_, present), array in zip(drive.interface.caches, ref[steps:-1], strict=True):
        kept = cache_heads.get(present)
        restricted.append(array if kept is None else array[:, kept])
    check = compare_outputs(restricted, got[:-1], options.rtol, options.atol, batch=drive.prompt.shape[0])
    same = ref_tokens.shape == got_tokens.shape and bool(np.array_equal(ref_tokens, got_tokens))
    label = f"{drive.describe()}; greedy tokens {'identical' if same else 'DIFFER'}"
    return dataclasses.replace(check, passed=check.passed and same, label=label)


def compare_files(
    source: Path,
    staged: Path,
    feeds: Feeds,
    options: OptimizeOptions,
    reference: Reference | None = None,
    candidate: Reference | None = None,
    parallel: bool = False,
    runs_as: Path | None = None,
    cache_heads: Mapping[str, list[int]] | None = None,
) -> list[OutputCheck]:
    """Run both graphs and compare. `reference`, `candidate`: the source's and the staged file's outputs, already
    on their way; `parallel`: both at once in two threads (onnxruntime releases the GIL) — for small models only,
    so that a big one never has two copies of its weights in memory; `runs_as`: the file onnxruntime runs for
    `source` (`loadable_reference`); `cache_heads`: a decoder's KV caches that lost K/V heads, by present output,
    and the heads kept (the reference's are compared on those)."""
    run = runs_as or source
    if reference is not None:
        got = candidate.result() if candidate is not None else run_feeds(staged, feeds)
        return _checks(reference.result(), got, feeds, options, source, cache_heads)
    if not parallel:
        return _checks(run_feeds(run, feeds), run_feeds(staged, feeds), feeds, options, source, cache_heads)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reference, candidate = pool.submit(run_feeds, run, feeds), pool.submit(run_feeds, staged, feeds)
        return _checks(reference.result(), candidate.result(), feeds, options, source, cache_heads)


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
    cache_heads: dict[str, list[int]] = {}  # K/V heads kept so far (a decoder's caches are compared on those)

    def differs(model: ir.Model, removal: ir.passes.PassBase | None = None) -> bool:
        if isinstance(removal, RemoveDeadChannelsPass):  # (the bisection's partial removals keep more heads)
            cache_heads.clear()
            cache_heads.update(removal.cache_heads())
        checks = _checks(reference, run_feeds(model, feeds), feeds, options, source, cache_heads)
        return not all(c.passed for c in checks)

    model = load_model(source)
    for index, step in enumerate(steps):
        applied = step.make()
        applied(model)
        if differs(model, applied):
            if step.name != RemoveDeadChannelsPass.name:
                return f"{head}; pass {step.name!r} broke it"
            group = _bisect_groups(source, steps[:index], step, differs)
            return f"{head}; pass 'remove-dead-channels' broke it{group}"
    return f"{head}; no single pass reproduces it"


def _bisect_groups(
    source: Path, prefix: Sequence[Step], step: Step, differs: Callable[[ir.Model, ir.passes.PassBase], bool]
) -> str:
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
        partial = step.make(enabled_groups={g.group for g in groups[:mid]})
        partial(model)
        if differs(model, partial):
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
