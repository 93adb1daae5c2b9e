"""Normalizations between dead channels and their readers: GroupNorm (whole groups only) and BatchNorm over
token features (BatchNorm1d after a Linear, over [B·N, C] or through Transposes), from both exporters. Exact
channel counts; every graph passes the optimize gate."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import nn

from sparsecut.errors import VerificationError
from sparsecut.exporter import ExportOptions, export_module
from sparsecut.passes import OptimizeOptions, optimize_model
from tests.passes.graphs import GraphBuilder, optimize, removal, weights


def _group_norm(g: GraphBuilder, x: str, channels: int, groups: int, gamma: np.ndarray, beta: np.ndarray) -> str:
    """GroupNorm as both exporters write it (Reshape → InstanceNormalization → Reshape back, then γ and β)."""
    grouped = g.op("Reshape", [x, g.const([0, groups, -1])])
    normed = g.op("InstanceNormalization", [grouped, g.const(np.ones(groups)), g.const(np.zeros(groups))])
    back = g.op("Reshape", [normed, g.const([-1, channels, 6, 6])])
    scaled = g.op("Mul", [back, g.const(gamma.reshape(-1, 1, 1))])
    return g.op("Add", [scaled, g.const(beta.reshape(-1, 1, 1))])  # type: ignore[return-value]


def test_group_norm_loses_whole_dead_groups_and_keeps_partly_dead_ones_saying_why(tmp_path):
    """8 channels in 4 groups of 2: group 1 (channels 2, 3) is dead with its γ and β, so it goes; channel 6 is
    dead but its group (6, 7) is not, and a dead channel still counts in the group's mean and variance."""
    g = GraphBuilder()
    h = g.conv("x", g.weight(8, 4, 3, 3, dead_rows=(2, 3, 6)), pad=1)
    gamma, beta = np.linspace(0.5, 1.5, 8).astype(np.float32), np.linspace(-0.2, 0.2, 8).astype(np.float32)
    gamma[[2, 3]] = beta[[2, 3]] = 0.0
    y = g.conv(g.op("Relu", [_group_norm(g, h, 8, 4, gamma, beta)]), g.weight(3, 8, 3, 3), pad=1)
    report, lean = optimize(tmp_path, g.model(y))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(6, 4), (3, 6)]
    (norm,) = [n for n in lean.graph if n.op_type == "InstanceNormalization"]
    assert norm.inputs[1].const_value.numpy().shape == (3,)
    (group,) = removal(report)
    (reason,) = group.kept_dead
    assert group.kept_dead[reason] == 1 and reason.startswith(f"normalized by GroupNorm {norm.name!r} with live")


def test_a_dead_group_of_one_nonzero_constant_stays(tmp_path):
    """4 channels in 4 groups: channels 1 and 2 are dead, with biases 0.9 and 0. Channel 2 goes (0 − μ is exactly
    0 in float32); channel 1 stays: there the input computes 0.9's float32 rounding divided by √ε, not the exact
    β a fold would write (found by the property test: 3.5e-5 apart)."""
    g = GraphBuilder()
    h = g.conv("x", g.weight(4, 4, 3, 3, dead_rows=(1, 2)), np.array([0.1, 0.9, 0.0, -0.3]), pad=1)
    gamma, beta = np.linspace(0.5, 1.5, 4).astype(np.float32), np.linspace(-0.2, 0.2, 4).astype(np.float32)
    y = g.conv(g.op("Relu", [_group_norm(g, h, 4, 4, gamma, beta)]), g.weight(3, 4, 1, 1))
    report, lean = optimize(tmp_path, g.model(y))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(3, 4), (3, 3)]
    (group,) = removal(report)
    (reason,) = group.kept_dead
    assert group.kept_dead[reason] == 1 and reason.startswith("one nonzero constant per group normalized by GroupNorm")


def test_every_group_dead_with_nonzero_constants_passes_the_gate(tmp_path):
    """The property test's case: a conv whose four filters are all dead but biased, one channel per group — a fold
    to the exact β differed from what onnxruntime computes by 3.5e-5 and the gate refused the whole graph."""
    g = GraphBuilder()
    h = g.conv(
        "x",
        g.weight(4, 4, 3, 3, dead_rows=(0, 1, 2, 3)),
        np.array([-0.9087803, 0.43838856, 0.19929852, -0.6749326]),
        pad=1,
    )
    gamma = np.array([1.4644613, 1.1457213, 1.4469067, 0.84938437], np.float32)
    beta = np.array([0.01440854, 0.07820845, 0.01346219, 0.02629011], np.float32)
    w = np.array([[-0.78299892, 0.66804743, 1.7846982, -0.30968755], [-0.59277451, -0.15783671, -0.4812803, -0.70147932],
                  [0.13819364, -0.29091755, 1.4388736, 0.00020164295]], np.float32).reshape(3, 4, 1, 1)  # fmt: skip
    y = g.conv(g.op("Relu", [_group_norm(g, h, 4, 4, gamma, beta)]), w)
    report, lean = optimize(tmp_path, g.model(y))  # the gate passed
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(4, 4), (3, 4)]
    group = next(group for group in removal(report) if group.location == "w1")  # (x's channels: read by no one)
    (reason,) = group.kept_dead
    assert group.kept_dead[reason] == 4 and reason.startswith("one nonzero constant per group normalized by GroupNorm")


class FeatureBatchNorm(nn.Module):
    """A hybrid net's token MLP: Linear then BatchNorm1d over the flattened tokens (LeViT's LinearNorm), then a
    Linear, BatchNorm1d through Transposes ([B, N, C] → [B, C, N]), GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, 4)
        self.a, self.a_norm = nn.Linear(32, 64, bias=False), nn.BatchNorm1d(64)
        self.b, self.b_norm = nn.Linear(64, 48), nn.BatchNorm1d(48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # [B, N, C], N = 64 = C: the channel axis must not be guessed
        x = self.a(x)
        x = torch.relu(self.a_norm(x.flatten(0, 1)).reshape_as(x))
        x = nn.functional.gelu(self.b_norm(self.b(x).transpose(1, 2)).transpose(1, 2))
        return self.head(x.mean(1))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_batchnorm_over_token_features_loses_the_linears_dead_neurons(tmp_path, dynamo):
    torch.manual_seed(0)
    model = FeatureBatchNorm().eval()
    with torch.no_grad():
        for norm in (model.a_norm, model.b_norm):
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
        for linear, norm, dead in (
            (model.a, model.a_norm, slice(0, None, 3)),
            (model.b, model.b_norm, slice(1, None, 4)),
        ):
            linear.weight[dead] = 0.0
            if linear.bias is not None:
                linear.bias[dead] = 0.0
            norm.weight[dead] = norm.bias[dead] = 0.0
    source = tmp_path / "in.onnx"
    if dynamo:
        export_module(model, source, ExportOptions(input_shape=(1, 3, 32, 32)))
    else:
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(source), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "b"}})  # fmt: skip
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    assert sorted((r.channels_before, r.channels_after) for r in removal(report)) == [(48, 36), (64, 42)]
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert step.barriers == {} and step.declined == {}
    assert report.after.params < report.before.params


def test_a_model_that_would_grow_is_not_written(tmp_path, monkeypatch):
    """The lossless passes never add a parameter; a pass that did (a bug) is caught before anything is written."""
    from sparsecut.passes import cleanup

    g = GraphBuilder()
    source = tmp_path / "in.onnx"
    onnx.save(g.model(g.op("Relu", [g.conv("x", g.weight(3, 4, 1, 1))])), source)
    original = cleanup.CleanupPass.call

    def grows(self, model):  # adds zeros before the Relu: computes the same, stores 3 numbers more
        result = original(self, model)
        extra = ir.Value(name="extra", const_value=ir.tensor(np.zeros((3, 1, 1), np.float32), name="extra"))
        model.graph.register_initializer(extra)
        relu = next(node for node in model.graph if node.op_type == "Relu")
        add = ir.node("Add", [relu.inputs[0], extra])
        model.graph.insert_before(relu, add)
        relu.replace_input_with(0, add.outputs[0])
        return result

    monkeypatch.setattr(cleanup.CleanupPass, "call", grows)
    with pytest.raises(
        VerificationError, match=r"out.onnx: not written: it would hold more parameters than .*in.onnx \(12 → 15\)"
    ):
        optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(passes=("cleanup",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]
