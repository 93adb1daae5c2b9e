"""remove-dead-channels on the forms the TorchScript exporter writes (and dynamo does not): constants shared
through Identity, shapes computed at run time for Reshape, Resize, Pad and Expand, split sizes shared between
Splits. Exact channel counts; every graph passes the optimize gate (rtol 1e-4, atol 1e-5, batch 1 and 2)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import nn

from sparsecut.passes import OptimizeOptions, inspect_model, optimize_model
from tests.passes.graphs import GraphBuilder, optimize, removal, weights


def _shape(g: GraphBuilder, x: str, start: int | None = None, end: int | None = None) -> str:
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    return g.op("Shape", [x], **attrs)  # type: ignore[return-value]


def test_a_bias_shared_through_identity_is_read_and_given_its_own_copy(tmp_path):
    """The TorchScript exporter shares equal initializers through Identity (every SE block's zero bias of a random
    MobileNetV3 is one tensor): the bias must read as a constant, and the conv that loses channels gets its own."""
    g = GraphBuilder()
    shared = g.const(np.zeros(8))
    first = g.op(
        "Relu", [g.op("Conv", ["x", g.const(g.weight(8, 4, 1, 1, dead_rows=(1, 6))), g.op("Identity", [shared])])]
    )
    second = g.op("Relu", [g.op("Conv", ["x", g.const(g.weight(8, 4, 1, 1)), g.op("Identity", [shared])])])
    y = g.op("Add", [g.conv(first, g.weight(3, 8, 1, 1)), g.conv(second, g.weight(3, 8, 1, 1))])
    report, lean = optimize(tmp_path, g.model(y))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(6, 4), (8, 4), (3, 6), (3, 8)]
    assert [(r.channels_before, r.channels_after) for r in removal(report)] == [(8, 6)]
    assert report.after.params < report.before.params


def test_a_resize_to_a_skip_connections_size_keeps_nothing_alive(tmp_path):
    """`F.interpolate(x, size=skip.shape[2:])` as the TorchScript exporter writes it: sizes = Concat(Shape(x)[:2],
    Shape(skip)[2:]). The channel entry is x's own count (it follows); H and W are read from skip, not channels."""
    g = GraphBuilder()
    low = g.op("Relu", [g.conv("x", g.weight(8, 4, 3, 3, dead_rows=(0, 3, 5)), pad=1)])
    low = g.op("MaxPool", [low], kernel_shape=[2, 2], strides=[2, 2])
    skip = g.op("Relu", [g.conv("x", g.weight(5, 4, 1, 1, dead_rows=(2,)))])
    sizes = g.op("Concat", [_shape(g, low, end=2), _shape(g, skip, start=2)], axis=0)
    up = g.op("Resize", [low, "", "", sizes], mode="nearest")
    y = g.conv(g.op("Concat", [up, skip], axis=1), g.weight(2, 13, 1, 1))
    report, lean = optimize(tmp_path, g.model(y))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(5, 4), (4, 4), (2, 9)]
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert step.barriers == {} and step.declined == {}


def test_a_resize_whose_channel_entry_is_another_tensors_count_keeps_its_channels(tmp_path):
    """sizes = Shape(skip): the channel entry is skip's count, which does not follow low's channels (the two are
    never joined) — both keep theirs, and the report names the Resize."""
    g = GraphBuilder()
    low = g.op("Relu", [g.conv("x", g.weight(8, 4, 3, 3, dead_rows=(0, 3)), pad=1)])
    skip = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(5,)))])
    up = g.op("Resize", [g.op("MaxPool", [low], kernel_shape=[2, 2], strides=[2, 2]), "", "", _shape(g, skip)])
    y = g.op("Add", [g.conv(up, g.weight(3, 8, 1, 1)), g.conv(skip, g.weight(3, 8, 1, 1))])
    report, lean = optimize(tmp_path, g.model(y))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(8, 4), (8, 4), (3, 8), (3, 8)]
    kept = [(r.dead, r.kept_dead) for r in removal(report)]
    (resize,) = [n for n in lean.graph if n.op_type == "Resize"]
    why = f"its channel count is read by Resize {resize.name!r} for {resize.inputs[0].name!r}, another tensor"
    assert kept == [(2, {why: 2}), (1, {why: 1})]


def test_a_reshape_back_to_a_tensors_own_channel_count_follows_it(tmp_path):
    """`x.view(B, C, -1)` from x.shape (TorchScript: Shape → Gather → Unsqueeze → Concat): the channel entry is
    x's count, computed at run time, so it follows; nothing is edited."""
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2, 3, 7)))])
    shape = _shape(g, h)
    batch, channels = (g.op("Unsqueeze", [g.op("Gather", [shape, g.const(i)], axis=0), g.const([0])]) for i in (0, 1))
    flat = g.op("Reshape", [h, g.op("Concat", [batch, channels, g.const([-1])], axis=0)])
    y = g.op("ReduceMean", [flat, g.const([2])], keepdims=0)
    y = g.op("MatMul", [y, g.const(g.weight(8, 3))])
    _report, lean = optimize(tmp_path, g.model(y))
    assert weights(lean, "Conv")[0].shape[0] == 5
    assert weights(lean, "MatMul")[0].shape == (5, 3)


def test_a_reshape_by_another_tensors_channel_count_keeps_both(tmp_path):
    """A target computed from another tensor's channel count does not follow: both keep their channels."""
    g = GraphBuilder()
    a = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(1,)))])
    b = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(4,)))])
    target = g.op("Concat", [_shape(g, b, end=2), g.const([-1])], axis=0)
    flat = g.op("Reshape", [a, target])
    y = g.op("MatMul", [g.op("ReduceMean", [flat, g.const([2])], keepdims=0), g.const(g.weight(8, 3))])
    side = g.op("MatMul", [g.op("ReduceMean", [b, g.const([2, 3])], keepdims=0), g.const(g.weight(8, 3))])
    y = g.op("Add", [y, side])
    report, lean = optimize(tmp_path, g.model(y))
    assert [w.shape[0] for w in weights(lean, "Conv")] == [8, 8]
    kept = {reason for r in removal(report) for reason in r.kept_dead}
    assert any("its channel count is read by Reshape" in reason for reason in kept)


class SamePadding(nn.Module):
    """timm's `pad_same`: pads computed from H and W at run time, then a strided conv (the TorchScript exporter
    writes the arithmetic, a Concat with ConstantOfShape zeros, Reshape, Slice reversed, Transpose, Reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        ih, iw = x.size()[-2:]
        pad_h = max((math.ceil(ih / 2) - 1) * 2 + 3 - ih, 0)
        pad_w = max((math.ceil(iw / 2) - 1) * 2 + 3 - iw, 0)
        x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.second(x)


def test_a_same_padding_computed_at_run_time_lets_channels_go(tmp_path):
    torch.manual_seed(0)
    model = SamePadding().eval()
    with torch.no_grad():
        model.first.weight[[1, 4, 5]] = 0.0
        model.first.bias[[1, 4, 5]] = 0.0
    source = tmp_path / "in.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(source), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "b"}})  # fmt: skip
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    assert [(r.channels_before, r.channels_after) for r in removal(report)] == [(8, 5)]


@pytest.mark.parametrize(("fill", "removed"), [(0.0, [0]), (2.0, [5]), (1.0, [])])
def test_a_pad_of_other_axes_passes_channels_and_its_fill_decides_which_stay_constant(tmp_path, fill, removed):
    """Channel 0 is ZERO and channel 5 CONST(2). Padding H and W with the fill keeps a channel constant only
    where the fill is its own value: 0 keeps channel 0 zero, 2 keeps channel 5 at 2 (then absorbed by the 1×1
    consumer's bias), 1 makes both vary at the border."""
    g = GraphBuilder()
    bias = np.zeros(8, np.float32)
    bias[5] = 2.0
    w = g.weight(8, 4, 1, 1, dead_rows=(0, 5))
    padded = g.op("Pad", [g.conv("x", w, bias), g.const([0, 0, 1, 1, 0, 0, 1, 1]), g.const(np.float32(fill))])
    _report, lean = optimize(tmp_path, g.model(g.conv(padded, g.weight(3, 8, 1, 1), np.zeros(3))))
    np.testing.assert_array_equal(weights(lean, "Conv")[0], np.delete(w, removed, axis=0))


def test_a_pad_of_the_channel_axis_keeps_its_channels_and_says_so(tmp_path):
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2, 3)))])
    padded = g.op("Pad", [h, g.const([0, 1, 0, 0, 0, 1, 0, 0])])
    report, lean = optimize(tmp_path, g.model(g.conv(padded, g.weight(3, 10, 1, 1))))
    assert weights(lean, "Conv")[0].shape[0] == 8
    (group,) = [r for r in removal(report) if r.dead]
    assert group.kept_dead == {"read by Pad (pads the channel axis)": 2}


def test_a_gate_expanded_to_its_inputs_shape_follows_it(tmp_path):
    """SE as the TorchScript exporter writes `gate.expand_as(x) * x`: Expand(gate, Shape(x)); gate and x carry the
    same channels once the Mul joins them, so the expanded count follows."""
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(0, 6)))])
    squeezed = g.op("GlobalAveragePool", [h])
    gate = g.op("Sigmoid", [g.conv(g.op("Relu", [g.conv(squeezed, g.weight(2, 8, 1, 1))]), g.weight(8, 2, 1, 1))])
    scaled = g.op("Mul", [g.op("Expand", [gate, _shape(g, h)]), h])
    _report, lean = optimize(tmp_path, g.model(g.conv(scaled, g.weight(3, 8, 1, 1))))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(6, 4), (2, 6), (6, 2), (3, 6)]


def test_split_halves_with_shared_sizes_lose_their_own_dead_channels(tmp_path):
    """YOLO's C2f: cv1's output split into two halves (the sizes constant shared by every C2f of that width, as
    the TorchScript exporter dedups it), the second half through a bottleneck, all three concatenated into cv2.
    Each half loses its own dead channels: the halves end unequal and each Split gets its own sizes."""
    g = GraphBuilder(shape=(4, 6, 6))
    sizes = g.const([4, 4])
    x = "x"
    for dead in ((1, 2, 6), (0, 5)):
        cv1 = g.op("Relu", [g.conv(x, g.weight(8, 4, 1, 1, dead_rows=dead))])
        a, b = g.op("Split", [cv1, sizes], outputs=2, axis=1)
        m = g.op("Relu", [g.conv(b, g.weight(4, 4, 3, 3), pad=1)])
        x = g.op("Relu", [g.conv(g.op("Concat", [a, b, m], axis=1), g.weight(4, 12, 1, 1))])
    _report, lean = optimize(tmp_path, g.model(x))
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(5, 4), (4, 3), (4, 9), (6, 4), (4, 3), (4, 10)]
    splits = [n.inputs[1].const_value.numpy().tolist() for n in lean.graph if n.op_type == "Split"]
    assert splits == [[2, 3], [3, 3]]


def test_inspect_names_the_declining_rule_and_keeps_no_rule_for_ops_without_one(tmp_path):
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(2,)))])
    lrn = g.op("LRN", [h], size=3)
    gemm = g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [h])]), g.const(g.weight(8, 2))], transA=0)
    weird = g.op("Gemm", [g.op("Transpose", [gemm]), g.const(g.weight(2, 3))], transA=1)
    source = tmp_path / "in.onnx"
    onnx.save(g.model(g.conv(lrn, g.weight(2, 8, 1, 1)), weird), source)
    step = inspect_model(source, align=1).passes[-1]
    assert step.barriers == {"LRN": 1}
    assert step.declined == {"Gemm: transA=1 (its input is read transposed)": 1}


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's unit as users write it: chunk in halves, one half through convs, concat, shuffle by view —
    every size read from x.shape, which the TorchScript exporter computes at run time."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        half = channels // 2
        self.first = nn.Conv2d(3, channels, 1)
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1))
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(x)


def test_shapes_read_at_run_time_fold_to_numbers_and_the_shuffle_is_read(tmp_path):
    """Sizes read from shapes (Gather(Shape(x), i)) become numbers where static, the constant folder computes
    the chunk bounds and view targets from them, shape inference learns what that tells, and so on in turn: the
    graph reads as dynamo writes it. Channels 2 and 10 of `first` are dead: 10 is the branch's input channel 2 and
    goes; 2 passes the first half through to the shuffle, which pairs it with the branch's (live) output channel 2,
    so it stays."""
    torch.manual_seed(0)
    model = ShuffleBlock().eval()
    with torch.no_grad():
        model.first.weight[[2, 10]] = 0.0
        model.first.bias[[2, 10]] = 0.0
    source = tmp_path / "in.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), str(source), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "b"}})  # fmt: skip
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert step.declined == {} and step.barriers == {}
    lean = ir.load(tmp_path / "out.onnx")
    assert [w.shape[:2] for w in weights(lean, "Conv")] == [(15, 3), (8, 7), (8, 8), (4, 16)]
    assert report.after.params < report.before.params


def test_a_fold_that_would_store_more_numbers_than_it_reads_stays_computed(tmp_path):
    """A small table gathered into a bigger float tensor (LeViT's attention biases, YOLO's anchor grid) would
    make the model larger if folded: it stays computed, and the model never grows. dynamo's computed zero conv
    bias is folded to be read, and dropped."""
    g = GraphBuilder()
    table = g.const(np.arange(4, dtype=np.float32))
    biases = g.op("Gather", [table, g.const(np.arange(200).reshape(1, 200, 1, 1) % 4)], axis=0)  # [1, 200, 1, 1]
    w = g.weight(200, 4, 1, 1)
    zero = g.op("Expand", [g.op("CastLike", [g.const(np.float32(0)), g.const(w)]), g.const([200])])
    h = g.op("Conv", ["x", g.const(w), zero])
    report, lean = optimize(tmp_path, g.model(g.op("Add", [h, biases])))
    assert report.after.params <= report.before.params
    assert "Gather" in {n.op_type for n in lean.graph}
    assert [len(n.inputs) for n in lean.graph if n.op_type == "Conv"] == [2]  # the zero bias folded, then dropped
