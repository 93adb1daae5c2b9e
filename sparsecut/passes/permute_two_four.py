"""permute-2to4 (runs before enforce-2to4): reorder channels so that 2:4 magnitude pruning keeps more |w|.

Exact: the kept channels of a space are reordered in every tensor that carries them — producers' rows,
per-channel parameters, every reader's columns (see `dead_channels.rewrite_channels`) — so the model computes
the same function, and the pipeline checks that with the equivalence gate before anything is pruned. The order
of a space comes from `permutation.search_order` (NVIDIA ASP's stripe-pair search) over the |w| of every
weight that enforce-2to4 will prune among its readers, stacked; it is used only when it keeps more than the
identity. A space keeps its order where its channels are tied to positions (`why_not_permutable`) or where one
of its readers is 2:4 already (a reorder would break that pattern).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels import DeadChannelAnalysis, rewrite_channels
from sparsecut.passes.dead_channels import reduction_matrix
from sparsecut.passes.enforce_two_four import ineligible_because
from sparsecut.passes.permutation import kept_magnitude, search_order
from sparsecut.passes.two_four import _reduction_weight, is_two_four
from sparsecut.shapes import infer_shapes

__all__ = ["PermuteForTwoFourPass"]


class PermuteForTwoFourPass(ir.passes.InPlacePass):
    """`before[weight]` = (Σ|w| share that 2:4 pruning keeps in the original order, what the search did)."""

    def __init__(self, min_channels: int = 64, budget_s: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.min_channels = min_channels
        self.budget_s = budget_s
        self.seed = seed
        self.before: dict[str, tuple[float, str]] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.before = {}
        infer_shapes(model)
        analysis = DeadChannelAnalysis(model, align=1, enabled_groups=set())  # no channel goes: orders only
        inputs = set(model.graph.inputs)
        orders: dict[int, np.ndarray] = {}
        eligible: dict[ir.Node, str] = {}
        for node in model.graph:
            found = _reduction_weight(node)
            if found is not None and ineligible_because(node, *found, inputs, self.min_channels) is None:
                eligible[node] = found[0].name or "?"
        for s in range(len(analysis.walk.spaces)):
            readers = analysis.readers(s)
            chosen = [node for node in readers if node in eligible]
            if not chosen:
                continue
            matrices = [_flat(np.abs(reduction_matrix(node, analysis))).astype(np.float64) for node in chosen]  # type: ignore[arg-type]
            baseline = [float(kept_magnitude(m) / m.sum()) if m.sum() else 1.0 for m in matrices]
            reason = analysis.why_not_permutable(s)
            if reason is None and any(_is_two_four(node, analysis) for node in readers):
                reason = "a weight reading these channels is 2:4 already"
            if reason is not None or self.budget_s <= 0:
                status = f"channels stay in place: {reason or 'search off'}"
            else:
                order, without, with_order = search_order(np.concatenate(matrices, axis=1), self.budget_s, self.seed)
                if with_order > without:
                    orders[s] = order
                    status = f"reordered {len(order)} channels"
                else:
                    status = "no better order found"
            for node, share in zip(chosen, baseline, strict=True):
                self.before[eligible[node]] = (share, status)
        if orders:
            rewrite_channels(model, analysis, orders)
        return ir.passes.PassResult(model, modified=bool(orders))


def _is_two_four(node: ir.Node, analysis: DeadChannelAnalysis) -> bool:
    matrix = reduction_matrix(node, analysis)
    return matrix is not None and is_two_four(matrix, 0)


def _flat(matrix: np.ndarray) -> np.ndarray:
    """[input channel, everything else]."""
    return matrix.reshape(matrix.shape[0], -1)
