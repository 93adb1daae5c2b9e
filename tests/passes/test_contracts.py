"""The passes' contracts (onnx-ir's requires/ensures) and the pipeline composed once: what `optimize` runs is what
the gate replays when it explains a failure, each pass reports itself, and a postcondition stops a broken graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sparsecut.errors import VerificationError
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes import dead_channels as dead_channels_module
from sparsecut.passes.channels import constraints
from sparsecut.passes.cleanup import CleanupPass
from sparsecut.passes.dead_channels import RemoveDeadChannelsPass
from sparsecut.passes.registry import DEFAULT_PASSES, PASSES, REGISTRY, compose, run_steps
from sparsecut.passes.two_four import METADATA_KEY, SPARSE_DOC, AnnotateTwoFourPass, labelled
from tests.passes.graphs import GraphBuilder
from tests.passes.test_dead_channels import _without_padding_veto


def test_the_pipeline_is_composed_once_with_each_pass_where_it_stands():
    steps = compose(DEFAULT_PASSES, OptimizeOptions(align=4, counts=(("w1", 8),)))
    assert [s.name for s in steps] == list(DEFAULT_PASSES)
    removal = steps[2].make()
    assert isinstance(removal, RemoveDeadChannelsPass)
    assert (removal.fold, removal.align, removal.counts) == (False, 4, {"w1": 8})  # fold-constants ran before it
    alone = compose(["remove-dead-channels"], OptimizeOptions()).__getitem__(0).make()
    assert isinstance(alone, RemoveDeadChannelsPass) and alone.fold  # nothing folded before it: it folds itself
    assert set(PASSES) == set(REGISTRY) and all(REGISTRY[name].name == name for name in REGISTRY)


def test_each_pass_reports_itself(tmp_path):
    g = GraphBuilder()
    y = g.conv(g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2, 5)), np.zeros(8))]), g.weight(3, 8, 1, 1))
    model = ir.from_proto(g.model(y))
    reports = run_steps(model, compose(DEFAULT_PASSES, OptimizeOptions(align=1)))
    assert [r.name for r in reports] == list(DEFAULT_PASSES)
    assert reports[2].summary == "2 channel(s) removed of 2 dead, in 1 group(s)" and reports[2].groups
    assert reports[4].summary == "0 of 2 weight(s) are 2:4 along their reduction axis"


def test_the_gate_replays_the_pipeline_as_it_ran(tmp_path, monkeypatch):
    """diagnose once rebuilt each pass from the options alone: remove-dead-channels folded constants again
    although fold-constants had run, so the replay was not the run it explained."""
    g = GraphBuilder()
    live = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1), np.zeros(8))])
    h = g.op("Sigmoid", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(3,)), np.zeros(8))])
    y = g.op("Add", [g.conv(live, g.weight(2, 8, 1, 1)), g.conv(h, g.weight(2, 8, 3, 3), pad=1)])
    onnx.save(g.model(y), tmp_path / "in.onnx")
    monkeypatch.setattr(constraints, "_check_removability", _without_padding_veto)  # an analysis bug
    folds: list[bool] = []
    made = RemoveDeadChannelsPass.__init__

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        made(self, *args, **kwargs)
        folds.append(self.fold)

    monkeypatch.setattr(RemoveDeadChannelsPass, "__init__", recording)
    with pytest.raises(VerificationError, match="pass 'remove-dead-channels' broke it, in channel group"):
        optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert len(folds) >= 3 and folds == [False] * len(folds)  # the run, the replay and every bisection step


def test_channel_removal_that_changes_the_interface_is_stopped(monkeypatch):
    g = GraphBuilder()
    y = g.conv(g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(1,)), np.zeros(8))]), g.weight(3, 8, 1, 1))
    model = ir.from_proto(g.model(y))
    model.graph.outputs[0].shape = ir.Shape(["N", 3, 6, 6])
    rewrite = dead_channels_module.rewrite_channels

    def and_shrink_the_output(model, analysis, orders):  # type: ignore[no-untyped-def]
        rewrite(model, analysis, orders)
        model.graph.outputs[0].shape = ir.Shape(["N", 2, 6, 6])

    monkeypatch.setattr(dead_channels_module, "rewrite_channels", and_shrink_the_output)
    with pytest.raises(ir.passes.PostconditionError) as info:
        RemoveDeadChannelsPass(align=1)(model)
    assert "the model's interface changed" in str(info.value.__cause__ or info.value)


def test_a_stale_2to4_label_is_taken_off(tmp_path):
    """A weight an earlier run labelled 2:4 that is not 2:4 now: TensorRT would trust the label."""
    g = GraphBuilder(shape=(8, 4, 4))
    sparse = g.weight(8, 8, 1, 1)
    sparse[:, ::2] = 0.0
    y = g.conv(g.conv("x", sparse), g.weight(8, 8, 1, 1))
    proto = g.model(y)
    dense = proto.graph.initializer[1]
    dense.doc_string = SPARSE_DOC
    dense.metadata_props.add(key=METADATA_KEY, value="2:4")
    onnx.save(proto, tmp_path / "in.onnx")
    model = ir.load(tmp_path / "in.onnx")
    assert labelled(model) == {"w4"}  # the dense one, labelled
    result = AnnotateTwoFourPass()(model)
    assert result.modified and labelled(model) == {"w1"}
    optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx")
    written = onnx.load(str(tmp_path / "out.onnx"))
    assert [t.name for t in written.graph.initializer if t.doc_string == SPARSE_DOC] == ["w1"]


def test_cleanup_that_leaves_a_node_before_its_producer_is_stopped(monkeypatch):
    from sparsecut.passes import cleanup

    g = GraphBuilder()
    y = g.op("Relu", [g.op("Relu", ["x"])])
    proto = g.model(y)
    proto.graph.node.reverse()  # the reader first
    model = ir.from_proto(proto)
    monkeypatch.setattr(cleanup, "TopologicalSortPass", lambda: lambda m: ir.passes.PassResult(m, False))
    with pytest.raises(ir.passes.PostconditionError):
        CleanupPass()(model)
    monkeypatch.undo()
    assert CleanupPass()(model).modified  # the real sort puts it right, and the contract holds


def test_a_rule_that_declines_halfway_leaves_no_trace_in_the_walk(monkeypatch):
    """A rule's analyze is a check: what it recorded enters the walk only with its plan (PendingWrites)."""
    from sparsecut.passes.channels import DeadChannelAnalysis
    from sparsecut.passes.channels.rules import RULES, ChannelRule, Decline

    class Halfway(ChannelRule):
        def analyze(self, node, spaces):  # type: ignore[no-untyped-def]
            spaces.veto(node.inputs[0], "recorded by a rule that then declined")
            return Decline("declined halfway")

    monkeypatch.setitem(RULES, "Relu", Halfway())
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2,)), np.zeros(8))])
    model = ir.from_proto(g.model(g.conv(h, g.weight(3, 8, 1, 1))))
    from sparsecut.passes.dead_channels import prepare_for_analysis

    prepare_for_analysis(model)
    (group,) = DeadChannelAnalysis(model, 1).group_reports()
    assert group.kept_dead == {"read by Relu (declined halfway)": 1}  # the barrier's reason, and nothing else
