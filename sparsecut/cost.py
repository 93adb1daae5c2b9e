"""MACs and parameters per layer, from the graph's shapes — one counter for every report in sparsecut.

Per sample: a symbolic batch dimension counts as 1.
- Conv: N·K·Ho·Wo (· more spatial dims) · (C/g) · R·S   (groups, stride and dilation enter through the output
  shape and C/g)
- ConvTranspose: N·C·Hi·Wi · (K/g) · R·S
- Gemm: M·N·K;  MatMul (incl. attention's QKᵀ and AV): (product of the output shape) · K
"""

from __future__ import annotations

import math

import onnx_ir as ir

from sparsecut.modelfile import elements_of_type
from sparsecut.report import LayerCost, ModelCost
from sparsecut.shapes import infer_shapes

__all__ = ["LAYER_OPS", "count_costs", "count_params", "dims_at_batch_one", "weight_elements"]

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})  # the ops whose MACs are counted: "layers"
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
_WEIGHT_TYPES = frozenset({*_FLOAT_TYPES, ir.DataType.INT8, ir.DataType.UINT8})
_LAYER_WEIGHT_TYPES = frozenset({*_FLOAT_TYPES, ir.DataType.INT8})
_WEIGHT_PRODUCERS = frozenset({"Transpose", "DequantizeLinear", "Cast", "Constant"})  # a weight may sit behind them


def count_costs(model: ir.Model) -> ModelCost:
    """Count MACs and parameters of every node (shapes are inferred first where missing; that only adds shapes)."""
    infer_shapes(model)
    layers = []
    for node in model.graph:
        op = node.op_type
        if op not in LAYER_OPS:
            continue
        params = sum(_weight_elements(v) for v in node.inputs if v is not None)
        layers.append(LayerCost(node.name or op, op, _macs(node), params))
    return ModelCost(macs=sum(layer.macs for layer in layers), params=count_params(model), layers=layers)


def count_params(model: ir.Model) -> int:
    """The numbers the model stores: its weights (float, or int8 behind a DequantizeLinear; a 0-d scalar, a Clip
    bound, is no weight), in initializers and Constant nodes."""
    tensors: list[ir.TensorProtocol | None] = [v.const_value for v in model.graph.initializers.values()]
    tensors += [_constant_tensor(node) for node in model.graph if node.op_type == "Constant"]
    return sum(weight_elements(t) for t in tensors if t is not None)


def weight_elements(tensor: ir.TensorProtocol) -> int:
    """The numbers of `tensor` that `count_params` counts (0: not a weight)."""
    return elements_of_type(tensor, _WEIGHT_TYPES, min_rank=1)


def _constant_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node holds (the TorchScript exporter writes some weights this way)."""
    attr = node.attributes.get("value")
    return attr.as_tensor() if attr is not None else None


def dims_at_batch_one(value: ir.Value | None) -> list[int] | None:
    """A value's dims with every symbolic one (the batch) counted as 1; None where the shape is unknown."""
    shape = value.shape if value is not None else None
    if shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in shape.dims]


def _macs(node: ir.Node) -> int:
    op = node.op_type
    inputs = node.inputs
    if op not in LAYER_OPS or len(inputs) < 2:
        return 0
    w, y = dims_at_batch_one(inputs[1]), dims_at_batch_one(node.outputs[0])
    if w is None or y is None:
        return 0
    if op == "Conv":
        return math.prod(y) * math.prod(w[1:])
    x = dims_at_batch_one(inputs[0])
    if x is None:
        return 0
    if op == "ConvTranspose":
        return math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        k = x[0] if "transA" in node.attributes and node.attributes["transA"].as_int() else x[-1]
        return math.prod(y) * k
    return math.prod(y) * x[-1]  # MatMul


def _weight_elements(value: ir.Value) -> int:
    producer = value.producer()
    if value.const_value is None and (producer is None or producer.op_type not in _WEIGHT_PRODUCERS):
        return 0  # an activation
    if (
        value.const_value is None
        and producer is not None
        and producer.op_type in ("Transpose", "DequantizeLinear", "Cast")
    ):
        source = producer.inputs[0]
        return _weight_elements(source) if source is not None else 0
    tensor = value.const_value if value.is_initializer() else None
    if tensor is None and producer is not None and producer.op_type == "Constant":
        tensor = _constant_tensor(producer)
    return elements_of_type(tensor, _LAYER_WEIGHT_TYPES) if tensor is not None else 0
