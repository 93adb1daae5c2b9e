"""Property: on KV-cache decoders (tests/passes/decoders.py: MHA, GQA or MQA; plain ops from the TorchScript
exporter, or onnxruntime-genai's builder forms: packed or separate q/k/v, rotary inside GroupQueryAttention or
RotaryEmbedding before it) with random dead K/V groups, dead query heads, MLP neurons and
hidden channels, `optimize` passes its generation gate, never makes the model larger, and each layer keeps
exactly the heads that matter: the K/V groups with a live query head (one whose output-projection columns and
V are not zero — zero q rows alone leave uniform attention, still live), each with as many query heads as the
fullest of them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecut.passes import OptimizeOptions, optimize_model
from tests.passes.decoders import HEAD_DIM, HIDDEN, LAYERS, MLP, Decoder, builder_decoder, export_decoder


@st.composite
def decoders(draw: st.DrawFn) -> tuple[Decoder, str, list[tuple[int, int]]]:
    heads, kv_heads = draw(st.sampled_from([(4, 2), (4, 4), (4, 1)]))
    form = draw(st.sampled_from(["torchscript", "builder", "builder-separate", "builder-rotary"]))
    model = Decoder(seed=draw(st.integers(0, 1000)), heads=heads, kv_heads=kv_heads)
    group = heads // kv_heads
    expected = []
    hidden = draw(st.lists(st.integers(0, HIDDEN - 1), unique=True, max_size=3))
    with torch.no_grad():
        model.embed.weight[:, hidden] = 0
        for layer in model.layers:
            attention = layer.attn
            dead_groups = draw(st.lists(st.integers(0, kv_heads - 1), unique=True, max_size=kv_heads - 1))
            dead_heads = draw(st.lists(st.integers(0, heads - 1), unique=True, max_size=heads))
            # zero q rows alone: still live. (The TorchScript exporter shares equal tensors: two all-zero q weights
            # become one initializer, kept whole where slicing it apart would enlarge the model — test_dead_channels)
            whole_q = heads - 1 if form == "torchscript" else heads
            zero_q = draw(st.lists(st.integers(0, heads - 1), unique=True, max_size=whole_q))
            for g in dead_groups:
                attention.v.weight[g * HEAD_DIM : (g + 1) * HEAD_DIM] = 0
                if draw(st.booleans()):
                    attention.k.weight[g * HEAD_DIM : (g + 1) * HEAD_DIM] = 0
            for h in dead_heads:
                attention.o.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            for h in zero_q:
                attention.q.weight[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            neurons = draw(st.lists(st.integers(0, MLP - 1), unique=True, max_size=MLP // 2))
            layer.gate.weight[neurons] = 0
            layer.up.weight[neurons] = 0
            layer.down.weight[:, neurons] = 0
            attention.o.weight[hidden] = 0
            layer.down.weight[hidden] = 0
            live = [h for h in range(heads) if h not in dead_heads and h // group not in dead_groups]
            per_group = [sum(1 for h in live if h // group == g) for g in range(kv_heads)]
            kept_groups = sum(1 for n in per_group if n)
            # a layer with no live head keeps one, and its K/V head: a tensor never loses every channel
            expected.append((kept_groups * max(per_group), kept_groups) if kept_groups else (1, 1))
    return model, form, expected


def _check(example: tuple[Decoder, str, list[tuple[int, int]]]) -> None:
    model, form, expected = example
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "masked.onnx"
        if form.startswith("builder"):
            builder_decoder(model, source, separate=form == "builder-separate", rotary=form == "builder-rotary")
        else:
            export_decoder(model, source, dynamo=False)
        report = optimize_model(source, Path(tmp) / "lean.onnx", OptimizeOptions(align=1))
        assert report.checks[0].passed and report.after.params <= report.before.params
        proto = onnx.load(str(Path(tmp) / "lean.onnx"), load_external_data=False)
        kv = {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in proto.graph.input}
        step = next(p for p in report.passes if p.name == "remove-dead-channels")
        kept = [(h.heads - h.removable, len(next(iter(h.cache.values()), range(h.kv_heads)))) for h in step.heads]
        assert kept == expected
        assert [kv[f"past_key_values.{i}.key"] for i in range(LAYERS)] == [e[1] for e in expected]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decoders())
def test_optimize_keeps_exactly_the_heads_that_matter(example):
    _check(example)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decoders())
def test_optimize_keeps_exactly_the_heads_that_matter_many(example):
    _check(example)
