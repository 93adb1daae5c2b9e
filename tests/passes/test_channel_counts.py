"""Measured decisions on a fake timer: the chooser keeps the count the latency table says is fastest, the
end-to-end guard never calls a slower lean faster, and the table round-trips under a key with device and version."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import pytest

from sparsecut.passes import OptimizeOptions
from sparsecut.passes.channel_counts import candidate_counts, choose_count
from sparsecut.passes.channels import SLOWER_WHEN_REMOVED
from sparsecut.passes.latency_table import LatencyTable, LayerSignature, Timed, median_interval
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
    """A fake end-to-end comparison: p50 of the input 10 ms; each distinct candidate graph's speedup as given, in
    order (optimize times a graph two candidates share once). Records the paths it was given (`.paths`)."""

    def compare(paths: list[Path]) -> list[MeasuredVariant]:
        compare.paths.append(list(paths))
        out = [MeasuredVariant("", str(paths[0]), 10.0, Speedup(1.0, 1.0, 1.0))]
        for path, value in zip(paths[1:], values, strict=True):
            out.append(MeasuredVariant("", str(path), 10.0 / value, Speedup(value, value * 0.98, value * 1.02)))
        return out

    compare.paths = []
    return compare


def dead_model(tmp_path: Path) -> Path:
    """conv 4 → 16 with 5 dead filters (11 live), ReLU, conv 16 → 8: align 8 and align 16 keep the same 16."""
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
    # cost grows with channels: the live count (11) wins — align 1's graph; the one named is the measured decision
    report, _ = run(tmp_path, lambda layer: float(layer.c_in + layer.c_out), speedups(1.2, 1.1))
    (decision,) = report.decision.groups
    assert (decision.live, decision.chosen, decision.original) == (11, 11, 16)
    assert report.decision.written == "measured"
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [11, 8]


def test_a_space_slower_when_removed_is_kept_whole(tmp_path):
    # unaligned counts cost 10×: 16 (the original) beats 11 and 12 → nothing removed, and the report says why
    report, _ = run(tmp_path, multiple_of_8_is_fast, speedups(1.1, 1.2))
    (decision,) = report.decision.groups
    assert decision.chosen == 16 and decision.predicted_ms["16"] < decision.predicted_ms["12"]
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [16, 8]
    (group,) = removal(report)
    assert group.kept_dead == {SLOWER_WHEN_REMOVED: 5}


def test_the_end_to_end_guard_never_calls_a_slower_lean_faster(tmp_path):
    report, _ = run(tmp_path, lambda layer: float(layer.c_in + layer.c_out), speedups(0.9, 0.97))
    decision = report.decision
    assert not decision.pays
    assert decision.written == "align 8"  # the fastest of the candidates (align 16's graph too), still slower
    assert decision.verdict.startswith("pruning does not pay on this target")
    assert (tmp_path / "out.onnx").exists()  # written, flagged


def test_the_fastest_candidate_is_written_and_a_graph_is_timed_once(tmp_path):
    compare = speedups(1.3, 1.5)
    report, _ = run(tmp_path, lambda layer: float(layer.c_in + layer.c_out), compare)
    assert report.decision.written == "align 8" and report.decision.pays
    variants = {v.name: v for v in report.decision.variants}
    assert list(variants) == ["input", "align 1", "align 8", "align 16", "measured"]
    # five candidates, two graphs: align 1 = measured (11 kept), align 8 = align 16 (16 kept)
    assert [len(paths) for paths in compare.paths] == [3]
    assert variants["align 16"].p50_ms == variants["align 8"].p50_ms == 10.0 / 1.5
    assert variants["measured"].p50_ms == variants["align 1"].p50_ms == 10.0 / 1.3
    assert {name: v.same_as for name, v in variants.items() if v.same_as} == {
        "align 16": "align 8",
        "measured": "align 1",
    }


def windows(*p50s: dict[int, float]):
    """A fake run-off: call k times each file at `p50s[k][channels of its first conv]` ms (±0.5 %). Records its
    calls."""

    def confirm(paths: list[Path]) -> list[MeasuredVariant]:
        ms = p50s[len(confirm.calls)]
        confirm.calls.append([onnx.load(str(p)).graph.initializer[0].dims[0] for p in paths])
        times = [ms[c] for c in confirm.calls[-1]]
        return [MeasuredVariant("", str(p), t, Speedup(times[0] / t, times[0] / t * 0.995, times[0] / t * 1.005))
                for p, t in zip(paths, times, strict=True)]  # fmt: skip

    confirm.calls = []
    return confirm


@pytest.mark.parametrize(
    ("later", "written", "ratios", "outcome"),
    [
        ([{16: 6.0, 11: 7.0}], "align 8", [1.1538, 1.1667], "align 8 faster in both"),
        ([{16: 6.02, 11: 6.0}], "align 8", [1.1538, 0.9967], "align 8 kept (the second window within noise or 2 %)"),
        ([{16: 6.1, 11: 6.0}], "align 8", [1.1538, 0.9836], "align 8 kept (the second window within noise or 2 %)"),
        ([{16: 7.0, 11: 6.0}, {16: 6.0, 11: 6.6}], "align 8", [1.1538, 0.8571, 1.1], "align 8 faster in two of three"),
        ([{16: 7.0, 11: 6.0}, {16: 7.2, 11: 6.0}], "measured", [1.1538, 0.8571, 0.8333],
         "measured faster in two of three"),
    ],
)  # fmt: skip
def test_the_two_fastest_are_timed_again_and_a_first_window_is_turned_only_by_two(
    tmp_path, later, written, ratios, outcome
):
    """The comparison of all says align 8 (16 kept) 1.5×, align 1 = measured (11 kept) 1.3×; a second window
    times the two alone: agreeing, or the other faster within noise or by less than 2 % (1.7 %, beyond ±0.5 %
    noise), the first stands; the other faster beyond both, a third decides."""
    confirm = windows(*later)
    tuning = Tuning(target="fake", timer=FakeTimer(lambda layer: float(layer.c_in + layer.c_out)),
                    compare=speedups(1.3, 1.5), budget=30.0, confirm=confirm)  # fmt: skip
    report = optimize_measured(dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    run_off = report.decision.run_off
    assert confirm.calls == [[16, 11]] * len(later)  # the first window's fastest first
    assert run_off.finalists == ["align 8", "measured"] and run_off.ratios == ratios
    assert report.decision.written == run_off.winner == written
    kept = 16 if written == "align 8" else 11
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [kept, 8]
    shown = ", ".join(f"{r:.2f}×" for r in ratios)
    assert report.decision.verdict.endswith(f"; align 8 vs measured per window: {shown}: {outcome}")
    assert type(report).from_dict(report.to_dict()).decision.run_off == run_off


def test_one_lean_graph_needs_no_run_off(tmp_path):
    # 16 of 32 filters dead: every alignment keeps 16 and so does the table (multiples of 8 fast): one graph
    g = GraphBuilder()
    hidden = g.op("Relu", [g.conv("x", g.weight(32, 4, 1, 1, dead_rows=tuple(range(0, 32, 2))))])
    onnx.save(g.model(g.conv(hidden, g.weight(8, 32, 1, 1))), tmp_path / "in.onnx")
    confirm = windows()
    tuning = Tuning(target="fake", timer=FakeTimer(multiple_of_8_is_fast), compare=speedups(1.2), budget=30.0,
                    confirm=confirm)  # fmt: skip
    report = optimize_measured(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    assert report.decision.run_off is None and confirm.calls == []
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [16, 8]


def test_table_round_trips_and_a_second_run_measures_nothing(tmp_path):
    table = tmp_path / "lut.json"
    _, first = run(tmp_path, multiple_of_8_is_fast, speedups(1.1, 1.2), table=table)
    assert first.calls > 0
    data = json.loads(table.read_text())
    (key,) = data["tables"]
    assert json.loads(key) == CONTEXT  # stored under device, backend, version, threads and batch
    (tmp_path / "out.onnx").unlink()
    _, second = run(tmp_path, multiple_of_8_is_fast, speedups(1.1, 1.2), table=table)
    assert second.calls == 0


@pytest.mark.parametrize("changed", ["device", "version", "threads", "batch"])
def test_another_context_misses(tmp_path, changed):
    path = tmp_path / "lut.json"
    layer = LayerSignature("Conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (8, 8), 1)
    table = LatencyTable(path, CONTEXT)
    table.lookup(layer, FakeTimer(lambda _: Timed(1.5, 0.1)))
    table.save()
    again = LatencyTable(path, CONTEXT)
    assert again.known(layer) and again.lookup(layer, FakeTimer(lambda _: 99.0)) == Timed(1.5, 0.1)  # noise kept
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


def test_a_count_above_the_fewest_is_chosen_only_beyond_noise():
    # 104 is 0.066 ms faster than 64 (ResNet-18's blocks.2.conv1 on one run), inside a noise of 0.05 each
    assert choose_count({64: Timed(1.589, 0.05), 104: Timed(1.523, 0.05)}) == 64
    assert choose_count({64: Timed(1.589, 0.01), 104: Timed(1.523, 0.01)}) == 104  # beyond noise: it pays
    assert choose_count({11: Timed(2.0), 12: Timed(2.0), 16: Timed(2.0)}) == 11  # a tie: fewer channels
    assert choose_count({11: Timed(float("inf")), 16: Timed(3.0)}) == 16  # what the target cannot run: never
    assert choose_count({11: Timed(float("inf"))}) is None


def test_the_median_interval_is_distribution_free():
    timed = median_interval([1.0] * 10 + [1.2] * 9 + [9.0])  # one hiccup does not move the median
    assert timed.ms == pytest.approx(1.1) and timed.noise == pytest.approx(0.1)


def test_noise_ties_go_to_fewer_channels(tmp_path):
    """12 channels are 3 % faster than the 11 live ones on a table whose entries are noisier than that: the 11 stay
    alone; with a quiet table the same saving keeps a dead channel."""
    cost = lambda noise: lambda layer: Timed(1.0 if layer.c_in % 4 == 0 and layer.c_out % 4 == 0 else 1.03, noise)  # noqa: E731
    noisy, _ = run(tmp_path, cost(0.05), speedups(1.1, 1.2))  # 11 (align 1's graph), 16
    assert noisy.decision.groups[0].chosen == 11
    assert set(noisy.decision.groups[0].noise_ms.values()) == {0.07071}  # two layers' noise, 0.05 each, combined
    (tmp_path / "out.onnx").unlink()
    quiet, _ = run(tmp_path, cost(0.001), speedups(1.1, 1.1, 1.2))  # 11, 16, 12
    assert quiet.decision.groups[0].chosen == 12


def wide_dead_model(tmp_path: Path) -> Path:
    """conv 4 → 32 with 13 dead filters (19 live), ReLU, conv 32 → 8: align 1 keeps 19, align 8 24, align 16 32 (the
    graphs timed end to end: the table's and the measured counts are one of these)."""
    g = GraphBuilder()
    hidden = g.op("Relu", [g.conv("x", g.weight(32, 4, 1, 1, dead_rows=tuple(range(0, 26, 2))))])
    onnx.save(g.model(g.conv(hidden, g.weight(8, 32, 1, 1))), tmp_path / "in.onnx")
    return tmp_path / "in.onnx"


def fake_profile(in_place):
    """Whole-model profiles whose node times follow `in_place(channels)` of the file's first conv, noise 0.01 ms."""

    def profile(paths):
        found = []
        for path in paths:
            model = onnx.load(str(path))
            channels = next(t.dims[0] for t in model.graph.initializer if len(t.dims) == 4)
            found.append({n.name: Timed(in_place(channels), 0.01) for n in model.graph.node if n.op_type == "Conv"})
        return found

    return profile


def test_a_count_is_chosen_in_context_where_the_one_layer_table_chooses_otherwise(tmp_path):
    """Alone, each layer is fastest at the 19 live channels (the table proposes 19); in the whole model the layers
    run fastest at 24 (a layout the neighbours share): the context keeps 24, and the report shows both."""
    timer = FakeTimer(lambda layer: float(layer.c_in + layer.c_out))
    in_place = {19: 1.0, 24: 0.6, 32: 0.9}
    tuning = Tuning(target="fake", timer=timer, compare=speedups(1.1, 1.2, 1.1), budget=30.0,
                    profile=fake_profile(in_place.__getitem__))  # fmt: skip
    report = optimize_measured(wide_dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    (group,) = report.decision.groups
    assert (group.live, group.proposed, group.chosen) == (19, 19, 24)
    assert group.in_context_ms == {"19": 2.0, "24": 1.2, "32": 1.8}  # the two convs touching the space
    assert group.predicted_ms["19"] < group.predicted_ms["24"]  # the table's view, kept beside it
    assert [v.name for v in report.decision.variants] == [
        "input",
        "align 1",
        "align 8",
        "align 16",
        "table",
        "measured",
    ]
    assert report.decision.written == "measured"
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [24, 8]


def test_in_context_a_difference_within_noise_keeps_the_fewest(tmp_path):
    timer = FakeTimer(lambda layer: float(layer.c_in + layer.c_out))
    in_place = {19: 1.0, 24: 0.995, 32: 1.0}  # 0.01 ms apart over the two convs, noise 0.01 per conv
    tuning = Tuning(target="fake", timer=timer, compare=speedups(1.1, 1.2, 1.1), budget=30.0,
                    profile=fake_profile(in_place.__getitem__))  # fmt: skip
    report = optimize_measured(wide_dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    (group,) = report.decision.groups
    assert group.chosen == 19 and group.proposed is None


def test_a_budget_too_small_for_one_group_writes_the_best_fixed_alignment(tmp_path):
    timer = FakeTimer(lambda layer: float(layer.c_in + layer.c_out))
    tuning = Tuning(target="fake", timer=timer, compare=speedups(1.1, 1.3, 1.2), budget=1e-9,
                    profile=fake_profile(lambda c: 1.0))  # fmt: skip
    report = optimize_measured(wide_dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    assert [v.name for v in report.decision.variants] == ["input", "align 1", "align 8", "align 16"]
    assert report.decision.written == "align 8" and report.decision.groups == []
    assert report.decision.verdict.startswith(
        "--tune-budget 1e-09 s: too small to measure even one channel group; the best fixed alignment is written "
        "(align 8); align 8 written: 1.30×"
    )


def test_spaces_that_share_a_layer_are_probed_apart():
    """conv A → conv B → conv C, both hidden spaces with dead channels: B reads one and writes the other, so they
    get two colors, and each probe varies one of them with the other held at the base."""
    import onnx_ir as ir

    from sparsecut.passes.channels import DeadChannelAnalysis
    from sparsecut.passes.in_context import colors, probes, touching_nodes

    g = GraphBuilder()
    a = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=(1, 2, 3)))])
    b = g.op("Relu", [g.conv(a, g.weight(16, 16, 1, 1, dead_rows=(4, 5)))])
    model = ir.from_proto(g.model(g.conv(b, g.weight(8, 16, 1, 1))))
    analysis = DeadChannelAnalysis(model, align=1)
    spaces = [s for s, sp in enumerate(analysis.walk.spaces) if sp.count == 16]
    touching = touching_nodes(analysis)
    color = colors({s: touching[s] for s in spaces})
    assert sorted(color.values()) == [0, 1]
    base = {s: 16 for s in range(len(analysis.walk.spaces))}
    low = {**base, spaces[0]: 13, spaces[1]: 14}
    found = probes(base, {"align 1": low, "align 16": base}, color)
    assert sorted(tuple(varied) for _, varied in found.values()) == sorted((s,) for s in spaces)
    for kept, (s,) in found.values():
        assert kept == {**base, s: low[s]}


def fake_quick(whole):
    """End-to-end timings whose p50 follows `whole(channels)` of each file's first conv (±1 %)."""

    def quick(paths, thorough=False):
        found = []
        for path in paths:
            model = onnx.load(str(path))
            channels = next(t.dims[0] for t in model.graph.initializer if len(t.dims) == 4)
            found.append(whole(channels))
        return [MeasuredVariant("", str(p), ms, Speedup(found[0] / ms, found[0] / ms * 0.99, found[0] / ms * 1.01))
                for p, ms in zip(paths, found, strict=True)]  # fmt: skip

    return quick


def test_a_probe_slower_end_to_end_offers_none_of_its_counts(tmp_path):
    """The kernels say 19 channels run fastest; end to end, 19 is 20 % slower than the base (24, the fastest fixed
    alignment): the probe's count is not offered, the space keeps 24."""
    timer = FakeTimer(lambda layer: float(layer.c_in + layer.c_out))
    tuning = Tuning(target="fake", timer=timer, compare=speedups(1.1, 1.2, 1.1), budget=30.0,
                    profile=fake_profile({19: 0.5, 24: 1.0, 32: 1.2}.__getitem__),
                    quick=fake_quick({19: 1.2, 24: 1.0, 32: 1.1}.__getitem__))  # fmt: skip
    report = optimize_measured(wide_dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    (group,) = report.decision.groups
    assert group.chosen == 24 and group.in_context_ms == {"24": 2.0}  # 19 and 32 run slower as a whole: not offered


@pytest.mark.parametrize(
    ("whole", "kept"),
    [
        (Speedup(0.83, 0.82, 0.84), False),  # slower beyond noise: each probe's loss within noise, their sum not
        (Speedup(0.99, 0.97, 1.01), False),  # no faster than the base: the base's counts, the simpler
        (Speedup(1.01, 0.99, 1.03), True),  # faster, if within noise: the context's counts stay
    ],
)
def test_choices_no_faster_than_the_base_as_a_whole_fall_back_to_it(tmp_path, whole, kept):
    """Each probe is within noise of the base end to end, so the kernels choose 19; the chosen counts are then
    timed against the base as a whole (as long as the base was chosen): unless faster, the measured counts are the
    base's (24)."""
    timer = FakeTimer(lambda layer: float(layer.c_in + layer.c_out))
    neutral = fake_quick({19: 0.995, 24: 0.99, 32: 1.1}.__getitem__)  # 24 the fastest fixed; 19 within noise
    thorough = []

    def quick(paths, thorough_=False):
        found = neutral(paths)
        if len(paths) == 2:  # the chosen counts against the base
            thorough.append(thorough_)
            found[1] = MeasuredVariant("", str(paths[1]), 0.99 / whole.value, whole)
        return found

    tuning = Tuning(target="fake", timer=timer, compare=speedups(1.1, 1.2, 1.1),
                    budget=30.0, profile=fake_profile({19: 0.5, 24: 1.0, 32: 1.2}.__getitem__),
                    quick=lambda paths, thorough=False: quick(paths, thorough))  # fmt: skip
    report = optimize_measured(wide_dead_model(tmp_path), tmp_path / "out.onnx", OptimizeOptions(align=1), tuning)
    (group,) = report.decision.groups
    assert thorough == [True]
    assert group.in_context_ms["19"] < group.in_context_ms["24"]
    if kept:
        assert group.chosen == 19 and list(report.decision.counts.values()) == [19]
        return
    assert group.chosen == 24 and report.decision.counts == {}
    assert [w.shape[0] for w in weights(_load(tmp_path), "Conv")] == [24, 8]  # (measured written: the base)
