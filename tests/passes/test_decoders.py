"""KV-cache decoders (tests/passes/decoders.py: a Llama-architecture decoder as optimum-onnx's interface has it),
exported by both PyTorch exporters: a dead K/V group goes with its query heads and that layer's cache inputs
and outputs hold fewer heads; the gate drives both graphs through a prefill and greedy decode steps, with no data
from the user."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sparsecut.calibration import Calibration
from sparsecut.decoder import DecoderInterface, generate
from sparsecut.errors import GraphError, InputError
from sparsecut.modelfile import load_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.channels.report import GQA_GROUPS
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.precision import Precision
from tests.passes.decoders import (
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    MLP,
    VOCAB,
    Decoder,
    builder_decoder,
    export_decoder,
    mask_like_llm_pruning,
    mask_query_heads,
)
from tests.passes.graphs import weights


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def masked(request, tmp_path_factory) -> Path:
    model = Decoder()
    mask_like_llm_pruning(model, extra_query_head=True)
    return export_decoder(model, tmp_path_factory.mktemp("decoder") / "masked.onnx", dynamo=request.param)


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_a_dead_kv_group_goes_with_its_query_heads_and_the_cache_loses_its_head(masked, tmp_path):
    """Per layer one K/V group (of 2) and its 2 query heads, a third of the MLP neurons and 2 of 32 hidden channels
    are dead: all go, exactly — every weight's shape is the physically smaller decoder's; each layer's past and
    present hold 1 K/V head. Layer 0 also lost a query head of its live group, the only live one: it goes too
    (one query head per group is still equal groups)."""
    report = optimize_model(masked, tmp_path / "lean.onnx", OptimizeOptions(align=1))
    (check,) = report.checks
    assert check.passed and check.max_rel_error < 1e-5
    assert check.label == (
        "greedy generation, batch 2: prefill 16 tokens (seed 0), 31 decode steps; greedy tokens identical"
    )
    lean = load_model(tmp_path / "lean.onnx")
    hidden, neurons = HIDDEN - 2, MLP - MLP // 3

    def layer(heads: int) -> list[tuple[int, int]]:
        return [(hidden, heads * HEAD_DIM), (hidden, HEAD_DIM), (hidden, HEAD_DIM), (heads * HEAD_DIM, hidden),
                (hidden, neurons), (hidden, neurons), (neurons, hidden)]  # fmt: skip

    shapes = [w.shape for w in weights(lean, "MatMul") if w is not None]
    assert shapes == layer(1) + layer(2) + [(hidden, VOCAB)]
    table = next(n.inputs[0] for n in lean.graph if n.op_type == "Gather" and n.inputs[0].const_value is not None)
    assert table.const_value.shape == (VOCAB, hidden)
    proto = onnx.load(str(tmp_path / "lean.onnx"), load_external_data=False)
    caches = {v.name: _dims(v)[1] for v in [*proto.graph.input, *proto.graph.output] if "key" in v.name or "value" in v.name}  # fmt: skip
    assert caches == {name: 1 for name in caches} and len(caches) == 4 * LAYERS
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert [(h.heads, h.kv_heads, h.dead, h.removable) for h in step.heads] == [(4, 2, 3, 3), (4, 2, 2, 2)]
    assert step.heads[0].kept == {}
    assert step.heads[0].cache == {f"{kind}.0.{part}": [1] for kind in ("past_key_values", "present")
                                   for part in ("key", "value")}  # fmt: skip


@pytest.mark.parametrize("form", ["torchscript", "dynamo", "builder", "builder-separate", "builder-rotary"])
def test_query_heads_of_live_groups_go_in_equal_numbers_per_group(tmp_path, form):
    """No K/V group dead; layer 0 lost one query head in each group (heads 1 and 3): both go, repeat_kv's repeat
    count becomes 1 — exact; layer 1 lost one in group 0 only (head 0): it stays, said so (GQA needs equal groups)."""
    model = Decoder()
    mask_query_heads(model, 0, [1, 3])
    mask_query_heads(model, 1, [0])
    if form.startswith("builder"):
        source = builder_decoder(
            model, tmp_path / "masked.onnx", separate=form == "builder-separate", rotary=form == "builder-rotary"
        )
    else:
        source = export_decoder(model, tmp_path / "masked.onnx", dynamo=form == "dynamo")
    report = optimize_model(source, tmp_path / "lean.onnx", OptimizeOptions(align=1))
    assert report.checks[0].passed
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    assert [(h.heads, h.kv_heads, h.dead, h.removable) for h in step.heads] == [(4, 2, 2, 2), (4, 2, 1, 0)]
    assert step.heads[1].kept == {GQA_GROUPS: 1}
    assert all(not h.cache for h in step.heads)  # every K/V head stays: the interface is unchanged
    lean = load_model(tmp_path / "lean.onnx")
    if form == "builder-rotary":  # RotaryEmbedding on q and k, then GroupQueryAttention without rotary
        rotary = [n.attributes["num_heads"].value for n in lean.graph if n.op_type == "RotaryEmbedding"]
        assert rotary == [2, 2, 4, 2]  # layer 0: q 4 → 2 heads, k 2; layer 1 unchanged
    if form in ("builder-separate", "builder-rotary"):
        gqa = [n for n in lean.graph if n.op_type == "GroupQueryAttention"]
        assert [(n.attributes["num_heads"].value, n.attributes["kv_num_heads"].value) for n in gqa] == [(2, 2), (4, 2)]
        q = [w.shape for w in weights(lean, "MatMul") if w is not None][0:14:7]
        assert q == [(HIDDEN, 2 * HEAD_DIM), (HIDDEN, 4 * HEAD_DIM)]
    elif form == "builder":  # the packed q|k|v: 2 (4) query heads and the 2 K/V heads' k and v
        gqa = [n for n in lean.graph if n.op_type == "GroupQueryAttention"]
        assert [(n.attributes["num_heads"].value, n.attributes["kv_num_heads"].value) for n in gqa] == [(2, 2), (4, 2)]
        assert [w.shape for w in weights(lean, "MatMul") if w is not None][0:10:5] == [(HIDDEN, 6 * HEAD_DIM),
                                                                                      (HIDDEN, 8 * HEAD_DIM)]  # fmt: skip
    else:
        q = [w.shape for w in weights(lean, "MatMul") if w is not None][0:14:7]
        assert q == [(HIDDEN, 2 * HEAD_DIM), (HIDDEN, 4 * HEAD_DIM)]


def test_the_lean_decoder_generates_what_the_masked_one_does(masked, tmp_path):
    """Outside the gate: onnxruntime's greedy generation (batch 3, a 5-token prompt, 12 tokens) from the lean file
    gives the masked file's tokens and logits, the lean one fed its own smaller caches."""
    import onnxruntime as ort

    optimize_model(masked, tmp_path / "lean.onnx", OptimizeOptions(align=1))
    interface = DecoderInterface.of(load_model(masked), masked)
    assert interface is not None
    prompt = np.random.default_rng(7).integers(0, VOCAB, (3, 5))
    runs = [generate(ort.InferenceSession(str(p)), interface, prompt, 12) for p in (masked, tmp_path / "lean.onnx")]
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    for a, b in zip(runs[0].logits, runs[1].logits, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    assert runs[1].caches["present.1.value"].shape == (3, 1, 5 + 11, HEAD_DIM)


def test_a_past_with_no_present_is_refused_naming_it(tmp_path):
    model = export_decoder(Decoder(), tmp_path / "masked.onnx", dynamo=False)
    proto = onnx.load(str(model))
    kept = [o for o in proto.graph.output if o.name != "present.1.value"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    with pytest.raises(InputError) as raised:
        optimize_model(tmp_path / "broken.onnx", tmp_path / "lean.onnx", OptimizeOptions(align=1))
    assert str(raised.value) == (
        f"{tmp_path / 'broken.onnx'}: the past input 'past_key_values.1.value' has no matching present output "
        "('present.1.value')"
    )
    assert not (tmp_path / "lean.onnx").exists()


def test_a_cache_with_a_symbolic_head_axis_keeps_its_heads_with_the_reason(tmp_path):
    """A decoder whose past head axis is symbolic: no head goes (the cache's size cannot be rewritten), said so;
    driven with --data instead (the gate cannot size an empty past)."""
    model = Decoder()
    mask_like_llm_pruning(model)
    path = export_decoder(model, tmp_path / "masked.onnx", dynamo=False)
    proto = onnx.load(str(path))
    for value in [*proto.graph.input, *proto.graph.output]:
        if value.name.startswith(("past_key_values", "present")):
            value.type.tensor_type.shape.dim[1].dim_param = "kv_heads"
    onnx.save(proto, str(tmp_path / "symbolic.onnx"))
    with pytest.raises(InputError, match=r"the past input 'past_key_values.0.key' has no static head count"):
        optimize_model(tmp_path / "symbolic.onnx", tmp_path / "lean.onnx", OptimizeOptions(align=1))
    from sparsecut.passes import inspect_model

    step = next(p for p in inspect_model(tmp_path / "symbolic.onnx", align=1).passes if "remove-dead" in p.name)
    assert not step.heads
    assert any("has no static head count" in reason for reason in step.declined)


def test_groupqueryattention_as_the_genai_builder_writes_it_loses_the_dead_group(tmp_path):
    """The same masked decoder in onnxruntime-genai's builder form (GroupQueryAttention on a packed q|k|v MatMul,
    rotary inside, SkipSimplifiedLayerNormalization, caches with a symbolic head dim): each layer's node gets
    kv_num_heads 1 and num_heads 2 (layer 0: 1, its live group's dead query head gone too), the packed weight
    loses those heads' q, k and v columns, the caches one head."""
    import onnxruntime as ort

    model = Decoder()
    mask_like_llm_pruning(model, extra_query_head=True)
    source = builder_decoder(model, tmp_path / "builder.onnx")
    plain = export_decoder(model, tmp_path / "plain.onnx", dynamo=False)
    prompt = np.random.default_rng(3).integers(0, VOCAB, (2, 6))
    built, exported = (
        generate(ort.InferenceSession(str(p)), DecoderInterface.of(load_model(p), p), prompt, 6)
        for p in (source, plain)
    )
    np.testing.assert_array_equal(built.tokens, exported.tokens)  # the builder form is the same decoder
    report = optimize_model(source, tmp_path / "lean.onnx", OptimizeOptions(align=1))
    (check,) = report.checks
    assert check.passed and check.label.endswith("greedy tokens identical")
    lean = load_model(tmp_path / "lean.onnx")
    gqa = [n for n in lean.graph if n.op_type == "GroupQueryAttention"]
    assert [(n.attributes["num_heads"].value, n.attributes["kv_num_heads"].value) for n in gqa] == [(1, 1), (2, 1)]
    hidden, neurons = HIDDEN - 2, MLP - MLP // 3

    def layer(heads: int) -> list[tuple[int, int]]:
        return [(hidden, (heads + 2) * HEAD_DIM), (heads * HEAD_DIM, hidden), (hidden, neurons), (hidden, neurons),
                (neurons, hidden)]  # fmt: skip

    shapes = [w.shape for w in weights(lean, "MatMul") if w is not None]
    assert shapes == layer(1) + layer(2) + [(hidden, VOCAB)]
    proto = onnx.load(str(tmp_path / "lean.onnx"), load_external_data=False)
    heads = {v.name: _dims(v)[1] for v in [*proto.graph.input, *proto.graph.output] if v.name.startswith(("past", "present"))}  # fmt: skip
    assert heads == {name: 1 for name in heads} and len(heads) == 4 * LAYERS


def test_groupqueryattention_attributes_that_disagree_with_its_input_keep_every_head(tmp_path):
    """num_heads/kv_num_heads that do not divide the packed projection: the node is a barrier, said so."""
    from sparsecut.passes import inspect_model

    model = Decoder()
    mask_like_llm_pruning(model)
    path = builder_decoder(model, tmp_path / "builder.onnx")
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "GroupQueryAttention":
            next(a for a in node.attribute if a.name == "num_heads").i = 5
    onnx.save(proto, str(tmp_path / "wrong.onnx"))
    step = next(p for p in inspect_model(tmp_path / "wrong.onnx", align=1).passes if "remove-dead" in p.name)
    assert not step.heads
    reason = (
        "GroupQueryAttention: num_heads 5 / kv_num_heads 2 disagree with its input's "
        f"{(HEADS + 2 * KV_HEADS) * HEAD_DIM} features"
    )
    assert step.declined[reason] == LAYERS


def test_a_hidden_channel_one_layer_writes_is_kept(tmp_path):
    """Hidden channel 17 is zero in the embedding and every writer but layer 1's down projection: it is live in
    the residual stream from there on, so it stays everywhere (it is one channel of one stream); channel 3 goes."""
    model = Decoder()
    mask_like_llm_pruning(model)
    with torch.no_grad():
        model.layers[1].down.weight[17] = 0.5
    source = export_decoder(model, tmp_path / "masked.onnx", dynamo=False)
    optimize_model(source, tmp_path / "lean.onnx", OptimizeOptions(align=1))
    lean = load_model(tmp_path / "lean.onnx")
    assert [w.shape for w in weights(lean, "MatMul") if w is not None][-1] == (HIDDEN - 1, VOCAB)


def test_int4_writes_matmulnbits_and_measures_drift_on_generation(tmp_path):
    """--precision int4 after the lean graph is gated: every MatMul weight → MatMulNBits (blocks of 32, symmetric,
    round to nearest), the graph runs, the drift is measured on the decoder's own generation."""
    import onnxruntime as ort

    model = Decoder()
    mask_like_llm_pruning(model)
    source = export_decoder(model, tmp_path / "masked.onnx", dynamo=False)
    report = optimize_model(
        source, tmp_path / "int4.onnx", OptimizeOptions(align=1, precision=PrecisionRequest(Precision("int4")))
    )
    assert report.checks[0].passed  # the lean graph, before int4
    assert report.precision is not None and report.precision.precision == "int4" and report.precision.format == "b32"
    (drift,) = report.precision.outputs
    assert drift.name == "logits" and drift.sqnr_db is not None and 0 <= drift.top1_agreement <= 1
    assert any(
        note.startswith("drift on generation: prompt 16 tokens (seed 0), 32 tokens") for note in report.precision.notes
    )
    proto = onnx.load(str(tmp_path / "int4.onnx"))
    weights = {t.name for t in proto.graph.initializer}
    assert not [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert [n.op_type for n in proto.graph.node].count("MatMulNBits") == 7 * LAYERS + 1  # (scores and weights·V stay)
    interface = DecoderInterface.of(load_model(tmp_path / "int4.onnx"), tmp_path / "int4.onnx")
    done = generate(ort.InferenceSession(str(tmp_path / "int4.onnx")), interface, np.zeros((1, 4), np.int64), 3)
    assert done.tokens.shape == (1, 3)


def test_int4_on_a_graph_without_matmul_weights_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "relu.onnx"))
    with pytest.raises(GraphError) as raised:
        optimize_model(tmp_path / "relu.onnx", tmp_path / "out.onnx",
                       OptimizeOptions(precision=PrecisionRequest(Precision("int4"))))  # fmt: skip
    assert (
        str(raised.value)
        == f"{tmp_path / 'relu.onnx'}: --precision int4 quantizes MatMul weights, and this graph has none"
    )
    assert not (tmp_path / "out.onnx").exists()


def test_int4_hqq_is_asked_in_the_precision(tmp_path):
    """`int4 hqq`: onnxruntime's half-quadratic quantizer (asymmetric, no data) instead of round to nearest."""
    model = Decoder()
    mask_like_llm_pruning(model)
    source = export_decoder(model, tmp_path / "masked.onnx", dynamo=False)
    wanted = PrecisionRequest(Precision.parse("int4 b64 hqq"))
    report = optimize_model(source, tmp_path / "int4.onnx", OptimizeOptions(align=1, precision=wanted))
    assert report.precision is not None and report.precision.format == "b64 hqq"
    assert report.precision.notes[0] == "int4 b64, asymmetric, HQQ (onnxruntime's HQQWeightOnlyQuantConfig)"
    nbits = [n for n in onnx.load(str(tmp_path / "int4.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 7 * LAYERS + 1
    assert {next(a.i for a in n.attribute if a.name == "block_size") for n in nbits} == {64}


def _tokens(path, count, length=24, seed=1):
    np.savez(path, input_ids=np.random.default_rng(seed).integers(0, VOCAB, (count, length)).astype(np.int64))
    return path


def test_int4_gptq_calibrates_on_the_given_tokens_and_beats_round_to_nearest(tmp_path):
    """`int4 gptq --calibration tokens.npz`: onnxruntime's GPTQ, each token row run as a prefill; its rounding
    error is compensated on the layers' real inputs, so its logits are nearer the fp32 decoder's than round to
    nearest's, with the same blocks and symmetry."""
    model = Decoder()
    mask_like_llm_pruning(model)
    source = export_decoder(model, tmp_path / "masked.onnx", dynamo=False)
    tokens = _tokens(tmp_path / "tokens.npz", 8)
    gptq = PrecisionRequest(Precision.parse("int4 gptq"), calibration=Calibration(source=tokens))
    report = optimize_model(source, tmp_path / "gptq.onnx", OptimizeOptions(align=1, precision=gptq))
    rtn = optimize_model(
        source, tmp_path / "rtn.onnx", OptimizeOptions(align=1, precision=PrecisionRequest(Precision("int4")))
    )
    assert report.precision is not None and rtn.precision is not None
    assert report.precision.format == "b32 gptq" and report.precision.samples == 8
    assert report.precision.notes[0].startswith(f"int4 b32, symmetric, GPTQ on 8 sample(s) of {tokens}")
    nbits = [n for n in onnx.load(str(tmp_path / "gptq.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 7 * LAYERS + 1
    assert report.precision.outputs[0].sqnr_db > rtn.precision.outputs[0].sqnr_db
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gptq.onnx", "masked.onnx", "rtn.onnx", "tokens.npz"]


@pytest.mark.parametrize(
    "calibration, message",
    [
        (None, "--precision int4 gptq: GPTQ calibrates on data and none was given; pass --calibration FILE.npz "
               "(input_ids [samples, length], int64) — or use int4 rtn / int4 hqq, which need none"),
        ("far.npz", "{far}: array 'input_ids' holds token ids outside the vocabulary [0, 64)"),
    ],
)  # fmt: skip
def test_int4_gptq_without_usable_tokens_is_refused(tmp_path, calibration, message):
    model = Decoder()
    source = export_decoder(model, tmp_path / "masked.onnx", dynamo=False)
    path = None
    if calibration:
        path = tmp_path / calibration
        np.savez(path, input_ids=np.full((2, 8), VOCAB, np.int64))
    wanted = PrecisionRequest(Precision.parse("int4 gptq"), calibration=Calibration(source=path))
    with pytest.raises(InputError) as raised:
        optimize_model(source, tmp_path / "out.onnx", OptimizeOptions(precision=wanted))
    assert str(raised.value) == message.format(far=path)
    assert not (tmp_path / "out.onnx").exists()
