"""The onnxruntime target: build, profile with per-layer time joined to MACs, and its errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from sparsecut.cli import main
from sparsecut.cost import count_costs
from sparsecut.errors import TargetError
from sparsecut.precision import Precision
from sparsecut.report import LatencyReport
from sparsecut.targets import BuildOptions, ProfileOptions, get_target
from sparsecut.targets.onnxruntime import OnnxRuntimeOptions
from sparsecut.targets.tuning import TargetLayerTimer
from tests.passes.graphs import GraphBuilder


@pytest.fixture
def small_model(tmp_path):
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(16, 4, 3, 3), np.zeros(16), pad=1)])
    h = g.op("Relu", [g.conv(h, g.weight(16, 16, 3, 3), np.zeros(16), pad=1)])
    flat = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    y = g.op("Gemm", [flat, g.const(g.weight(5, 16)), g.const(np.zeros(5))], transB=1)
    path = tmp_path / "small.onnx"
    onnx.save(g.model(y), path)
    return path


def test_per_layer_join_covers_every_node_and_all_macs(small_model):
    target = get_target("onnxruntime")
    report = target.profile(
        target.load(small_model),
        ProfileOptions(iterations=5, warmup=1, backends=(OnnxRuntimeOptions(optimization="disable"),)),
    )
    graph = ir.load(small_model)
    names = [layer.name for layer in report.layers]
    assert sorted(names) == sorted(n.name for n in graph.graph)  # every node once, nothing invented
    assert sum(layer.macs for layer in report.layers) == count_costs(graph).macs
    assert abs(sum(layer.time_pct for layer in report.layers) - 100) < 1e-6
    assert report.p50_ms >= report.min_ms > 0 and report.p99_ms <= report.max_ms
    assert report.environment["onnxruntime"] and report.device


def test_fused_kernels_still_account_for_all_macs(small_model):
    target = get_target("onnxruntime")
    report = target.profile(target.load(small_model), ProfileOptions(iterations=5, warmup=1))  # fusions on
    assert sum(layer.macs for layer in report.layers) == count_costs(ir.load(small_model)).macs


def test_a_trace_is_split_by_run_and_a_kernel_run_twice_counts_twice():
    from sparsecut.targets.onnxruntime import _kernel_times_per_run

    def kernel(name, ts, dur, op="Conv"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    trace = [
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 50},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
        kernel("a", 110, 10), kernel("b", 125, 20, "Relu"), kernel("a", 140, 5),  # a loop body: a twice in a run
        {"cat": "Node", "name": "a_fence_before", "ts": 205, "dur": 1},
        kernel("a", 205, 12), kernel("b", 220, 18, "Relu"),
        kernel("c", 300, 99),  # after every run: no run's
    ]  # fmt: skip
    per_run, ops = _kernel_times_per_run(trace)
    assert per_run == [{"a": 0.015, "b": 0.02}, {"a": 0.012, "b": 0.018}]
    assert ops == {"a": "Conv", "b": "Relu"}


@pytest.mark.parametrize("together", [True, False])
def test_profiles_in_rounds_name_what_one_profile_names(small_model, tmp_path, monkeypatch, together):
    import sparsecut.targets.onnxruntime as ort_target

    if not together:  # files beyond the size held open together: each round opens sessions of its own
        monkeypatch.setattr(ort_target, "TOGETHER_BYTES", 0)
    other = tmp_path / "other.onnx"
    other.write_bytes(small_model.read_bytes())
    target = get_target("onnxruntime")
    artifacts = [target.load(small_model), target.load(other)]
    options = ProfileOptions(iterations=5, warmup=1)
    calls = []
    rounds = target.layer_time_rounds(artifacts, options, 3, lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]
    one = sorted(row.name for row in target.layer_times(artifacts[0], options))
    assert len(rounds) == 2 and all(len(per_artifact) == 3 for per_artifact in rounds)
    macs = count_costs(ir.load(small_model)).macs
    for rows in (r for per_artifact in rounds for r in per_artifact):
        assert sorted(row.name for row in rows) == one
        assert sum(row.macs for row in rows) == macs and sum(row.ms for row in rows) > 0


@pytest.mark.parametrize("together", [True, False])
def test_a_layout_reorder_names_the_source_tensor_it_sits_on(small_model, monkeypatch, together):
    """From the graph the profiled session ran: onnxruntime names its reorders anew in each session."""
    import sparsecut.targets.onnxruntime as ort_target
    from sparsecut.cpu import cpu_vector_extensions

    if "avx2" not in cpu_vector_extensions().split(","):
        pytest.skip("onnxruntime's NCHWc layout (and its reorders) is for x86 with AVX2 or AVX-512")
    if not together:
        monkeypatch.setattr(ort_target, "TOGETHER_BYTES", 0)
    target = get_target("onnxruntime")
    artifacts = [target.load(small_model)] * 2
    rows = [
        row for per in target.layer_time_rounds(artifacts, ProfileOptions(iterations=5), 2) for r in per for row in r
    ]
    source = {v for n in onnx.load(str(small_model)).graph.node for v in (*n.input, *n.output)}
    reorders = [row for row in rows if row.op_type.startswith("Reorder")]
    assert reorders and all(row.tensors and set(row.tensors) <= source for row in reorders)
    assert all(row.tensors == [] for row in rows if row.nodes)  # a node's kernel is keyed by its node


def test_timed_sessions_spin_during_a_run_and_stop_when_it_returns(small_model):
    """Workers that never spin wake for every operator (27 % above one session alone on an int8 ResNet-18);
    workers left spinning after a run take a core from the session timed next: they spin during a run only.
    Reports say so, and a latency table measured otherwise is not reused (its key names it)."""
    target = get_target("onnxruntime")
    options = ProfileOptions()
    with target.runner(target.load(small_model), options) as run_once:
        config = run_once.func.__self__.get_session_options().get_session_config_entry
        assert config("session.force_spinning_stop") == "1"
        with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's default, spinning
            config("session.intra_op.allow_spinning")
    assert (
        target.profile(target.load(small_model), ProfileOptions(iterations=3, warmup=1)).environment["spinning"]
        == "during runs"
    )
    assert TargetLayerTimer(target, options).context()["spinning"] == "during runs"
    assert "spinning" not in TargetLayerTimer(get_target("openvino"), options).context()


def test_build_writes_an_optimized_model_that_computes_the_same(tmp_path, small_model):
    target = get_target("onnxruntime")
    artifact, report = target.build(small_model, tmp_path / "small.ort.onnx", BuildOptions())
    assert artifact.path.exists() and report.artifact == str(artifact.path)
    x = {"x": np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(
        target.run(artifact, x)[0], target.run(target.load(small_model), x)[0], rtol=1e-5, atol=1e-5
    )


def test_surgery_is_applied_checked_and_saved(tmp_path, small_model):
    _, report = get_target("onnxruntime").build(
        small_model, tmp_path / "s.ort.onnx", BuildOptions(surgery="tests.targets.surgeries:relu_to_leaky")
    )
    edited = onnx.load(str(tmp_path / "s.ort.surgery.onnx"))
    assert [n.op_type for n in edited.graph.node].count("LeakyRelu") == 2
    assert "surgery tests.targets.surgeries:relu_to_leaky applied" in report.notes[0]
    with pytest.raises(TargetError, match=r"returned str, not a gs\.Graph"):
        get_target("onnxruntime").build(
            small_model, tmp_path / "t.ort.onnx", BuildOptions(surgery="tests.targets.surgeries:broken")
        )


def test_profile_cli_json_round_trip(tmp_path, small_model, capsys):
    out = tmp_path / "latency.json"
    assert main(["profile", str(small_model), "--iterations", "5", "--warmup", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert LatencyReport.from_dict(data).to_dict() == data
    printed = capsys.readouterr().out
    assert "per layer" in printed
    for layer in data["layers"]:  # a reorder of onnxruntime's own, by the tensor it sits on (where NCHWc runs)
        if layer["tensors"]:
            assert f"{layer['name']} (on {layer['tensors'][0]})" in printed


def _no_inputs(path):
    const = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "0"], "--batch: Input should be greater than or equal to 1"),
        (["--provider", "cuda"], "has no CUDAExecutionProvider"),
        (["--target", "nope"], "--target: 'nope' is not one of onnxruntime, openvino, tensorrt"),
    ],
)
def test_profile_bad_options(small_model, capsys, argv, message):
    assert main(["profile", str(small_model), "--iterations", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_model_with_no_inputs(tmp_path, capsys):
    _no_inputs(tmp_path / "empty.onnx")
    assert main(["profile", str(tmp_path / "empty.onnx")]) == 2
    assert "the model has no inputs" in capsys.readouterr().err


def test_missing_model(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx: no such file" in capsys.readouterr().err


def test_build_int8_quantizes_the_graph_first(tmp_path, small_model, capsys):
    out = tmp_path / "small.ort.onnx"
    assert (
        main(["build", str(small_model), "-o", str(out), "--precision", "int8", "--json", str(tmp_path / "b.json")])
        == 0
    )
    assert "converted to int8 first" in capsys.readouterr().out
    quantized = onnx.load(str(tmp_path / "small.ort.int8.onnx"))  # named after the artifact (side_file)
    assert "DequantizeLinear" in {n.op_type for n in quantized.graph.node}
    assert out.exists() and json.loads((tmp_path / "b.json").read_text())["precision"] == "int8"


def test_onnxruntime_build_refuses_a_precision_the_graph_lacks(tmp_path, small_model):
    with pytest.raises(
        TargetError, match="the graph is fp32, not fp16; onnxruntime runs the precision the graph carries"
    ):
        get_target("onnxruntime").build(small_model, tmp_path / "x.ort.onnx", BuildOptions(precision=Precision("fp16")))


def test_build_removes_dead_channels_left_in_the_graph_with_measured_counts(tmp_path, capsys):
    """build targets a device: a graph that still has dead channels is made lean first (counts measured there),
    saved beside the artifact and built; `--no-measure` builds the file as given."""
    import onnx
    import onnx_ir as ir

    from tests.passes.graphs import GraphBuilder

    g = GraphBuilder()
    hidden = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=tuple(range(8))))])
    onnx.save(g.model(g.conv(hidden, g.weight(2, 16, 1, 1))), tmp_path / "masked.onnx")
    out = tmp_path / "m.ort.onnx"
    assert main(["build", str(tmp_path / "masked.onnx"), "-o", str(out), "--json", str(tmp_path / "b.json")]) == 0
    lean = tmp_path / "m.ort.lean.onnx"
    first = next(n for n in ir.load(lean).graph if n.op_type == "Conv")
    # 8 live channels; how many stay is what measured fastest here (keeping all 16 can win on so small a layer, and
    # on a busy machine 12 can: any candidate count is right, nothing else is)
    from sparsecut.passes.channel_counts import candidate_counts

    assert first.inputs[1].const_value.shape[0] in candidate_counts(8, 16)
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["source"] == str(lean)
    assert "dead channels removed first, counts measured on the target" in report["notes"][0]
    plain = tmp_path / "plain.ort.onnx"
    assert main(["build", str(tmp_path / "masked.onnx"), "-o", str(plain), "--no-measure"]) == 0
    assert not (tmp_path / "plain.ort.lean.onnx").exists()


def test_build_keeps_the_dead_channels_optimize_kept(tmp_path):
    """A graph `optimize` wrote still has the dead channels it kept for the kernels (its alignment or measured
    counts): build builds it as given and says so, rather than tune the counts again."""
    import onnx

    from sparsecut.passes import OptimizeOptions, optimize_model
    from tests.passes.graphs import GraphBuilder

    g = GraphBuilder()
    hidden = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=tuple(range(8))))])
    onnx.save(g.model(g.conv(hidden, g.weight(2, 16, 1, 1))), tmp_path / "masked.onnx")
    lean = tmp_path / "lean.onnx"
    optimize_model(tmp_path / "masked.onnx", lean, OptimizeOptions(align=16))  # 8 live: 16 kept, 8 of them dead
    before = lean.read_bytes()
    out = tmp_path / "lean.ort.onnx"
    assert main(["build", str(lean), "-o", str(out), "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["source"] == str(lean) and lean.read_bytes() == before
    assert report["notes"][0] == (
        "the dead channels left are the ones `optimize` kept for the kernels (--align 16): built as given "
        "(`optimize --target` from the masked model decides them on a target)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "lean.onnx", "lean.ort.onnx", "masked.onnx"]
