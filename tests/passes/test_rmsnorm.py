"""Hidden channels dead in a decoder's residual stream go through RMSNorm exactly: over N channels of which c are
always zero, RMSNorm equals RMSNorm over the N − c others with ε·N/(N−c) and gain·√(N/(N−c)) (rules/rms.py).
Checked in memory on a tiny pre-norm residual MLP stack — an embedding-like writer, RMSNorm, MLP, residual Add,
final RMSNorm, lm_head — in each form: the plain ops PyTorch's exporters write (Reciprocal from dynamo, Div(1, ·)
from TorchScript) and onnxruntime's SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization; LayerNorm
keeps them, with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.passes.graphs import remove_in_memory

HIDDEN, DEAD, EPS = 16, [3, 9, 12], 1e-5


class Decoder:
    """x [B, 5, 8] → embed (dead hidden columns) → norm → MLP → + residual → final norm → lm_head."""

    def __init__(self, norm: str) -> None:
        self.norm = norm
        self.rng = np.random.default_rng(0)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opsets = {"": 18}
        self.n = 0

    def const(self, array: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs) -> list[str]:
        self.n += 1
        names = [f"{op.lower()}{self.n}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{self.n}", domain=domain, **attrs))
        return names

    def weight(self, rows: int, cols: int, dead_cols: list[int] = ()) -> np.ndarray:
        w = self.rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(rows)
        w[:, list(dead_cols)] = 0.0
        return w

    def rms(self, h: str, tag: str) -> str:
        gain = self.const(self.rng.uniform(0.5, 1.5, HIDDEN), f"gain_{tag}")
        if self.norm == "simplified":
            return self.node("SimplifiedLayerNormalization", [h, gain], axis=-1, epsilon=EPS)[0]
        if self.norm == "layernorm":
            bias = self.const(np.zeros(HIDDEN), f"beta_{tag}")
            return self.node("LayerNormalization", [h, gain, bias], axis=-1, epsilon=EPS)[0]
        squared = self.node("Pow", [h, self.const(np.array(2.0), f"two_{tag}")])[0]
        axes = f"axes_{tag}"
        self.inits.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        mean = self.node("ReduceMean", [squared, axes], keepdims=1)[0]
        root = self.node("Sqrt", [self.node("Add", [mean, self.const(np.array(EPS), f"eps_{tag}")])[0]])[0]
        if self.norm == "plain-reciprocal":  # dynamo: torch.rsqrt as Reciprocal(Sqrt)
            inverse = self.node("Reciprocal", [root])[0]
        else:  # TorchScript: Div(1, Sqrt)
            inverse = self.node("Div", [self.const(np.array(1.0), f"one_{tag}"), root])[0]
        return self.node("Mul", [self.node("Mul", [h, inverse])[0], gain])[0]

    def linear(self, x: str, w: np.ndarray, name: str) -> str:
        """MatMul + bias, as a Linear exports: it absorbs a constant input channel into its bias."""
        bias = self.const(self.rng.standard_normal(w.shape[1]) * 0.1, f"{name}_bias")
        return self.node("Add", [self.node("MatMul", [x, self.const(w, name)])[0], bias])[0]

    def model(self) -> onnx.ModelProto:
        h = self.node("MatMul", ["x", self.const(self.weight(8, HIDDEN, DEAD), "embed")])[0]
        if self.norm == "skip":
            self.opsets["com.microsoft"] = 1
            n = self.node("SimplifiedLayerNormalization", [h, self.const(self.rng.uniform(0.5, 1.5, HIDDEN), "g0")],
                          axis=-1, epsilon=EPS)[0]  # fmt: skip
        else:
            n = self.rms(h, "0")
        up = self.node("Relu", [self.linear(n, self.weight(HIDDEN, 24), "up")])[0]
        down = self.node("MatMul", [up, self.const(self.weight(24, HIDDEN, DEAD), "down")])[0]
        if self.norm == "skip":  # the builder's form: the residual Add inside, its sum the fourth output
            gain = self.const(self.rng.uniform(0.5, 1.5, HIDDEN), "g1")
            normed, _, _, residual = self.node("SkipSimplifiedLayerNormalization", [down, h, gain], outputs=4,
                                               domain="com.microsoft", epsilon=EPS)  # fmt: skip
            out = self.node("Add", [self.linear(normed, self.weight(HIDDEN, 10), "head"),
                                    self.linear(residual, self.weight(HIDDEN, 10), "head_r")])[0]  # fmt: skip
        else:
            h2 = self.node("Add", [h, down])[0]
            out = self.linear(self.rms(h2, "1"), self.weight(HIDDEN, 10), "head")
        graph = helper.make_graph(
            self.nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits,
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()])


def _shapes(lean) -> dict[str, tuple[int, ...]]:
    return {n: tuple(v.const_value.shape) for n, v in lean.graph.initializers.items() if v.const_value is not None}


@pytest.mark.parametrize("norm", ["plain-reciprocal", "plain-div", "simplified"])
def test_dead_hidden_channels_go_through_rmsnorm_exactly(norm):
    lean, groups = remove_in_memory(Decoder(norm).model())  # equal outputs checked inside (rtol 1e-4)
    live = HIDDEN - len(DEAD)
    shapes = _shapes(lean)
    assert (shapes["embed"], shapes["up"], shapes["down"], shapes["head"]) == ((8, live), (live, 24), (24, live),
                                                                               (live, 10))  # fmt: skip
    assert [(g.channels_before, g.channels_after) for g in groups if g.channels_after < g.channels_before] == [
        (HIDDEN, live)
    ]


def test_the_rescale_is_the_algebra():
    """ε' = ε·N/L and gain' = gain·√(N/L), on the graph onnxruntime's builder writes."""
    model = Decoder("simplified").model()
    gains = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("gain")}
    lean, _ = remove_in_memory(model)
    kept = [k for k in range(HIDDEN) if k not in DEAD]
    factor = np.sqrt(HIDDEN / len(kept))
    for node in (n for n in lean.graph if n.op_type == "SimplifiedLayerNormalization"):
        assert node.attributes["epsilon"].value == pytest.approx(EPS * HIDDEN / len(kept), rel=1e-6)
        gain = node.inputs[1]
        np.testing.assert_allclose(gain.const_value.numpy(), gains[gain.name.removesuffix("_lean")][kept] * factor,
                                   rtol=1e-6)  # fmt: skip


def test_onnxruntimes_skip_norm_carries_the_residual_stream():
    lean, _ = remove_in_memory(Decoder("skip").model())
    live = HIDDEN - len(DEAD)
    assert _shapes(lean)["embed"] == (8, live) and _shapes(lean)["down"] == (24, live)
    skip = next(n for n in lean.graph if n.op_type == "SkipSimplifiedLayerNormalization")
    assert skip.outputs[3].shape[-1] == live  # the residual sum lost them too


def test_layernorm_keeps_the_hidden_channels_and_says_why():
    lean, groups = remove_in_memory(Decoder("layernorm").model())
    assert _shapes(lean)["embed"] == (8, HIDDEN)
    reasons = {why for g in groups for why in g.kept_dead}
    assert any("normalized by LayerNormalization" in why for why in reasons), reasons


def test_a_constant_hidden_channel_stays_it_counts_in_the_mean():
    """Channel 3 holds the constant 0.7 in the stream and nothing reads it after the norms (zero rows in every
    reader): without the norms it would go, its constant folded into the readers' biases; through the mean square
    it changes every other channel, so it stays — and the report says why."""
    model = Decoder("plain-reciprocal").model()
    weights = {t.name: t for t in model.graph.initializer}
    for name in ("up", "head"):
        w = numpy_helper.to_array(weights[name]).copy()
        w[DEAD[0]] = 0.0
        weights[name].CopyFrom(numpy_helper.from_array(w, name))
    bias = np.zeros(HIDDEN, np.float32)
    bias[DEAD[0]] = 0.7
    model.graph.initializer.append(numpy_helper.from_array(bias, "embed_bias"))
    first = model.graph.node[0]
    stream = first.output[0]
    first.output[0] = "embedded"
    model.graph.node.insert(1, helper.make_node("Add", ["embedded", "embed_bias"], [stream]))
    lean, groups = remove_in_memory(model)  # equal outputs: the constant was not dropped
    assert _shapes(lean)["embed"] == (8, HIDDEN - len(DEAD) + 1)  # the other two still go
    (group,) = [g for g in groups if g.location.startswith("embed")]
    assert group.kept_dead == {"a constant channel counts in the RMSNorm's mean square (ReduceMean_3)": 1}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_both_exporters_rmsnorm_loses_the_dead_hidden_channels(tmp_path, exporter):
    """Llama's RMSNorm as Hugging Face writes it (`weight * (x * rsqrt(mean(x²) + ε))`) in a pre-norm residual
    MLP stack, hidden channels dead in every writer, exported by each of PyTorch's exporters and optimized."""
    import torch
    from torch import nn

    from sparsecut.exporter import ExportOptions, export_module
    from sparsecut.passes import OptimizeOptions, optimize_model

    class RMSNorm(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.rand(n) + 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm, self.final = nn.Linear(8, HIDDEN), RMSNorm(HIDDEN), RMSNorm(HIDDEN)
            self.up, self.down, self.head = nn.Linear(HIDDEN, 24), nn.Linear(24, HIDDEN), nn.Linear(HIDDEN, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            h = h + self.down(torch.relu(self.up(self.norm(h))))
            return self.head(self.final(h))

    torch.manual_seed(0)
    stack = Stack().eval()
    with torch.no_grad():
        for writer in (stack.embed, stack.down):  # every writer of the residual stream: rows and bias zero
            writer.weight[DEAD] = 0.0
            writer.bias[DEAD] = 0.0
    source = tmp_path / "in.onnx"
    if exporter == "dynamo":
        export_module(stack, source, ExportOptions(input_shape=(1, 5, 8)))
    else:
        torch.onnx.export(stack, (torch.randn(2, 5, 8),), str(source), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    removal = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert removal.rule_errors == []
    live = HIDDEN - len(DEAD)
    assert report.after.macs == 5 * (8 * live + live * 24 + 24 * live + live * 10)  # per sample of 5 tokens
    lean = onnx.load(str(tmp_path / "out.onnx"))
    shapes = [tuple(t.dims) for t in lean.graph.initializer]
    assert sorted(tuple(sorted(s)) for s in shapes if len(s) == 2) == [(8, live), (10, live), (live, 24), (live, 24)]
    assert sum(1 for s in shapes if s == (live,)) == 4  # embed's and down's biases, both gains


def _with_embedding(model: onnx.ModelProto, tie: bool = False) -> onnx.ModelProto:
    """The stack fed by token ids through an embedding table [20, HIDDEN] whose dead columns are zero (the
    embedding's rows replace the first writer); `tie`: lm_head reads the same table, transposed."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((20, HIDDEN)).astype(np.float32)
    table[:, DEAD] = 0.0
    first = model.graph.node[0]
    assert first.op_type == "MatMul" and first.input[0] == "x"
    model.graph.initializer.append(numpy_helper.from_array(table, "tokens"))
    first.CopyFrom(helper.make_node("Gather", ["tokens", "ids"], [first.output[0]], name="embed", axis=0))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5]))
    if tie:
        head = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] == "head")
        model.graph.node.insert(0, helper.make_node("Transpose", ["tokens"], ["tokens_t"], perm=[1, 0]))
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "head"))
        head.input[1] = "tokens_t"
        bias = next(t for t in model.graph.initializer if t.name == "head_bias")
        bias.CopyFrom(numpy_helper.from_array(np.zeros(20, np.float32), "head_bias"))
    return model


def test_embedding_columns_go_with_the_hidden_channels():
    lean, _ = remove_in_memory(_with_embedding(Decoder("simplified").model()))
    live = HIDDEN - len(DEAD)
    assert _shapes(lean)["tokens"] == (20, live) and _shapes(lean)["head"] == (live, 10)


def test_an_embedding_tied_with_lm_head_is_kept_whole_and_says_why():
    lean, groups = remove_in_memory(_with_embedding(Decoder("simplified").model(), tie=True))
    assert _shapes(lean)["tokens"] == (20, HIDDEN)
    reasons = {why for g in groups for why in g.kept_dead}
    assert "its embedding table 'tokens' is read by another node too (tied with lm_head?)" in reasons


def test_a_class_token_gather_passes_channels():
    """ViT's `x[:, 0]`: Gather along the token axis, channels on the last axis pass to the head."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, HIDDEN)).astype(np.float32)
    w[:, DEAD] = 0.0
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0, np.int64), "first"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, 3)).astype(np.float32), "head")]  # fmt: skip
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gather", ["a", "first"], ["cls"], axis=1),
             helper.make_node("MatMul", ["cls", "head"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)  # fmt: skip
    lean, _ = remove_in_memory(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert _shapes(lean)["w"] == (8, HIDDEN - len(DEAD)) and _shapes(lean)["head"] == (HIDDEN - len(DEAD), 3)


def test_a_writer_reading_an_opaque_tensor_still_loses_its_dead_output_channels():
    """o_proj reads the attention's output, reshaped at run time (no static size: no rule knows its channels);
    its zero columns are still zero channels of the residual stream, which goes on losing them."""
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((8, HIDDEN)).astype(np.float32)
    embed[:, DEAD] = 0.0
    o_proj = rng.standard_normal((12, HIDDEN)).astype(np.float32)
    o_proj[:, DEAD] = 0.0
    inits = [numpy_helper.from_array(embed, "embed"), numpy_helper.from_array(o_proj, "o_proj"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, 12)).astype(np.float32), "v_proj"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, 3)).astype(np.float32), "head"),
             numpy_helper.from_array(np.array([0, 1], np.int64), "first_two"),
             numpy_helper.from_array(np.array([-1], np.int64), "rest")]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "embed"], ["h"]),
        helper.make_node("MatMul", ["h", "v_proj"], ["v"]),
        helper.make_node("Shape", ["v"], ["v_shape"]),
        helper.make_node("Gather", ["v_shape", "first_two"], ["batch_seq"]),
        helper.make_node("Concat", ["batch_seq", "rest"], ["target"], axis=0),
        helper.make_node("Relu", ["v"], ["a"]),
        helper.make_node("Reshape", ["a", "target"], ["opaque"]),  # [b, s, -1]: no static size
        helper.make_node("MatMul", ["opaque", "o_proj"], ["o"]),
        helper.make_node("Add", ["h", "o"], ["h2"]),
        helper.make_node("MatMul", ["h2", "head"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "opaque", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)  # fmt: skip
    lean, _ = remove_in_memory(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    live = HIDDEN - len(DEAD)
    shapes = _shapes(lean)
    assert (shapes["embed"], shapes["o_proj"], shapes["v_proj"], shapes["head"]) == ((8, live), (12, live),
                                                                                     (live, 12), (live, 3))  # fmt: skip
