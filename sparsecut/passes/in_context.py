"""Channel counts decided where the layers live: the whole model on the target, not one layer alone.

A layer timed alone misses what it costs in its place: the layout reorders a backend inserts between blocked and
plain layouts, the activations it fuses, the channel counts of its neighbours (the kernel a count selects depends
on both sides). So the counts are decided on whole-model variants in the precision the graph will be written in:
a base (the lean graph at a fixed alignment) and probes — the base with some spaces at another candidate count
(`probes`; the spaces of one `colors` class share no layer, so one probe varies them all without one's change
reaching another's layers) — profiled on the target, interleaved (`Profile`: per variant, each node's kernel
time, the median over rounds with its noise).

Per channel space, the time of a count is the time of what depends on it (`attributed`): the layers that read or
write the space (Conv, Gemm, MatMul), the elementwise ops writing it that the backend did not fuse, and the
backend's own kernels on its tensors (the layout reorders onnxruntime inserts where a count leaves its blocked
layout) — in the base, or in a probe that varies the space (`scope`). The space keeps the fewest channels unless
a larger count is faster beyond the noise of the two (`choose_count`). The chosen counts are one more candidate
of the end-to-end guard (measured.py), which writes whichever candidate is fastest as a whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import onnx_ir as ir

from sparsecut.errors import GraphError
from sparsecut.modelfile import load_model
from sparsecut.passes.channel_counts import choose_count
from sparsecut.passes.channels import DeadChannelAnalysis, Kind
from sparsecut.passes.dead_channels import prepare_for_analysis
from sparsecut.passes.latency_table import Timed
from sparsecut.passes.registry import compose, run_steps
from sparsecut.report import CountDecision

if TYPE_CHECKING:
    from sparsecut.passes.pipeline import OptimizeOptions

__all__ = [
    "ContextPlan",
    "Profile",
    "attributed",
    "before_removal",
    "colors",
    "kept_counts",
    "plan_in_context",
    "probes",
    "require_removal",
    "touching_nodes",
]

# files → per file, graph node name → the time of the kernels that computed it in the whole model, with its noise
Profile = Callable[[list[Path]], list[dict[str, Timed]]]

LAYER_KINDS = (Kind.CONV, Kind.DEPTHWISE, Kind.GEMM, Kind.MATMUL)
K = TypeVar("K")


@dataclasses.dataclass
class ContextPlan:
    counts: dict[str, int]  # space key → channels to keep
    decisions: list[CountDecision]


def require_removal(passes: Sequence[str], who: str) -> None:
    """Channel counts are decided only for a pipeline that removes dead channels. `who`: for the error."""
    if "remove-dead-channels" not in passes:
        raise GraphError(f"{who} decides channel counts: the pipeline needs remove-dead-channels")


def before_removal(source: Path, passes: Sequence[str], options: OptimizeOptions, who: str) -> ir.Model:
    """`source` as remove-dead-channels sees it in the pipeline `passes`: the passes before it applied, folded,
    shapes inferred. `who`: the option or command that needs the pass, for the error."""
    require_removal(passes, who)
    model = load_model(source, infer_shapes=True)
    before = list(passes[: list(passes).index("remove-dead-channels")])
    run_steps(model, compose(before, options))
    prepare_for_analysis(model, fold="fold-constants" not in before)
    return model


def kept_counts(model: ir.Model, align: int, counts: Mapping[str, int] = ()) -> dict[int, int]:  # type: ignore[assignment]
    """Per channel space, how many channels a lean graph of `model` keeps at `align` (and `counts`)."""
    analysis = DeadChannelAnalysis(model, align=align, counts=dict(counts))
    removed = analysis.coupling.per_space(analysis.decision.removable)
    return {s: space.count - int(removed[s]) for s, space in enumerate(analysis.walk.spaces)}


def touching_nodes(analysis: DeadChannelAnalysis) -> dict[int, list[str]]:
    """Per channel space, the names of the layers (Conv, Gemm, MatMul) that read or write it."""
    found: dict[int, list[str]] = {}
    for node in analysis.graph:
        plan = analysis.walk.plans.get(node)
        if plan is None or plan.kind not in LAYER_KINDS or not node.name:
            continue
        for value in (node.inputs[0], node.outputs[0]):
            s = analysis.walk.space_of.get(value) if value is not None else None
            if s is not None and node.name not in found.setdefault(s, []):
                found[s].append(node.name)
    return found


def colors(touching: Mapping[K, list[str]]) -> dict[K, int]:
    """A color per key (a channel space, or a group of them) such that no layer touches two keys of one color
    (greedy, most-touched first): the keys of one color can change their counts in one variant without one's
    change reaching another's layers. `touching`: per key, the names of the layers that read or write it."""
    by_node: dict[str, set[K]] = {}
    for key, nodes in touching.items():
        for node in nodes:
            by_node.setdefault(node, set()).add(key)
    neighbours = {key: set[K]().union(*(by_node[n] for n in nodes)) - {key} for key, nodes in touching.items()}
    color: dict[K, int] = {}
    for key in sorted(touching, key=lambda k: -len(neighbours[k])):
        taken = {color[other] for other in neighbours[key] if other in color}
        color[key] = next(c for c in range(len(touching) + 1) if c not in taken)
    return color


def probes(
    base: dict[int, int], levels: Mapping[str, dict[int, int]], color: Mapping[int, int]
) -> dict[str, tuple[dict[int, int], list[int]]]:
    """One variant per (color, level): `base`'s counts with the spaces of that color at the level's counts — one
    coordinate of a coordinate descent per space, all spaces of a color at once (their layers are disjoint). Name →
    (kept counts, the spaces it varies). Variants that vary nothing are left out."""
    found: dict[str, tuple[dict[int, int], list[int]]] = {}
    for c in sorted(set(color.values())):
        for level, counts in levels.items():
            varied = [s for s, k in color.items() if k == c and counts[s] != base[s]]
            kept = {**base, **{s: counts[s] for s in varied}}
            if varied and all(kept != other for other, _ in found.values()):
                found[f"color {c} at {level}"] = (kept, varied)
    return found


def attributed(analysis: DeadChannelAnalysis) -> dict[int, set[str]]:
    """Per channel space, the profile keys whose time depends on its count: the layers that read or write it (by
    node name), the other nodes that write it (elementwise ops a backend did not fuse), and the backend's own
    kernels on its tensors (`value:NAME`: a layout reorder)."""
    found: dict[int, set[str]] = {s: set(nodes) for s, nodes in touching_nodes(analysis).items()}
    for node in analysis.graph:
        value = node.outputs[0] if node.outputs else None
        s = analysis.walk.space_of.get(value) if value is not None else None
        if s is not None and node.name:
            found.setdefault(s, set()).add(str(node.name))
    for value, s in analysis.walk.space_of.items():
        if value.name:
            found.setdefault(s, set()).add(f"value:{value.name}")
    return found


def plan_in_context(
    analysis: DeadChannelAnalysis,
    variants: Mapping[str, dict[int, int]],
    profiles: Mapping[str, dict[str, Timed]],
    proposal: Mapping[str, int] | None = None,
    scope: Mapping[int, list[str]] | None = None,
) -> ContextPlan:
    """Counts for the model `analysis` read at `--align 1` (folded, shapes inferred: as remove-dead-channels sees
    it) from `variants` (name → kept count per space, `kept_counts`) and their `profiles` (name → node → time in the whole model). `scope`: per
    space, the variants that compare its counts with everything else held (the base and its probes); without it,
    every variant. `proposal`: the one-layer table's counts by space key, reported beside the choice where the
    context chose otherwise."""
    removed = analysis.coupling.per_space(analysis.decision.removable)
    touching = touching_nodes(analysis)
    keys = attributed(analysis)
    counts, decisions = {}, []
    for s, space in enumerate(analysis.walk.spaces):
        live = space.count - int(removed[s])
        if live == space.count or not touching.get(s):
            continue
        seen: dict[int, list[Timed]] = {}
        for name, kept in variants.items():
            if scope is not None and name not in scope.get(s, ()):
                continue
            cost = sum((profiles[name].get(key, Timed(0.0)) for key in sorted(keys[s])), Timed(0.0))
            seen.setdefault(kept[s], []).append(cost)
        if not seen:
            continue
        times = {count: _mean(costs) for count, costs in seen.items()}
        chosen = choose_count(times)
        if chosen is None:
            continue
        key = analysis.space_key(s)
        counts[key] = chosen
        proposed = (proposal or {}).get(key)
        decisions.append(
            CountDecision(
                location=analysis.location([s]),
                original=space.count,
                live=live,
                chosen=chosen,
                predicted_ms={},
                in_context_ms={str(c): round(t.ms, 5) for c, t in sorted(times.items())},
                in_context_noise_ms={str(c): round(t.noise, 5) for c, t in sorted(times.items())},
                proposed=proposed if proposed is not None and proposed != chosen else None,
            )
        )
    return ContextPlan(counts, decisions)


def _mean(costs: list[Timed]) -> Timed:
    """The mean of one count's times over the variants that keep it (their neighbours differ)."""
    total = sum(costs, Timed(0.0))
    return Timed(total.ms / len(costs), total.noise / len(costs))
