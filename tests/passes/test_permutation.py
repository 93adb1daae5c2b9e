"""Channel orders for 2:4: restore after channel removal (exact; outputs unchanged) and ASP-style search."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from sparsecut.passes.enforce_two_four import two_four_mask
from sparsecut.passes.permutation import kept_magnitude, restore_order, search_order
from sparsecut.passes.two_four import two_four_violations
from tests.passes.graphs import GraphBuilder, optimize, weights

DEAD = (3, 5, 6, 7, 11, 13, 14, 15)


def _consumer() -> np.ndarray:
    """A 2:4 weight [2 outputs, 16 inputs] whose kept channels (all but DEAD) violate 2:4 in place, but form valid
    groups as {0, 1, 2, 12} and {8, 9, 10, 4}: fragments A = {0,1,2}, B = {4}, C = {8,9,10}, D = {12}."""
    w = np.zeros((2, 16, 1, 1), np.float32)
    w[0, [0, 1, 4, 8], 0, 0] = [1.0, -2.0, 3.0, 0.5]
    w[1, [2, 9, 10, 12], 0, 0] = [1.5, -1.0, 2.5, -0.7]
    return w


def _run(path, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_restore_reorders_kept_channels_so_the_weight_stays_2to4(tmp_path):
    consumer = _consumer()
    assert two_four_violations(consumer, 1) == (0.0, False)  # 2:4 before removal
    kept = np.setdiff1d(np.arange(16), DEAD)
    assert two_four_violations(consumer[:, kept], 1)[0] == 0.5  # in place, both groups of 4 would violate
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=DEAD))])
    y = g.conv(h, consumer)
    report, model = optimize(tmp_path, g.model(y))  # asserts the equivalence gate passed
    restore = next(p for p in report.passes if p.name == "remove-dead-channels").two_four
    assert [(r.restored, r.reordered, r.channels_before, r.channels_after) for r in restore] == [(True, True, 16, 8)]
    assert report.lost_two_four == []
    producer, lean = weights(model, "Conv")
    assert lean.shape == (2, 8, 1, 1) and producer.shape == (8, 4, 1, 1)
    assert two_four_violations(lean, 1) == (0.0, False)
    assert sorted(lean[lean != 0].tolist()) == sorted(consumer[consumer != 0].tolist())  # same weights, moved
    x = np.random.default_rng(1).standard_normal((3, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "out.onnx", x), _run(tmp_path / "in.onnx", x), rtol=1e-5, atol=1e-6)
    layer = next(s for s in report.passes[-1].sparsity if s.weight == restore[0].weights[0])
    assert layer.is_2to4  # annotate-2to4 labels it


def test_restore_moves_batchnorm_and_bias_with_the_channels(tmp_path):
    g = GraphBuilder()
    bn = [g.const(g.rng.uniform(0.5, 2, 16)), g.const(g.rng.standard_normal(16)), g.const(g.rng.standard_normal(16))]
    bn.append(g.const(g.rng.uniform(0.5, 2, 16)))
    w = g.weight(16, 4, 3, 3, dead_rows=DEAD)
    h = g.op("Relu", [g.op("BatchNormalization", [g.conv("x", w, b=g.rng.standard_normal(16), pad=1), *bn])])
    h = g.op("Mul", [h, g.const(np.where(np.isin(np.arange(16), DEAD), 0, 1.5).reshape(16, 1, 1))])
    report, model = optimize(tmp_path, g.model(g.conv(h, _consumer(), b=np.array([0.1, 0.2]))))
    assert report.lost_two_four == []
    assert two_four_violations(weights(model, "Conv")[1], 1) == (0.0, False)


def test_restore_is_refused_where_channels_are_tied_to_positions(tmp_path):
    g = GraphBuilder()
    consumer = np.zeros((2, 20, 1, 1), np.float32)
    consumer[:, :16] = _consumer()
    consumer[0, [16, 18], 0, 0], consumer[1, [17, 19], 0, 0] = 1.0, 1.0
    h = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=DEAD))])
    both = g.op("Concat", [h, g.op("Relu", [g.conv("x", g.weight(4, 4, 1, 1))])], axis=1)
    report, _ = optimize(tmp_path, g.model(g.conv(both, consumer)))
    restore = next(p for p in report.passes if p.name == "remove-dead-channels").two_four
    assert [(r.restored, r.reason) for r in restore] == [
        (False, "coupled to other channels by Concat/Split/Slice/Flatten/Reshape")
    ]
    assert len(report.lost_two_four) == 1


def test_restore_reports_when_no_order_exists():
    rng = np.random.default_rng(0)
    pattern = two_four_mask(rng.standard_normal((64, 32)), 0)  # dense magnitude 2:4: 2 nonzeros in every row
    removed = np.zeros(64, bool)
    removed[[1, 6, 11]] = True  # three fragments of 3: each has 2 nonzeros in every row, nothing can join them
    assert restore_order(pattern, removed) is None


def test_restore_keeps_the_natural_order_when_it_is_valid():
    pattern = np.zeros((8, 2), bool)
    pattern[[0, 1], 0] = pattern[[5, 6], 1] = True
    removed = np.zeros(8, bool)
    removed[[2, 3, 4, 7]] = True
    assert restore_order(pattern, removed).tolist() == [0, 1, 5, 6]


def test_restore_finds_a_hidden_grouping_of_2048_channels_in_under_a_second():
    rng = np.random.default_rng(2)
    rows, bins = 512, 512  # 2048 kept channels in hidden valid groups of 4, cut into pairs and shuffled
    hidden = np.zeros((bins * 4, rows), bool)
    for b in range(bins):
        picks = np.argsort(rng.random((rows, 4)), axis=1)[:, :2]
        hidden[b * 4 + picks, np.arange(rows)[:, None]] = True
    pieces = [np.arange(b * 4, b * 4 + 2) for b in range(bins)] + [np.arange(b * 4 + 2, b * 4 + 4) for b in range(bins)]
    pattern = np.zeros((len(pieces) * 4, rows), bool)
    removed = np.zeros(len(pieces) * 4, bool)
    for i, p in enumerate(rng.permutation(len(pieces))):
        pattern[i * 4 : i * 4 + 2] = hidden[pieces[p]]
        removed[i * 4 + 2 : i * 4 + 4] = True  # each original group: one piece and two dead channels
    assert two_four_violations(pattern[~removed], 0)[0] > 0.2  # a quarter of (group, row) pairs break in place
    start = time.perf_counter()
    order = restore_order(pattern, removed)
    elapsed = time.perf_counter() - start
    assert order is not None and sorted(order.tolist()) == np.flatnonzero(~removed).tolist()
    assert two_four_violations(pattern[order], 0) == (0.0, False)
    assert elapsed < 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_search_never_keeps_less_than_no_permutation_and_usually_more(seed):
    rng = np.random.default_rng(seed)
    magnitude = np.abs(rng.standard_normal((64, 48)))
    magnitude[:16] *= 4  # structure a permutation can use: the large channels all share groups in place
    order, without, with_order = search_order(magnitude, budget_s=2.0, seed=seed)
    assert sorted(order.tolist()) == list(range(64))
    assert with_order == pytest.approx(kept_magnitude(magnitude, order))
    assert without == pytest.approx(kept_magnitude(magnitude))
    assert with_order > without * 1.05
