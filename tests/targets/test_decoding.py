"""Decoder timing (targets/decoding.py): prefill and decode phases timed apart, each decode step fed the previous
step's presents; variants interleaved with intervals. The clock is a fake one where values are asserted: no
timing is judged here (benchmarks/llm.py measures)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from sparsecut.errors import InputError
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.targets.decoding import DecodeOptions, DecoderSession, compare_decoders, time_round
from tests.passes.decoders import HEAD_DIM, LAYERS, Decoder, export_decoder, mask_like_llm_pruning


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoding")
    model = Decoder()
    mask_like_llm_pruning(model)
    masked = export_decoder(model, folder / "masked.onnx", dynamo=False)
    optimize_model(masked, folder / "lean.onnx", OptimizeOptions(align=1))
    return masked, folder / "lean.onnx"


def test_prefill_and_decode_are_timed_apart_and_each_step_reads_the_last_steps_cache(decoders):
    session = DecoderSession(decoders[1])
    calls = []
    step = session.step

    def recording(ids, cache, start):
        lengths = {next(iter(cache.values())).shape()[2]}
        calls.append((ids.shape[1], start, lengths))
        return step(ids, cache, start)

    session.step = recording  # type: ignore[method-assign]
    ticks = itertools.count(0, 1_000_000)  # every clock reading 1 ms after the last
    prefill, decode = time_round(session, [5, 9], [4], 3, np.random.default_rng(0), clock=lambda: next(ticks))
    assert prefill == {5: 1.0, 9: 1.0} and decode == {4: [1.0, 1.0, 1.0]}
    # two prefills from an empty cache; the untimed prefill of the context; three decode steps, one token each,
    # each after the cache the step before it returned
    assert calls == [(5, 0, {0}), (9, 0, {0}), (4, 0, {0}), (1, 4, {4}), (1, 5, {5}), (1, 6, {6})]


def test_variants_are_compared_with_their_caches_and_intervals(decoders):
    masked, lean = decoders
    report = compare_decoders([masked, lean], DecodeOptions(prompts=(8,), contexts=(8,), steps=2, rounds=3))
    before, after = report.variants
    assert (before.kv_heads, after.kv_heads) == ([2] * LAYERS, [1] * LAYERS)
    assert (before.kv_bytes_per_token, after.kv_bytes_per_token) == (
        2 * LAYERS * 2 * HEAD_DIM * 4,
        2 * LAYERS * HEAD_DIM * 4,
    )
    assert after.weight_bytes < before.weight_bytes and after.params < before.params
    if sys.platform == "linux":  # the peak over the RSS before, from /proc: a session's weights and arena at least
        assert isinstance(before.memory_mb, float) and isinstance(after.memory_mb, float)
        assert before.memory_mb > 0 and after.memory_mb > 0
    assert not before.decode_speedup and set(after.decode_speedup) == {"8"} and set(after.prefill_speedup) == {"8"}
    speed = after.decode_speedup["8"]
    assert speed.low <= speed.value <= speed.high
    assert report.rounds == 3 and report.environment["onnxruntime"]


def test_a_model_that_is_no_decoder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(InputError) as raised:
        DecoderSession(tmp_path / "relu.onnx")
    assert (
        str(raised.value)
        == f"{tmp_path / 'relu.onnx'}: not a KV-cache decoder (no input_ids and past_key_values.N.* inputs)"
    )


def test_compare_times_decoders_as_generators_run_them(decoders, tmp_path, capsys):
    import json

    from sparsecut.cli import main

    masked, lean = decoders
    code = main(["compare", str(masked), str(lean), "--prompt", "8,16", "--context", "8", "--steps", "2",
                 "--rounds", "3", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["kind"] == "DecoderCompareReport"
    assert [v["kv_heads"] for v in report["variants"]] == [[2] * LAYERS, [1] * LAYERS]
    assert list(report["variants"][1]["prefill_speedup"]) == ["8", "16"]
    assert "prefill 16 ms" in out and "decode @8 tok/s" in out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # tokens/s vs weight bytes


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt", "0"], "error: --prompt 0: token counts of at least 1"),
        (["--context", "a,b"], "error: --context a,b: token counts, comma-separated (128,512)"),
        (["--target", "openvino"], "error: --target openvino: KV-cache decoders are timed on onnxruntime "
                                   "(sparsecut's generation loop) or onnxruntime-genai (its generator)"),
        (["--target", "onnxruntime-genai"], "error: --target onnxruntime-genai: onnxruntime-genai times its folders "
                                            "(sparsecut build --target onnxruntime-genai), onnxruntime ONNX files"),
    ],
)  # fmt: skip
def test_compare_refuses_bad_decoder_options_in_one_line(decoders, capsys, argv, message):
    from sparsecut.cli import main

    code = main(["compare", str(decoders[0]), str(decoders[1]), *argv])
    assert code == 2
    assert capsys.readouterr().err.strip() == message


def test_a_decode_steps_time_is_split_by_node_and_op(decoders, tmp_path, capsys):
    import json

    from sparsecut.cli import main
    from sparsecut.targets.decoding import decode_layer_times, time_by_op

    rows = decode_layer_times(decoders[1], 8, steps=3)
    assert rows and [r.ms for r in rows] == sorted((r.ms for r in rows), reverse=True)
    assert {r.op_type for r in rows} >= {"MatMul", "Softmax"} and abs(sum(r.time_pct for r in rows) - 100) < 1e-6
    assert sum(time_by_op(rows).values()) == pytest.approx(sum(r.ms for r in rows))
    code = main(["compare", str(decoders[0]), str(decoders[1]), "--prompt", "8", "--context", "8", "--steps", "2",
                 "--rounds", "3", "--layers", "3", "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["layers"] == 3 and all(v["decode_layers"] and v["decode_by_op"] for v in report["variants"])
    assert "costliest nodes in a decode step" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt", "300", "--context", "8"], "--prompt 300: beyond model.onnx's 256 positions"),
        (["--prompt", "8", "--context", "250", "--steps", "8"],
         "--context 250: with 8 decode steps, beyond model.onnx's 256 positions"),
    ],
)  # fmt: skip
def test_lengths_beyond_the_models_positions_are_refused(tmp_path, capsys, argv, message):
    """The builder sizes its rotary cache to the context length: a prompt or a context past it is refused in one line
    (a plain-op graph computes RoPE for any position: no limit there)."""
    from sparsecut.cli import main
    from tests.passes.decoders import builder_decoder

    (tmp_path / "m").mkdir()
    source = builder_decoder(Decoder(), tmp_path / "m" / "model.onnx")  # cos/sin caches of 256 positions
    code = main(["compare", str(source), str(source), "--rounds", "3", *argv])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
