"""enforce-2to4 (opt-in): prune eligible weights to 2:4 by magnitude — this CHANGES the model.

In every group of 4 consecutive weights along the reduction axis the 2 of smallest |w| become 0 (NVIDIA ASP's
magnitude criterion). Eligible: Conv/Gemm/MatMul weights whose reduction length is a multiple of 4 and whose
channels (min of reduction and outputs) reach `min_channels`; the first conv (reading a graph input) is skipped,
as pruning practice advises. Being a change of the model, it is exempt from the equivalence gate: it runs after
the gate on the verified lean graph, and reports the share of |w| each layer kept.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsecut.passes.two_four import _reduction_weight
from sparsecut.report import EnforcedLayer

__all__ = ["EnforceTwoFourPass", "two_four_mask"]


def two_four_mask(weight: np.ndarray, axis: int) -> np.ndarray:
    """Keep the 2 largest |w| of every group of 4 along `axis` (length a multiple of 4)."""
    moved = np.moveaxis(np.abs(weight), axis, -1)
    groups = moved.reshape(-1, 4)
    keep = np.zeros(groups.shape, bool)
    top = np.argsort(-groups, axis=1, kind="stable")[:, :2]
    np.put_along_axis(keep, top, True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


class EnforceTwoFourPass(ir.passes.InPlacePass):
    def __init__(self, min_channels: int = 64) -> None:
        super().__init__()
        self.min_channels = min_channels
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
            reduction = stored.shape[axis]
            reason = None
            if node.op_type == "Conv" and node.inputs[0] in inputs:
                reason = "first conv (reads the graph input)"
            elif reduction % 4:
                reason = f"reduction {reduction} not a multiple of 4"
            elif min(reduction, outputs) < self.min_channels:
                reason = f"fewer than {self.min_channels} channels"
            elif source.const_value is None or source.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
                reason = "not a float weight"
            elif source in done or len(source.uses()) > 1:
                reason = "weight shared with another node"
            if reason is not None:
                self.layers.append(EnforcedLayer(node.name or node.op_type, source.name or "?", False, 1.0, reason))
                continue
            weight = source.const_value.numpy()  # type: ignore[union-attr]
            mask = two_four_mask(weight, axis)
            pruned = np.where(mask, weight, 0).astype(weight.dtype)
            total = float(np.abs(weight).sum())
            kept = float(np.abs(pruned).sum()) / total if total else 1.0
            source.const_value = ir.tensor(pruned, name=source.name)
            done.add(source)
            self.layers.append(EnforcedLayer(node.name or node.op_type, source.name or "?", True, kept, None))
        return ir.passes.PassResult(model, modified=bool(done))
