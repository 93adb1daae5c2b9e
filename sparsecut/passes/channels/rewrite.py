"""Rewriting a graph for the channels an analysis removes: the driver, and the edits every rule shares.

`ChannelRewrite` visits every node that touches a changed tensor and lets the node's rule rewrite it. The new
order of the kept channels of a space (`orders`: 2:4 restoring, see `permutation.py`) is an argument: the
analysis says which channels go, the caller says in which order the rest stay.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.analysis import DeadChannelAnalysis
from sparsecut.passes.channels.spaces import Kernel
from sparsecut.passes.nodes import attr_ints, bias_array, constant_array, shape_element
from sparsecut.shapes import SharedShapes

__all__ = ["ChannelRewrite", "rewrite_channels"]


def rewrite_channels(
    model: ir.Model, analysis: DeadChannelAnalysis, orders: Mapping[int, np.ndarray] | None = None
) -> None:
    """Drop the removable channels of `analysis`, keeping those of space s in `orders[s]` where given."""
    ChannelRewrite(model, analysis, orders or {}).run()


class ChannelRewrite:
    def __init__(self, model: ir.Model, analysis: DeadChannelAnalysis, orders: Mapping[int, np.ndarray]) -> None:
        self.graph = model.graph
        self.analysis = analysis
        self.orders = dict(orders)
        # per space: whether its channels lose members, and whether they lose members or change order (asked for
        # every value of every node)
        self._removes = analysis.decision.loses
        self._changes = [removes or s in self.orders for s, removes in enumerate(self._removes)]
        self._kept: dict[int, np.ndarray] = {}
        self._shapes = SharedShapes()  # new weights of equal shape share one frozen shape
        self._names: set[str | None] | None = None  # every name in the graph, gathered when a new one is needed

    def run(self) -> None:
        walk = self.analysis.walk
        plans, rules = walk.plans, walk.rules
        for node in list(self.graph):
            plan = plans.get(node)
            if plan is None:
                continue  # constant, claimed by another node's rule, or a barrier
            rule = rules[node]
            if rule.holds_constants and rule.touched(node, plan, self):
                rule.rewrite(node, plan, self)
        shared = SharedShapes()
        # (old shape, axis, channels kept) → (old shape, kept alive so that its id stays its own; new shape)
        narrowed: dict[tuple[int, int, int], tuple[ir.Shape, ir.Shape]] = {}
        for value, axis in walk.axis.items():  # new shapes, exactly (inference cannot see through computed targets)
            shape = value.shape
            if self._removes[walk.space_of[value]] and shape is not None:
                key = (id(shape), axis, len(self.kept(value)))
                found = narrowed.get(key)
                if found is None:
                    dims = list(shape.dims)
                    dims[axis] = key[2]
                    found = narrowed[key] = (shape, shared(dims))
                value.shape = found[1]

    # --------------------------------------------------------------------------------------------- channels
    def count(self, value: ir.Value) -> int:
        """Channels of `value` before the rewrite."""
        walk = self.analysis.walk
        return walk.spaces[walk.space_of[value]].count

    def removed(self, value: ir.Value) -> np.ndarray:
        return self.analysis.removed(value)

    def kept(self, value: ir.Value) -> np.ndarray:
        """Indices of the channels of `value` that stay, in their new order."""
        s = self.analysis.walk.space_of[value]
        kept = self._kept.get(s)
        if kept is None:
            order = self.orders.get(s)
            kept = self._kept[s] = order if order is not None else self.analysis.kept(value)
        return kept

    def has_removals(self, value: ir.Value | None) -> bool:
        s = self.analysis.walk.space_of.get(value) if value is not None else None
        return s is not None and self._removes[s]

    def changed(self, value: ir.Value | None) -> bool:
        """Whether the channels of `value` lose members or change order."""
        s = self.analysis.walk.space_of.get(value) if value is not None else None
        return s is not None and self._changes[s]

    def constants(self, value: ir.Value) -> np.ndarray:
        """The constant each channel of `value` carries (0 for LIVE ones: `set_state` keeps it so)."""
        return self.analysis.walk.const[value]

    # --------------------------------------------------------------------------------------------- constants
    def weight(self, value: ir.Value | None) -> np.ndarray:
        """A weight its rule's analysis read as a constant."""
        weight = self.analysis.walk.weight(value) if value is not None else None
        assert weight is not None
        return weight

    def kernel(self, value: ir.Value | None) -> Kernel:
        kernel = self.analysis.walk.kernel(value) if value is not None else None
        assert kernel is not None
        return kernel

    def bias(self, node: ir.Node, index: int, count: int) -> np.ndarray:
        """The node's bias as `count` float64 values; its rule's analysis made sure it is constant."""
        bias = bias_array(node, index, count)
        assert bias is not None
        return bias

    def set_bias(self, node: ir.Node, index: int, bias: np.ndarray, dtype: np.dtype) -> None:
        present = len(node.inputs) > index and node.inputs[index] is not None
        if not present and not bias.any():
            return
        if not present:
            node.resize_inputs(index + 1)
        self.set_constant(node, index, bias.astype(dtype))

    def set_shape_element(self, node: ir.Node, position: int, size: int, index: int = 1) -> None:
        """Entry `position` of a shape input (a Reshape's or Expand's target, input 1; Resize's sizes, input 3)
        becomes `size` (a -1 or 0 there follows by itself); the shape is a constant, or a Concat of 1-D pieces
        one of which is."""
        shape_value = node.inputs[index]
        assert shape_value is not None
        source = shape_element(shape_value, position)
        assert source is not None
        holder, entry = source[1]
        array = constant_array(holder)
        assert array is not None
        if int(array[entry]) in (-1, 0):
            return
        new = array.copy()
        new[entry] = size
        if holder is shape_value:
            self.set_constant(node, index, new)
            return
        concat = shape_value.producer()
        assert concat is not None
        self.set_constant(concat, next(i for i, v in enumerate(concat.inputs) if v is holder), new)

    def set_constant(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        """Give input `index` of `node` the tensor `array`: in place when nobody else reads the initializer (the
        PyTorch name stays), through the Transpose that dynamo puts before Linear weights, else a fresh one."""
        array = np.ascontiguousarray(array)
        value = node.inputs[index]
        if value is not None and _only_user(value, node) and value.const_value is not None and value.is_initializer():
            shape = self._shapes(array.shape)
            value.const_value = ir.Tensor(array, name=value.name, shape=shape)
            value.shape = shape
            return
        producer = value.producer() if value is not None else None
        if value is not None and producer is not None and producer.op_type == "Transpose" and _only_user(value, node):
            inner = producer.inputs[0]
            if (
                inner is not None
                and inner.const_value is not None
                and inner.is_initializer()
                and _only_user(inner, producer)
            ):
                perm = attr_ints(producer, "perm") or list(reversed(range(array.ndim)))
                stored = np.ascontiguousarray(np.transpose(array, np.argsort(perm)))
                inner.const_value = ir.Tensor(stored, name=inner.name)
                inner.shape = inner.const_value.shape
                return
        base = value.name if value is not None and value.name else f"{node.name or node.op_type}_input{index}"
        name = self._unique(f"{base}_lean")
        fresh = ir.Value(
            name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype))
        )
        fresh.const_value = ir.Tensor(array, name=name)
        self.graph.register_initializer(fresh)
        node.replace_input_with(index, fresh)

    def _unique(self, base: str) -> str:
        if self._names is None:
            self._names = {v.name for n in self.graph for v in (*n.inputs, *n.outputs) if v is not None}
            self._names |= set(self.graph.initializers) | {v.name for v in self.graph.inputs}
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name


def _only_user(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and all(use.node is node for use in value.uses())
