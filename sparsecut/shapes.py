"""Shape inference for onnx-ir models: onnx's C++ inference, merging back only the shapes.

onnx-ir's `ShapeInferencePass` deserializes the whole inferred model to merge it back, which costs seconds on a
15k-node graph; here only the inferred value infos are read. Weights never travel: onnx-ir's helper strips large
initializers before the model is serialized for the C++ call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import onnx
import onnx_ir as ir

__all__ = ["SharedShapes", "TensorShape", "apply_shapes", "infer_shapes", "take_shapes"]

log = logging.getLogger(__name__)


# onnxruntime's own ops (what its model builder writes) whose listed outputs have the shape and type of their first
# input: onnx's inference does not know them, and stops there
_LIKE_FIRST_INPUT = {
    ("", "SimplifiedLayerNormalization"): (0,),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): (0, 3),
    ("com.microsoft", "SkipLayerNormalization"): (0, 3),
    ("com.microsoft", "RotaryEmbedding"): (0,),
    ("com.microsoft", "FastGelu"): (0,),
    ("com.microsoft", "BiasGelu"): (0,),
    ("com.microsoft", "QuickGelu"): (0,),
    ("com.microsoft", "Gelu"): (0,),
}
_RUNTIME_OP_TYPES = frozenset(op for _, op in _LIKE_FIRST_INPUT)


def infer_shapes(model: ir.Model, *, force: bool = False, refine: bool = False, symbolic: bool = False) -> None:
    """Fill in missing shapes (all of them with `force`) of the main graph's values; with `refine`, also the sizes
    a shape left unknown and inference now knows (after constants were folded: a Slice whose bounds were computed
    from a shape, as the TorchScript exporter writes `chunk`, has an output of unknown size until they are).
    Past onnxruntime's own ops that keep their input's shape (`_LIKE_FIRST_INPUT`), inference goes on.

    With `symbolic`, where onnx's inference leaves a size unknown, onnxruntime's symbolic shape inference
    (`refine_symbolic`) fills in what it can compute."""
    _infer(model, force, refine)
    for _ in range(8):  # each round passes one more such op on a path (a decoder: one per norm)
        if not _runtime_op_shapes(model):
            break
        _infer(model, False, refine)
    if symbolic and _has_unknown_sizes(model):
        refine_symbolic(model)


def _has_unknown_sizes(model: ir.Model) -> bool:
    """Whether onnx's inference left something attention tracing needs unknown: a shape past an op it does not
    know (GroupQueryAttention), or — in a graph with a Softmax — a size of a Reshape's or Expand's output it could
    not compute (`unk__N`: the head count of a Reshape to (B, N, -1, D) computed from Shape(x), repeat_kv's Expand,
    as both PyTorch exporters write a decoder). A graph without attention is left to onnx's inference: onnxruntime's
    symbolic inference costs seconds on big graphs."""
    softmax, unknown = False, False
    for node in model.graph:
        for value in node.outputs:
            if value.shape is None:
                if value.uses() or value.is_graph_output():
                    return True
                continue
            if node.op_type in ("Reshape", "Expand") and not unknown:
                unknown = any(not isinstance(d, int) and (d.value is None or str(d.value).startswith("unk__"))
                              for d in value.shape)  # fmt: skip
        softmax = softmax or node.op_type == "Softmax"
    return softmax and unknown


def refine_symbolic(model: ir.Model) -> None:
    """Sizes onnx's inference cannot compute, from onnxruntime's symbolic shape inference (sympy arithmetic on the
    dims): a sequence model's Reshape to (B, N, -1, D) computed from Shape(x) — the head count, B·N·H·D / (B·N·D) —
    and the Expand of repeat_kv, which onnx leaves unknown. Only sizes that become static are taken. Where
    onnxruntime's inference fails (an op it does not know), nothing changes."""
    try:
        from onnx_ir.passes.common._c_api_utils import call_onnx_api
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # sympy missing, or a future onnxruntime/onnx-ir moved them
        return

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        _constants_as_tensors(proto.graph)
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)

    _inline_external_constants(model)

    try:
        inferred = call_onnx_api(infer, model)
    except Exception as exc:  # its own asserts and sympy's errors: nothing to refine
        log.debug("symbolic shape inference failed (%s); shapes left as they were", exc)
        return
    apply_shapes(model.graph, take_shapes(inferred.graph), refine=True)


def _runtime_op_shapes(model: ir.Model) -> bool:
    """Give the outputs of `_LIKE_FIRST_INPUT` ops their input's shape and type where they have none."""
    filled = False
    for node in model.graph:
        if node.op_type not in _RUNTIME_OP_TYPES:  # nearly every node: one set lookup (15k nodes: 10 → 7.5 ms)
            continue
        outputs = _LIKE_FIRST_INPUT.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))
        source = node.inputs[0] if outputs and node.inputs else None
        if source is None or source.shape is None:
            continue
        for index in outputs:  # type: ignore[union-attr]
            if index < len(node.outputs) and node.outputs[index].shape is None:
                node.outputs[index].shape = source.shape
                if node.outputs[index].dtype is None and source.dtype is not None:
                    node.outputs[index].dtype = source.dtype
                filled = True
    return filled


_CONSTANT_ATTRIBUTES = {"value_int": (onnx.TensorProto.INT64, False), "value_ints": (onnx.TensorProto.INT64, True),
                        "value_float": (onnx.TensorProto.FLOAT, False), "value_floats": (onnx.TensorProto.FLOAT, True)}  # fmt: skip


_INLINE_BYTES = 1 << 16


def _inline_external_constants(model: ir.Model) -> None:
    """Constant nodes whose small tensor an exporter stored in the data file (optimum writes RoPE's inverse
    frequencies there) hold it in memory instead (the same values): onnxruntime's symbolic inference reads a
    Constant's value, and the serialized copy it gets has no folder to find the data file in."""
    for node in model.graph:
        if node.op_type != "Constant":
            continue
        attribute = node.attributes.get("value")
        tensor = attribute.value if attribute is not None else None
        if isinstance(tensor, ir.ExternalTensor) and tensor.nbytes <= _INLINE_BYTES:
            node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(tensor.numpy(), name=tensor.name))


def _constants_as_tensors(graph: onnx.GraphProto) -> None:
    """Constant nodes with `value_int(s)`/`value_float(s)` (what folding writes for small shapes) as `value`
    tensors: onnxruntime's symbolic inference reads only `value`."""
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name not in _CONSTANT_ATTRIBUTES:
            continue
        attribute = node.attribute[0]
        dtype, many = _CONSTANT_ATTRIBUTES[attribute.name]
        data = onnx.helper.get_attribute_value(attribute)
        tensor = onnx.helper.make_tensor("value", dtype, [len(data)] if many else [], data if many else [data])
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))


def _infer(model: ir.Model, force: bool, refine: bool) -> None:
    if not (force or refine) and all(value.shape is not None for node in model.graph for value in node.outputs):
        return
    try:
        from onnx_ir.passes.common._c_api_utils import call_onnx_api
    except ImportError:  # a future onnx-ir moved its helper: the public pass does the same, slower
        ir.passes.common.ShapeInferencePass()(model)
        return

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)

    try:
        inferred = call_onnx_api(infer, model)
    except Exception as exc:
        log.warning("shape inference failed (%s); shapes left as they were", exc)
        return
    apply_shapes(model.graph, take_shapes(inferred.graph), force, refine)


@dataclasses.dataclass
class TensorShape:
    """An inferred tensor type: its dims and element type, and the frozen `ir.Shape` every value of this type
    shares (built when first needed)."""

    dims: tuple[int | str | None, ...]
    elem_type: int
    shape: ir.Shape | None = None


Shapes = dict[str, TensorShape]  # value name → its inferred type


def take_shapes(graph: onnx.GraphProto) -> Shapes:
    """The tensor shapes an inferred graph proto holds for its values (its outputs' too), read straight from the
    protobuf; the value infos read are removed from it, so that deserializing it afterwards does not build them a
    second time (onnx-ir's value-info path costs ~50 µs a value: 0.5 s at 15k nodes). Each distinct type is read
    once: values are matched by their type's bytes (a graph repeats its few shapes thousands of times)."""
    shapes: Shapes = {}
    types: dict[bytes, TensorShape | None] = {}
    rest = []
    for info in graph.value_info:
        if not _read(info, shapes, types):
            rest.append(info)
    if len(rest) < len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(rest)
    for info in graph.output:
        _read(info, shapes, types)
    return shapes


def _read(info: onnx.ValueInfoProto, shapes: Shapes, types: dict[bytes, TensorShape | None]) -> bool:
    if not info.name:
        return False
    key = info.type.SerializeToString()
    if key not in types:
        types[key] = _tensor_shape(info.type)
    found = types[key]
    if found is None:
        return False
    shapes[info.name] = found
    return True


def _tensor_shape(type_proto: onnx.TypeProto) -> TensorShape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    tensor_type = type_proto.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    return TensorShape(dims, tensor_type.elem_type)


def apply_shapes(graph: ir.Graph, shapes: Shapes, force: bool = False, refine: bool = False) -> None:
    """Give the values of `graph` produced by its nodes their shapes from `shapes` (where they have none, or all
    of them with `force`, or where they know more with `refine`), and their element types where unknown."""
    if not shapes:
        return
    shared = SharedShapes()
    for node in graph:
        for value in node.outputs:
            found = shapes.get(value.name) if value.name else None
            if found is None:
                continue
            # (a graph output's declared shape is the model's interface: refined sizes do not change it)
            refined = (
                refine
                and value.shape is not None
                and not value.is_graph_output()
                and _knows_more(found.dims, value.shape)
            )
            if force or value.shape is None or refined:
                if found.shape is None:
                    found.shape = shared(found.dims)
                value.shape = found.shape
            if value.dtype is None and found.elem_type:
                value.dtype = ir.DataType(found.elem_type)


def _knows_more(dims: tuple[int | str | None, ...], shape: ir.Shape) -> bool:
    """Whether inferred `dims` give a static size where `shape` (of the same rank) has none."""
    return len(dims) == len(shape) and any(
        isinstance(d, int) and d > 0 and not isinstance(old, int) for d, old in zip(dims, shape, strict=True)
    )


class SharedShapes:
    """One frozen `ir.Shape` per distinct dims: values of equal shape share it (a graph repeats its shapes, and
    building an `ir.Shape` costs ~4 µs)."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[object, ...], ir.Shape] = {}

    def __call__(self, dims: Sequence[object]) -> ir.Shape:
        key = tuple(dims)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = ir.Shape(dims, frozen=True)  # type: ignore[arg-type]
        return shape
