"""enforce-2to4 (opt-in): prune eligible weights to 2:4 by magnitude — this CHANGES the model.

In every group of 4 consecutive weights along the reduction axis the 2 of smallest |w| become 0 (NVIDIA ASP's
magnitude criterion). Eligible: Conv/Gemm/MatMul weights whose reduction length is a multiple of 4 and whose
channels (min of reduction and outputs) reach `min_channels`; the first conv (reading a graph input) is skipped,
as pruning practice advises. Being a change of the model, it is exempt from the equivalence gate: it runs after
the gate on the verified lean graph, and reports the share of |w| each layer kept — after the `permute-2to4`
channel reorder, which runs first, and without it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsecut.passes.two_four import _reduction_weight
from sparsecut.report import EnforcedLayer

__all__ = ["EnforceTwoFourPass", "ineligible_because", "two_four_mask"]


def two_four_mask(weight: np.ndarray, axis: int) -> np.ndarray:
    """Keep the 2 largest |w| of every group of 4 along `axis` (length a multiple of 4)."""
    moved = np.moveaxis(np.abs(weight), axis, -1)
    groups = moved.reshape(-1, 4)
    keep = np.zeros(groups.shape, bool)
    top = np.argsort(-groups, axis=1, kind="stable")[:, :2]
    np.put_along_axis(keep, top, True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def ineligible_because(
    node: ir.Node,
    source: ir.Value,
    stored: np.ndarray,
    axis: int,
    outputs: int,
    graph_inputs: set[ir.Value],
    min_channels: int,
) -> str | None:
    """Why enforce-2to4 leaves this weight alone (None: it prunes it)."""
    reduction = stored.shape[axis]
    if node.op_type == "Conv" and node.inputs[0] in graph_inputs:
        return "first conv (reads the graph input)"
    if reduction % 4:
        return f"reduction {reduction} not a multiple of 4"
    if min(reduction, outputs) < min_channels:
        return f"fewer than {min_channels} channels"
    if source.const_value is None or source.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return "not a float weight"
    if len(source.uses()) > 1:
        return "weight shared with another node"
    return None


class EnforceTwoFourPass(ir.passes.InPlacePass):
    """`before`: Σ|w| share each weight would keep without the channel reorder (from `permute-2to4`), by name."""

    def __init__(self, min_channels: int = 64, before: dict[str, tuple[float, str]] | None = None) -> None:
        super().__init__()
        self.min_channels = min_channels
        self.before = before or {}
        self.layers: list[EnforcedLayer] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.layers = []
        inputs = set(model.graph.inputs)
        done: set[ir.Value] = set()
        for node in model.graph:
            found = _reduction_weight(node)
            if found is None:
                continue
            source, stored, axis, outputs = found
            name = source.name or "?"
            reason = ineligible_because(node, source, stored, axis, outputs, inputs, self.min_channels)
            if reason is None and source in done:
                reason = "weight shared with another node"
            if reason is not None:
                self.layers.append(EnforcedLayer(node.name or node.op_type, name, False, 1.0, reason))
                continue
            weight = source.const_value.numpy()  # type: ignore[union-attr]
            mask = two_four_mask(weight, axis)
            pruned = np.where(mask, weight, 0).astype(weight.dtype)
            total = float(np.abs(weight).sum())
            kept = float(np.abs(pruned).sum()) / total if total else 1.0
            without, permutation = self.before.get(name, (kept, "not searched"))
            source.const_value = ir.Tensor(pruned, name=source.name)
            done.add(source)
            self.layers.append(EnforcedLayer(node.name or node.op_type, name, True, kept, None, without, permutation))
        return ir.passes.PassResult(model, modified=bool(done))
