"""Attention heads removed exactly: small attention blocks written in torch the way timm and Hugging Face write
them, heads zeroed the way head pruning leaves them, exported with sparsecut's exporter and optimized — the gate
checks every output (rtol 1e-4) before anything is written; here the head counts, weight shapes and folded
biases are checked exactly."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sparsecut.exporter import ExportOptions, export_module
from sparsecut.passes import OptimizeOptions, inspect_model, optimize_model

SEQ, DIM = 6, 32


def rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    """q/k/v (separate as Hugging Face, or fused as timm), SDPA or written out, optional RoPE and GQA."""

    def __init__(self, heads: int = 4, kv_heads: int | None = None, fused: bool = False, rope: bool = False,
                 sdpa: bool = True, causal: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.head_dim = DIM // heads
        self.fused, self.rope, self.sdpa, self.causal = fused, rope, sdpa, causal
        kv_dim = self.kv_heads * self.head_dim
        if fused:
            self.qkv = nn.Linear(DIM, 3 * DIM)
        else:
            self.q, self.k, self.v = nn.Linear(DIM, DIM), nn.Linear(DIM, kv_dim), nn.Linear(DIM, kv_dim)
        self.o = nn.Linear(DIM, DIM)
        angles = torch.arange(SEQ)[:, None] * torch.arange(self.head_dim // 2)[None] / 3.0
        self.register_buffer("cos", torch.cat([angles.cos(), angles.cos()], -1))
        self.register_buffer("sin", torch.cat([angles.sin(), angles.sin()], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if self.fused:  # timm: reshape (B, N, 3, H, D), permute, unbind
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:  # Hugging Face: view (B, N, H, D), transpose
            q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
            k = self.k(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
            v = self.v(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.rope:
            q = q * self.cos + rotate(q) * self.sin
            k = k * self.cos + rotate(k) * self.sin
        if self.kv_heads != self.heads:  # GQA: repeat_kv as Llama does it
            repeat = self.heads // self.kv_heads
            k = k[:, :, None].expand(b, self.kv_heads, repeat, n, self.head_dim).reshape(b, self.heads, n, -1)
            v = v[:, :, None].expand(b, self.kv_heads, repeat, n, self.head_dim).reshape(b, self.heads, n, -1)
        if self.sdpa:
            mask = torch.ones(n, n, dtype=torch.bool).tril() if self.causal else None  # as Hugging Face passes it
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            weights = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(-1)
            out = weights @ v
        return self.o(out.transpose(1, 2).reshape(b, n, DIM))


class Block(nn.Module):
    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.attn = Attention(**kwargs)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


def _v_rows(attn: Attention, head: int) -> slice:
    d = attn.head_dim
    return slice(2 * DIM + head * d, 2 * DIM + (head + 1) * d) if attn.fused else slice(head * d, (head + 1) * d)


def _v(attn: Attention) -> nn.Linear:
    return attn.qkv if attn.fused else attn.v


def _lean(tmp_path: Path, block: Block) -> tuple[ir.Model, object]:
    export_module(block.eval(), tmp_path / "in.onnx", ExportOptions(input_shape=(1, SEQ, DIM)))
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert step.rule_errors == []
    return ir.load(tmp_path / "out.onnx"), report


def _weights(model: ir.Model) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(v.const_value.shape) for name, v in model.graph.initializers.items() if v.const_value is not None
    }


def _reshape_shapes(model: ir.Model) -> list[list[int]]:
    return [n.inputs[1].const_value.numpy().tolist() for n in model.graph
            if n.op_type == "Reshape" and n.inputs[1].const_value is not None]  # fmt: skip


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-qkv"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "written-out"])
def test_heads_with_zero_v_or_zero_output_columns_go(tmp_path, fused, sdpa):
    torch.manual_seed(0)
    block = Block(fused=fused, sdpa=sdpa)
    attn = block.attn
    with torch.no_grad():
        _v(attn).weight[_v_rows(attn, 1)] = 0.0  # head 1: V rows and V bias zero
        _v(attn).bias[_v_rows(attn, 1)] = 0.0
        attn.o.weight[:, 3 * 8 : 4 * 8] = 0.0  # head 3: output-projection columns zero
    lean, _ = _lean(tmp_path, block)
    shapes = _weights(lean)
    assert shapes["attn.o.weight"] == (16, 32)  # stored [in, out]: 2 heads × 8 dims in
    if fused:
        assert shapes["attn.qkv.weight"] == (32, 48)
        assert [-1, SEQ, 3, 2, 8] in _reshape_shapes(lean)
    else:
        assert shapes["attn.q.weight"] == shapes["attn.k.weight"] == shapes["attn.v.weight"] == (32, 16)
        assert [-1, SEQ, 2, 8] in _reshape_shapes(lean)


def test_zero_v_weights_with_a_bias_fold_into_the_output_bias(tmp_path):
    """V weights of head 2 zero, its bias b not: the head outputs b in every row (softmax rows sum to 1), so it
    goes and b·W_o[head 2] joins the output bias."""
    torch.manual_seed(1)
    block = Block(sdpa=False)
    attn = block.attn
    with torch.no_grad():
        attn.v.weight[16:24] = 0.0
        bias = attn.v.bias[16:24].clone()
        expected = attn.o.bias + attn.o.weight[:, 16:24] @ bias
    lean, _ = _lean(tmp_path, block)
    assert _weights(lean)["attn.v.weight"] == (32, 24)
    np.testing.assert_allclose(lean.graph.initializers["attn.o.bias"].const_value.numpy(), expected.numpy(), rtol=1e-6)


def test_zero_q_alone_keeps_the_head(tmp_path):
    """q ≡ 0 makes the attention uniform, not zero: the head averages v and stays."""
    torch.manual_seed(2)
    block = Block()
    with torch.no_grad():
        block.attn.q.weight[0:8] = 0.0
        block.attn.q.bias[0:8] = 0.0
    lean, report = _lean(tmp_path, block)
    assert _weights(lean)["attn.q.weight"] == (32, 32)
    assert report.after.params == report.before.params


def test_gqa_kv_head_goes_only_with_every_q_head_that_shares_it(tmp_path):
    """4 Q heads on 2 K/V heads, RoPE on q and k: Q heads 2 and 3 (K/V head 1) dead → K/V head 1 goes with them;
    Q head 0 alone dead → kept (K/V head 0 still serves Q head 1)."""
    torch.manual_seed(3)
    block = Block(kv_heads=2, rope=True)
    with torch.no_grad():
        block.attn.o.weight[:, 16:32] = 0.0  # Q heads 2, 3
        block.attn.o.weight[:, 0:8] = 0.0  # Q head 0
    lean, _ = _lean(tmp_path, block)
    shapes = _weights(lean)
    assert shapes["attn.q.weight"] == (32, 16)
    assert shapes["attn.k.weight"] == shapes["attn.v.weight"] == (32, 8)
    assert shapes["attn.o.weight"] == (16, 32)


def test_masked_sdpa_nan_guard_keeps_constant_v_heads(tmp_path):
    """SDPA with a boolean mask exports a guard that zeroes fully masked rows after the Softmax: rows may not sum
    to 1, so a V head that is a nonzero constant stays; a zero V head still goes."""
    torch.manual_seed(4)
    block = Block(causal=True)
    with torch.no_grad():
        block.attn.v.weight[0:16] = 0.0  # heads 0 and 1: V weights zero
        block.attn.v.bias[8:16] = 0.0  # head 1: V bias zero too
    lean, _ = _lean(tmp_path, block)
    assert "IsNaN" in {n.op_type for n in lean.graph}  # the guard is there
    assert _weights(lean)["attn.v.weight"] == (32, 24)  # head 1 went, head 0 (constant V) stayed


def test_inspect_lists_heads_per_attention_block(tmp_path):
    torch.manual_seed(5)
    block = Block()
    with torch.no_grad():
        block.attn.o.weight[:, 8:16] = 0.0
        block.attn.q.weight[24:32] = 0.0
        block.attn.q.bias[24:32] = 0.0
    export_module(block.eval(), tmp_path / "in.onnx", ExportOptions(input_shape=(1, SEQ, DIM)))
    report = inspect_model(tmp_path / "in.onnx", align=1)
    (heads,) = next(p for p in report.passes if p.name.startswith("remove-dead-channels")).heads
    assert (heads.heads, heads.kv_heads, heads.head_dim, heads.dead, heads.removable) == (4, 4, 8, 1, 1)
    assert heads.kept == {}
    assert (heads.qk_dim_after, heads.v_dim_after) == (8, 8)


def _zero_dims(linear: nn.Linear, dims_per_head: dict[int, list[int]], bias: bool = True, head_dim: int = 8) -> None:
    with torch.no_grad():
        for head, dims in dims_per_head.items():
            rows = [head * head_dim + d for d in dims]
            linear.weight[rows] = 0.0
            if bias:
                linear.bias[rows] = 0.0


def test_q_dims_zero_in_every_head_go_from_q_and_k(tmp_path):
    """q_d ≡ 0 (weights and bias) in every head: the q_d·k_d terms vanish, d goes from q and k; the scale stays the
    constant 1/√8 it was (the head dim of the scale is not recomputed)."""
    torch.manual_seed(6)
    block = Block()
    _zero_dims(block.attn.q, {h: [1, 5] for h in range(4)})
    lean, _ = _lean(tmp_path, block)
    shapes = _weights(lean)
    assert shapes["attn.q.weight"] == shapes["attn.k.weight"] == (32, 24)
    assert shapes["attn.v.weight"] == (32, 32)
    assert [-1, SEQ, 4, 6] in _reshape_shapes(lean)


def test_k_dims_with_zero_weights_and_any_bias_go(tmp_path):
    """k_d ≡ c (weights zero, bias not): q_d·c shifts a whole row of scores, which the Softmax ignores."""
    torch.manual_seed(7)
    block = Block(sdpa=False)
    _zero_dims(block.attn.k, {h: [0, 2] for h in range(4)}, bias=False)
    lean, _ = _lean(tmp_path, block)
    assert _weights(lean)["attn.q.weight"] == _weights(lean)["attn.k.weight"] == (32, 24)


def test_v_dims_go_from_v_and_the_output_columns(tmp_path):
    torch.manual_seed(8)
    block = Block()
    _zero_dims(block.attn.v, {h: [3] for h in range(4)})
    lean, report = _lean(tmp_path, block)
    (heads,) = next(p for p in report.passes if p.name == "remove-dead-channels").heads
    assert (heads.removable, heads.qk_dim_after, heads.v_dim_after) == (0, 8, 7)
    shapes = _weights(lean)
    assert shapes["attn.v.weight"] == (32, 28) and shapes["attn.o.weight"] == (28, 32)
    assert shapes["attn.q.weight"] == (32, 32)
    assert [-1, SEQ, 28] in _reshape_shapes(lean)


def test_heads_keep_equal_dims(tmp_path):
    """Zero q dims 3, 2, 2, 2 per head: one reshape splits q into heads of one size, so every head keeps 6."""
    torch.manual_seed(9)
    block = Block()
    _zero_dims(block.attn.q, {0: [1, 2, 3], 1: [0, 4], 2: [5, 6], 3: [7, 1]})
    lean, report = _lean(tmp_path, block)
    assert _weights(lean)["attn.q.weight"] == (32, 24)
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert any("heads keep equal head dims" in reason for g in step.groups for reason in g.kept_dead)


def test_rope_keeps_q_and_k_dims_and_v_dims_still_go(tmp_path):
    """RoPE rotates dims in pairs (d, d + D/2) with cos/sin laid out per dim: q/k dims stay; v has no RoPE."""
    torch.manual_seed(10)
    block = Block(rope=True)
    _zero_dims(block.attn.q, {h: [1] for h in range(4)})
    _zero_dims(block.attn.v, {h: [2] for h in range(4)})
    lean, _ = _lean(tmp_path, block)
    shapes = _weights(lean)
    assert shapes["attn.q.weight"] == (32, 32)
    assert shapes["attn.v.weight"] == (32, 28)


def _runtime_scale_model(tmp_path: Path) -> Path:
    """Zero q dims 1 and 5 in every head and v dim 3; the scores divided by √(shape of q)[-1] computed at run time
    (as dynamo writes SDPA's default scale): Shape → Cast → Sqrt → Div."""
    torch.manual_seed(11)
    block = Block(sdpa=False)
    _zero_dims(block.attn.q, {h: [1, 5] for h in range(4)})
    _zero_dims(block.attn.v, {h: [3] for h in range(4)})
    export_module(block.eval(), tmp_path / "fixed.onnx", ExportOptions(input_shape=(1, SEQ, DIM)))
    model = ir.load(tmp_path / "fixed.onnx")
    scores = next(n for n in model.graph if n.op_type == "MatMul" and not n.inputs[1].is_initializer()
                  and n.inputs[1].producer() is not None and n.inputs[1].producer().op_type == "Transpose")  # fmt: skip
    divide = next(use.node for use in scores.outputs[0].uses())
    assert divide.op_type == "Div"
    shape = ir.node("Shape", [scores.inputs[0]], attributes={"start": -1})
    size = ir.node("Cast", [shape.outputs[0]], attributes={"to": ir.DataType.FLOAT})
    root = ir.node("Sqrt", [size.outputs[0]])
    model.graph.insert_before(divide, [shape, size, root])
    divide.replace_input_with(1, root.outputs[0])
    path = tmp_path / "in.onnx"
    ir.save(model, path)
    return path


def test_a_run_time_scale_is_folded_first_then_q_and_k_dims_go(tmp_path):
    """fold-constants makes the run-time √8 the constant it always was for this graph: q/k dims then go, exactly."""
    source = _runtime_scale_model(tmp_path)
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    lean = ir.load(tmp_path / "out.onnx")
    shapes = _weights(lean)
    assert shapes["attn.q.weight"] == shapes["attn.k.weight"] == (32, 24)
    assert shapes["attn.v.weight"] == (32, 28)
    divide = next(n for n in lean.graph if n.op_type == "Div")
    assert divide.inputs[1].const_value is not None
    np.testing.assert_allclose(divide.inputs[1].const_value.numpy(), math.sqrt(8), rtol=1e-6)


def test_an_unfolded_run_time_scale_keeps_q_and_k_dims_and_the_gate_would_catch_it(tmp_path, monkeypatch):
    """On the graph as written (scale not folded), the rule leaves q/k dims alone — removing them would make the
    scale 1/√6. Forced (the check turned off), the result differs from the input: what the gate refuses."""
    from sparsecut.modelfile import load_model
    from sparsecut.passes.channels import DeadChannelAnalysis, heads
    from sparsecut.passes.dead_channels import RemoveDeadChannelsPass
    from sparsecut.passes.gate import compare_files, gate_inputs

    source = _runtime_scale_model(tmp_path)
    analysis = DeadChannelAnalysis(load_model(source, infer_shapes=True), align=1)
    (block,) = [plan.block for plan in analysis.walk.plans.values() if plan.kind.name == "ATTENTION"]
    assert "qk" in block.fixed_dims
    assert not analysis.has_removals(block.q_entry.value)
    assert analysis.has_removals(block.v_entry.value)

    monkeypatch.setattr(heads, "_feeds_arithmetic", lambda value: False)
    forced = load_model(source, infer_shapes=True)
    RemoveDeadChannelsPass(align=1, fold=False)(forced)
    assert _weights(forced)["attn.q.weight"] == (32, 24)
    ir.save(forced, tmp_path / "forced.onnx")
    options = OptimizeOptions(align=1)
    checks = compare_files(source, tmp_path / "forced.onnx", gate_inputs(ir.load(source), options, source), options)
    assert not all(c.passed for c in checks)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_attention_blocks_optimize_exactly_and_lose_every_dead_head(data):
    """Random layouts (fused or separate, SDPA or written out, masked, RoPE, GQA) with random zeroed V rows, output
    columns, q dims and v dims: the gate passes, no rule fails, nothing grows, and every head whose V (rows and
    bias) or output columns (with GQA: of its whole group) are all zero goes."""
    fused = data.draw(st.booleans())
    kv_heads = 4 if fused else data.draw(st.sampled_from([4, 2, 1]))
    block = Block(
        kv_heads=kv_heads, fused=fused, rope=not fused and data.draw(st.booleans()),
        sdpa=data.draw(st.booleans()), causal=data.draw(st.booleans()),
    )  # fmt: skip
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    attn = block.attn
    group = 4 // kv_heads
    dead_v = data.draw(st.lists(st.integers(0, kv_heads - 1), unique=True, max_size=kv_heads))
    dead_o = data.draw(st.lists(st.integers(0, 3), unique=True, max_size=4))
    with torch.no_grad():
        for g in dead_v:
            rows = _v_rows(attn, g)
            _v(attn).weight[rows] = 0.0
            _v(attn).bias[rows] = 0.0
        for h in dead_o:
            attn.o.weight[:, h * 8 : (h + 1) * 8] = 0.0
    if not fused:
        _zero_dims(attn.q, {h: data.draw(st.lists(st.integers(0, 7), max_size=3)) for h in range(4)})
        _zero_dims(attn.v, {g: data.draw(st.lists(st.integers(0, 7), max_size=3)) for g in range(kv_heads)})
    with tempfile.TemporaryDirectory() as tmp:
        _, report = _lean(Path(tmp), block)
    assert report.after.params <= report.before.params
    (heads,) = next(p for p in report.passes if p.name == "remove-dead-channels").heads
    surely_dead = {
        h for h in range(4) if h // group in dead_v or all(q in dead_o for q in range(4) if q // group == h // group)
    }
    surely_dead |= {h for h in range(4) if h in dead_o and group == 1}
    # a tensor never loses every channel (cleanup's job): with every head dead, one head (group) stays
    assert heads.removable >= (len(surely_dead) if len(surely_dead) < 4 else 4 - group)


def test_lean_head_dims_run_equal_under_onnxruntime_graph_optimizations(tmp_path):
    """What the onnxruntime target runs: all graph optimizations on (its fusions fold the scale into FusedMatMul's
    alpha from the graph's own constant; a fused Attention defaulting to 1/√head_size would differ)."""
    import onnxruntime as ort

    torch.manual_seed(12)
    block = Block()
    _zero_dims(block.attn.q, {h: [1, 5] for h in range(4)})
    _zero_dims(block.attn.v, {h: [3] for h in range(4)})
    lean, _ = _lean(tmp_path, block)
    assert _weights(lean)["attn.q.weight"] == (32, 24)
    x = np.random.default_rng(0).standard_normal((2, SEQ, DIM)).astype(np.float32)
    outputs = []
    for path in (tmp_path / "in.onnx", tmp_path / "out.onnx"):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-qkv"])
def test_torchscript_export_heads_go_too(tmp_path, fused):
    """The TorchScript exporter writes attention its own way (unbind as Split, the scale from the shape at run
    time, Constant weights shared through Identity): the same heads go."""
    torch.manual_seed(13)
    block = Block(fused=fused, sdpa=False).eval()
    attn = block.attn
    with torch.no_grad():
        _v(attn).weight[_v_rows(attn, 2)] = 0.0
        _v(attn).bias[_v_rows(attn, 2)] = 0.0
    torch.onnx.export(block, (torch.randn(1, SEQ, DIM),), str(tmp_path / "in.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    (heads,) = next(p for p in report.passes if p.name == "remove-dead-channels").heads
    assert (heads.heads, heads.removable) == (4, 1)
    assert report.after.params < report.before.params


class TimmAttention(nn.Module):
    """timm's Attention as written: B, N, C from the input's shape, unbind of the fused qkv, the scale applied
    after q @ kᵀ, and the exit reshape to (B, N, C) — C read from the input at run time."""

    def __init__(self, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, DIM // heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return x + self.proj((weights @ v).transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_timm_attention_loses_its_dead_head_from_either_exporter(tmp_path, dynamo):
    """The TorchScript exporter writes the unbind as Split + Squeeze and computes (B, N, C) from Shape(x): the
    canonical forms (Gather, a constant target) make the block read as dynamo's."""
    torch.manual_seed(14)
    attn = TimmAttention().eval()
    with torch.no_grad():
        attn.qkv.weight[2 * DIM + 8 : 2 * DIM + 16] = 0.0  # V of head 1
        attn.qkv.bias[2 * DIM + 8 : 2 * DIM + 16] = 0.0
    source = tmp_path / "in.onnx"
    if dynamo:
        export_module(attn, source, ExportOptions(input_shape=(1, SEQ, DIM)))
    else:
        torch.onnx.export(attn, (torch.randn(2, SEQ, DIM),), str(source), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
        assert {"Split", "Squeeze"} <= {node.op_type for node in ir.load(source).graph}
    report = optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    (heads,) = step.heads
    assert (heads.heads, heads.dead, heads.removable) == (4, 1, 1)
    assert step.barriers == {} and step.declined == {}
    projections = sorted(_weights(ir.load(tmp_path / "out.onnx")).values())  # (TorchScript renames the weights)
    assert [shape for shape in projections if len(shape) == 2] == [(24, DIM), (DIM, 3 * 24)]


class AttentionReturningWeights(Attention):
    """Returns the attention weights too (as `output_attentions=True` does): the heads reach a graph output."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(-1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, n, DIM)), weights


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_an_attention_block_the_tracer_refuses_says_why(tmp_path, dynamo):
    """The tracer's reason reaches the report ("Softmax: no rule" said nothing about attention)."""
    torch.manual_seed(0)
    attn = AttentionReturningWeights(sdpa=False)
    with torch.no_grad():
        attn.v.weight[_v_rows(attn, 1)] = 0.0
        attn.v.bias[_v_rows(attn, 1)] = 0.0
    if dynamo:
        export_module(attn.eval(), tmp_path / "in.onnx", ExportOptions(input_shape=(1, SEQ, DIM)))
    else:
        torch.onnx.export(attn.eval(), (torch.randn(2, SEQ, DIM),), str(tmp_path / "in.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    step = next(p for p in inspect_model(tmp_path / "in.onnx", align=1).passes if p.name.startswith("remove-dead"))
    assert "Softmax" not in step.barriers  # never "no rule"
    output = "softmax" if dynamo else "onnx::MatMul_64"  # (the name each exporter gives the weights it returns)
    reason = f"heads reach the graph's input/output {output!r} in another layout than a KV cache's"
    assert step.declined.get(f"Softmax: attention not recognized ({reason})")


@pytest.mark.slow
def test_timm_deit_torchscript_fused_attention_loses_its_dead_heads(tmp_path):
    """timm's DeiT (fused qkv, F.scaled_dot_product_attention) as the TorchScript exporter writes it — unbind as
    Split + Squeeze, canonicalized to Gather — with two of its three heads' V zeroed in every block: both go."""
    import importlib.util

    shim = Path(__file__).resolve().parents[2].parent / "shared" / "tvshim.py"
    if not shim.exists():
        pytest.skip(f"timm needs {shim} on these machines")
    if "tvshim" not in sys.modules:  # once per process (its torch.library definitions may not be made twice)
        spec = importlib.util.spec_from_file_location("tvshim", shim)
        assert spec is not None and spec.loader is not None
        tvshim = importlib.util.module_from_spec(spec)
        sys.modules["tvshim"] = tvshim  # kept alive: its definitions go with it
        spec.loader.exec_module(tvshim)
    timm = pytest.importorskip("timm", reason="timm is a benchmark-only dependency (pip install timm)")
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64).eval()
    d = 64
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.weight.shape[1]
            for head in (1, 2):
                block.attn.qkv.weight[2 * dim + head * d : 2 * dim + (head + 1) * d] = 0.0
                block.attn.qkv.bias[2 * dim + head * d : 2 * dim + (head + 1) * d] = 0.0
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(tmp_path / "in.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    report = optimize_model(tmp_path / "in.onnx", tmp_path / "out.onnx", OptimizeOptions(align=1))
    assert report.verified and all(c.passed for c in report.checks)
    heads = next(p for p in report.passes if p.name == "remove-dead-channels").heads
    assert [(h.heads, h.removable) for h in heads] == [(3, 2)] * 12
