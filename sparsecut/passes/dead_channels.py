"""remove-dead-channels: physically remove channels that are zero or constant everywhere they are coupled.

Which channels go is decided by `DeadChannelAnalysis` (see `channels.py` for the math). The rewrite, per node:

- producers (Conv, Gemm, MatMul): keep output rows W[kept], b[kept]; a depthwise conv also its `group`.
- reducing consumers: keep input columns W[:, kept] (per group for grouped convs). A removed channel that carried
  a constant c is folded into the bias first — conv without padding: b_j += Σ_rs W[j,k,r,s]·c;
  Gemm: C_j += α·Σ_k B[k,j]·c_k; MatMul: the following bias Add gets Σ_k B[k,j]·c_k.
- per-channel parameters: BatchNorm γ/β/μ/σ², constant operands of elementwise ops (broadcast along channels).
- shape constants: Reshape targets and Split sizes.
Then every intermediate shape is re-inferred.

2:4 weights: removing input channels shifts the groups of 4 along the reduction axis. Where a weight was 2:4 and
its kept channels no longer are in place, the kept channels of its space are reordered — producers' rows,
per-channel parameters and every reader's columns alike, which changes nothing computed — so that every group of 4
is valid again (`permutation.restore_order`); what cannot be restored is reported with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels import (
    DeadChannelAnalysis,
    _attr_float,
    _attr_int,
    _attr_ints,
    _shape_element,
    _slice_bounds,
    _source_name,
    constant_array,
)
from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.permutation import restore_order
from sparsecut.passes.two_four import is_two_four, two_four_violations
from sparsecut.report import TwoFourRestore
from sparsecut.shapes import infer_shapes

__all__ = ["RemoveDeadChannelsPass", "reduction_matrix", "rewrite_channels"]

log = logging.getLogger(__name__)


class RemoveDeadChannelsPass(ir.passes.InPlacePass):
    """Remove dead channels (zero, or constant where every consumer absorbs the constant exactly)."""

    def __init__(
        self,
        align: int = 8,
        enabled_groups: set[int] | None = None,
        fold: bool = True,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.align = align
        self.enabled_groups = enabled_groups
        self.counts = counts  # measured decisions: channels to keep per space (replaces align there)
        self.fold = fold  # False when fold-constants just ran
        self.analysis: DeadChannelAnalysis | None = None
        self.two_four: list[TwoFourRestore] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = self.fold and FoldConstantsPass()(model).modified  # weights and biases must be constants to be read
        infer_shapes(model)
        analysis = DeadChannelAnalysis(model, self.align, self.enabled_groups, self.counts)
        self.analysis = analysis
        if analysis.total_removed == 0:
            return ir.passes.PassResult(model, modified=folded)
        self.two_four = plan_two_four_restores(analysis)
        rewrite_channels(model, analysis)
        # Every tensor whose channel count changed is in a space: set its new shape exactly, rather than forget
        # shapes and hope inference finds them again (it cannot see through computed Reshape targets).
        for value, axis in analysis.axis.items():
            if analysis.has_removals(value) and value.shape is not None:
                dims = list(value.shape)
                dims[axis] = len(analysis.kept(value))
                value.shape = ir.Shape(dims)
        log.info("removed %d channels", analysis.total_removed)
        return ir.passes.PassResult(model, modified=True)


def plan_two_four_restores(analysis: DeadChannelAnalysis) -> list[TwoFourRestore]:
    """For every space losing channels that a 2:4 weight reduces over: when the kept channels no longer form
    valid groups of 4 in place, search an order that does (`permutation.restore_order`) and record it in
    `analysis.orders`. One order serves every reader of the space, so their patterns are searched together."""
    reports = []
    for s, space in enumerate(analysis.spaces):
        if not space.values or not analysis.has_removals(space.values[0]):
            continue
        patterns, names = [], []
        for node in analysis.readers(s):
            matrix = reduction_matrix(node, analysis)
            if matrix is None:
                continue
            full, kept_rows = matrix
            if is_two_four(full, 0):
                patterns.append(kept_rows != 0)
                names.append(_source_name(node.inputs[1]))  # type: ignore[arg-type]
        if not patterns:
            continue
        start = time.perf_counter()
        removed = analysis.removed(space.values[0])
        pattern = np.concatenate(patterns, axis=1)
        natural = np.flatnonzero(~removed)
        if two_four_violations(pattern[natural], 0)[0] == 0.0:
            continue  # still 2:4 in place: nothing was lost
        reason = analysis.why_not_permutable(s)
        order = restore_order(pattern, removed) if reason is None else None
        if reason is None and order is None:
            reason = "no order of the kept channels makes every group of 4 valid"
        if order is not None:
            analysis.orders[s] = order
        reports.append(
            TwoFourRestore(
                weights=names,
                channels_before=space.count,
                channels_after=len(natural),
                restored=order is not None,
                reordered=order is not None and not np.array_equal(order, natural),
                reason=reason,
                seconds=time.perf_counter() - start,
            )
        )
        if order is None:
            log.warning("2:4 of %s lost to channel removal: %s", ", ".join(names), reason)
    return reports


def reduction_matrix(node: ir.Node, analysis: DeadChannelAnalysis) -> tuple[np.ndarray, np.ndarray] | None:
    """A reader's weight as [input channel, row] — all rows, and the rows of the outputs that stay."""
    weight = analysis.weight(node.inputs[1]) if node.inputs[1] is not None else None
    if weight is None:
        return None
    kind = analysis.rules[node]
    if kind == "conv":
        full = np.moveaxis(weight, 1, 0)  # [C, K, R, S]
    elif kind == "gemm":
        full = weight if _attr_int(node, "transB", 0) == 0 else weight.T  # [K, N]
    else:
        full = weight
    kept_out = analysis.kept(node.outputs[0])
    return full.reshape(full.shape[0], -1), full[:, kept_out].reshape(full.shape[0], -1)


def rewrite_channels(model: ir.Model, analysis: DeadChannelAnalysis) -> None:
    """Drop the removable channels of `analysis` and put the kept ones in `analysis.orders`, in every tensor."""
    _Rewriter(model, analysis).run()


class _Rewriter:
    def __init__(self, model: ir.Model, analysis: DeadChannelAnalysis) -> None:
        self.graph = model.graph
        self.a = analysis
        self.names = {v.name for n in self.graph for v in (*n.inputs, *n.outputs) if v is not None}
        self.names |= set(self.graph.initializers) | {v.name for v in self.graph.inputs}

    def run(self) -> None:
        for node in list(self.graph):
            kind = self.a.rules.get(node)
            touched = any(self.a.changed(v) for v in (*node.inputs, *node.outputs))
            if not touched or kind is None:
                continue
            handler = getattr(self, f"_{kind}", None)
            if handler is not None:
                handler(node)

    # --------------------------------------------------------------------------------------------- node kinds
    def _conv(self, node: ir.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        weight = self.a.weight(node.inputs[1])
        assert weight is not None
        groups = _attr_int(node, "group", 1)
        out_ch, per_group = weight.shape[:2]
        bias = self._bias(node, 2, out_ch)
        if self.a.has_removals(x):
            removed = self.a.removed(x).reshape(groups, per_group)
            const = np.where(self.a.live[x], 0.0, self.a.const[x]).reshape(groups, per_group)
            w_sum = weight.astype(np.float64).sum(axis=tuple(range(2, weight.ndim)))
            rows_per_group = out_ch // groups
            for g in range(groups):
                rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
                bias[rows] += w_sum[rows][:, removed[g]] @ const[g][removed[g]]
            if groups > 1:
                weight = np.concatenate(
                    [weight[g * rows_per_group : (g + 1) * rows_per_group][:, ~removed[g]] for g in range(groups)]
                )
        if groups == 1 and self.a.changed(x):
            weight = weight[:, self.a.kept(x)]  # in the new order (a grouped conv's channels are never reordered)
        kept = self.a.kept(y)
        self._set_constant(node, 1, weight[kept])
        self._set_bias(node, 2, bias[kept], weight.dtype)

    def _convtranspose(self, node: ir.Node) -> None:
        """W[C_in, C_out, …]: rows follow the input's kept channels, columns the output's; only ZERO input channels
        go (the analysis keeps constant ones), so the bias needs no correction."""
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        weight = self.a.weight(node.inputs[1])
        assert weight is not None
        bias = self._bias(node, 2, weight.shape[1])
        if self.a.changed(x):
            weight = weight[self.a.kept(x)]
        kept = self.a.kept(y)
        self._set_constant(node, 1, weight[:, kept])
        self._set_bias(node, 2, bias[kept], weight.dtype)

    def _depthwise(self, node: ir.Node) -> None:
        y = node.outputs[0]
        assert node.inputs[1] is not None
        weight = self.a.weight(node.inputs[1])
        assert weight is not None
        bias = self._bias(node, 2, weight.shape[0])
        kept = self.a.kept(y)
        self._set_constant(node, 1, weight[kept])
        self._set_bias(node, 2, bias[kept], weight.dtype)
        node.attributes["group"] = ir.AttrInt64("group", len(kept))

    def _gemm(self, node: ir.Node) -> None:
        a, y = node.inputs[0], node.outputs[0]
        assert a is not None and node.inputs[1] is not None
        trans_b = _attr_int(node, "transB", 0)
        b = self.a.weight(node.inputs[1])
        assert b is not None
        b = b.T if trans_b else b  # [K, N]
        alpha, beta = _attr_float(node, "alpha", 1.0), _attr_float(node, "beta", 1.0)
        c = self._bias(node, 2, b.shape[1])
        if self.a.has_removals(a):
            removed = self.a.removed(a)
            const = np.where(self.a.live[a], 0.0, self.a.const[a])
            c += alpha * (const[removed] @ b[removed].astype(np.float64)) / beta
        b = b[self.a.kept(a)] if self.a.changed(a) else b
        kept = self.a.kept(y)
        b = b[:, kept]
        self._set_constant(node, 1, b.T if trans_b else b)
        self._set_bias(node, 2, c[kept], b.dtype)

    def _matmul(self, node: ir.Node) -> None:
        a, y = node.inputs[0], node.outputs[0]
        assert a is not None and node.inputs[1] is not None
        b = self.a.weight(node.inputs[1])
        assert b is not None
        if self.a.has_removals(a):
            removed = self.a.removed(a)
            const = np.where(self.a.live[a], 0.0, self.a.const[a])
            shift = const[removed] @ b[removed].astype(np.float64)
            if np.any(shift != 0):
                add = self.a.matmul_bias[node]
                index = 1 if add.inputs[0] is y else 0
                bias = constant_array(add.inputs[index])
                assert bias is not None
                self._set_constant(add, index, (bias.astype(np.float64) + shift).astype(bias.dtype))
        b = b[self.a.kept(a)] if self.a.changed(a) else b
        self._set_constant(node, 1, b[:, self.a.kept(y)])

    def _batchnorm(self, node: ir.Node) -> None:
        kept = self.a.kept(node.outputs[0])
        for index in range(1, 5):
            array = constant_array(node.inputs[index])
            assert array is not None
            self._set_constant(node, index, array.reshape(-1)[kept])

    def _elementwise(self, node: ir.Node) -> None:
        y = node.outputs[0]
        if not self.a.changed(y) or y.shape is None:
            return
        axis, count, kept = self.a.axis[y], self.a.spaces[self.a.space_of[y]].count, self.a.kept(y)
        rank = len(y.shape)
        for index, value in enumerate(node.inputs):
            array = constant_array(value)
            if array is None or value is None or value.shape is None:
                continue
            operand_axis = axis - (rank - len(value.shape))
            if operand_axis >= 0 and array.ndim > operand_axis and array.shape[operand_axis] == count:
                self._set_constant(node, index, np.take(array, kept, axis=operand_axis))

    def _reshape(self, node: ir.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        axis = self.a.axis[x]
        source = _shape_element(node.inputs[1], axis)
        assert source is not None
        holder, position = source[1]
        array = constant_array(holder)
        assert array is not None
        if int(array[position]) in (-1, 0):
            return  # inferred or copied: follows the new channel count by itself
        new = array.copy()
        new[position] = len(self.a.kept(y))
        shape_value = node.inputs[1]
        if holder is shape_value:
            self._set_constant(node, 1, new)
            return
        concat = shape_value.producer()  # the shape is assembled by a Concat of 1-D pieces
        assert concat is not None
        self._set_constant(concat, next(i for i, v in enumerate(concat.inputs) if v is holder), new)

    def _slice(self, node: ir.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None
        axis, count = self.a.axis[x], self.a.spaces[self.a.space_of[x]].count
        bounds = _slice_bounds(node, len(x.shape or ()), axis)
        assert isinstance(bounds, tuple)
        start, end = max(0, min(bounds[0], count)), max(0, min(bounds[1], count))
        kept = ~self.a.removed(x)
        new_start = int(kept[:start].sum())
        new_end = new_start + int(kept[start:end].sum())
        assert new_end - new_start == len(self.a.kept(y))
        rank = len(x.shape or ())
        axes_value = node.inputs[3] if len(node.inputs) > 3 else None
        axes = constant_array(axes_value) if axes_value is not None else None
        position = [int(a) % rank for a in axes.reshape(-1)].index(axis) if axes is not None else axis
        for index, value in ((1, new_start), (2, new_end)):
            array = constant_array(node.inputs[index])
            assert array is not None
            array = array.reshape(-1).copy()
            array[position] = value
            self._set_constant(node, index, array)

    def _split(self, node: ir.Node) -> None:
        sizes = np.array([len(self.a.kept(out)) for out in node.outputs], np.int64)
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            self._set_constant(node, 1, sizes)
        else:
            node.attributes.pop("num_outputs", None)
            node.resize_inputs(2)
            self._set_constant(node, 1, sizes)

    # --------------------------------------------------------------------------------------------- constants
    def _bias(self, node: ir.Node, index: int, count: int) -> np.ndarray:
        array = constant_array(node.inputs[index]) if len(node.inputs) > index else None
        if array is None:
            return np.zeros(count)
        return np.broadcast_to(np.asarray(array, np.float64).reshape(-1), (count,)).copy()

    def _set_bias(self, node: ir.Node, index: int, bias: np.ndarray, dtype: np.dtype) -> None:
        present = len(node.inputs) > index and node.inputs[index] is not None
        if not present and not np.any(bias != 0):
            return
        if not present:
            node.resize_inputs(index + 1)
        self._set_constant(node, index, bias.astype(dtype))

    def _set_constant(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        """Give input `index` of `node` the tensor `array`: in place when nobody else reads the initializer (the
        PyTorch name stays), through the Transpose that dynamo puts before Linear weights, else a fresh one."""
        array = np.ascontiguousarray(array)
        value = node.inputs[index]
        if value is not None and _only_user(value, node) and value.const_value is not None and value.is_initializer():
            value.const_value = ir.Tensor(array, name=value.name)
            value.shape = value.const_value.shape  # the tensor's own (frozen) shape: one Shape built, not two
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
                perm = _attr_ints(producer, "perm") or list(reversed(range(array.ndim)))
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
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name


def _only_user(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and all(use.node is node for use in value.uses())
