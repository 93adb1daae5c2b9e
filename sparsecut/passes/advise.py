"""`sparsecut advise`: before pruning, which channel counts the target rewards — per coupled channel group, the
latency staircase in context, and a plan a pruner can follow.

Counts are what the device rewards, not what was zeroed, so a dense model works as well as a pruned one. Each
group is shrunk hypothetically: its channels of least weight magnitude (the dead ones first) are zeroed in every
layer that writes them — what a magnitude pruner would do — and removed with the rest of the model held at its
full width (remove-dead-channels, `--align 1`, the other groups' counts pinned to their originals; these probe
graphs are only timed, never written, so no equivalence gate runs on them). The groups a layer joins (it reads
one, writes another) are probed apart; groups no layer joins are probed in the same variant (`in_context.colors`).
Every probe and the full-width base are profiled on the target, round-robin: a group's time at a count is the time
of what depends on it (`in_context.attributed`: the layers that read or write it, unfused elementwise ops writing
it, the backend's layout reorders on its tensors), in the whole model, as the backend ran them, with its noise.

The staircase's counts per group of C channels: C, C − 1, and for each fraction 7/8 … 1/4 of C the multiples of 16
and of 8 below it, the multiple of 16 less 8 and less one (aligned, half-aligned, misaligned); for a pruned model
also its live count rounded up to 1, 8 and 16. From it:
- `round_to` per group (Torch-Pruning's argument): 16 when counts that are multiples of 8 but not of 16 run no
  faster than the multiple of 16 above them in most steps, beyond noise; else 8 when one under a multiple of 8 runs
  no faster than it; else 1 (no step: any count).
- A plan for a latency ratio (HALP's question): the fewest channels removed — steps taken greedily by time saved
  per channel — until the sum over groups predicts `ratio` × the base's time; for a pruned model only down to its
  live counts (its dead channels are the removable ones). Written per layer (channels to keep, and
  Torch-Pruning's `pruning_ratio_dict` by module name, each ratio keeping exactly that count under its
  int(C · (1 − ratio)); with `round_to` left unset) with its predicted latency.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from sparsecut.errors import GraphError, InputError
from sparsecut.logs import quieted
from sparsecut.modelfile import save_model
from sparsecut.passes.channels import DeadChannelAnalysis, Kind
from sparsecut.passes.in_context import Profile, attributed, before_removal, colors, touching_nodes
from sparsecut.passes.latency_table import Timed
from sparsecut.passes.pipeline import OptimizeOptions, PreparedInput, optimize_model
from sparsecut.passes.registry import baseline_passes
from sparsecut.report import AdviceReport, GroupAdvice, LatencyPlan, StaircaseStep

__all__ = ["FRACTIONS", "advise_model", "round_to"]

FRACTIONS = (7 / 8, 3 / 4, 5 / 8, 1 / 2, 3 / 8, 1 / 4)
WRITERS = (Kind.CONV, Kind.DEPTHWISE, Kind.GEMM, Kind.MATMUL)


@dataclasses.dataclass
class _Group:
    """A coupled channel group the advisor can shrink: its spaces share one channel index (no Concat offsets)."""

    index: int
    location: str
    spaces: list[int]
    count: int
    live: int
    writers: list[tuple[str, int, str | None]]  # (weight initializer, its output-channel axis, bias initializer)
    order: np.ndarray  # channel indices, the first to go first (least weight magnitude; dead ones lead)
    touching: list[str]  # profile keys whose time depends on its count (in_context.attributed)

    @property
    def module(self) -> str:
        """The module a pruner names the group by: its first writer's (Torch-Pruning prunes a coupled group from
        any of its layers)."""
        return self.writers[0][0].removesuffix(".weight")


def staircase_counts(count: int, live: int) -> list[int]:
    """The counts probed for a group of `count` channels (`live` of them not dead), largest first."""
    found = {count - 1}
    for fraction in FRACTIONS:
        aligned = int(count * fraction) // 16 * 16
        found.update({aligned, aligned - 8, aligned - 1, int(count * fraction) // 8 * 8})
    if live < count:
        found.update({live, -(-live // 8) * 8, -(-live // 16) * 16})
    return sorted((c for c in found if 0 < c < count), reverse=True)


def advise_model(
    source: Path,
    profile: Profile,
    target: str,
    context: dict[str, str],
    ratio: float | None = None,
    options: OptimizeOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> AdviceReport:
    """The staircase of every group of `source` on the target `profile` times on, and with `ratio` a plan."""
    options = options or OptimizeOptions()
    if ratio is not None and not 0 < ratio < 1:
        raise InputError(f"--latency-ratio {ratio}: a fraction of the full-width latency, between 0 and 1")
    model = before_removal(source, options.passes, options, "advise")
    analysis = DeadChannelAnalysis(model, align=1)
    groups, skipped = _groups(analysis)
    if not groups:
        raise GraphError(
            f"{source}: no coupled channel group a pruner could shrink (no Conv, Gemm or MatMul writes channels "
            "that only layers of the model read)"
        )
    levels = {g.index: staircase_counts(g.count, g.live) for g in groups}
    color = colors({g.index: g.touching for g in groups})
    with tempfile.TemporaryDirectory(prefix="sparsecut-advise-") as tmp:
        folder = Path(tmp)
        prepared = folder / "prepared.onnx"
        save_model(model, prepared)
        base = folder / "base.onnx"
        quiet = dataclasses.replace(options, verify=False)
        loaded = PreparedInput(prepared, options.passes, quiet)  # loaded once; each probe changes its weights
        with quieted("sparsecut.passes.pipeline"):
            optimize_model(prepared, base, dataclasses.replace(quiet, passes=baseline_passes(options.passes)))
        pinned = {analysis.space_key(s): space.count for s, space in enumerate(analysis.walk.spaces)}
        variants: list[tuple[Path, dict[int, int]]] = []  # probe file, group → the count it has there
        steps = max(len(v) for v in levels.values())
        total = steps * (max(color.values()) + 1)
        for step in range(steps):
            for c in sorted(set(color.values())):
                shrunk = {
                    g.index: levels[g.index][step]
                    for g in groups
                    if color[g.index] == c and step < len(levels[g.index])
                }
                if not shrunk:
                    continue
                path = folder / f"probe-{len(variants)}.onnx"
                members = [g for g in groups if g.index in shrunk]
                _probe(prepared, loaded, members, shrunk, analysis, pinned, path, quiet)
                reached = _reached(path, members)  # a channel zeroed but still needed stays: time what was built
                variants.append((path, {i: reached.get(i, c) for i, c in shrunk.items()}))
                if progress is not None:
                    progress("building probes", step * (max(color.values()) + 1) + c + 1, total)
        timed = profile([base, *(path for path, _ in variants)])
    dense = sum((t for t in timed[0].values()), Timed(0.0))
    advice = []
    for g in groups:
        stair = {g.count: _cost(timed[0], g)}
        for (_, shrunk), times in zip(variants, timed[1:], strict=True):
            if g.index in shrunk:
                stair[shrunk[g.index]] = _cost(times, g)
        steps_ = [StaircaseStep(c, round(t.ms, 5), round(t.noise, 5)) for c, t in sorted(stair.items(), reverse=True)]
        advice.append(GroupAdvice(g.location, g.module, g.count, g.live, steps_, round_to(stair)))
    plan = _plan(advice, dense, ratio) if ratio is not None else None
    return AdviceReport(
        model=str(source),
        target=target,
        context=context,
        dense_ms=round(dense.ms, 5),
        dense_noise_ms=round(dense.noise, 5),
        groups=advice,
        skipped=skipped,
        plan=plan,
        torch_pruning={"round_to": _common_round_to(advice)},
    )


def round_to(stair: dict[int, Timed]) -> int:
    """The channel step the target rewards, from a group's staircase (see the module docstring)."""
    votes16, votes8 = [], []
    for count, timed in stair.items():
        if count % 16 == 0 and count - 8 in stair:  # half-aligned below an aligned count: faster beyond noise?
            votes16.append(stair[count - 8].beats(timed))
        if count % 8 == 0 and count - 1 in stair:
            votes8.append(stair[count - 1].beats(timed))
    if votes16 and sum(not v for v in votes16) > len(votes16) / 2:
        return 16
    if votes8 and sum(not v for v in votes8) > len(votes8) / 2:
        return 8
    return 1


def _common_round_to(groups: list[GroupAdvice]) -> int:
    """One `round_to` for Torch-Pruning's pruner: what most of the time is in (groups weighted by full-width ms)."""
    weight: dict[int, float] = {}
    for g in groups:
        weight[g.round_to] = weight.get(g.round_to, 0.0) + g.staircase[0].ms
    return max(weight, key=lambda r: (weight[r], r))


def _plan(groups: list[GroupAdvice], dense: Timed, ratio: float) -> LatencyPlan:
    """Greedy: the step with the most time saved per channel removed, until the predicted latency reaches the goal."""
    goal = ratio * dense.ms
    pruned = any(g.live < g.original for g in groups)  # then only its dead channels are to remove
    floor = {g.location: g.live if pruned else 0 for g in groups}
    chosen = {g.location: g.original for g in groups}
    times = {g.location: {s.count: s.ms for s in g.staircase} for g in groups}
    predicted = dense.ms
    while predicted > goal:
        best = None
        for g in groups:
            now = chosen[g.location]
            for count, ms in times[g.location].items():
                if count >= now or count < floor[g.location]:
                    continue
                saved = times[g.location][now] - ms
                if saved > 0:
                    rate = saved / (now - count)
                    if best is None or rate > best[0]:
                        best = (rate, g.location, count, saved)
        if best is None:
            break
        _, location, count, saved = best
        chosen[location] = count
        predicted -= saved
    reachable = predicted <= goal
    if not reachable:
        lowest = dense.ms - sum(
            max(
                0.0,
                times[g.location][g.original]
                - min(ms for c, ms in times[g.location].items() if c >= floor[g.location]),
            )
            for g in groups
        )
        what = "removing every dead channel" if pruned else "the fewest channels probed"
        raise InputError(
            f"--latency-ratio {ratio:g}: below what {what} reaches on this target (best reachable: "
            f"{lowest / dense.ms:.2f} × the full-width {dense.ms:.3f} ms)"
        )
    modules = {g.location: g.module for g in groups}
    return LatencyPlan(
        ratio=ratio,
        predicted_ms=round(predicted, 5),
        dense_ms=round(dense.ms, 5),
        counts={modules[loc]: c for loc, c in chosen.items()},
        removed=sum(g.original - chosen[g.location] for g in groups),
        pruning_ratio_dict={
            modules[g.location]: _ratio_keeping(g.original, chosen[g.location])
            for g in groups
            if chosen[g.location] < g.original
        },
    )


def _ratio_keeping(original: int, count: int) -> float:
    """The pruning ratio with which Torch-Pruning keeps `count` of `original` channels: it keeps
    int(original · (1 − ratio)), so the ratio aims half a channel above the count (float rounding cannot lose one)."""
    return (original - count - 0.5) / original


def _cost(times: dict[str, Timed], group: _Group) -> Timed:
    return sum((times.get(node, Timed(0.0)) for node in group.touching), Timed(0.0))


def _groups(analysis: DeadChannelAnalysis) -> tuple[list[_Group], dict[str, str]]:
    """The groups a pruner could shrink, and those it could not, with why."""
    touching = touching_nodes(analysis)
    keys = attributed(analysis)
    coupling = analysis.coupling
    interface = set(analysis.graph.outputs) | set(analysis.graph.inputs)
    removed = coupling.per_space(analysis.decision.removable)
    found, skipped = [], {}
    for index, spaces in enumerate(coupling.groups):
        location = analysis.location(spaces)
        counts = {analysis.walk.spaces[s].count for s in spaces}
        if len(counts) != 1:
            skipped[location] = "coupled across Concat/Split (channel offsets): not probed"
            continue
        if any(v in interface for s in spaces for v in analysis.walk.spaces[s].values):
            continue  # a graph input or output: its channels are the interface
        writers = []
        magnitude = np.zeros(next(iter(counts)))
        for s in spaces:
            for value in analysis.walk.spaces[s].values:
                node = value.producer()
                plan = analysis.walk.plans.get(node) if node is not None else None
                if node is None or plan is None or plan.kind not in WRITERS or node.outputs[0] is not value:
                    continue
                weight = node.inputs[1]
                if weight is None or weight.const_value is None or not weight.name:
                    continue
                axis = 0 if node.op_type == "Conv" else (0 if node.attributes.get_int("transB", 0) else -1)
                array = weight.const_value.numpy()
                magnitude += np.abs(np.moveaxis(array, axis, 0)).reshape(array.shape[axis], -1).sum(axis=1)
                bias = node.inputs[2] if len(node.inputs) > 2 else None
                writers.append((str(weight.name), axis % array.ndim, str(bias.name) if bias is not None else None))
        if not writers or not any(touching.get(s) for s in spaces):
            continue
        nodes = sorted(set().union(*(keys.get(s, set()) for s in spaces)))
        count = next(iter(counts))
        live = count - int(removed[spaces[0]])
        order = np.argsort(magnitude, kind="stable")
        found.append(_Group(index, location, list(spaces), count, live, writers, order, nodes))
    return found, skipped


def _probe(
    prepared: Path,
    loaded: PreparedInput,
    groups: list[_Group],
    counts: dict[int, int],
    analysis: DeadChannelAnalysis,
    pinned: dict[str, int],
    path: Path,
    options: OptimizeOptions,
) -> None:
    """The prepared model with each group in `groups` shrunk to `counts[group]` channels (those of least magnitude
    zeroed where written, then removed), every other space pinned to its full width."""
    weights = analysis.graph.initializers
    zeroed: dict[str, np.ndarray] = {}
    keep = dict(pinned)
    for g in groups:
        gone = g.order[: g.count - counts[g.index]]
        for weight, axis, bias in g.writers:
            array = weights[weight].const_value.numpy().copy()  # type: ignore[union-attr]
            np.moveaxis(array, axis, 0)[gone] = 0  # (a view: zeroes the array's output channels)
            zeroed[weight] = array
            if bias is not None and bias in weights:
                b = weights[bias].const_value.numpy().copy()  # type: ignore[union-attr]
                b[gone] = 0
                zeroed[bias] = b
        for s in g.spaces:
            keep[analysis.space_key(s)] = counts[g.index]
    variant = dataclasses.replace(options, align=1, counts=tuple(sorted(keep.items())))
    with quieted("sparsecut.passes.pipeline"):
        optimize_model(prepared, path, variant, loaded.with_weights(zeroed))


def _reached(path: Path, groups: list[_Group]) -> dict[int, int]:
    """Per group, the channels its first writer still writes in the probe `path` (read without the weights)."""
    dims = {t.name: list(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    found = {}
    for g in groups:
        weight, axis, _ = g.writers[0]
        if weight in dims:
            found[g.index] = dims[weight][axis]
    return found
