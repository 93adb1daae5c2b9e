"""The OpenVINO target, run for real (OpenVINO installs and runs on these CPUs): build → IR → run → profile, its
outputs against onnxruntime's on the same file, per-layer names mapped back to the ONNX nodes, backends side by
side, the per-layer view before → after, and its bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sparsecut.cli import main
from sparsecut.cost import count_costs
from sparsecut.errors import TargetError
from sparsecut.exporter import export_checkpoint
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.report import CompareReport, LatencyReport, LayerDiffReport, LayerTime
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models, get_target
from sparsecut.targets.layer_diff import diff_layers
from tests.passes.graphs import GraphBuilder

pytest.importorskip("openvino", reason="OpenVINO is in the dev extra; installed without it, its target is untested")


@pytest.fixture(scope="module")
def dense_and_lean(tmp_path_factory, checkpoint_factory):
    """A reference net pruned and exported by dynamo (module names in its metadata), its dense baseline (every
    pass but channel removal) and lean."""
    folder = tmp_path_factory.mktemp("openvino")
    export_checkpoint(checkpoint_factory("resnet-tiny"), folder / "exported.onnx", arch="resnet-tiny")
    optimize_model(
        folder / "exported.onnx",
        folder / "dense.onnx",
        OptimizeOptions(passes=("fold-constants", "fold-batchnorm", "cleanup")),
    )
    optimize_model(folder / "exported.onnx", folder / "lean.onnx")
    return folder / "dense.onnx", folder / "lean.onnx"


def _chain(path, channels: int, cut: int = 0, size: int = 56) -> None:
    """Four 3×3 convs of `channels`; the third loses `cut` output channels (the fourth the same inputs)."""
    g = GraphBuilder(shape=(3, size, size), seed=1)
    h, widths = "x", [3, channels, channels, channels - cut, channels]
    for i in range(4):
        w = g.weight(widths[i + 1], widths[i], 3, 3) * 0.1
        h = g.op("Relu", [g.conv(h, w, np.zeros(widths[i + 1], np.float32), pad=1)])
    onnx.save(g.model(h), path)


# ------------------------------------------------------------------------------------------ build, run, profile
def test_build_writes_ir_that_computes_what_onnxruntime_computes(tmp_path, dense_and_lean):
    _, lean = dense_and_lean
    target = get_target("openvino")
    artifact, report = target.build(lean, tmp_path / "lean.ov.xml", BuildOptions())
    assert artifact.path == tmp_path / "lean.ov.xml" and (tmp_path / "lean.ov.bin").stat().st_size > 0
    assert report.environment["config.INFERENCE_PRECISION_HINT"] == "f32"  # fp32 asked for, never bf16 silently
    assert report.environment["openvino"] == target.backend_version()
    x = {"input": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    ort = get_target("onnxruntime")
    expected = ort.run(ort.load(lean), x)[0]
    for runnable in (target.load(lean), target.load(artifact.path)):  # the ONNX file as it is, and the IR
        np.testing.assert_allclose(target.run(runnable, x)[0], expected, rtol=1e-4, atol=1e-4)


def test_build_applies_the_surgery(tmp_path, dense_and_lean):
    """`build --target openvino --surgery` once ignored the surgery silently: the IR computes the edited graph."""
    _, lean = dense_and_lean
    target = get_target("openvino")
    spec = "tests.targets.surgeries:relu_to_half_leaky"
    artifact, report = target.build(lean, tmp_path / "lean.ov.xml", BuildOptions(surgery=spec))
    edited = tmp_path / "lean.ov.surgery.onnx"
    assert f"surgery {spec} applied; edited graph saved as {edited.name}" in report.notes
    assert "LeakyRelu" in {n.op_type for n in onnx.load(str(edited)).graph.node}
    x = {"input": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    ort = get_target("onnxruntime")
    computed = target.run(target.load(artifact.path), x)[0]
    np.testing.assert_allclose(computed, ort.run(ort.load(edited), x)[0], rtol=1e-4, atol=1e-4)
    assert np.abs(computed - ort.run(ort.load(lean), x)[0]).max() > 1e-2  # not the unedited graph
    assert target.load(artifact.path).source == edited  # the IR names the graph it was built from


def test_build_cli_plans_the_surgery_graph_beside_the_ir(tmp_path, dense_and_lean):
    _, lean = dense_and_lean
    out = tmp_path / "l.ov.xml"
    spec = "tests.targets.surgeries:relu_to_half_leaky"
    assert main(["build", str(lean), "-o", str(out), "--target", "openvino", "--surgery", spec, "--no-measure"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.ov.bin", "l.ov.surgery.onnx", "l.ov.xml"]


def test_loading_the_ir_finds_the_onnx_it_came_from(tmp_path, dense_and_lean):
    _, lean = dense_and_lean
    target = get_target("openvino")
    artifact, _ = target.build(lean, tmp_path / "lean.ov.xml", BuildOptions())
    assert target.load(artifact.path).source == artifact.path  # the ONNX file is not beside the IR
    beside = tmp_path / lean.name
    beside.write_bytes(lean.read_bytes())
    artifact, _ = target.build(beside, tmp_path / "lean.ov.xml", BuildOptions())
    assert target.load(artifact.path).source == beside  # MACs and names for its per-layer view
    assert str(tmp_path) not in (tmp_path / "lean.ov.xml").read_text()  # no path of the building machine
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(lean.read_bytes())
    built, _ = target.build(copy, tmp_path / "c.ov.xml", BuildOptions())
    copy.write_bytes(copy.read_bytes() + b"\0")  # changed since the build: no longer its source
    assert target.load(built.path).source == built.path


def test_per_layer_names_map_to_onnx_nodes_and_add_up(tmp_path):
    _chain(tmp_path / "chain.onnx", 64)  # ~8 ms: the gaps between kernels, which no counter sees, stay small
    target = get_target("openvino")
    report = target.profile(target.load(tmp_path / "chain.onnx"), ProfileOptions(iterations=60, warmup=5))
    graph = ir.load(tmp_path / "chain.onnx")
    names = {node.name for node in graph.graph}
    convs = [layer for layer in report.layers if layer.macs]
    assert convs and all(set(layer.nodes) <= names for layer in report.layers)
    assert sorted(layer.nodes[0] for layer in convs) == sorted(n.name for n in graph.graph if n.op_type == "Conv")
    assert all(layer.nodes[1].startswith("Relu_") for layer in convs)  # fused: the kernel names both nodes
    assert sum(layer.macs for layer in report.layers) == count_costs(graph).macs
    total = sum(layer.ms for layer in report.layers)
    assert abs(total - report.p50_ms) <= 0.15 * report.p50_ms, (total, report.p50_ms)
    assert "brgconv" in convs[0].op_type or "jit" in convs[0].op_type or "gemm" in convs[0].op_type


def test_counters_that_miss_the_p50_are_taken_again_then_said_unreliable(tmp_path, monkeypatch, caplog):
    """A busy machine: the counters of a profile add up to 30 % more than its p50 — profiled again; three such
    profiles in a row and the report says its per-layer times are unreliable."""
    from sparsecut.targets import openvino
    from sparsecut.targets.timing import summarize

    _chain(tmp_path / "chain.onnx", 8)
    target = get_target("openvino")
    artifact = target.load(tmp_path / "chain.onnx")
    real = openvino.OpenVinoTarget._counted
    sums = []

    def counted(self, artifact, options, busy):
        stats, counters = real(self, artifact, options)
        if busy.pop(0):  # the counters of every run, as a busy machine leaves them
            counters.runs = [{node: 1.3 * ms for node, ms in run.items()} for run in counters.runs]
            stats = summarize([int(1e6 * sum(run.values()) / 1.3) for run in counters.runs], options.batch)
        else:
            stats = summarize([int(1e6 * sum(run.values())) for run in counters.runs], options.batch)
        sums.append(sum(counters.typical().values()) / stats.p50_ms)
        return stats, counters

    options = ProfileOptions(iterations=10, warmup=2)
    busy_once = [True, False]
    monkeypatch.setattr(openvino.OpenVinoTarget, "_counted", lambda self, a, o: counted(self, a, o, busy_once))
    report = target.profile(artifact, options)
    assert len(sums) == 2 and report.environment["perf_counters"] == "on"
    busy = [True, True, True]
    monkeypatch.setattr(openvino.OpenVinoTarget, "_counted", lambda self, a, o: counted(self, a, o, busy))
    with caplog.at_level("WARNING", logger="sparsecut.targets.openvino"):
        report = target.profile(artifact, options)
    assert len(sums) == 5 and not busy
    assert report.environment["perf_counters"].endswith("the machine was busy, the per-layer times are unreliable")
    assert "per-layer counters: they add up to" in caplog.text


def test_layers_are_named_as_the_user_knows_them(dense_and_lean):
    dense, _ = dense_and_lean
    for name in ("openvino", "onnxruntime"):
        target = get_target(name)
        report = target.profile(target.load(dense), ProfileOptions(iterations=5, warmup=1))
        modules = {layer.module for layer in report.layers if layer.macs}
        assert "blocks.0.conv1" in modules and "stem.0" in modules, (name, modules)


def test_profile_cli_json_round_trip(tmp_path, dense_and_lean, capsys):
    _, lean = dense_and_lean
    out = tmp_path / "p.json"
    argv = ["profile", str(lean), "--target", "openvino", "--iterations", "5", "--warmup", "1", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert LatencyReport.from_dict(data).to_dict() == data and data["target"] == "openvino"
    assert "per layer" in capsys.readouterr().out


def test_build_cli_writes_xml_and_bin_together(tmp_path, dense_and_lean):
    _, lean = dense_and_lean
    out = tmp_path / "m.ov.xml"
    assert main(["build", str(lean), "-o", str(out), "--target", "openvino", "--no-measure"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ov.bin", "m.ov.xml"]


def test_measured_decisions_on_openvino(tmp_path, dense_and_lean, capsys):
    exported = dense_and_lean[0].with_name("exported.onnx")
    out = tmp_path / "m.onnx"
    argv = ["optimize", str(exported), "-o", str(out), "--target", "openvino", "--tune-budget", "3", "--json",
            str(tmp_path / "o.json")]  # fmt: skip
    assert main(argv) == 0
    decision = json.loads((tmp_path / "o.json").read_text())["decision"]
    assert decision["target"] == "openvino" and decision["context"]["backend"] == "openvino"
    assert decision["context"]["version"] == get_target("openvino").backend_version()


# ------------------------------------------------------------------------------------------ side by side
def test_compare_on_two_backends_has_a_row_per_variant_and_backend(tmp_path, dense_and_lean, capsys):
    dense, lean = dense_and_lean
    report = compare_models(
        [dense, lean], target="onnxruntime,openvino", options=ProfileOptions(iterations=12, warmup=1), rounds=3
    )
    assert [(v.target, v.model) for v in report.variants] == [
        ("onnxruntime", str(dense)), ("onnxruntime", str(lean)), ("openvino", str(dense)), ("openvino", str(lean)),
    ]  # fmt: skip
    ort_lean, ov_lean = report.variants[1], report.variants[3]
    assert ov_lean.speedup.value == pytest.approx(report.variants[2].latency.p50_ms / ov_lean.latency.p50_ms)
    assert ov_lean.backend_speedup is not None
    assert ov_lean.backend_speedup.value == pytest.approx(ort_lean.latency.p50_ms / ov_lean.latency.p50_ms)
    assert report.targets == ["onnxruntime", "openvino"]
    out = tmp_path / "c.json"
    argv = ["compare", str(dense), str(lean), "--target", "onnxruntime,openvino", "--rounds", "3", "--iterations",
            "9", "--json", str(out), "--plot", str(tmp_path / "c.png")]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "vs onnxruntime" in table and table.count("lean.onnx") == 2
    data = json.loads(out.read_text())
    assert CompareReport.from_dict(data).to_dict() == data and len(data["variants"]) == 4


def test_run_on_two_backends(tmp_path, checkpoint_factory, capsys):
    out = tmp_path / "run"
    argv = ["run", str(checkpoint_factory("resnet-tiny")), "--arch", "resnet-tiny", "-o", str(out), "--target",
            "onnxruntime,openvino", "--no-measure", "--rounds", "3", "--iterations", "9"]  # fmt: skip
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    for variant in ("exported", "baseline", "lean"):
        assert {f"{variant}.ort.onnx", f"{variant}.ov.xml", f"{variant}.ov.bin"} <= set(names)
    report = json.loads((out / "report.json").read_text())
    assert [v["target"] for v in report["compare"]["variants"]] == ["onnxruntime"] * 3 + ["openvino"] * 3
    assert "on openvino: **pruning speedup**" in (out / "report.md").read_text()


# ------------------------------------------------------------------------------------------ before → after
def test_before_after_flags_exactly_the_unaligned_layer(tmp_path, capsys):
    """A conv chain of 32 channels whose third conv keeps 31: the fourth conv reads 31 channels, which onnxruntime's
    NCHWc layout (blocks of 8 or 16) cannot take, and runs a slower kernel; its time rises while its MACs fall.
    (The third conv writes its 31 channels padded to the block: its time stays, as its MACs almost do.)"""
    _chain(tmp_path / "dense.onnx", 32)
    _chain(tmp_path / "lean.onnx", 32, cut=1)
    out = tmp_path / "d.json"
    argv = ["profile", str(tmp_path / "lean.onnx"), "--baseline", str(tmp_path / "dense.onnx"), "--threads", "1",
            "--iterations", "60", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = LayerDiffReport.from_dict(json.loads(out.read_text()))
    graph = ir.load(tmp_path / "lean.onnx")
    fourth = [n.name for n in graph.graph if n.op_type == "Conv"][3]
    flagged = {d.node: d.flags for d in report.layers if d.flags}
    assert list(flagged) == [fourth], report.layers
    assert any(f"input channels 32 → 31: not a multiple of the target's block of {report.block}" in f
               for f in flagged[fourth])  # fmt: skip
    assert report.paired == 4
    assert "why time fell less than MACs" in capsys.readouterr().out


def _layer(node: str, ms: float, macs: int, op: str = "Conv") -> LayerTime:
    return LayerTime(node, op, ms, 0.0, macs, 0.0, 0.0, [node])


def _latency(layers: list[LayerTime], p50: float) -> LatencyReport:
    return LatencyReport("m", "onnxruntime", "cpu", 1, "fp32", None, 0, 1, p50, p50, p50, p50, p50, p50, 1.0, {},
                         layers)  # fmt: skip


def test_before_after_reasons_on_known_profiles(tmp_path):
    """The reasons on fixed timings: a layer whose time fell with its MACs is not flagged; one that did not is,
    with what the graphs and profiles show (unaligned channels, a changed kernel, an added reorder)."""
    _chain(tmp_path / "dense.onnx", 32)
    _chain(tmp_path / "lean.onnx", 32, cut=3)
    convs = [n.name for n in ir.load(tmp_path / "dense.onnx").graph if n.op_type == "Conv"]
    before = _latency([_layer(c, 1.0, 100) for c in convs], 4.0)
    after = _latency([
        _layer(convs[0], 1.0, 100), _layer(convs[1], 1.0, 100), _layer(convs[2], 0.9, 90),
        _layer(convs[3], 1.3, 90, "FusedConv"), LayerTime(f"reorder_{convs[3]}", "Reorder", 0.1, 0, 0, 0, 0, []),
    ], 4.3)  # fmt: skip
    report = diff_layers(before, after, tmp_path / "dense.onnx", tmp_path / "lean.onnx", block=8)
    flags = {d.node: d.flags for d in report.layers}
    assert flags[convs[0]] == flags[convs[1]] == flags[convs[2]] == []
    assert flags[convs[3]][0] == "input channels 32 → 29: not a multiple of the target's block of 8"
    assert "kernel changed: Conv → FusedConv" in flags[convs[3]]
    assert any(f.startswith("a layout reorder added next to it (1 kernel(s), 0.100 ms)") for f in flags[convs[3]])
    assert report.layers_after_ms == pytest.approx(4.3)


def test_the_rest_bounds_what_pruning_can_give(tmp_path, capsys):
    """The layers pruning shrank (their MACs fell) and the rest, before → after; the bound is the baseline's
    per-layer sum over the rest's time after (Amdahl's law on the measured times)."""
    _chain(tmp_path / "dense.onnx", 32)
    _chain(tmp_path / "lean.onnx", 32, cut=8)
    convs = [n.name for n in ir.load(tmp_path / "dense.onnx").graph if n.op_type == "Conv"]
    pool = LayerTime("pool", "MaxPool", 0.5, 0, 0, 0, 0, [])
    before = _latency([*(_layer(c, 1.0, 100) for c in convs), pool], 4.5)
    after = _latency([_layer(convs[0], 1.0, 100), _layer(convs[1], 1.0, 100), _layer(convs[2], 0.7, 75),
                      _layer(convs[3], 0.8, 75), LayerTime("pool", "MaxPool", 0.4, 0, 0, 0, 0, [])], 3.9)  # fmt: skip
    report = diff_layers(before, after, tmp_path / "dense.onnx", tmp_path / "lean.onnx", block=8)
    assert (report.shrunk, report.shrunk_before_ms, report.shrunk_after_ms) == (2, 2.0, pytest.approx(1.5))
    assert report.ceiling == pytest.approx(4.5 / 2.4)  # the rest after: two untouched convs and the pool
    assert LayerDiffReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report

    from sparsecut.cli.render import render_layer_diff

    render_layer_diff(report, top=4)
    out = " ".join(capsys.readouterr().out.split())
    assert "the 2 layers pruning shrank: 2.000 → 1.500 ms (1.33×)" in out
    assert "2.500 → 2.400 ms, 62 % of the lean model's — were the shrunk layers free, at most 1.88× over the" in out


# ------------------------------------------------------------------------------------------ bad input
def test_without_openvino_the_target_says_how_to_install(tmp_path, dense_and_lean, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    _, lean = dense_and_lean
    assert main(["profile", str(lean), "--target", "openvino"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install openvino" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "TPU"], "--device: 'TPU' is not one of CPU, GPU, NPU, AUTO"),
        (["--hint", "fast"], "--hint: 'fast' is not one of latency, throughput"),
    ],
)
def test_bad_options(dense_and_lean, capsys, argv, message):
    assert main(["profile", str(dense_and_lean[1]), "--target", "openvino", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_a_device_the_machine_lacks(tmp_path, dense_and_lean, capsys):
    import openvino

    if "GPU" in openvino.Core().available_devices:
        pytest.skip("this machine has an OpenVINO GPU device")
    out = tmp_path / "m.ov.xml"
    assert main(["build", str(dense_and_lean[1]), "-o", str(out), "--target", "openvino", "--device", "GPU",
                 "--no-measure"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--device GPU: this machine has no such OpenVINO device" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_model_openvino_cannot_read_names_the_file_and_node(tmp_path, capsys):
    from onnx import TensorProto, helper

    node = helper.make_node("FooBar", ["x"], ["y"], name="weird")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "bad.onnx")
    out = tmp_path / "bad.ov.xml"
    assert main(["build", str(tmp_path / "bad.onnx"), "-o", str(out), "--target", "openvino", "--no-measure"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'bad.onnx'}: OpenVINO cannot read it") and "node weird (FooBar)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_ir_with_missing_or_truncated_weights(tmp_path, dense_and_lean, capsys):
    artifact, _ = get_target("openvino").build(dense_and_lean[1], tmp_path / "m.ov.xml", BuildOptions())
    weights = tmp_path / "m.ov.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["profile", str(artifact.path), "--target", "openvino"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {artifact.path}: OpenVINO cannot read it (Incorrect weights in bin file!)"
    )
    weights.unlink()
    assert main(["profile", str(artifact.path), "--target", "openvino"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {artifact.path}: its weights file m.ov.bin is missing"


def test_output_must_be_xml(tmp_path, dense_and_lean):
    with pytest.raises(TargetError, match=r"OpenVINO IR is written as \.xml"):
        get_target("openvino").build(dense_and_lean[1], tmp_path / "m.plan", BuildOptions())


def test_baseline_sharing_no_layer_names(tmp_path, dense_and_lean, capsys):
    _chain(tmp_path / "other.onnx", 8, size=8)
    out = tmp_path / "d.json"
    argv = ["profile", str(dense_and_lean[1]), "--baseline", str(tmp_path / "other.onnx"), "--iterations", "3",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its layers share no names with those of" in err
    assert not out.exists()


def test_fp16_on_a_cpu_without_fast_fp16_is_refused(tmp_path, dense_and_lean, capsys):
    import openvino

    if "FP16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has fast fp16: OpenVINO's f16 hint is used")
    out = tmp_path / "m.ov.xml"
    argv = ["build", str(dense_and_lean[1]), "-o", str(out), "--target", "openvino", "--precision", "fp16",
            "--no-measure"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision fp16: CPU has no fast fp16" in err
    assert list(tmp_path.iterdir()) == []


def test_int8_build_quantizes_in_openvinos_format(tmp_path, dense_and_lean, capsys):
    out = tmp_path / "m.ov.xml"
    argv = ["build", str(dense_and_lean[1]), "-o", str(out), "--target", "openvino", "--precision", "int8",
            "--no-measure"]  # fmt: skip
    assert main(argv) == 0
    quantized = onnx.load(str(tmp_path / "m.ov.int8.onnx"))
    zero_points = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and get_target("openvino").precision(get_target("openvino").load(out)) == "int8"
    inits = {t.name: t for t in quantized.graph.initializer}
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.INT8 for n in zero_points if len(n.input) > 2)
