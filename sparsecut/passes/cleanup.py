"""cleanup: drop identities, unused nodes, initializers and opsets, then sort topologically — onnx-ir's own passes."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    IdentityEliminationPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
    TopologicalSortPass,
)

__all__ = ["CleanupPass"]


class CleanupPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for step in (
            IdentityEliminationPass(),
            RemoveUnusedNodesPass(),
            RemoveUnusedOpsetsPass(),
            TopologicalSortPass(),
        ):
            modified |= step(model).modified
        return ir.passes.PassResult(model, modified=modified)
