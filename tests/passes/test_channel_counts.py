"""Measured decisions on a fake timer: the chooser keeps the count the latency table says is fastest, the
end-to-end guard never calls a slower lean faster, and the table round-trips under a key with device and version."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import pytest

from sparsecut.passes import OptimizeOptions
from sparsecut.passes.channel_counts import candidate_counts
from sparsecut.passes.channels import SLOWER_WHEN_REMOVED
from sparsecut.passes.latency_table import LatencyTable, LayerSignature
from sparsecut.passes.measured import Tuning, optimize_measured
from sparsecut.report import MeasuredVariant, Speedup
from tests.passes.graphs import GraphBuilder, removal, weights

CONTEXT = {"device": "fake CPU [avx2]", "backend": "fake", "version": "1.0", "threads": "2", "batch": "1"}


class FakeTimer:
    """A layer's "time" from its channel counts alone, by a rule the test chooses; counts its calls."""

    def __init__(self, cost, context=CONTEXT):
        self.cost = cost
        self._context = dict(context)
        self.calls = 0

    def context(self):
        return self._context

    def time_layer(self, layer: LayerSignature) -> float:
        self.calls += 1
        return self.cost(layer)


def speedups(*values: float):
    """A fake end-to-end comparison: p50 of the input 10 ms; each candidate's speedup as given, in order."""

    def compare(paths: list[Path]) -> list[MeasuredVariant]:
        out = [MeasuredVariant("", str(paths[0]), 10.0, Speedup(1.0, 1.0, 1.0))]
        for path, value in zip(paths[1:], values, strict=True):
            out.append(MeasuredVariant("", str(path), 10.0 / value, Speedup(value, value * 0.98, value * 1.02)))
        return out

    return compare


def dead_model(tmp_path: Path) -> Path:
    """conv 4 → 16 with 5 dead filters (11 live), ReLU, conv 16 → 8."""
    g = GraphBuilder()
    hidden = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=(0, 3, 5, 9, 14)))])
    onnx.save(g.model(g.conv(hidden, g.weight(8, 16, 1, 1))), tmp_path / "in.onnx")
    return tmp_path / "in.onnx"


def multiple_of_8_is_fast(layer: LayerSignature) -> float:
    return sum(c if c % 8 == 0 else 10 * c for c in (layer.c_in, layer.c_out))


def run(tmp_path, cost, compare, table=None):
    timer = FakeTimer(cost)
    tuning = Tuning(target="fake", timer=timer, compare=compare, table=table, budget=30.0)
    report = optimize_measured(dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    return report, timer


def test_candidates_are_the_steps_the_device_cares_about():
    assert candidate_counts(11, 16) == [11, 12, 16]
    assert candidate_counts(100, 300)[:6] == [100, 104, 108, 112, 116, 120]
    assert candidate_counts(100, 300)[-2:] == [228, 300]  # at most SPAN above the live count, and the original
    assert candidate_counts(6, 16, multiple=4) == [8, 12, 16]


def test_chooser_keeps_the_count_the_table_says_is_fastest(tmp_path):
    # cost grows with channels: the live count (11) wins
    report, _ = run(tmp_path, lambda layer: float(layer.c_in + layer.c_out), speedups(1.1, 1.1, 1.1, 1.2))
    (decision,) = report.decision.groups
    assert (decision.live, decision.chosen, decision.original) == (11, 11, 16)
    assert report.decision.written == "measured"
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [11, 8]


def test_a_space_slower_when_removed_is_kept_whole(tmp_path):
    # unaligned counts cost 10×: 16 (the original) beats 11 and 12 → nothing removed, and the report says why
    report, _ = run(tmp_path, multiple_of_8_is_fast, speedups(1.1, 1.1, 1.1, 1.2))
    (decision,) = report.decision.groups
    assert decision.chosen == 16 and decision.predicted_ms["16"] < decision.predicted_ms["12"]
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [16, 8]
    (group,) = removal(report)
    assert group.kept_dead == {SLOWER_WHEN_REMOVED: 5}


def test_the_end_to_end_guard_never_calls_a_slower_lean_faster(tmp_path):
    report, _ = run(tmp_path, lambda layer: float(layer.c_in + layer.c_out), speedups(0.9, 0.95, 0.97, 0.93))
    decision = report.decision
    assert not decision.pays
    assert decision.written == "align 16"  # the fastest of the candidates, still slower than the input
    assert decision.verdict.startswith("pruning does not pay on this target")
    assert (tmp_path / "out.onnx").exists()  # written, flagged


def test_the_fastest_candidate_is_written(tmp_path):
    report, _ = run(tmp_path, lambda layer: float(layer.c_in + layer.c_out), speedups(1.3, 1.5, 1.2, 1.4))
    assert report.decision.written == "align 8" and report.decision.pays
    names = [v.name for v in report.decision.variants]
    assert names == ["input", "align 1", "align 8", "align 16", "measured"]


def test_table_round_trips_and_a_second_run_measures_nothing(tmp_path):
    table = tmp_path / "lut.json"
    _, first = run(tmp_path, multiple_of_8_is_fast, speedups(1.1, 1.1, 1.1, 1.2), table=table)
    assert first.calls > 0
    data = json.loads(table.read_text())
    (key,) = data["tables"]
    assert json.loads(key) == CONTEXT  # stored under device, backend, version, threads and batch
    (tmp_path / "out.onnx").unlink()
    _, second = run(tmp_path, multiple_of_8_is_fast, speedups(1.1, 1.1, 1.1, 1.2), table=table)
    assert second.calls == 0


@pytest.mark.parametrize("changed", ["device", "version", "threads", "batch"])
def test_another_context_misses(tmp_path, changed):
    path = tmp_path / "lut.json"
    layer = LayerSignature("Conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (8, 8), 1)
    table = LatencyTable(path, CONTEXT)
    table.lookup(layer, FakeTimer(lambda _: 1.5))
    table.save()
    again = LatencyTable(path, CONTEXT)
    assert again.known(layer) and again.lookup(layer, FakeTimer(lambda _: 99.0)) == 1.5
    other = LatencyTable(path, {**CONTEXT, changed: "something else"})
    assert not other.known(layer)
    other.lookup(layer, FakeTimer(lambda _: 2.0))
    other.save()
    both = json.loads(path.read_text())["tables"]
    assert len(both) == 2  # the first context's table stays beside the second's


def test_a_foreign_table_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "lut.json"
    path.write_text(json.dumps({"some": "other tool's file"}))
    with caplog.at_level(logging.WARNING):
        table = LatencyTable(path, CONTEXT)
    assert table.entries == {}
    assert "not a readable sparsecut latency table" in caplog.text


def _load(tmp_path):
    import onnx_ir as ir

    return ir.load(tmp_path / "out.onnx")
