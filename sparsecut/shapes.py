"""Shape inference for onnx-ir models: onnx's C++ inference, merging back only the shapes.

onnx-ir's `ShapeInferencePass` deserializes the whole inferred model to merge it back, which costs seconds on a
15k-node graph; here only the inferred value infos are read. Weights never travel: onnx-ir's helper strips large
initializers before the model is serialized for the C++ call.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

__all__ = ["infer_shapes"]

log = logging.getLogger(__name__)


def infer_shapes(model: ir.Model, *, force: bool = False) -> None:
    """Fill in missing shapes (all of them with `force`) of the main graph's values."""
    if not force and all(value.shape is not None for node in model.graph for value in node.outputs):
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
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        value = values.get(info.name)
        if value is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        shape = ir.serde.deserialize_type_proto_for_shape(info.type)
        if shape is not None and (force or value.shape is None):
            value.shape = shape
        elem = info.type.tensor_type.elem_type
        if value.dtype is None and elem:
            value.dtype = ir.DataType(elem)
