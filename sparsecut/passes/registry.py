"""The lossless passes `optimize` can run, by name: how each is made from the options, what it does, and how its
result is reported. A name not here is refused before anything runs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import onnx_ir as ir

from sparsecut.errors import GraphError
from sparsecut.passes.cleanup import CleanupPass
from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.dead_channels import RemoveDeadChannelsPass
from sparsecut.passes.fold_batchnorm import FoldBatchNormPass
from sparsecut.passes.two_four import AnnotateTwoFourPass
from sparsecut.report import PassReport

if TYPE_CHECKING:
    from sparsecut.passes.pipeline import OptimizeOptions

__all__ = [
    "DEFAULT_PASSES",
    "PASSES",
    "REGISTRY",
    "PassSpec",
    "Setting",
    "baseline_passes",
    "make_pass",
    "parse_passes",
    "run_passes",
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a pass may depend on besides the options: `folded` — fold-constants ran earlier in this pipeline;
    `enabled_groups` — only these dead-channel groups may lose channels (the gate's bisection)."""

    folded: bool = False
    enabled_groups: set[int] | None = None


Reporter = Callable[[str, ir.passes.PassBase, bool, float], PassReport]  # (name, pass, modified, seconds)


def _plain_report(name: str, step: ir.passes.PassBase, modified: bool, seconds: float) -> PassReport:
    return PassReport(name, modified, seconds, "changed the graph" if modified else "nothing to do")


@dataclasses.dataclass(frozen=True)
class PassSpec:
    description: str
    make: Callable[[OptimizeOptions, Setting], ir.passes.PassBase]
    report: Reporter = _plain_report


def _dead_channels_report(name: str, step: ir.passes.PassBase, modified: bool, seconds: float) -> PassReport:
    assert isinstance(step, RemoveDeadChannelsPass)
    analysis = step.analysis
    if analysis is None:
        return PassReport(name, modified, seconds, "nothing to do")
    groups = analysis.group_reports()
    dead = sum(g.dead for g in groups)
    shrunk = sum(1 for g in groups if g.channels_after < g.channels_before)
    summary = f"{analysis.total_removed} channel(s) removed of {dead} dead, in {shrunk} group(s)"
    restored = [r for r in step.two_four if r.restored]
    if step.two_four:
        summary += f"; 2:4 kept by reordering channels for {len(restored)} of {len(step.two_four)} weight group(s)"
    return PassReport(
        name,
        modified,
        seconds,
        summary,
        groups,
        dict(analysis.walk.no_rule),
        declined=dict(analysis.walk.declined),
        two_four=step.two_four,
        rule_errors=list(analysis.walk.rule_errors),
        heads=analysis.head_reports(),
    )


def _two_four_report(name: str, step: ir.passes.PassBase, modified: bool, seconds: float) -> PassReport:
    assert isinstance(step, AnnotateTwoFourPass)
    sparse = [layer for layer in step.layers if layer.is_2to4]
    summary = f"{len(sparse)} of {len(step.layers)} weight(s) are 2:4 along their reduction axis"
    return PassReport(name, modified, seconds, summary, sparsity=step.layers)


def _batchnorm_report(name: str, step: ir.passes.PassBase, modified: bool, seconds: float) -> PassReport:
    assert isinstance(step, FoldBatchNormPass)
    return PassReport(name, modified, seconds, f"{step.folded} BatchNormalization folded")


REGISTRY: dict[str, PassSpec] = {
    "fold-constants": PassSpec(
        "compute constant subgraphs (dynamo's computed zero biases) into initializers",
        lambda options, setting: FoldConstantsPass(),
    ),
    "fold-batchnorm": PassSpec(
        "fold BatchNormalization into the preceding Conv/Gemm",
        lambda options, setting: FoldBatchNormPass(),
        _batchnorm_report,
    ),
    "remove-dead-channels": PassSpec(
        "physically remove zero/constant channels across coupled groups",
        lambda options, setting: RemoveDeadChannelsPass(
            options.align, setting.enabled_groups, fold=not setting.folded, counts=dict(options.counts)
        ),
        _dead_channels_report,
    ),
    "cleanup": PassSpec(
        "remove identities and unused nodes, sort topologically", lambda options, setting: CleanupPass()
    ),
    "annotate-2to4": PassSpec(
        "label 2:4-sparse weights for TensorRT (metadata and SPARSE_2_4 doc string)",
        lambda options, setting: AnnotateTwoFourPass(),
        _two_four_report,
    ),
}
PASSES: dict[str, str] = {name: spec.description for name, spec in REGISTRY.items()}
DEFAULT_PASSES = ("fold-constants", "fold-batchnorm", "remove-dead-channels", "cleanup", "annotate-2to4")


def baseline_passes(passes: Sequence[str]) -> tuple[str, ...]:
    """The like-for-like baseline of a pipeline: every pass but channel removal."""
    return tuple(p for p in passes if p != "remove-dead-channels")


def parse_passes(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise GraphError(f"unknown pass {unknown[0]!r}; known: {', '.join(REGISTRY)}")
    return list(names)


def make_pass(name: str, options: OptimizeOptions, setting: Setting = Setting()) -> ir.passes.PassBase:
    return REGISTRY[name].make(options, setting)


def run_passes(
    model: ir.Model, names: Sequence[str], options: OptimizeOptions, ran: Sequence[str] = ()
) -> list[PassReport]:
    """Run `names` in order on `model`, each reported with its time (`ran`: the passes that ran on it before)."""
    reports = []
    for index, name in enumerate(names):
        step = make_pass(name, options, Setting(folded="fold-constants" in [*ran, *names[:index]]))
        start = time.perf_counter()
        result = step(model)
        reports.append(REGISTRY[name].report(name, step, result.modified, time.perf_counter() - start))
    return reports
