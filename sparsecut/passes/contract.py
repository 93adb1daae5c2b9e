"""What every pass of `optimize` is: an onnx-ir in-place pass that states its contract and reports its findings.

onnx-ir's `PassBase.__call__` runs `requires(model)` before `call` and `ensures(model)` after it, raising
`PreconditionError` / `PostconditionError` (with the failing check as the cause) instead of letting a broken
graph go on. A pass here adds its name, a line describing it, and `report(modified, seconds)`: the pass knows
what it found, so nobody reads its attributes back to describe it. Its settings are a few constructor arguments
(or one small frozen dataclass), never the whole `OptimizeOptions`: the pipeline (`registry.compose`) turns the
user's options into each pass's own.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir

from sparsecut.report import PassReport

__all__ = ["Composed", "OptimizePass", "interface_shapes"]


@dataclasses.dataclass(frozen=True)
class Composed:
    """Where a pass stands in a composed pipeline, and what of the user's options it may take (each pass takes
    only what it needs: `OptimizePass.composed`)."""

    align: int = 8  # channel counts kept at multiples of this
    counts: tuple[tuple[str, int], ...] = ()  # measured decisions: channels kept per space, replacing align there
    folded: bool = False  # fold-constants ran earlier in this pipeline
    enabled_groups: frozenset[int] | None = None  # only these dead-channel groups lose channels (gate bisection)


class OptimizePass(ir.passes.InPlacePass):
    name: ClassVar[str]
    description: ClassVar[str]

    @classmethod
    def composed(cls, at: Composed) -> OptimizePass:
        """The pass as it runs at this place of a pipeline."""
        return cls()

    def report(self, modified: bool, seconds: float) -> PassReport:
        return PassReport(self.name, modified, seconds, "changed the graph" if modified else "nothing to do")


def interface_shapes(model: ir.Model) -> dict[str, tuple[int | str | None, ...] | None]:
    """The model's inputs and outputs as a caller sees them: name → dims (None where the rank is unknown)."""
    found: dict[str, tuple[int | str | None, ...] | None] = {}
    for value in (*model.graph.inputs, *model.graph.outputs):
        shape = value.shape
        found[str(value.name)] = (
            None
            if shape is None
            else tuple(d if isinstance(d, int) else (str(d.value) if d.value is not None else None) for d in shape)
        )
    return found
