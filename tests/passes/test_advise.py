"""`sparsecut advise` on a fake profiler: the probes shrink each group to the staircase's counts, the staircase
reads the layers touching the group, `round_to` follows the steps, and a latency plan removes the fewest channels."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from sparsecut.errors import GraphError, InputError
from sparsecut.passes.advise import advise_model, round_to, staircase_counts
from sparsecut.passes.latency_table import Timed
from tests.passes.graphs import GraphBuilder

CONTEXT = {"device": "fake CPU [avx512f]", "backend": "fake"}


def chain(tmp_path: Path, dead: tuple[int, ...] = ()) -> Path:
    """conv 4 → 32 (`dead` filters zero), ReLU, conv 32 → 8."""
    g = GraphBuilder()
    hidden = g.op("Relu", [g.conv("x", g.weight(32, 4, 1, 1, dead_rows=dead))])
    onnx.save(g.model(g.conv(hidden, g.weight(8, 32, 1, 1))), tmp_path / "in.onnx")
    return tmp_path / "in.onnx"


def aligned_is_cheap(channels: int) -> float:
    """A conv's time: proportional to its channels rounded up to 16 (a blocked layout), 0.01 ms per block."""
    return 0.01 * -(-channels // 16)


def fake_profile(cost, seen=None):
    def profile(paths):
        found = []
        for path in paths:
            model = onnx.load(str(path))
            channels = next(t.dims[0] for t in model.graph.initializer if len(t.dims) == 4)
            if seen is not None:
                seen.append(channels)
            found.append({n.name: Timed(cost(channels), 0.001) for n in model.graph.node if n.op_type == "Conv"})
        return found

    return profile


def test_staircase_counts_probe_aligned_half_aligned_and_misaligned():
    assert staircase_counts(64, 64) == [63, 56, 48, 47, 40, 32, 31, 24, 16, 15, 8]
    assert staircase_counts(32, 19) == [31, 24, 19, 16, 15, 8]  # a pruned group: its live count, 8- and 16-aligned


def test_round_to_follows_the_steps():
    blocked = {c: Timed(aligned_is_cheap(c), 0.0001) for c in (64, 63, 48, 47, 40, 32, 31)}
    assert round_to(blocked) == 16  # 40 runs no faster than 48, 63 none faster than 64
    linear = {c: Timed(0.001 * c, 0.0001) for c in (64, 63, 48, 47, 40, 32, 31)}
    assert round_to(linear) == 1


def test_the_staircase_is_read_where_the_layers_live(tmp_path):
    seen = []
    report = advise_model(chain(tmp_path), fake_profile(aligned_is_cheap, seen), "fake", CONTEXT)
    (group,) = report.groups
    assert (group.original, group.live, group.round_to) == (32, 32, 16)
    assert [s.count for s in group.staircase] == [32, 31, 24, 16, 15, 8]
    # both convs touch the group: each at the group's count, in the probe that shrank it
    assert [s.ms for s in group.staircase] == [0.04, 0.04, 0.04, 0.02, 0.02, 0.02]
    assert sorted(seen) == sorted([32, 31, 24, 16, 15, 8])  # the base, then one probe per count, built for real
    assert report.plan is None and report.torch_pruning["round_to"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]  # probes live in a temporary folder


def test_a_latency_plan_removes_the_fewest_channels_that_reach_it(tmp_path):
    report = advise_model(chain(tmp_path), fake_profile(aligned_is_cheap), "fake", CONTEXT, ratio=0.6)
    plan = report.plan
    assert plan is not None
    (module,) = plan.counts
    assert plan.counts[module] == 16 and plan.removed == 16  # 24 saves nothing; 16 halves both convs
    assert plan.predicted_ms == pytest.approx(0.02) and plan.dense_ms == pytest.approx(0.04)
    assert plan.pruning_ratio_dict == {module: (32 - 16 - 0.5) / 32}  # Torch-Pruning keeps int(32 · (1 − r)) = 16


def test_a_pruned_model_plans_only_its_dead_channels(tmp_path):
    source = chain(tmp_path, dead=tuple(range(20)))  # 12 live
    report = advise_model(source, fake_profile(aligned_is_cheap), "fake", CONTEXT, ratio=0.8)
    (group,) = report.groups
    assert group.live == 12 and [s.count for s in group.staircase] == [32, 31, 24, 16, 15, 12, 8]
    assert report.plan is not None and report.plan.counts == {group.module: 16}  # pays what 12 does, 4 fewer removed
    with pytest.raises(InputError) as raised:
        advise_model(source, fake_profile(aligned_is_cheap), "fake", CONTEXT, ratio=0.4)
    assert str(raised.value) == (
        "--latency-ratio 0.4: below what removing every dead channel reaches on this target (best reachable: "
        "0.50 × the full-width 0.040 ms)"
    )


def test_a_model_without_groups_is_refused(tmp_path):
    g = GraphBuilder()
    onnx.save(g.model(g.conv("x", g.weight(8, 4, 1, 1))), tmp_path / "one.onnx")  # its channels are the output
    with pytest.raises(GraphError) as raised:
        advise_model(tmp_path / "one.onnx", fake_profile(aligned_is_cheap), "fake", CONTEXT)
    assert str(raised.value) == (
        f"{tmp_path / 'one.onnx'}: no coupled channel group a pruner could shrink (no Conv, Gemm or MatMul writes "
        "channels that only layers of the model read)"
    )


@pytest.mark.slow
def test_the_plan_round_trips_into_torch_pruning(tmp_path):
    """On onnxruntime for real: a dense CNN, advised for 0.7 × its latency; Torch-Pruning's pruner, given the
    plan's pruning_ratio_dict (module names → modules), reaches exactly the counts the plan names."""
    import torch
    import torch_pruning as tp
    from torch import nn

    from sparsecut.exporter import ExportOptions, export_module
    from sparsecut.targets.tuning import tuning_for

    torch.manual_seed(0)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    model = nn.Sequential(block(3, 48), block(48, 96), block(96, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 10)).eval()  # fmt: skip
    export_module(model, tmp_path / "dense.onnx", ExportOptions(input_shape=(1, 3, 64, 64)))
    tuning = tuning_for("onnxruntime", table=tmp_path / "lut.json")
    assert tuning.profile is not None
    report = advise_model(tmp_path / "dense.onnx", tuning.profile, "onnxruntime", {}, ratio=0.7)
    plan = report.plan
    assert plan is not None and plan.predicted_ms <= 0.7 * plan.dense_ms and plan.pruning_ratio_dict
    modules = dict(model.named_modules())
    assert set(plan.counts) <= set(modules)  # the plan names modules as the user's model does
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 3, 64, 64),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.0,  # (its default, 0.5, would prune every layer the plan leaves alone)
        pruning_ratio_dict={modules[name]: ratio for name, ratio in plan.pruning_ratio_dict.items()},
        ignored_layers=[model[5]],
    )
    pruner.step()
    for name, count in plan.counts.items():
        assert modules[name].out_channels == count, name
