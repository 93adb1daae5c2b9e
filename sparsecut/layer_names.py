"""The names a user knows a graph's nodes by, and the metadata a shipped model should not carry.

The dynamo exporter records, per node, the module path it came from (`pkg.torch.onnx.name_scopes`:
`['', 'blocks', 'blocks.0', 'blocks.0.conv1', 'conv2d_1']` → `blocks.0.conv1`); any exporter keeps a weight's
state_dict name (`blocks.0.conv1.weight`). Per-layer tables show that name beside the node's. The same metadata
carries each node's Python stack trace (`pkg.torch.onnx.stack_trace`), with the exporting machine's absolute file
paths: written models drop it unless the user keeps it.
"""

from __future__ import annotations

import ast

import onnx_ir as ir

__all__ = ["STACK_TRACE", "drop_stack_traces", "module_names"]

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
STACK_TRACE = "pkg.torch.onnx.stack_trace"
_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "QLinearConv": 3, "ConvInteger": 1}


def module_names(model: ir.Model) -> dict[str, str]:
    """Node name → the module path it came from, where the graph tells (the name of the node's weight, else the
    exporter's metadata); nodes it does not tell are left out."""
    names = {}
    for node in model.graph.all_nodes():
        if not node.name:
            continue
        # the weight's name first: a fused node (Conv + BatchNorm) keeps the conv's weight and the last node's scope
        module = _from_weight(node) or _from_scopes(node.metadata_props.get(NAME_SCOPES))
        if module:
            names[node.name] = module
    return names


def drop_stack_traces(model: ir.Model) -> int:
    """Remove every node's recorded Python stack trace; returns how many nodes had one."""
    dropped = 0
    for node in model.graph.all_nodes():
        if node.metadata_props.pop(STACK_TRACE, None) is not None:
            dropped += 1
    return dropped


def _from_scopes(text: str | None) -> str:
    if not text:
        return ""
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return ""
    if not isinstance(scopes, list) or len(scopes) < 2:
        return ""
    return str(scopes[-2])  # the innermost module; the last entry names the operator (conv2d_1)


def _from_weight(node: ir.Node) -> str:
    index = _WEIGHTED.get(node.op_type)
    if index is None or len(node.inputs) <= index or node.inputs[index] is None:
        return ""
    weight = node.inputs[index]
    assert weight is not None
    producer = weight.producer()
    if weight.const_value is None and producer is not None and producer.op_type == "Transpose":
        weight = producer.inputs[0]  # dynamo's Linear: MatMul(x, Transpose(weight))
    name = weight.name if weight is not None and weight.name else ""
    return name.removesuffix(".weight") if name.endswith(".weight") else ""
