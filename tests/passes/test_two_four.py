"""annotate-2to4: detection per weight layout with hand-built weights, exact counts, labels that survive saving."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from sparsecut.modelfile import save_model
from sparsecut.passes import AnnotateTwoFourPass
from sparsecut.passes.two_four import two_four_violations
from tests.passes.graphs import GraphBuilder


def two_four(shape: tuple[int, ...], axis: int, rng: np.random.Generator, broken: int = 0) -> np.ndarray:
    """A random weight that is 2:4 along `axis`; `broken` groups get a third nonzero."""
    w = rng.standard_normal(shape).astype(np.float32)
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(-1, 4)
    for row in groups:
        row[rng.choice(4, 2, replace=False)] = 0.0
    for row in groups[:broken]:
        row[np.flatnonzero(row == 0)[0]] = 1.0  # a third nonzero: this group breaks 2:4
    return np.moveaxis(groups.reshape(moved.shape), -1, axis).copy()


def annotate(model: onnx.ModelProto) -> tuple[ir.Model, AnnotateTwoFourPass]:
    ir_model = ir.from_proto(model)
    step = AnnotateTwoFourPass()
    step(ir_model)
    return ir_model, step


def test_violation_share_counts_groups():
    w = np.array([[1, 0, 0, 2, 3, 4, 0, 5]], np.float32)  # groups: (1,0,0,2) ok, (3,4,0,5) not
    assert two_four_violations(w, 1) == (0.5, False)
    assert two_four_violations(np.array([[1, 0, 0, 2, 3, 0]], np.float32), 1) == (0.0, True)  # padded with zeros


@pytest.mark.parametrize("group", [1, 2])
def test_conv_along_input_channels_per_group(group):
    g = GraphBuilder(shape=(8, 5, 5))
    rng = np.random.default_rng(0)
    per_group = 8 // group
    good = two_four((8, per_group, 3, 3), 1, rng)
    bad = two_four((8, 8, 1, 1), 1, rng, broken=3)
    y = g.conv(g.conv("x", good, pad=1, group=group), bad)
    _, step = annotate(g.model(y))
    assert [(layer.is_2to4, layer.reduction) for layer in step.layers] == [(True, per_group), (False, 8)]
    assert step.layers[1].violating_share == pytest.approx(3 / 16)


def test_depthwise_conv_is_no_two_four_candidate():
    """One input channel per group: "2:4" only by padding, and no sparse kernel runs it — neither labelled nor
    counted (a timm EfficientNet-B0 once reported 16 of 82 weights 2:4, all of them depthwise)."""
    g = GraphBuilder(shape=(8, 5, 5))
    depthwise = g.conv("x", g.weight(8, 1, 3, 3), pad=1, group=8)
    model, step = annotate(g.model(g.conv(depthwise, two_four((16, 8, 1, 1), 1, np.random.default_rng(0)))))
    assert [(layer.reduction, layer.is_2to4) for layer in step.layers] == [(8, True)]
    labelled = [v.name for v in model.graph.initializers.values() if v.const_value.doc_string == "SPARSE_2_4"]
    assert len(labelled) == 1


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_respects_trans_b(trans_b):
    g = GraphBuilder(shape=(16,))
    rng = np.random.default_rng(1)
    b = two_four((16, 12), 0, rng)  # [K, N], 2:4 along K
    stored = b.T.copy() if trans_b else b
    y = g.op("Gemm", ["x", g.const(stored), g.const(np.zeros(12))], transB=trans_b)
    _, step = annotate(g.model(y))
    assert [(layer.is_2to4, layer.reduction, layer.outputs) for layer in step.layers] == [(True, 16, 12)]
    # the same numbers read along the wrong axis are not 2:4
    wrong = GraphBuilder(shape=(12,))
    y = wrong.op("Gemm", ["x", wrong.const(stored), wrong.const(np.zeros(16))], transB=1 - trans_b)
    assert not annotate(wrong.model(y))[1].layers[0].is_2to4


def test_matmul_through_transpose_as_dynamo_exports_linear():
    g = GraphBuilder(shape=(3, 16))
    rng = np.random.default_rng(2)
    linear_weight = two_four((24, 16), 1, rng)  # nn.Linear stores [out, in]: 2:4 along `in`
    t = g.op("Transpose", [g.const(linear_weight, "fc.weight")], perm=[1, 0])
    model, step = annotate(g.model(g.op("MatMul", ["x", t])))
    (layer,) = step.layers
    assert layer.is_2to4 and layer.reduction == 16 and layer.weight.startswith("fc.weight")
    assert model.graph.initializers[layer.weight].metadata_props["pkg.sparsecut.sparsity"] == "2:4"


def test_through_dequantize_linear_zero_is_the_zero_point():
    g = GraphBuilder(shape=(8, 4, 4))
    rng = np.random.default_rng(3)
    pattern = two_four((4, 8, 1, 1), 1, rng) != 0
    zero_point = np.array([3, -2, 0, 5], np.int8)
    q = np.where(pattern, rng.integers(10, 100, pattern.shape), 0).astype(np.int8) + zero_point.reshape(4, 1, 1, 1)
    g.initializers.append(numpy_helper.from_array(q.astype(np.int8), "wq"))
    g.initializers.append(numpy_helper.from_array(zero_point, "zp"))
    w = g.op("DequantizeLinear", ["wq", g.const(np.full(4, 0.1, np.float32)), "zp"], axis=0)
    _, step = annotate(g.model(g.op("Conv", ["x", w])))
    assert [(layer.weight, layer.is_2to4) for layer in step.layers] == [("wq", True)]


def test_labels_and_summary_survive_saving_with_external_data(tmp_path):
    g = GraphBuilder(shape=(8, 5, 5))
    rng = np.random.default_rng(4)
    y = g.conv(g.conv("x", two_four((8, 8, 3, 3), 1, rng), pad=1), g.weight(4, 8, 1, 1))
    model, _ = annotate(g.model(y))
    assert save_model(model, tmp_path / "m.onnx", external_data=True)
    saved = onnx.load(str(tmp_path / "m.onnx"))
    labelled = {t.name: (t.doc_string, {p.key: p.value for p in t.metadata_props}) for t in saved.graph.initializer}
    sparse = [name for name, (doc, _) in labelled.items() if doc == "SPARSE_2_4"]
    assert len(sparse) == 1 and labelled[sparse[0]][1] == {"pkg.sparsecut.sparsity": "2:4"}
    summary = json.loads({p.key: p.value for p in saved.metadata_props}["pkg.sparsecut.sparsity.summary"])
    assert summary["layers"] == 2 and summary["layers_2to4"] == 1


def test_shares_of_many_weights_equal_each_weight_alone():
    """Equally shaped weights are checked stacked; every share and padding flag equals the one-by-one result
    (padded axes, empty weights, any axis, shapes met once and many times)."""
    from sparsecut.passes.two_four import violations_of_many

    rng = np.random.default_rng(3)
    weights = []
    for shape in [(16, 16, 1, 1), (8, 6, 3, 3), (5, 7), (12, 0, 3), (4, 13, 2), (0, 8)]:
        for axis in range(len(shape)):
            for _ in range(3):
                density = rng.random()
                weights.append(((rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32), axis))
    weights.append((np.zeros((8, 4)), 0))  # all zero: 2:4
    got = violations_of_many(weights)
    assert got == [two_four_violations(w, axis) for w, axis in weights]
    assert any(share == 0.0 for share, _ in got) and any(share > 0.0 for share, _ in got)


def test_big_weights_are_checked_one_at_a_time_not_stacked(tmp_path):
    """Equally shaped small weights are checked stacked; big ones (external data, memory-mapped) one at a time:
    stacking eight 4 MiB weights would allocate 32 MiB at once."""
    import tracemalloc

    from onnx import TensorProto, helper

    from sparsecut.modelfile import load_model
    from sparsecut.passes.two_four import two_four_weights

    nodes, weights, x = [], [], "x"
    for i in range(8):
        weights.append(numpy_helper.from_array(np.ones((1024, 1024), np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1024])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(proto, tmp_path / "big.onnx", save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    model = load_model(tmp_path / "big.onnx")
    tracemalloc.start()
    try:
        assert two_four_weights(model) == set()
        AnnotateTwoFourPass()(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB: weights were held or stacked together"
