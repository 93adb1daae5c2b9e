"""Each channel rule family on a tiny graph, analysis and rewrite checked in memory (graphs.remove_in_memory:
no file, no CLI, onnxruntime from bytes): exact channel counts after, equal outputs."""

from __future__ import annotations

import numpy as np

from tests.passes.graphs import GraphBuilder, remove_in_memory, weights


def test_conv_relu_conv_loses_the_dead_filters():
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 3, 3, dead_rows=(1, 6)), np.zeros(8), pad=1)])
    lean, groups = remove_in_memory(g.model(g.conv(h, g.weight(5, 8, 3, 3), pad=1)))
    assert [w.shape for w in weights(lean, "Conv")] == [(6, 4, 3, 3), (5, 6, 3, 3)]
    assert [(gr.channels_before, gr.channels_after) for gr in groups] == [(8, 6)]


def test_a_residual_add_removes_a_channel_only_where_every_branch_is_dead():
    g = GraphBuilder(shape=(8, 4, 4))
    a = g.conv("x", g.weight(8, 8, 1, 1, dead_rows=(2, 3)), np.zeros(8))
    b = g.conv("x", g.weight(8, 8, 1, 1, dead_rows=(3, 4)), np.zeros(8))
    y = g.conv(g.op("Add", [a, b]), g.weight(2, 8, 1, 1))
    lean, _ = remove_in_memory(g.model(y))
    assert [w.shape for w in weights(lean, "Conv")] == [(7, 8, 1, 1), (7, 8, 1, 1), (2, 7, 1, 1)]  # only 3


def test_concat_moves_channels_by_offset():
    g = GraphBuilder()
    a = g.op("Relu", [g.conv("x", g.weight(4, 4, 1, 1, dead_rows=(0,)), np.zeros(4))])
    b = g.op("Relu", [g.conv("x", g.weight(6, 4, 1, 1, dead_rows=(5,)), np.zeros(6))])
    y = g.conv(g.op("Concat", [a, b], axis=1), g.weight(3, 10, 1, 1))
    lean, _ = remove_in_memory(g.model(y))
    assert [w.shape for w in weights(lean, "Conv")] == [(3, 4, 1, 1), (5, 4, 1, 1), (3, 8, 1, 1)]


def test_depthwise_conv_couples_input_k_with_output_k():
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(3,)), np.zeros(8))])
    d = g.op("Relu", [g.conv(h, g.weight(8, 1, 3, 3), np.zeros(8), pad=1, group=8)])
    lean, _ = remove_in_memory(g.model(g.conv(d, g.weight(2, 8, 1, 1))))
    assert [w.shape for w in weights(lean, "Conv")] == [(7, 4, 1, 1), (7, 1, 3, 3), (2, 7, 1, 1)]


def test_flatten_into_gemm_takes_every_feature_of_a_channel():
    g = GraphBuilder(shape=(4, 2, 2))
    h = g.op("Relu", [g.conv("x", g.weight(6, 4, 1, 1, dead_rows=(1,)), np.zeros(6))])
    flat = g.op("Flatten", [h], axis=1)
    y = g.op("Gemm", [flat, g.const(g.weight(3, 24)), g.const(np.zeros(3))], transB=1)
    lean, _ = remove_in_memory(g.model(y))
    assert [w.shape for w in weights(lean, "Gemm")] == [(3, 20)]  # channel 1's 2·2 features gone


def test_a_constant_channel_folds_into_a_one_by_one_consumer_but_stays_before_a_padded_one():
    g = GraphBuilder()
    w = g.weight(8, 4, 1, 1, dead_rows=(2,))
    h = g.op("Sigmoid", [g.conv("x", w, np.zeros(8))])  # channel 2 is Sigmoid(0) = 0.5, not zero
    y1 = g.conv(h, g.weight(3, 8, 1, 1), np.zeros(3))
    lean, _ = remove_in_memory(g.model(y1))
    assert [w.shape for w in weights(lean, "Conv")] == [(7, 4, 1, 1), (3, 7, 1, 1)]  # 0.5 · W[:, 2] in the bias
    g = GraphBuilder()
    h = g.op("Sigmoid", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2,)), np.zeros(8))])
    lean, groups = remove_in_memory(g.model(g.conv(h, g.weight(3, 8, 3, 3), np.zeros(3), pad=1)))
    assert [w.shape for w in weights(lean, "Conv")] == [(8, 4, 1, 1), (3, 8, 3, 3)]
    assert groups[0].kept_dead  # and the report says why


def test_matmul_mlp_hidden_neurons_go_from_both_layers():
    g = GraphBuilder(shape=(5, 8))
    w1 = g.weight(8, 16)
    w1[:, [3, 9, 10]] = 0.0
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", ["x", g.const(w1)]), g.const(np.zeros(16))])])
    y = g.op("Add", [g.op("MatMul", [h, g.const(g.weight(16, 8))]), g.const(np.zeros(8))])
    lean, _ = remove_in_memory(g.model(y))
    assert [w.shape for w in weights(lean, "MatMul")] == [(8, 13), (13, 8)]
