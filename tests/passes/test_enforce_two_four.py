"""enforce-2to4 (opt-in, changes the model): a valid 2:4 pattern on every eligible layer, ineligible ones untouched;
and the report of weights that channel removal took out of 2:4."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.enforce_two_four import two_four_mask
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.passes.two_four import two_four_violations
from sparsecut.precision import Precision
from tests.passes.graphs import GraphBuilder


def test_mask_keeps_the_two_largest_of_every_four():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]], np.float32)
    assert two_four_mask(w, 1).tolist() == [[False, True, True, False, True, False, False, True]]


def test_eligible_layers_become_2to4_and_others_are_untouched(tmp_path):
    g = GraphBuilder(shape=(64, 4, 4))
    first = g.weight(64, 64, 3, 3)  # reads the graph input: skipped
    big = g.weight(64, 64, 1, 1)
    big[:, :16] *= 4  # large inputs crowded into the same groups of 4: a channel reorder keeps more of them
    small = g.weight(8, 64, 1, 1)  # 8 outputs < 64 channels: skipped
    y = g.conv(g.op("Relu", [g.conv(g.op("Relu", [g.conv("x", first, pad=1)]), big)]), small)
    onnx.save(g.model(y), tmp_path / "in.onnx")
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(enforce_2to4=True, align=1))
    saved = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    by_name = {layer.weight: layer for layer in report.enforced}
    names = [layer.weight for layer in report.enforced]  # graph order: first, big, small
    first_name, big_name, small_name = names
    assert [by_name[n].pruned for n in names] == [False, True, False]
    assert by_name[first_name].skipped_because == "first conv (reads the graph input)"
    assert by_name[small_name].skipped_because == "fewer than 64 channels"
    # the channels between first and big were reordered (first's rows, big's columns alike), nothing else changed
    order = np.array([int(np.flatnonzero((first == row).all(axis=(1, 2, 3)))[0]) for row in saved[first_name]])
    assert sorted(order.tolist()) == list(range(64)) and order.tolist() != list(range(64))
    reordered = big[:, order]
    np.testing.assert_array_equal(saved[big_name], np.where(two_four_mask(reordered, 1), reordered, 0))
    assert two_four_violations(saved[big_name], 1) == (0.0, False)
    np.testing.assert_array_equal(saved[small_name], small)
    layer = by_name[big_name]
    assert layer.permutation == "reordered 64 channels"
    assert 0.5 < layer.magnitude_kept_without_permutation < layer.magnitude_kept < 1.0
    without = np.where(two_four_mask(big, 1), big, 0)
    assert layer.magnitude_kept_without_permutation == pytest.approx(np.abs(without).sum() / np.abs(big).sum())


def test_reorder_search_can_be_turned_off(tmp_path):
    g = GraphBuilder(shape=(64, 4, 4))
    first, big = g.weight(64, 64, 3, 3), g.weight(64, 64, 1, 1)
    onnx.save(g.model(g.conv(g.op("Relu", [g.conv("x", first, pad=1)]), big)), tmp_path / "in.onnx")
    options = OptimizeOptions(enforce_2to4=True, align=1, permutation_budget=0)
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", options)
    saved = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer]
    np.testing.assert_array_equal(saved[0], first)
    layer = report.enforced[1]
    assert layer.permutation == "channels stay in place: search off"
    assert layer.magnitude_kept == pytest.approx(layer.magnitude_kept_without_permutation, rel=1e-6)  # f32 vs f64 sums


def test_nothing_eligible_warns_and_succeeds(tmp_path, caplog):
    g = GraphBuilder()
    onnx.save(
        g.model(g.conv(g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1))]), g.weight(2, 8, 1, 1))), tmp_path / "in.onnx"
    )
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(enforce_2to4=True))
    assert not any(layer.pruned for layer in report.enforced)
    assert "no layer is eligible" in caplog.text


def test_channel_removal_that_breaks_2to4_is_reported(tmp_path):
    g = GraphBuilder()
    rng = np.random.default_rng(0)
    consumer = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    consumer[:, [0, 1, 4, 5]] = 0.0  # 2:4 along the 8 inputs
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2,)))])
    onnx.save(g.model(g.conv(h, consumer)), tmp_path / "in.onnx")
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.lost_two_four == ["w6"]  # the consumer: input channel 2 went, the groups of 4 shifted


@pytest.mark.parametrize("precision", ["int8"])
def test_enforce_then_quantize_keeps_labels(tmp_path, precision):
    g = GraphBuilder(shape=(64, 4, 4))
    y = g.conv(g.op("Relu", [g.conv("x", g.weight(64, 64, 1, 1))]), g.weight(64, 64, 1, 1))
    onnx.save(g.model(y), tmp_path / "in.onnx")
    optimize_model(
        tmp_path / "in.onnx",
        tmp_path / "out.onnx",
        OptimizeOptions(enforce_2to4=True, precision=PrecisionRequest(Precision(precision))),
    )
    model = onnx.load(str(tmp_path / "out.onnx"))
    assert any(t.doc_string == "SPARSE_2_4" for t in model.graph.initializer)
