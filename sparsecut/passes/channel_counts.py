"""Measured decisions: how many channels each channel space keeps, chosen by latency on the target.

NetAdapt / HALP style. For every space with removable channels, the candidate counts run from its live count
(the fewest the analysis allows, `--align 1`) up to its original count: the live count itself, every multiple of
4, 8, 16, 32 and 64 up to `SPAN` channels above it, and the original. The predicted time of a count is the sum,
over the layers that read or write the space (Conv with its real kernel, stride, dilation, groups and input size;
Gemm/MatMul with their rows), of the layer's time at that count — the other side of each layer held at its
space's current choice — from the latency table (`latency_table.py`), measured on the target where unknown, each
time with its noise. Two sweeps of coordinate descent (the first from `--align 8`'s counts) pick, per space, the
fewest channels unless a larger count is faster beyond the noise of the two (`choose_count`): a difference inside
one layer's timing noise never keeps dead channels. A space whose choice is its original is kept whole: "slower
when removed (measured)". Grouped convs keep counts that are multiples of their groups (equal per group).

The table proposes; the context decides (in_context.py): the proposal is one of the variants timed where the
layers live.

This only decides how many dead channels stay; what is removed is still checked by the equivalence gate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import onnx_ir as ir

from sparsecut.passes.channels import DeadChannelAnalysis, Kind
from sparsecut.passes.latency_table import LatencyTable, LayerSignature, LayerTimer, Timed
from sparsecut.passes.nodes import attr_int, attr_ints
from sparsecut.precision import FP32, Precision
from sparsecut.report import CountDecision

__all__ = ["SPAN", "CountPlan", "candidate_counts", "choose_count", "plan_counts"]

log = logging.getLogger(__name__)

SPAN = 128  # candidates lie at most this many channels above the live count: keeping more never pays
STEPS = (4, 8, 16, 32, 64)


@dataclasses.dataclass
class CountPlan:
    counts: dict[str, int]  # space key → channels to keep
    decisions: list[CountDecision]
    budget_exhausted: bool
    seconds: float = 0.0  # spent choosing (layer measurements included)


@dataclasses.dataclass(frozen=True)
class _Layer:
    node: str
    signature: LayerSignature
    space_in: int | None  # the channel space it reads (None: not a space of the analysis)
    space_out: int | None
    multiple: int  # channel counts must stay multiples of this (grouped convs)


def candidate_counts(live: int, original: int, multiple: int = 1) -> list[int]:
    """The counts worth timing for a space: see the module docstring."""
    top = min(original, live + SPAN)
    found = {live, original}
    for step in STEPS:
        found.update(range(-(-live // step) * step, top + 1, step))
    return sorted(c for c in found if live <= c <= original and c % multiple == 0) or [original]


def choose_count(times: dict[int, Timed]) -> int | None:
    """The fewest channels, unless a larger count beats the current choice beyond the noise of the two; counts
    the target could not run (infinite) are never chosen. None: none could run."""
    finite = sorted(c for c, t in times.items() if math.isfinite(t.ms))
    if not finite:
        return None
    best = finite[0]
    for count in finite[1:]:
        if times[count].beats(times[best]):
            best = count
    return best


def plan_counts(
    model: ir.Model,
    table: LatencyTable,
    timer: LayerTimer,
    batch: int,
    budget: float,
    progress: Callable[[int, int], None] | None = None,
    precision: Precision = FP32,
) -> CountPlan:
    """Choose counts for `model` (folded, shapes inferred: as remove-dead-channels will see it), its layers timed
    in `precision` (int8 in its format): the precision the model will be written in."""
    analysis = DeadChannelAnalysis(model, align=1)
    layers = _layers(model, analysis, batch, str(precision))
    original = {s: sp.count for s, sp in enumerate(analysis.walk.spaces)}
    removed = analysis.coupling.per_space(analysis.decision.removable)
    live = {s: sp.count - int(removed[s]) for s, sp in enumerate(analysis.walk.spaces)}
    touching: dict[int, list[_Layer]] = {}
    for layer in layers:
        for s in {layer.space_in, layer.space_out}:
            if s is not None:
                touching.setdefault(s, []).append(layer)
    open_spaces = [s for s in touching if live[s] < original[s]]
    multiple = {s: math.lcm(1, *(layer.multiple for layer in touching[s])) for s in open_spaces}
    candidates = {s: candidate_counts(live[s], original[s], multiple[s]) for s in open_spaces}
    count = dict(original)
    for s in open_spaces:  # start from --align 8's counts (kept at a multiple the space's grouped convs allow)
        aligned = min(original[s], max(-(-live[s] // 8) * 8, 8))
        count[s] = next((c for c in candidates[s] if c >= aligned), original[s])
    predicted: dict[int, dict[int, Timed]] = {}
    total = 2 * sum(len(c) for c in candidates.values())
    done = 0
    started = time.monotonic()
    deadline = started + budget
    exhausted = False
    decided: set[int] = set()
    for _sweep in range(2):
        for s in open_spaces:
            times: dict[int, Timed] = {}
            for c in candidates[s]:
                if time.monotonic() > deadline and not _all_known(touching[s], s, c, count, table):
                    exhausted = True
                    break
                times[c] = sum((_time(layer, s, c, count, table, timer) for layer in touching[s]), Timed(0.0))
                done += 1
                if progress is not None:
                    progress(done, total)
            best = choose_count(times) if len(times) == len(candidates[s]) else None
            if best is not None:
                count[s] = best
                predicted[s] = times
                decided.add(s)
    decisions = []
    counts = {}
    for s in open_spaces:
        if s not in decided:
            continue
        counts[analysis.space_key(s)] = count[s]
        decisions.append(
            CountDecision(
                location=analysis.location([s]),
                original=original[s],
                live=live[s],
                chosen=count[s],
                predicted_ms={str(c): round(t.ms, 5) for c, t in sorted(predicted[s].items())},
                noise_ms={str(c): round(t.noise, 5) for c, t in sorted(predicted[s].items())},
            )
        )
    if exhausted:
        log.warning(
            "--tune-budget spent: %d of %d channel spaces decided by measurement, the rest keep --align 8",
            len(decided),
            len(open_spaces),
        )
    return CountPlan(counts, decisions, exhausted, time.monotonic() - started)


def _all_known(layers: list[_Layer], s: int, c: int, count: dict[int, int], table: LatencyTable) -> bool:
    return all(table.known(_signature(layer, s, c, count)) for layer in layers)


def _signature(layer: _Layer, s: int, c: int, count: dict[int, int]) -> LayerSignature:
    c_in = c if layer.space_in == s else (count[layer.space_in] if layer.space_in is not None else None)
    c_out = c if layer.space_out == s else (count[layer.space_out] if layer.space_out is not None else None)
    return layer.signature.with_channels(c_in, c_out)


def _time(layer: _Layer, s: int, c: int, count: dict[int, int], table: LatencyTable, timer: LayerTimer) -> Timed:
    """The layer's time at count `c` of space `s`; infinite where the target cannot run that shape."""
    signature = _signature(layer, s, c, count)
    try:
        return table.lookup(signature, timer)
    except Exception as exc:  # a shape the backend refuses is a candidate not to choose, not a failed optimize
        log.warning("could not time %s at %s: %s", layer.node, signature, str(exc).splitlines()[0][:200])
        return Timed(math.inf)


def _layers(model: ir.Model, analysis: DeadChannelAnalysis, batch: int, precision: str) -> list[_Layer]:
    """Conv, Gemm and MatMul nodes whose shapes are known, with the spaces they read and write."""
    found = []
    for node in model.graph:
        plan = analysis.walk.plans.get(node)
        kind = plan.kind if plan is not None else None
        if kind not in (Kind.CONV, Kind.DEPTHWISE, Kind.GEMM, Kind.MATMUL):
            continue
        x, y = node.inputs[0], node.outputs[0]
        w = node.inputs[1]
        if x is None or w is None or x.shape is None or w.const_value is None:
            continue
        dims = list(x.shape)
        space_in = analysis.walk.space_of.get(x)
        space_out = analysis.walk.space_of.get(y)
        if kind in (Kind.CONV, Kind.DEPTHWISE):
            spatial = dims[2:]
            if not all(isinstance(d, int) for d in spatial):
                continue
            shape = [int(d) for d in w.const_value.shape.numpy()]
            groups = attr_int(node, "group", 1)
            rank = len(shape) - 2
            signature = LayerSignature(
                "Conv",
                c_in=int(shape[1]) * groups,
                c_out=int(shape[0]),
                kernel=tuple(int(k) for k in shape[2:]),
                strides=tuple(attr_ints(node, "strides") or [1] * rank),
                dilations=tuple(attr_ints(node, "dilations") or [1] * rank),
                pads=tuple(attr_ints(node, "pads") or [0] * 2 * rank),
                groups=groups,
                spatial=tuple(int(d) for d in spatial),  # type: ignore[arg-type]
                batch=batch,
                precision=precision,
            )
            multiple = groups if kind is Kind.CONV and groups > 1 else 1
            found.append(_Layer(node.name or "Conv", signature, space_in, space_out, multiple))
        else:
            shape = [int(d) for d in w.const_value.shape.numpy()]
            k, n = (int(shape[1]), int(shape[0])) if kind is Kind.GEMM and attr_int(node, "transB", 0) else (
                int(shape[0]), int(shape[1]))  # fmt: skip
            rows = [d if isinstance(d, int) else batch for d in dims[:-1]]
            signature = LayerSignature(node.op_type, c_in=k, c_out=n, spatial=tuple(rows), batch=batch,
                                       precision=precision)  # fmt: skip
            found.append(_Layer(node.name or node.op_type, signature, space_in, space_out, 1))
    return found
