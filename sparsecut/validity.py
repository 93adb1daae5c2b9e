"""Is this a valid ONNX graph? The ONNX checker — and, for the ops onnxruntime registers in the default domain
that ONNX itself does not know at the model's opset (SimplifiedLayerNormalization, RotaryEmbedding before opset
23: the form onnxruntime-genai's model builder writes), onnxruntime's own schemas.

The checker refuses such a node ("No Op registered for SimplifiedLayerNormalization with domain_version of 22")
although onnxruntime runs the file. Those nodes are checked against onnxruntime's schemas; everything else — the
graph's structure, types, every standard op — still by the checker, on a copy where those nodes sit in a domain of
their own (the checker leaves non-standard domains to their runtime, as it does for com.microsoft). Whether
onnxruntime really runs the graph is the equivalence gate's first step, which names the file where it cannot.
"""

from __future__ import annotations

import functools
from pathlib import Path

import onnx

from sparsecut.errors import GraphError

__all__ = ["check_graph", "onnxruntime_default_domain_ops"]

_RUNTIME_DOMAIN = "sparsecut.onnxruntime-registered"  # where the checker's copy puts onnxruntime's own nodes


def check_graph(path: Path) -> None:
    """Raise `GraphError` naming the file and the checker's first complaint, unless the graph is valid."""
    try:
        onnx.checker.check_model(str(path))
        return
    except onnx.checker.ValidationError as exc:
        refusal = exc
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    theirs = onnxruntime_default_domain_ops()
    runtime_nodes = [
        node
        for node in proto.graph.node
        if node.domain in ("", "ai.onnx")
        and node.op_type in theirs
        and not onnx.defs.has(node.op_type, max_inclusive_version=opset, domain="")
    ]
    if runtime_nodes:
        for node in runtime_nodes:
            node.domain = _RUNTIME_DOMAIN
        proto.opset_import.append(onnx.helper.make_opsetid(_RUNTIME_DOMAIN, 1))
        _external_as_inputs(proto.graph)
        try:
            onnx.checker.check_model(proto)
            return
        except onnx.checker.ValidationError as exc:
            refusal = exc
    first = str(refusal).strip().splitlines()[0] if str(refusal).strip() else "invalid"
    raise GraphError(f"{path}: fails the ONNX checker ({first[:200]})") from refusal


def _external_as_inputs(graph: onnx.GraphProto) -> None:
    """Weights stored in a data file become typed graph inputs of the in-memory copy: the checker would look for
    the file beside the working directory instead of the model (it was checked with the model, by path)."""
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    names = {t.name for t in external}
    kept = [t for t in graph.initializer if t.name not in names]
    listed = {value.name for value in graph.input}
    for tensor in external:
        if tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)


@functools.cache
def onnxruntime_default_domain_ops() -> frozenset[str]:
    """The ops the installed onnxruntime registers in the default ONNX domain, its own ones included."""
    from onnxruntime.capi import _pybind_state

    schemas = getattr(_pybind_state, "get_all_operator_schema", None)
    if schemas is None:  # a build without its schema list: nothing is taken on its word
        return frozenset()
    return frozenset(schema.name for schema in schemas() if schema.domain in ("", "ai.onnx"))
