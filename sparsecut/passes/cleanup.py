"""cleanup: drop identities, unused nodes, initializers and opsets, then sort topologically — onnx-ir's own passes.

Each runs only where one look over the graph finds its work (0.15 s of a 15k-node optimize went to passes that
found none): an Identity node; an output nobody reads, a trailing empty input, an unused initializer, or a
BatchNormalization (whose `training_mode` the unused-node pass tidies); an opset no node uses; a node before the
producer of its input. A graph with subgraphs or functions gets every pass."""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
from onnx_ir.passes.common import (
    IdentityEliminationPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
    TopologicalSortPass,
)

from sparsecut.logs import quieted
from sparsecut.passes.contract import OptimizePass

__all__ = ["CleanupPass", "unread_initializers"]

_SUBGRAPHS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


class CleanupPass(OptimizePass):
    """Ensures: every node after the producers of its inputs, and no initializer nobody reads."""

    name = "cleanup"
    description = "remove identities and unused nodes, sort topologically"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        work = _look(model)
        modified = False
        if work.identities:
            modified |= IdentityEliminationPass()(model).modified
            work = _look(model)
        if work.unused:
            # (onnx-ir logs, with a stack, every node whose schema it cannot find: each of onnxruntime's own ops)
            with quieted("onnx_ir.passes.common.unused_removal", logging.WARNING):
                modified |= RemoveUnusedNodesPass()(model).modified
        if work.unused or work.opsets:
            modified |= RemoveUnusedOpsetsPass()(model).modified
        if work.out_of_order:
            modified |= TopologicalSortPass()(model).modified
        return ir.passes.PassResult(model, modified=modified)

    def ensures(self, model: ir.Model) -> None:
        produced = set(model.graph.inputs) | set(model.graph.initializers.values())
        for node in model.graph:
            late = [v for v in node.inputs if v is not None and v.producer() is not None and v not in produced]
            if late:
                raise ir.passes.PostconditionError(f"node {node.name!r} reads {late[0].name!r} before its producer")
            produced.update(node.outputs)
        unread = unread_initializers(model.graph)
        if unread:
            raise ir.passes.PostconditionError(f"initializer(s) nobody reads are left: {', '.join(unread[:3])}")


@dataclasses.dataclass(frozen=True)
class _Work:
    identities: bool
    unused: bool
    opsets: bool
    out_of_order: bool


def unread_initializers(graph: ir.Graph) -> list[str]:
    """Initializers no node reads and the graph neither outputs nor takes as an input (what a fold replaced)."""
    outputs, inputs = frozenset(graph.outputs), frozenset(graph.inputs)
    return [name for name, v in graph.initializers.items() if not v.uses() and v not in outputs and v not in inputs]


def _look(model: ir.Model) -> _Work:
    """What the cleanup passes would find to do; everything when the graph has subgraphs or functions."""
    graph = model.graph
    outputs = frozenset(graph.outputs)
    identities = unused = nested = out_of_order = False
    domains = {""}
    produced: set[ir.Value] = set()
    for node in graph:  # plain loops: generator expressions per node cost more than the checks (15k nodes)
        op = node.op_type
        inputs = node.inputs
        identities |= op == "Identity"
        unused |= op == "BatchNormalization" or (bool(inputs) and inputs[-1] is None)
        for v in inputs:
            if v is not None and v not in produced and v.producer() is not None:
                out_of_order = True
        for value in node.outputs:
            unused |= not value.uses() and value not in outputs
            produced.add(value)
        if node.attributes:
            nested |= any(attr.type in _SUBGRAPHS for attr in node.attributes.values())
        domains.add(node.domain)
    if nested or model.functions:
        return _Work(True, True, True, True)
    unused |= bool(unread_initializers(graph))
    opsets = bool(set(model.opset_imports) - domains)
    return _Work(identities, unused, opsets, out_of_order)
