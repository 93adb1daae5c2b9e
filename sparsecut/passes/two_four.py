"""annotate-2to4: find weights that are 2:4 sparse along their reduction axis, and label them for TensorRT.

A weight is 2:4 when every group of 4 consecutive elements along the reduction axis holds at least 2 zeros:
Conv W[K, C/g, R, S] along C/g for each (k, r, s); Gemm B along K (axis 1 of the stored B when transB = 1, else 0);
MatMul with a constant B along its first axis. The weight is followed back through Transpose (dynamo's nn.Linear),
Cast and DequantizeLinear (a quantized zero is the zero point). A reduction length that is not a multiple of 4 is
padded with zeros conceptually (and reported); one shorter than 4 — a depthwise conv reads one channel per group —
is no candidate at all: TensorRT's sparse kernels never run it, so it is neither labelled nor counted. Each 2:4
initializer gets `pkg.sparsecut.sparsity = "2:4"` and the doc string `SPARSE_2_4` that TensorRT tooling
(Polygraphy) reads; the model gets a summary. Changes no value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from sparsecut.passes.contract import OptimizePass
from sparsecut.passes.nodes import attr_int, constant_array, tensor_array
from sparsecut.report import PassReport, SparsityLayer

__all__ = [
    "AnnotateTwoFourPass",
    "is_two_four",
    "reduction_axis",
    "two_four_violations",
    "two_four_weights",
    "violations_of_many",
]

SPARSE_DOC = "SPARSE_2_4"
METADATA_KEY = "pkg.sparsecut.sparsity"
SMALL_CHANNELS = 256
_STACKED_BYTES = 64 << 10  # weights up to this size are checked stacked with their equals


def two_four_violations(weight: np.ndarray, axis: int) -> tuple[float, bool]:
    """Share of groups of 4 along `axis` with fewer than 2 zeros, and whether the axis had to be padded."""
    nonzero = np.asarray(weight) != 0
    padded = nonzero.shape[axis] % 4 != 0
    counts = _group_counts(nonzero, axis)
    if counts.size == 0:
        return 0.0, padded
    return int(np.count_nonzero(counts > 2)) / counts.size, padded


def violations_of_many(weights: Iterable[tuple[np.ndarray, int]]) -> list[tuple[float, bool]]:
    """`two_four_violations` of each (weight, axis), small weights of one shape computed together (a graph repeats
    its layer shapes: 15k small weights one by one cost 0.07 s, stacked by shape a tenth of it). A big weight is
    checked as it comes and not kept: stacking, or holding, big weights (memory-mapped external data) would cost
    their size in memory."""
    results: list[tuple[float, bool]] = []
    alike: dict[tuple[tuple[int, ...], int], list[tuple[int, np.ndarray]]] = {}
    for i, (weight, axis) in enumerate(weights):
        results.append((0.0, False))
        if weight.nbytes > _STACKED_BYTES:
            results[i] = two_four_violations(weight, axis)
        else:
            alike.setdefault((weight.shape, axis % max(weight.ndim, 1)), []).append((i, weight))
    for (_, axis), members in alike.items():
        if len(members) == 1:
            results[members[0][0]] = two_four_violations(members[0][1], axis)
            continue
        stacked = np.stack([weight for _, weight in members])  # [member, …]: the reduction axis is axis + 1
        per_member = _group_counts(stacked != 0, axis + 1).reshape(len(members), -1)
        padded = stacked.shape[axis + 1] % 4 != 0
        shares = (per_member > 2).mean(axis=1) if per_member.shape[1] else np.zeros(len(members))
        for (i, _), share in zip(members, shares.tolist(), strict=True):
            results[i] = (share, padded)
    return results


def _group_counts(nonzero: np.ndarray, axis: int) -> np.ndarray:
    """Nonzeros per group of 4 along `axis` (padded with zeros to a multiple of 4); the axis becomes the groups."""
    length = nonzero.shape[axis]
    if length % 4:
        pad = [(0, 0)] * nonzero.ndim
        pad[axis] = (0, 4 - length % 4)
        nonzero = np.pad(nonzero, pad)  # padding is zeros: it can only help a group
    shape = nonzero.shape
    groups = nonzero.reshape(*shape[:axis], shape[axis] // 4, 4, *shape[axis + 1 :])  # a view: no axis moved
    return groups.sum(axis=axis + 1, dtype=np.uint8)


def is_two_four(weight: np.ndarray, axis: int) -> bool:
    """Whether `weight` is 2:4 along `axis` — and worth tracking: a reduction shorter than one group of 4 is
    trivially "2:4" and does not count. More than half nonzero without padding is rejected without grouping."""
    length = weight.shape[axis]
    if length < 4:
        return False
    if length % 4 == 0 and np.count_nonzero(weight) > weight.size // 2:
        return False  # some group of 4 holds 3 nonzeros
    return two_four_violations(weight, axis)[0] == 0.0


class AnnotateTwoFourPass(OptimizePass):
    """Ensures: the weights labelled 2:4 are exactly those that are — a label an earlier run left on a weight that
    is no longer 2:4 (its channels removed since) is taken off, since TensorRT would trust it."""

    name = "annotate-2to4"
    description = "label 2:4-sparse weights for TensorRT (metadata and SPARSE_2_4 doc string)"

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[SparsityLayer] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.layers = []
        modified = False
        macs_total = macs_sparse = 0
        for node, source, shape, axis, outputs, share, padded in _reduction_shares(model):
            reduction = shape[axis]
            is_2to4 = share == 0.0
            self.layers.append(
                SparsityLayer(
                    node=node.name or node.op_type,
                    weight=source.name or "?",
                    op_type=node.op_type,
                    reduction=reduction,
                    outputs=outputs,
                    is_2to4=is_2to4,
                    violating_share=share,
                    padded=padded,
                    too_small=min(reduction, outputs) < SMALL_CHANNELS,
                )
            )
            macs = math.prod(shape)  # per output position: MACs ∝ weight size
            macs_total += macs
            if is_2to4:
                macs_sparse += macs
                if source.metadata_props.get(METADATA_KEY) != "2:4":
                    _label(source)
                    modified = True
        sparse = {layer.weight for layer in self.layers if layer.is_2to4}
        for name in labelled(model) - sparse:
            _unlabel(model.graph.initializers[name])
            modified = True
        summary = {
            "layers": len(self.layers),
            "layers_2to4": sum(layer.is_2to4 for layer in self.layers),
            "weight_share_2to4": round(macs_sparse / macs_total, 4) if macs_total else 0.0,
        }
        encoded = json.dumps(summary, sort_keys=True)
        if model.metadata_props.get("pkg.sparsecut.sparsity.summary") != encoded:
            model.metadata_props["pkg.sparsecut.sparsity.summary"] = encoded
            modified = True
        return ir.passes.PassResult(model, modified=modified)

    def ensures(self, model: ir.Model) -> None:
        sparse = {layer.weight for layer in self.layers if layer.is_2to4}
        wrong = labelled(model) ^ sparse
        if wrong:
            raise ir.passes.PostconditionError(f"2:4 labels disagree with the weights: {', '.join(sorted(wrong)[:3])}")

    def report(self, modified: bool, seconds: float) -> PassReport:
        sparse = [layer for layer in self.layers if layer.is_2to4]
        summary = f"{len(sparse)} of {len(self.layers)} weight(s) are 2:4 along their reduction axis"
        return PassReport(self.name, modified, seconds, summary, sparsity=self.layers)


def labelled(model: ir.Model) -> set[str]:
    """Initializers that carry the 2:4 label: on the value, or on the tensor as a file stores it (its metadata or
    the SPARSE_2_4 doc string)."""
    return {name for name, value in model.graph.initializers.items() if _has_label(value)}


def _has_label(value: ir.Value) -> bool:
    if value.metadata_props.get(METADATA_KEY):
        return True
    tensor = value.const_value
    if tensor is None:
        return False
    return bool(tensor.metadata_props.get(METADATA_KEY)) or getattr(tensor, "doc_string", None) == SPARSE_DOC


def _unlabel(value: ir.Value) -> None:
    value.metadata_props.pop(METADATA_KEY, None)
    tensor = value.const_value
    if tensor is None:
        return
    tensor.metadata_props.pop(METADATA_KEY, None)
    try:
        if tensor.doc_string == SPARSE_DOC:
            tensor.doc_string = None
    except AttributeError:
        proto = getattr(tensor, "raw", None)
        if proto is not None and getattr(proto, "doc_string", "") == SPARSE_DOC:
            proto.doc_string = ""


def _label(value: ir.Value) -> None:
    """Mark an initializer 2:4. What gets saved is its tensor's doc string and metadata; a tensor read from a file
    keeps them in its TensorProto (`raw`)."""
    value.metadata_props[METADATA_KEY] = "2:4"
    tensor = value.const_value
    if tensor is None:
        return
    tensor.metadata_props[METADATA_KEY] = "2:4"
    try:
        tensor.doc_string = SPARSE_DOC
    except AttributeError:
        proto = getattr(tensor, "raw", None)
        if proto is not None and hasattr(proto, "doc_string"):
            proto.doc_string = SPARSE_DOC


def _reduction_weight(node: ir.Node) -> tuple[ir.Value, np.ndarray, int, int] | None:
    """(initializer, its zero pattern as stored, reduction axis in it, number of outputs) for Conv/Gemm/MatMul."""
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    source, stored, perm = _follow(node.inputs[1])
    if source is None or stored is None or stored.ndim < 2:
        return None
    if node.op_type == "MatMul" and stored.ndim != 2:
        return None
    axis = reduction_axis(node)
    out_axis = 1 - axis  # the outputs' axis: the other of the first two
    if perm is not None:  # the node sees transpose(stored, perm): its axis a is the stored axis perm[a]
        axis, out_axis = perm[axis], perm[out_axis]
    if stored.shape[axis] < 4:
        return None  # shorter than one group of 4 (a depthwise conv: one channel per group): no sparse kernel runs it
    return source, stored, axis, stored.shape[out_axis]


def reduction_axis(node: ir.Node) -> int:
    """The reduction axis of a Conv's, Gemm's or MatMul's weight as the node reads it: Conv W[K, C, R, S] → 1; Gemm
    B → 0, or 1 with transB; MatMul B → 0."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return attr_int(node, "transB", 0)
    return 0


def _follow(value: ir.Value) -> tuple[ir.Value | None, np.ndarray | None, list[int] | None]:
    """Walk back through Transpose, Cast and DequantizeLinear to the initializer; return its zero pattern."""
    perm: list[int] | None = None
    zero_point: np.ndarray | None = None
    for _ in range(4):
        if value.const_value is not None:
            array = tensor_array(value.const_value)
            if zero_point is not None:
                array = array.astype(np.int32) - zero_point  # a quantized zero is the zero point
            return value, array, perm
        producer = value.producer()
        if producer is None or not producer.inputs or producer.inputs[0] is None:
            return None, None, None
        if producer.op_type == "Transpose":
            attr = producer.attributes.get("perm")
            inner = list(attr.as_ints()) if attr is not None else None
            if perm is not None:
                return None, None, None
            perm = inner if inner is not None else [1, 0]
        elif producer.op_type == "DequantizeLinear":
            zp = (
                constant_array(producer.inputs[2])
                if len(producer.inputs) > 2 and producer.inputs[2] is not None
                else None
            )
            zero_point = np.asarray(0 if zp is None else zp).astype(np.int32)
            axis_attr = producer.attributes.get("axis")
            if zero_point.ndim == 1 and zero_point.size > 1:
                axis = axis_attr.as_int() if axis_attr is not None else 1
                shape = [1] * len(producer.inputs[0].shape or [0, 0])
                shape[axis] = -1
                zero_point = zero_point.reshape(shape)
        elif producer.op_type != "Cast":
            return None, None, None
        value = producer.inputs[0]
    return None, None, None


def two_four_weights(model: ir.Model) -> set[str]:
    """Names of the weights that are 2:4 along their reduction axis (changes nothing)."""
    return {
        str(source.name) for _, source, _, _, _, share, _ in _reduction_shares(model) if source.name and share == 0.0
    }


def _reduction_shares(model: ir.Model) -> list[tuple[ir.Node, ir.Value, tuple[int, ...], int, int, float, bool]]:
    """Per Conv/Gemm/MatMul with a constant weight: (node, initializer, its stored shape, reduction axis in it,
    outputs, violating share, padded). The arrays are not kept: see `violations_of_many`."""
    found: list[tuple[ir.Node, ir.Value, tuple[int, ...], int, int]] = []

    def weights() -> Iterator[tuple[np.ndarray, int]]:
        for node in model.graph:
            weight = _reduction_weight(node)
            if weight is not None:
                source, stored, axis, outputs = weight
                found.append((node, source, stored.shape, axis, outputs))
                yield stored, axis

    shares = violations_of_many(weights())
    return [(*layer, share, padded) for layer, (share, padded) in zip(found, shares, strict=True)]
