"""Attention heads: finding a multi-head attention block in the exported graph (its rule is rules/attention.py).

Heads are recognized from the Softmax outward, over the ops exporters emit (timm's fused qkv with its
Reshape (B, N, 3, H, D) → Transpose → Slice/Gather unbind, Hugging Face's separate q/k/v Reshape → Transpose,
SDPA decomposed into scaled MatMul → (mask Add) → Softmax → (NaN guard) → MatMul, kᵀ as a Transpose or as
Reshape → Transpose → Reshape, RoPE's Slice/Neg/Concat/Mul on the last axis, GQA's Unsqueeze → Expand → Reshape
of K/V) until the block is closed: its *entries* are the Reshapes that split projection outputs [B, N, H·D] into
heads, its *exit* the Reshape that merges heads back into [B, N, H·D] for the output projection. Anything else
that reads or writes a head-carrying tensor (a constant laid out per head, an op outside this list) leaves the
block unrecognized: its nodes stay barriers.

The math (exact conditions, DESIGN.md § Attention): out_h = softmax(q_h k_hᵀ·s + mask) · v_h, and the exit
feature (h, i) is out_h[:, i].

- v_h[:, i] ≡ 0 (V weights and bias zero) → out_h[:, i] = 0.
- v_h[:, i] ≡ c (V weights zero, bias c) → out_h[:, i] = c, because softmax rows sum to 1 — only where the
  Softmax feeds the MatMul directly (a NaN guard after it zeroes fully masked rows: then it stays LIVE). The
  constant reaches the output projection, whose bias absorbs it (b_o += c·W_o[h·D + i]), like any constant channel.
- a head whose exit features are not needed (output-projection columns zero) contributes nothing.
- q_h or k_h alone zero does not make the head constant (uniform attention averages v): the head stays, LIVE.

Head dims (DESIGN.md: exact conditions), for separate q/k/v projections:

- the scores sum q_{h,d}·k_{kv(h),d} over d: a pair (h, d) contributes nothing when q_d ≡ 0, and only a per-row
  constant (which the Softmax ignores) when k_d has zero weights (any bias) — then q_d and k_d go together, as long
  as the scale stays the constant it was: a scale computed at run time from a q/k shape keeps q/k dims (sparsecut's
  fold-constants makes it a constant first where the shape is static);
- exit feature (h, i) carries v_{kv(h), i}: v dims go with their output-projection columns;
- never through RoPE (dims rotate in pairs, cos/sin are laid out per dim) or a norm over the head dim (no match).

One reshape splits each projection into heads of one size, so every kept head keeps the same number of q/k dims
and of v dims (dead ones stay to even them out, reported), and a head goes only when both its q/k and v dims go.
With GQA, q dims of a group are coupled through their shared k; a K/V head goes only with every Q head that shares
it — except where heads go whole (rotary and a KV cache fix the head dims: a decoder), where a query head may go
alone as long as every live group keeps the same number (rules/attention.py, `constrain_groups`). A KV cache (a past
input concatenated with K or V, a present output) is part of the block: its head count follows the kept K/V heads. The rewrite writes the new head counts and head dims into the shape constants of the block's Reshapes and
Expands (or leaves -1, 0, and sizes computed from the block's own shapes to follow). timm's fused qkv keeps whole
heads (q, k and v share one reshape).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.rules.base import elementwise_ops
from sparsecut.passes.nodes import attr_int, attr_ints, constant_array, same_dim, shape_element

__all__ = ["AttentionBlock", "Entry", "Label", "NoMatch", "find_attention_blocks"]

# ops on head tensors that have no channel rule of their own: the scores' Softmax and masking
_MASKING = frozenset({"Softmax", "Where", "IsNaN", "Not", "CastLike"})
_SHAPE_OPS = {"Shape", "Slice", "Gather", "Squeeze", "Unsqueeze", "Concat", "Reshape", "Cast", "Mul", "Div", "Add",
              "Sub", "ReduceProd", "Identity", "Constant"}  # fmt: skip


class NoMatch(Exception):
    """The subgraph around a Softmax is not an attention block this rule can rewrite exactly."""


@dataclasses.dataclass(frozen=True)
class Label:
    axis: int  # the head axis of the tensor
    kv: bool = False  # counts K/V heads (GQA) rather than Q heads
    merged: bool = False  # batch and heads merged into axis 0 (kᵀ as Reshape → Transpose → Reshape)
    dim: int | None = None  # the head-dim axis, where the tensor has one (not the scores)
    part: str = ""  # "qk": carries q or k dims (contracted by the scores); "v": carries v dims; "": neither

    def moved(self, axis: int, dim: int | None) -> Label:
        return dataclasses.replace(self, axis=axis, dim=dim)


@dataclasses.dataclass
class Entry:
    node: ir.Node  # the Reshape that splits the projection output into heads
    value: ir.Value  # the projection output [B, N, F], F = (3 ·) H · D
    kv: bool
    fused: bool  # [B, N, 3, H, D]


@dataclasses.dataclass
class AttentionBlock:
    heads: int
    kv_heads: int
    head_dim: int
    nodes: list[ir.Node]  # in graph order
    labels: dict[ir.Value, Label]
    entries: list[Entry]
    exit_node: ir.Node
    exit: ir.Value  # [B, N, H · D], read by the output projection
    v_entry: Entry
    v_slot: int  # fused entries: which of the 3 is V
    stochastic: bool  # the attention weights that multiply V sum to 1 in every row
    anchor: ir.Node  # the first node after every entry's producer: where the walk analyzes the block
    q_entry: Entry | None = None  # separate q/k/v entries (None for timm's fused qkv)
    k_entry: Entry | None = None
    fixed_dims: frozenset[str] = frozenset()  # "qk", "v": parts whose head dims must stay whole
    cache: tuple[ir.Value, ...] = ()  # KV cache graph inputs/outputs [B, H_kv, T, D]: their head count changes

    @property
    def separate(self) -> bool:
        return self.q_entry is not None and self.k_entry is not None and not self.v_entry.fused

    def kv_of(self, head: np.ndarray) -> np.ndarray:
        """The K/V head each Q head reads (GQA: Q heads share K/V heads in consecutive groups)."""
        return head // (self.heads // self.kv_heads)

    def v_features(self) -> np.ndarray:
        """For each exit feature (h, i): the feature of the V entry's projection output that it carries."""
        h, i = np.divmod(np.arange(self.heads * self.head_dim), self.head_dim)
        if self.v_entry.fused:
            return self.v_slot * self.heads * self.head_dim + h * self.head_dim + i
        return self.kv_of(h) * self.head_dim + i


NOT_SCORES = "scores are not [B, H, N, N]"  # a Softmax that is no attention's (a classifier's): nothing to say


def find_attention_blocks(graph: ir.Graph) -> tuple[list[AttentionBlock], dict[ir.Node, str]]:
    """Every attention block around a Softmax that this rule understands; the others are left alone, and where
    their Softmax reads [B, H, N, N] scores (an attention block after all), why the tracer gave up."""
    blocks: list[AttentionBlock] = []
    refused: dict[ir.Node, str] = {}
    taken: set[ir.Node] = set()
    order = {node: i for i, node in enumerate(graph)}
    elementwise = elementwise_ops() | _MASKING
    for node in graph:
        if node.op_type != "Softmax" or node in taken or node.domain not in ("", "ai.onnx"):
            continue
        try:
            block = _Tracer(node, order, elementwise).trace()
        except NoMatch as exc:
            if str(exc) != NOT_SCORES:
                refused[node] = f"attention not recognized ({exc})"
            continue
        if taken.isdisjoint(block.nodes):
            taken.update(block.nodes)
            blocks.append(block)
    return blocks, refused


class _Tracer:
    def __init__(self, softmax: ir.Node, order: dict[ir.Node, int], elementwise: frozenset[str]) -> None:
        self.softmax = softmax
        self.order = order
        self.elementwise = elementwise
        self.labels: dict[ir.Value, Label] = {}
        self.nodes: set[ir.Node] = set()
        self.entries: list[Entry] = []
        self.exits: list[tuple[ir.Node, ir.Value]] = []
        self.heads = 0
        self.kv_heads = 0
        self.head_dim = 0
        self.pending: list[tuple[ir.Node, int | None]] = []  # shape checks, run once every label is known
        self.fixed_dims: set[str] = set()  # parts ("qk", "v") whose head dims must stay (RoPE, per-dim constants)
        self.cache: list[ir.Value] = []  # KV cache inputs and outputs the block reads and writes
        self._via: ir.Value = softmax.inputs[0]  # type: ignore[assignment]

    # ------------------------------------------------------------------------------------------ closure
    def trace(self) -> AttentionBlock:
        scores = self.softmax.inputs[0]
        if scores is None or scores.shape is None or len(scores.shape) != 4:
            raise NoMatch(NOT_SCORES)
        if attr_int(self.softmax, "axis", -1) % 4 != 3:
            raise NoMatch(NOT_SCORES)  # a softmax over another axis (YOLO's DFL): no attention's
        heads = scores.shape[1]
        if not isinstance(heads, int) or heads < 2:
            raise NoMatch("no static head axis")
        self.heads = heads
        self.kv_heads = heads
        self._label(scores, Label(1))
        work = collections.deque([scores])  # breadth first: q, k and v are labeled from the scores outward
        while work:
            value = work.popleft()
            for node in self._neighbours(value):
                if node in self.nodes:
                    continue
                self.nodes.add(node)
                self._via = value
                for new in self._propagate(node):
                    work.append(new)
        if len(self.exits) != 1 or not self.entries:
            raise NoMatch("not one exit")
        for node, position in self.pending:
            if position is None:
                self._verify_merged(node)
            else:
                self._verify_count(node, position)
        exit_node, exit_value = self.exits[0]
        v_entry, v_slot = self._v_source()
        q_entry, k_entry = self._qk_sources()
        self._check_dims()
        nodes = sorted(self.nodes, key=self.order.__getitem__)
        ready = max(self.order.get(e.value.producer(), -1) for e in self.entries)  # type: ignore[arg-type]
        return AttentionBlock(
            heads=self.heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            nodes=nodes,
            labels=self.labels,
            entries=self.entries,
            exit_node=exit_node,
            exit=exit_value,
            v_entry=v_entry,
            v_slot=v_slot,
            stochastic=self._stochastic(),
            anchor=next(n for n in nodes if self.order[n] > ready),
            q_entry=q_entry,
            k_entry=k_entry,
            fixed_dims=frozenset(self.fixed_dims),
            cache=tuple(self.cache),
        )

    def _label(self, value: ir.Value, label: Label) -> bool:
        """Record `value`'s head axis; False when it was known already (and agrees)."""
        known = self.labels.get(value)
        if known is not None:
            if dataclasses.replace(known, part=label.part) != label:
                raise NoMatch("a tensor with two head axes")
            if known.part != label.part:  # timm's [3, B, H, N, D] carries q, k and v dims at once
                self.labels[value] = dataclasses.replace(known, part="mixed")
                self.fixed_dims.update(("qk", "v"))
            return False
        if constant_array(value) is not None:
            raise NoMatch("heads reach a constant")
        if value.shape is None or not (0 <= label.axis < len(value.shape)):
            raise NoMatch("unknown rank")
        if value.is_graph_output() or value.is_graph_input():
            self._cache(value, label)
        if not label.merged:
            count = value.shape[label.axis]
            expected = self.kv_heads if label.kv else self.heads
            if count != expected:
                raise NoMatch("head count differs")
        self.labels[value] = label
        return True

    def _cache(self, value: ir.Value, label: Label) -> None:
        """A KV cache tensor (past input, present output): [B, H_kv, T, D], heads on axis 1, their dims last. Its
        head count follows the kept K/V heads (the model's interface changes); its head dims stay whole."""
        assert value.shape is not None
        if label.merged or len(value.shape) != 4 or label.axis != 1 or label.dim != 3 or label.part not in ("qk", "v"):
            raise NoMatch(f"heads reach the graph's input/output {value.name!r} in another layout than a KV cache's")
        if not isinstance(value.shape[1], int):
            raise NoMatch(f"the KV cache {value.name!r} has no static head count (axis 1 is {value.shape[1]})")
        self.cache.append(value)
        self.fixed_dims.add(label.part)

    def _neighbours(self, value: ir.Value) -> list[ir.Node]:
        found = []
        producer = value.producer()
        if producer is not None:
            found.append(producer)
        for use in value.uses():
            if use.node.op_type == "Shape":
                continue  # reads the shape only: computed shapes follow the new head count
            found.append(use.node)
        return found

    def _propagate(self, node: ir.Node) -> list[ir.Value]:
        """Label the head-carrying inputs and outputs of `node` from the ones known; return the newly labeled."""
        if node.domain not in ("", "ai.onnx"):
            raise NoMatch(f"{node.op_type} in another domain")
        op = node.op_type
        handler = {
            "MatMul": self._matmul,
            "Transpose": self._transpose,
            "Slice": self._slice,
            "Concat": self._concat,
            "Squeeze": self._squeeze,
            "Unsqueeze": self._squeeze,
            "Gather": self._gather,
            "Split": self._split,
            "Expand": self._expand,
            "Reshape": self._reshape,
        }.get(op)
        if handler is None and op in self.elementwise:
            handler = self._elementwise
        if handler is None:
            raise NoMatch(f"{op} touches heads")
        return [v for v, label in handler(node).items() if self._label(v, label)]

    def _known(self, node: ir.Node) -> tuple[ir.Value, Label]:
        """The labeled value through which the walk reached `node` (labels flow from it to the others)."""
        return self._via, self.labels[self._via]

    def _elementwise(self, node: ir.Node) -> dict[ir.Value, Label]:
        """Broadcasting ops: operands with the head dim at the (right-aligned) head axis carry heads; others must
        broadcast over it (a mask [B, 1, N, N], RoPE's cos/sin [1, 1, N, D]) and come from outside the block."""
        if len([o for o in node.outputs if o.uses() or o.is_graph_output()]) != 1:
            raise NoMatch("multiple outputs")
        known, label = self._known(node)
        if label.merged:
            raise NoMatch("elementwise on merged heads")
        y = node.outputs[0]
        if y.shape is None or known.shape is None:
            raise NoMatch("unknown rank")
        shift = len(y.shape) - len(known.shape) if known is not y else 0
        axis = label.axis + shift
        dim = label.dim + shift if label.dim is not None else None
        if node.op_type == "Softmax" and attr_int(node, "axis", -1) % len(y.shape) in (axis, dim):
            raise NoMatch("softmax over heads")
        found = {y: label.moved(axis, dim)}
        for value in node.inputs:
            if value is None or value is y:
                continue
            if value.shape is None:
                raise NoMatch("unknown rank")
            offset = len(y.shape) - len(value.shape)
            aligned = axis - offset
            size = value.shape[aligned] if aligned >= 0 else 1
            expected = self.kv_heads if label.kv else self.heads
            if size == 1 and (expected != 1 or constant_array(value) is not None or _spreads(value, aligned)):
                # (one K/V head: size 1 is it, unless the tensor is broadcast over more heads elsewhere — RoPE's
                # cos/sin, shared by q and the one k head of multi-query attention)
                if value in self.labels:
                    raise NoMatch("a head tensor broadcast")
                if dim is not None and dim - offset >= 0 and value.shape[dim - offset] != 1:
                    self.fixed_dims.add(label.part)  # laid out per head dim (RoPE's cos/sin): those dims stay
                continue  # broadcast over heads: an outside operand (mask, cos/sin, scalar)
            if constant_array(value) is not None:
                raise NoMatch("a constant laid out per head")
            found[value] = label.moved(aligned, dim - offset if dim is not None else None)
        return found

    def _matmul(self, node: ir.Node) -> dict[ir.Value, Label]:
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if a is None or b is None or a.shape is None or b.shape is None or y.shape is None:
            raise NoMatch("unknown rank")
        if constant_array(a) is not None or constant_array(b) is not None or not len(a.shape) == len(b.shape) == 4:
            raise NoMatch("not a batched MatMul of two activations")  # a projection touching heads
        known, label = self._known(node)
        if label.axis != 1 or label.merged:
            raise NoMatch("heads not a batch axis")
        scores = (known is y and label.part == "") or (known is not y and label.part == "qk")
        if scores:  # q [B, H, N, D] · kᵀ [B, H, D, N]: the head dims are contracted
            found = {a: Label(1, dim=3, part="qk"), b: Label(1, dim=2, part="qk"), y: Label(1)}
        else:  # weights [B, H, N, N] · v [B, H, N, D]
            found = {a: Label(1), b: Label(1, dim=3, part="v"), y: Label(1, dim=3, part="v")}
        if known in found and found[known] != label:
            raise NoMatch("not an attention MatMul")
        return found

    def _transpose(self, node: ir.Node) -> dict[ir.Value, Label]:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None
        perm = attr_ints(node, "perm")
        if perm is None:
            raise NoMatch("transpose without perm")
        known, label = self._known(node)
        if known is x:
            return {y: label.moved(perm.index(label.axis), perm.index(label.dim) if label.dim is not None else None)}
        return {x: label.moved(perm[label.axis], perm[label.dim] if label.dim is not None else None)}

    def _slice(self, node: ir.Node) -> dict[ir.Value, Label]:
        """Slices of other axes (RoPE's halves); or, on timm's [3, B, H, N, D], the unbind of q, k, v."""
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None:
            raise NoMatch("unknown rank")
        axes = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        starts = constant_array(node.inputs[1])
        if len(node.inputs) > 3 and node.inputs[3] is not None and axes is None:
            raise NoMatch("computed slice axes")
        if starts is None or constant_array(node.inputs[2]) is None:
            raise NoMatch("computed slice bounds")
        _, label = self._known(node)
        if label.merged:
            raise NoMatch("slice of merged heads")
        rank = len(x.shape)
        sliced = [int(a) % rank for a in (axes.reshape(-1) if axes is not None else range(starts.size))]
        if label.axis in sliced:
            raise NoMatch("slice of the head axis")
        if label.dim in sliced:
            self.fixed_dims.add(label.part)  # RoPE's halves: dims rotate in pairs, they stay
        return {x: label, y: label}

    def _concat(self, node: ir.Node) -> dict[ir.Value, Label]:
        _, label = self._known(node)
        y = node.outputs[0]
        if y.shape is None or label.merged or attr_int(node, "axis", 0) % len(y.shape) == label.axis:
            raise NoMatch("concat along heads")
        if attr_int(node, "axis", 0) % len(y.shape) == label.dim:
            self.fixed_dims.add(label.part)  # RoPE's rotate-half: dims stay
        found = {y: label}
        for value in node.inputs:
            if value is None or constant_array(value) is not None:
                raise NoMatch("constant concatenated to heads")
            found[value] = label
        return found

    def _squeeze(self, node: ir.Node) -> dict[ir.Value, Label]:
        x, y = node.inputs[0], node.outputs[0]
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        axes = constant_array(axes_value) if axes_value is not None else None
        if x is None or x.shape is None or y.shape is None or axes is None:
            raise NoMatch("squeeze axes")
        known, label = self._known(node)
        if label.merged:
            raise NoMatch("squeeze of merged heads")
        squeeze = node.op_type == "Squeeze"
        changed = sorted({int(a) % len(x.shape if squeeze else y.shape) for a in axes.reshape(-1)})

        def to_x(axis: int) -> int | None:  # an axis of the known value, as an axis of x
            if known is x:
                return axis
            return _insert_axis(axis, changed) if squeeze else _drop_axis(axis, changed)

        def to_y(axis: int) -> int | None:
            return _drop_axis(axis, changed) if squeeze else _insert_axis(axis, changed)

        x_axis = to_x(label.axis)
        x_dim = to_x(label.dim) if label.dim is not None else None
        y_axis = to_y(x_axis) if x_axis is not None else None
        y_dim = to_y(x_dim) if x_dim is not None else None
        if x_axis is None or y_axis is None or (label.dim is not None and (x_dim is None or y_dim is None)):
            raise NoMatch("squeezes heads")
        return {x: label.moved(x_axis, x_dim), y: label.moved(y_axis, y_dim)}

    def _split(self, node: ir.Node) -> dict[ir.Value, Label]:
        """The TorchScript exporter's unbind: Split [3, B, H, N, D] along its leading axis, then Squeeze."""
        x = node.inputs[0]
        if x is None or x.shape is None:
            raise NoMatch("unknown rank")
        _, label = self._known(node)
        axis = attr_int(node, "axis", 0) % len(x.shape)
        if label.merged or axis in (label.axis, label.dim):
            raise NoMatch("split of heads")
        if len(node.inputs) > 1 and node.inputs[1] is not None and constant_array(node.inputs[1]) is None:
            raise NoMatch("computed split sizes")
        return {value: label for value in (x, *node.outputs)}

    def _gather(self, node: ir.Node) -> dict[ir.Value, Label]:
        """timm's unbind: q = qkv[0] along the leading axis of [3, B, H, N, D]."""
        x, index, y = node.inputs[0], node.inputs[1], node.outputs[0]
        indices = constant_array(index)
        if x is None or indices is None or indices.ndim != 0:
            raise NoMatch("gather with computed or non-scalar index")
        axis = attr_int(node, "axis", 0)
        known, label = self._known(node)
        if label.merged:
            raise NoMatch("gather of merged heads")

        def to_x(a: int) -> int:
            return a if known is x else a + (1 if axis <= a else 0)

        x_axis = to_x(label.axis)
        x_dim = to_x(label.dim) if label.dim is not None else None
        if axis in (x_axis, x_dim):
            raise NoMatch("gather along heads")
        y_dim = x_dim - (axis < x_dim) if x_dim is not None else None
        return {x: label.moved(x_axis, x_dim), y: label.moved(x_axis - (axis < x_axis), y_dim)}

    def _expand(self, node: ir.Node) -> dict[ir.Value, Label]:
        """GQA's repeat of K/V heads: [B, Hkv, 1, N, D] → [B, Hkv, r, N, D]; the head axis itself is not expanded."""
        x, shape, y = node.inputs[0], node.inputs[1], node.outputs[0]
        _, label = self._known(node)
        if x is None or shape is None or x.shape is None or y.shape is None or label.merged:
            raise NoMatch("expand")
        if len(x.shape) != len(y.shape) or x.shape[label.axis] != y.shape[label.axis]:
            raise NoMatch("expand of the head axis")
        self._check_count(node, label.axis)
        return {x: label, y: label}

    def _reshape(self, node: ir.Node) -> dict[ir.Value, Label]:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or y.shape is None:
            raise NoMatch("unknown rank")
        known, label = self._known(node)
        xs, ys = list(x.shape), list(y.shape)
        shifted = label.dim + 1 if label.dim is not None else None  # [B·H, …] ↔ [B, H, …]: one axis more
        lowered = label.dim - 1 if label.dim is not None else None
        if label.merged:  # kᵀ as Reshape [B·H, N, D] → Transpose → Reshape [B, H, D, N]
            if known is x and len(xs) == 3 and len(ys) == 4:
                self._check_count(node, 1)
                return {y: Label(1, label.kv, dim=shifted, part=label.part)}
            if known is y and len(xs) == 4 and len(ys) == 3:
                self._check_merged(node)
                return {x: Label(1, label.kv, dim=shifted, part=label.part)}
            raise NoMatch("reshape of merged heads")
        if known is y and len(xs) == 3 and (len(ys), label.axis) in ((4, 2), (5, 3)):
            return self._entry(node, x, y, label)
        if known is x and len(xs) == 4 and len(ys) == 3 and label.axis == 2:
            return self._exit(node, x, y)
        if known is y and len(xs) == 5 and len(ys) == 4 and label.axis == 1 and not label.kv:
            return self._gqa(node, x, y, label)  # [B, Hkv, r, N, D] → [B, H, N, D]
        if label.axis == 1 and known is x and len(xs) == 4 and len(ys) == 3:
            self._check_merged(node)
            return {y: Label(0, label.kv, merged=True, dim=lowered, part=label.part)}
        if label.axis == 1 and known is y and len(xs) == 3 and len(ys) == 4:
            self._check_count(node, 1)
            return {x: Label(0, label.kv, merged=True, dim=lowered, part=label.part)}
        raise NoMatch("reshape of heads")

    def _entry(self, node: ir.Node, x: ir.Value, y: ir.Value, label: Label) -> dict[ir.Value, Label]:
        """[B, N, H·D] → [B, N, H, D], or timm's fused [B, N, 3·H·D] → [B, N, 3, H, D]."""
        assert x.shape is not None and y.shape is not None
        ys = list(y.shape)
        fused = len(ys) == 5
        head_axis = 3 if fused else 2
        dim = ys[-1]
        if label.axis != head_axis or not isinstance(dim, int) or not same_dim(x.shape[0], ys[0]):
            raise NoMatch("entry layout")
        if fused and (ys[2] != 3 or label.kv):
            raise NoMatch("fused entry layout")
        if self.head_dim and self.head_dim != dim:
            raise NoMatch("head dims differ")
        self.head_dim = dim
        count = self.kv_heads if label.kv else self.heads
        if x.shape[2] != (3 if fused else 1) * count * dim:
            raise NoMatch("entry features")
        self._check_count(node, head_axis)
        if fused:
            self.fixed_dims.update(("qk", "v"))  # q, k and v share one reshape: one head dim for all three
        self.entries.append(Entry(node, x, label.kv, fused))
        return {}

    def _exit(self, node: ir.Node, x: ir.Value, y: ir.Value) -> dict[ir.Value, Label]:
        """[B, N, H, D] → [B, N, H·D] for the output projection."""
        assert x.shape is not None and y.shape is not None
        dim = x.shape[3]
        if not isinstance(dim, int) or y.shape[2] != self.heads * dim or (self.head_dim and self.head_dim != dim):
            raise NoMatch("exit layout")
        self.head_dim = dim
        element = shape_element(node.inputs[1], 2) if node.inputs[1] is not None else None
        if element is None and not self._follows(node, 2):
            raise NoMatch("exit shape not editable")
        self.exits.append((node, y))
        return {}

    def _gqa(self, node: ir.Node, x: ir.Value, y: ir.Value, label: Label) -> dict[ir.Value, Label]:
        assert x.shape is not None
        kv_heads, repeat = x.shape[1], x.shape[2]
        if not isinstance(kv_heads, int) or not isinstance(repeat, int) or kv_heads * repeat != self.heads:
            raise NoMatch("GQA layout")
        if self.kv_heads not in (self.heads, kv_heads):
            raise NoMatch("two GQA layouts")
        self.kv_heads = kv_heads
        self._check_count(node, 1)
        return {x: Label(1, kv=True, dim=4 if label.dim == 3 else None, part=label.part)}

    # ------------------------------------------------------------------------------------------ shapes
    def _check_count(self, node: ir.Node, position: int) -> None:
        self.pending.append((node, position))

    def _check_merged(self, node: ir.Node) -> None:
        self.pending.append((node, None))

    def _verify_count(self, node: ir.Node, position: int) -> None:
        """The shape input of a Reshape/Expand names the head count at `position` in a way the rewrite can set:
        an editable constant (or -1, or 0 copying the input's head dim), or computed from this block's shapes."""
        shape = node.inputs[1]
        if shape is None:
            raise NoMatch("no shape")
        array = constant_array(shape)
        if array is not None:
            if int(array.reshape(-1)[position]) == 0 and node.op_type == "Reshape":
                x = node.inputs[0]
                if x is None or self.labels.get(x, Label(-1)).axis != position:
                    raise NoMatch("a 0 that copies another axis")
            return
        if shape_element(shape, position) is None and not self._follows(node, position):
            raise NoMatch("head count not editable")

    def _verify_merged(self, node: ir.Node) -> None:
        """A Reshape that merges batch and heads into axis 0: that size must be -1 or computed from the block's
        shapes, never a constant B·H."""
        shape = node.inputs[1]
        array = constant_array(shape) if shape is not None else None
        if array is not None:
            if int(array.reshape(-1)[0]) != -1:
                raise NoMatch("merged heads with a constant size")
        elif not self._follows(node, None):
            raise NoMatch("merged heads with a shape from elsewhere")

    def _follows(self, node: ir.Node, position: int | None) -> bool:
        """Whether the shape input of `node` is computed from shapes of this block's tensors only (so that it follows
        their new head count), and `position` of it is not a constant."""
        shape = node.inputs[1]
        if shape is None:
            return False
        if position is not None:
            found = shape_element(shape, position)
            if found is not None:  # a constant piece: editable, fine
                return True
        seen: set[ir.Value] = set()

        def ok(value: ir.Value | None) -> bool:
            if value is None or value in seen or constant_array(value) is not None:
                return True
            seen.add(value)
            producer = value.producer()
            if producer is None or producer.op_type not in _SHAPE_OPS:
                return False
            if producer.op_type == "Shape":
                source = producer.inputs[0]
                return source is not None and source in self.labels
            return all(ok(v) for v in producer.inputs)

        return ok(shape)

    # ------------------------------------------------------------------------------------------ semantics
    def _v_source(self) -> tuple[Entry, int]:
        """The entry V comes from, and for a fused entry which of its three parts, following the second input of the
        MatMul that applies the attention weights back through single-input ops."""
        av = next((n for n in self.nodes if n.op_type == "MatMul" and self._from_softmax(n.inputs[0])), None)
        if av is None:
            raise NoMatch("no attention-times-V MatMul")
        value, slot = av.inputs[1], -1
        while value is not None:
            node = value.producer()
            if node is None or node not in self.nodes:
                raise NoMatch("V from outside")
            entry = next((e for e in self.entries if e.node is node), None)
            if entry is not None:
                if entry.fused and slot < 0:
                    raise NoMatch("fused V part unknown")
                return entry, slot
            dynamic = [v for v in node.inputs if v is not None and constant_array(v) is None and v in self.labels]
            if node.op_type == "Concat":  # V appended to the cache's past: V itself goes on
                dynamic = [v for v in dynamic if v not in self.cache]
                if len(dynamic) == 1:
                    value = dynamic[0]
                    continue
            if node.op_type in ("Slice", "Gather", "Split") and node.inputs[0] is not None:
                fused = node.inputs[0].shape is not None and node.inputs[0].shape[0] == 3
                if node.op_type == "Split" and fused and attr_int(node, "axis", 0) == 0:
                    slot = list(node.outputs).index(value)  # sizes [1, 1, 1]: output i is part i
                index = constant_array(node.inputs[1]) if node.op_type != "Split" else None
                if index is not None and fused:
                    slot = int(index.reshape(-1)[0])
            elif len(dynamic) != 1:
                raise NoMatch("V mixed with another head tensor")
            value = node.inputs[0]
        raise NoMatch("no V entry")

    def _qk_sources(self) -> tuple[Entry | None, Entry | None]:
        """The entries the scores' two operands come from (any path inside the block: RoPE adds two branches)."""
        scores = next((n for n in self.nodes if n.op_type == "MatMul" and n.inputs[0] in self.labels
                       and self.labels[n.inputs[0]].part in ("qk", "mixed")), None)  # fmt: skip
        if scores is None:
            raise NoMatch("no scores MatMul")
        found = []
        for start in scores.inputs[:2]:
            reached, work, seen = set(), [start], set()
            while work:
                value = work.pop()
                if value is None or value in seen:
                    continue
                seen.add(value)
                node = value.producer()
                if node is None or node not in self.nodes:
                    continue
                entry = next((e for e in self.entries if e.node is node), None)
                if entry is not None:
                    reached.add(id(entry))
                    continue
                work.extend(v for v in node.inputs if v is not None and v in self.labels)
            entries = [e for e in self.entries if id(e) in reached]
            found.append(entries[0] if len(entries) == 1 and not entries[0].fused else None)
        return found[0], found[1]

    def _check_dims(self) -> None:
        """Head dims stay where the rewrite could not set them: a shape constant of the block that names the head
        dim in a way it cannot edit, or a scale computed at run time from a q/k shape (1/√d would change)."""
        for node in self.nodes:
            if node.op_type not in ("Reshape", "Expand"):
                continue
            label = self.labels.get(node.outputs[0])
            if label is None or label.dim is None or label.part not in ("qk", "v"):
                continue
            shape = node.inputs[1]
            array = constant_array(shape) if shape is not None else None
            if array is not None:
                if int(array.reshape(-1)[label.dim]) == 0:
                    self.fixed_dims.add(label.part)
            elif shape is None or (shape_element(shape, label.dim) is None and not self._follows(node, label.dim)):
                self.fixed_dims.add(label.part)
        for value, label in self.labels.items():
            if label.part not in ("qk", "mixed"):
                continue
            for use in value.uses():
                if use.node.op_type == "Shape" and _feeds_arithmetic(use.node.outputs[0]):
                    self.fixed_dims.add("qk")  # the scale 1/√d computed from the shape at run time

    def _from_softmax(self, value: ir.Value | None) -> bool:
        while value is not None:
            node = value.producer()
            if node is self.softmax:
                return True
            if node is None or node.op_type not in ("Where", "IsNaN", "Identity", "Dropout", "Cast"):
                return False
            value = node.inputs[2] if node.op_type == "Where" else node.inputs[0]
        return False

    def _stochastic(self) -> bool:
        """The weights multiplying V are the Softmax output itself (through Identity/Dropout/Cast only)."""
        y = self.softmax.outputs[0]
        uses = list(y.uses())
        while len(uses) == 1 and uses[0].node.op_type in ("Identity", "Dropout", "Cast"):
            y = uses[0].node.outputs[0]
            uses = list(y.uses())
        return len(uses) == 1 and uses[0].node.op_type == "MatMul" and uses[0].idx == 0


def _spreads(value: ir.Value, axis: int) -> bool:
    """Whether `value`, of size 1 on `axis`, is broadcast by some arithmetic reader to a larger size there."""
    if value.shape is None:
        return False
    for use in value.uses():
        if use.node.op_type not in ("Mul", "Add", "Sub", "Div", "Where"):
            continue
        out = use.node.outputs[0] if use.node.outputs else None
        if out is None or out.shape is None:
            continue
        at = axis + len(out.shape) - len(value.shape)
        size = out.shape[at] if 0 <= at < len(out.shape) else None
        if isinstance(size, int) and size > 1:
            return True
    return False


_SHAPE_INPUTS = {"Reshape", "Expand", "Tile", "Slice", "ConstantOfShape", "Range", "Resize", "Squeeze", "Unsqueeze"}


def _feeds_arithmetic(value: ir.Value) -> bool:
    """Whether a Shape's output reaches a float computation (a scale), not only the shape inputs of other ops."""
    work, seen = [value], set()
    while work:
        current = work.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.dtype is not None and current.dtype.is_floating_point():
            return True
        for use in current.uses():
            if use.node.op_type in _SHAPE_INPUTS and use.idx > 0:
                continue  # used as a shape, bounds or axes: not arithmetic on data
            work.extend(use.node.outputs)
    return False


def _drop_axis(axis: int, removed: list[int]) -> int | None:
    if axis in removed:
        return None
    return axis - sum(1 for a in removed if a < axis)


def _insert_axis(axis: int, inserted: list[int]) -> int:
    for a in inserted:
        if a <= axis:
            axis += 1
    return axis
