"""Exporter variants in one form, before the channel rules read the graph (onnxscript rewrite rules).

The dynamo and TorchScript exporters write the same module differently; each rewrite below turns one
TorchScript form into the form the rules match, so that every rule matches one form whichever exporter wrote
the graph. None of them changes what the graph computes (and the equivalence gate checks every written file):

- `Identity(W)` of a constant → W itself. The TorchScript exporter shares equal initializers through Identity
  nodes (the zero biases of every SE block of a random MobileNetV3 are one tensor); a rule reads a weight or bias
  only where it is a constant. The rewrite gives a node its own copy where it changes a shared one.
- `Squeeze(Split(x, [1, …, 1], axis=a)[i], a)` → `Gather(x, i, axis=a)`: how the TorchScript exporter writes
  `unbind` (attention's q, k, v = qkv.unbind(0)); dynamo writes the Gather.
- `Reshape(x, computed shape)` → `Reshape(x, constant)` where shape inference knows the output's shape with at
  most one symbolic dim (written -1): the TorchScript exporter computes `x.view(B, N, C)` from `Shape(x)` at run
  time, and a target computed from another tensor's shape cannot follow the channels that go (onnxscript's own
  rule, as the exporter's clean uses it).
- `Gather(Shape(x), i)` → the constant size of x's axis i, where it is static: the TorchScript exporter reads every
  size it computes with (`b, c, h, w = x.shape`; ShuffleNet's `x.view(b, g, c // g, h, w)`); once the sizes are
  numbers the constant folder computes the rest, and the rules edit the resulting constants as any other (a
  channel count in them is rewritten with the channels that go).
- a Reshape/Expand target Concat that several nodes read → one Concat per reader (`_unshare_shape_concats`).
- `Where(Equal(s, -1), 1, s)` → `s` where no entry of s can be -1 (every one a constant ≥ 0 or a size read from a
  shape), and `Reshape(s, [-1])` of a 1-D s → s: the TorchScript exporter's `expand(b, h, r, n, d)` (repeat_kv)
  replaces -1 entries of the target by 1 at run time; without it the target is the Concat of sizes and constants
  that the rules edit (the K/V head count in it).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import RewritePass
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase, RewriteRuleSet
from onnxscript.rewriter.rules.common import materialize_reshape_shape_rule

from sparsecut.logs import quieted
from sparsecut.passes.nodes import attr_int, constant_array

__all__ = ["canonicalize"]


class IdentityOfConstant(RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Identity(x)

    def check(self, context, x: ir.Value) -> MatchResult:
        result = MatchResult()
        if x.const_value is None or not x.is_initializer():
            return result.fail("not an initializer")
        if context.output_values[0].is_graph_output():
            return result.fail("a graph output keeps its name")
        return result

    def rewrite(self, op, x: ir.Value):
        return x


class SqueezeOfSplit(RewriteRuleClassBase):
    """One output of a Split into size-1 parts, squeezed along the split axis: a Gather of that index."""

    def pattern(self, op, part, axes):
        return op.Squeeze(part, axes)

    def check(self, context, part: ir.Value, axes: ir.Value) -> MatchResult:
        result = MatchResult()
        split = part.producer()
        if split is None or split.op_type != "Split" or split.domain not in ("", "ai.onnx"):
            return result.fail("not a part of a Split")
        x = split.inputs[0]
        squeezed = constant_array(axes)
        if x is None or x.shape is None or squeezed is None or squeezed.size != 1 or part.shape is None:
            return result.fail("unknown axes")
        rank = len(x.shape)
        axis = attr_int(split, "axis", 0) % rank
        if int(squeezed.reshape(-1)[0]) % rank != axis or part.shape[axis] != 1:
            return result.fail("not squeezed along the split axis, or not a part of size 1")
        if any(other.shape is None or other.shape[axis] != 1 for other in split.outputs):
            return result.fail("parts of other sizes: positions are not indices")
        return result

    def rewrite(self, op, part: ir.Value, axes: ir.Value):
        split = part.producer()
        assert split is not None
        index = op.Constant(value=ir.tensor(list(split.outputs).index(part), dtype=ir.DataType.INT64))
        return op.Gather(split.inputs[0], index, axis=attr_int(split, "axis", 0))


class StaticSizeOfShape(RewriteRuleClassBase):
    """A static size read from a tensor's shape at run time: the number itself."""

    def pattern(self, op, x, index):
        return op.Gather(op.Shape(x), index, axis=0)

    def check(self, context, x: ir.Value, index: ir.Value) -> MatchResult:
        result = MatchResult()
        gather = context.output_values[0].producer()
        shape_node = gather.inputs[0].producer() if gather is not None and gather.inputs[0] is not None else None
        positions = constant_array(index)
        if x.shape is None or positions is None or positions.ndim > 1 or shape_node is None or shape_node.attributes:
            return result.fail("not a plain Shape, or a computed index")
        sizes = [x.shape[int(i)] for i in positions.reshape(-1)]
        if not all(isinstance(size, int) for size in sizes):
            return result.fail("a symbolic size")
        self._sizes = np.asarray(sizes if positions.ndim else sizes[0], np.int64)
        return result

    def rewrite(self, op, x: ir.Value, index: ir.Value):
        return op.Constant(value=ir.tensor(self._sizes))


class ExpandTargetOfSizes(RewriteRuleClassBase):
    """`Where(Equal(s, -1), 1, s)`: entries -1 of a target shape made 1 — nothing to do where none can be -1."""

    def pattern(self, op, s, minus, ones):
        return op.Where(op.Equal(s, minus), ones, s)

    def check(self, context, s: ir.Value, minus: ir.Value, ones: ir.Value) -> MatchResult:
        result = MatchResult()
        m, o = _filled(minus, 0), _filled(ones, 0)
        if m is None or o is None or not (np.all(m == -1) and np.all(o == 1)):
            return result.fail("not the -1 → 1 replacement")
        if s.shape is None or len(s.shape) != 1 or not _nonnegative(s, 0):
            return result.fail("an entry may be -1")
        if context.output_values[0].is_graph_output():
            return result.fail("a graph output keeps its name")
        return result

    def rewrite(self, op, s: ir.Value, minus: ir.Value, ones: ir.Value):
        return s


class FlatReshapeOfVector(RewriteRuleClassBase):
    """`Reshape(s, [-1])` of a 1-D tensor: s itself."""

    def pattern(self, op, s, shape):
        return op.Reshape(s, shape)

    def check(self, context, s: ir.Value, shape: ir.Value) -> MatchResult:
        result = MatchResult()
        target = constant_array(shape)
        if target is None or target.tolist() != [-1] or s.shape is None or len(s.shape) != 1:
            return result.fail("not a 1-D tensor reshaped to [-1]")
        if context.output_values[0].is_graph_output():
            return result.fail("a graph output keeps its name")
        return result

    def rewrite(self, op, s: ir.Value, shape: ir.Value):
        return s


def _filled(value: ir.Value, depth: int) -> np.ndarray | None:
    """A small tensor computed from constants only, through the ConstantOfShape that the constant folder leaves
    (it never folds one) and arithmetic on it: its value; None where it is computed from anything else."""
    array = constant_array(value)
    if array is not None or depth > 4:
        return array
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "ConstantOfShape" and node.inputs[0] is not None:
        shape = constant_array(node.inputs[0])
        fill = node.attributes.get("value")
        if shape is None or shape.size > 1 or int(np.prod(shape)) > 64:
            return None
        filler = fill.as_tensor().numpy().reshape(-1)[:1] if fill is not None else np.zeros(1, np.float32)
        return np.full(shape.astype(np.int64), filler[0], filler.dtype)
    if node.op_type in ("Mul", "Add") and len(node.inputs) == 2:
        a, b = (_filled(v, depth + 1) if v is not None else None for v in node.inputs)
        if a is not None and b is not None:
            return a * b if node.op_type == "Mul" else a + b
    return None


def _nonnegative(value: ir.Value, depth: int) -> bool:
    """Whether every entry of a shape value is ≥ 0: constants ≥ 0 and sizes read from shapes, moved around."""
    array = constant_array(value)
    if array is not None:
        return bool(np.all(array >= 0))
    node = value.producer()
    if node is None or depth > 8:
        return False
    if node.op_type == "Shape":
        return True
    if node.op_type in ("Gather", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Cast", "Slice"):
        return node.inputs[0] is not None and _nonnegative(node.inputs[0], depth + 1)
    if node.op_type == "Concat":
        return all(v is not None and _nonnegative(v, depth + 1) for v in node.inputs)
    return False


_RULES = RewriteRuleSet(
    [
        IdentityOfConstant.rule(),
        SqueezeOfSplit.rule(),
        StaticSizeOfShape.rule(),
        materialize_reshape_shape_rule,
        ExpandTargetOfSizes.rule(),
        FlatReshapeOfVector.rule(),
    ]
)


def canonicalize(model: ir.Model) -> bool:
    """Rewrite the exporter variants above in place; True when any was found."""
    unshared = _unshare_shape_concats(model.graph)
    if not any(_candidate(node) for node in model.graph):
        return unshared  # (the rewriter visits every node: 15k-node graphs pay for nothing to find)
    with quieted("onnxscript.rewriter"):
        modified = RewritePass(_RULES)(model).modified
    if modified:
        RemoveUnusedNodesPass()(model)
    return modified or unshared


def _unshare_shape_concats(graph: ir.Graph) -> bool:
    """A Reshape/Expand target computed by a Concat that other nodes read too (dynamo computes [B, N, C] once for
    every Reshape of that shape, in every layer) gets a Concat of its own: a rule edits one node's target (the
    channel count in it) without changing another's."""
    changed = False
    for node in list(graph):
        if node.op_type not in ("Reshape", "Expand") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        target = node.inputs[1]
        concat = target.producer()
        if concat is None or concat.op_type != "Concat" or len(target.uses()) < 2:
            continue
        copy = ir.Node("", "Concat", list(concat.inputs), attributes=list(concat.attributes.values()),
                       name=f"{concat.name}_for_{node.name}")  # fmt: skip
        copy.outputs[0].name = f"{target.name}_for_{node.name}"
        copy.outputs[0].shape = target.shape
        if target.dtype is not None:
            copy.outputs[0].dtype = target.dtype
        graph.insert_before(node, copy)
        node.replace_input_with(1, copy.outputs[0])
        changed = True
    return changed


def _candidate(node: ir.Node) -> bool:
    op = node.op_type
    if op == "Identity":
        return node.inputs[0] is not None and node.inputs[0].const_value is not None
    if op == "Squeeze":
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        return producer is not None and producer.op_type == "Split"
    if op == "Gather":
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        return producer is not None and producer.op_type == "Shape"
    if op == "Where":
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        return producer is not None and producer.op_type == "Equal"
    if op != "Reshape" or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    target = constant_array(node.inputs[1])
    return target is None or target.tolist() == [-1]
