"""The lossless passes `optimize` can run, by name, and the pipeline composed from the user's options.

`compose(names, options)` is the one place the user's options become each pass's own settings, and where pass
order matters: remove-dead-channels folds constants itself unless fold-constants ran before it. What runs —
`optimize`, the gate's `diagnose` replaying a failure pass by pass, a measured decision preparing the graph it
times — is that composition, so a replay is the run it explains. A name not here is refused before anything runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx_ir as ir

from sparsecut.errors import GraphError
from sparsecut.passes.cleanup import CleanupPass
from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.contract import Composed, OptimizePass
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
    "Step",
    "baseline_passes",
    "compose",
    "parse_passes",
    "run_steps",
]

REGISTRY: dict[str, type[OptimizePass]] = {
    cls.name: cls
    for cls in (FoldConstantsPass, FoldBatchNormPass, RemoveDeadChannelsPass, CleanupPass, AnnotateTwoFourPass)
}
PASSES: dict[str, str] = {name: cls.description for name, cls in REGISTRY.items()}
DEFAULT_PASSES = ("fold-constants", "fold-batchnorm", "remove-dead-channels", "cleanup", "annotate-2to4")


@dataclasses.dataclass(frozen=True)
class Step:
    """One pass of a composed pipeline, with where it stands. `make` builds it fresh (a pass holds what it found);
    `enabled_groups` narrows remove-dead-channels to some groups (the gate's bisection)."""

    name: str
    at: Composed

    def make(self, enabled_groups: set[int] | None = None) -> OptimizePass:
        at = (
            self.at
            if enabled_groups is None
            else dataclasses.replace(self.at, enabled_groups=frozenset(enabled_groups))
        )
        return REGISTRY[self.name].composed(at)


def compose(names: Sequence[str], options: OptimizeOptions, ran: Sequence[str] = ()) -> tuple[Step, ...]:
    """The pipeline `names` as it runs with `options` (`ran`: passes that ran on the model before it)."""
    parse_passes(names)
    done = list(ran)
    steps = []
    for name in names:
        steps.append(Step(name, Composed(options.align, options.counts, folded=FoldConstantsPass.name in done)))
        done.append(name)
    return tuple(steps)


def run_steps(model: ir.Model, steps: Sequence[Step]) -> list[PassReport]:
    """Run `steps` in order on `model`, each checked by its contract and reported with its time."""
    reports = []
    for step in steps:
        made = step.make()
        start = time.perf_counter()
        result = made(model)
        reports.append(made.report(result.modified, time.perf_counter() - start))
    return reports


def baseline_passes(passes: Sequence[str]) -> tuple[str, ...]:
    """The like-for-like baseline of a pipeline: every pass but channel removal."""
    return tuple(p for p in passes if p != RemoveDeadChannelsPass.name)


def parse_passes(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise GraphError(f"unknown pass {unknown[0]!r}; known: {', '.join(REGISTRY)}")
    return list(names)
