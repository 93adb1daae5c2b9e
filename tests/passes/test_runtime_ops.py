"""Graphs with the ops onnxruntime registers — in the default domain (SimplifiedLayerNormalization: what
onnxruntime-genai's model builder writes) and in com.microsoft — are read and optimized, validated against
onnxruntime's schemas where the ONNX checker does not know the op, never refused for it; a default-domain op
nobody registers is still refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsecut.errors import GraphError
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.validity import check_graph, onnxruntime_default_domain_ops


def _decoder_mlp(path, norm_op: str = "SimplifiedLayerNormalization", domain: str = "") -> None:
    """x → MatMul (with 3 dead neurons) → Relu → MatMul → residual Skip(Simplified)LayerNormalization."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w1[:, [2, 7, 11]] = 0.0
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "gain"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["m"]),
    ]
    if norm_op == "SkipSimplifiedLayerNormalization":
        nodes.append(helper.make_node(norm_op, ["m", "x", "gain"], ["y"], domain=domain, epsilon=1e-5))
    else:
        nodes.append(helper.make_node(norm_op, ["m", "gain"], ["y"], domain=domain, axis=-1, epsilon=1e-5))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 8])], inits,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 22)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)


@pytest.mark.parametrize(
    ("norm_op", "domain"),
    [("SimplifiedLayerNormalization", ""), ("SkipSimplifiedLayerNormalization", "com.microsoft")],
)
def test_onnxruntimes_own_ops_are_read_and_the_graph_around_them_optimized(tmp_path, norm_op, domain):
    source = tmp_path / "in.onnx"
    _decoder_mlp(source, norm_op, domain)
    if not domain:
        assert "SimplifiedLayerNormalization" in onnxruntime_default_domain_ops()
        with pytest.raises(onnx.checker.ValidationError, match="No Op registered for SimplifiedLayerNormalization"):
            onnx.checker.check_model(str(source))  # what refused the builder's graphs before
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    lean = onnx.load(str(tmp_path / "out.onnx"))
    shapes = {t.name: list(t.dims) for t in lean.graph.initializer}
    assert shapes["w1"] == [8, 13] and shapes["w2"] == [13, 8]  # the MLP's dead neurons, around the norm
    assert norm_op in {n.op_type for n in lean.graph.node}
    check_graph(tmp_path / "out.onnx")  # the written file is valid by the same rule


def test_a_default_domain_op_nobody_registers_is_still_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), tmp_path / "bad.onnx")
    with pytest.raises(GraphError, match=r"bad\.onnx: fails the ONNX checker \(No Op registered for NoSuchOp"):
        check_graph(tmp_path / "bad.onnx")


def test_a_runtime_op_does_not_hide_a_broken_standard_node(tmp_path):
    source = tmp_path / "in.onnx"
    _decoder_mlp(source)
    model = onnx.load(str(source))
    model.graph.node[1].attribute.append(helper.make_attribute("alpha", 1.0))  # Relu has no attribute alpha
    onnx.save(model, source)
    with pytest.raises(GraphError, match=r"fails the ONNX checker .*alpha"):
        check_graph(source)
