"""`sparsecut run`: one folder with every artifact and one report, three variants timed like for like."""

from __future__ import annotations

import json

import pytest

from sparsecut.cli import main
from sparsecut.precision import Precision
from sparsecut.report import RunReport
from sparsecut.targets import get_target
from sparsecut.targets.noise import speedup
from sparsecut.workflow import run_files


def test_run_end_to_end(tmp_path, checkpoint_factory, capsys):
    out = tmp_path / "run"
    code = main(
        ["run", str(checkpoint_factory("resnet-tiny")), "--arch", "resnet-tiny", "-o", str(out), "--iterations", "30",
         "--rounds", "3"]
    )  # fmt: skip
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "exported.onnx",
        "baseline.onnx",
        "lean.onnx",
        "exported.ort.onnx",
        "baseline.ort.onnx",
        "lean.ort.onnx",
        "report.json",
        "report.md",
        "compare.png",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging left beside it
    assert_standard_files_pass_the_checker(out)
    data = json.loads((out / "report.json").read_text())
    report = RunReport.from_dict(data)
    assert report.to_dict() == data
    exported, baseline, lean = report.compare.variants
    assert [v.label for v in report.compare.variants] == ["exported", "baseline", "lean"]
    assert report.compare.baseline == 1
    # the baseline is the same dense model: the exported file's MACs, every pass but channel removal
    assert baseline.macs == exported.macs and lean.macs < baseline.macs
    assert "remove-dead-channels" not in [p.name for p in report.baseline.passes]
    # the pruning speedup is baseline p50 / lean p50 as reported, with the interval of its rounds
    assert report.pruning.value == pytest.approx(baseline.latency.p50_ms / lean.latency.p50_ms)
    again = speedup(baseline.rounds_ms, lean.rounds_ms)  # the same rounds, in ms instead of ns
    assert (report.pruning.low, report.pruning.high) == (pytest.approx(again.low), pytest.approx(again.high))
    assert report.total.value == pytest.approx(exported.latency.p50_ms / lean.latency.p50_ms)
    assert report.cleanup.value == pytest.approx(exported.latency.p50_ms / baseline.latency.p50_ms)
    # every path in the report is where the file is now, not where it was staged
    assert lean.model == str(out / "lean.onnx") and report.compare.plot == str(out / "compare.png")
    markdown = (out / "report.md").read_text()
    assert "**pruning speedup** (dense baseline / lean, channel removal alone)" in markdown
    assert "| lean (lean.onnx) |" in markdown
    printed = capsys.readouterr().out
    assert "pruning speedup (dense baseline / lean, channel removal alone): " in printed


def test_side_files_are_named_after_the_artifact_and_never_an_input(tmp_path):
    from sparsecut.workflow import side_file

    assert side_file(tmp_path / "r.ort.onnx", "lean").name == "r.ort.lean.onnx"
    assert side_file(tmp_path / "r.plan", "fp16").name == "r.fp16.onnx"
    # an input that the rule would name: the side file steps aside
    assert side_file(tmp_path / "x.ort.onnx", "lean", [tmp_path / "x.ort.lean.onnx"]).name == "x.ort.lean-2.onnx"


@pytest.mark.parametrize(
    ("source", "output", "side"), [("r.lean.onnx", "r.ort.onnx", None), ("r.onnx", "r.ort.onnx", "r.ort.lean.onnx")]
)
def test_a_measured_build_of_a_lean_graph_writes_beside_it_and_leaves_it_alone(
    tmp_path, checkpoint_factory, source, output, side
):
    """`sparsecut build resnet50.lean.onnx -o r.ort.onnx`, measured by default, planned its lean side file as the
    input and refused. A lean input has nothing left to remove (no side file); an exported one gets its lean
    graph saved beside the artifact."""
    from sparsecut.exporter import export_checkpoint
    from sparsecut.passes import optimize_model

    exported = tmp_path / "r.onnx"
    export_checkpoint(checkpoint_factory("resnet-tiny"), exported, arch="resnet-tiny")
    if source != "r.onnx":
        optimize_model(exported, tmp_path / source)
        exported.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    code = main(["build", str(tmp_path / source), "-o", str(tmp_path / output), "--tune-budget", "5"])
    assert code == 0
    after = {p.name for p in tmp_path.iterdir()}
    assert after == set(before) | {output} | ({side} if side else set())
    assert (tmp_path / source).stat().st_mtime_ns == before[source]


def test_run_at_int8_times_pruning_by_precision(tmp_path, checkpoint_factory):
    """--precision int8: baseline and lean are also written and timed in fp32 with the same channels, so pruning
    at int8, pruning at fp32 and the int8 speedup come from one interleaved run."""
    import numpy as np
    import onnx

    out = tmp_path / "run"
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((10, 3, 32, 32)).astype(np.float32))
    argv = ["run", str(checkpoint_factory("resnet-tiny")), "--arch", "resnet-tiny", "-o", str(out), "--iterations",
            "30", "--rounds", "3", "--precision", "int8", "--no-measure", "--calibration", str(data)]  # fmt: skip
    assert main(argv) == 0
    report = RunReport.from_dict(json.loads((out / "report.json").read_text()))
    assert report.optimize.precision.calibration == f"{data} (8 samples, 2 held out)"  # run calibrates as asked
    labels = [v.label for v in report.compare.variants]
    assert labels == ["exported", "baseline", "lean", "baseline-fp32", "lean-fp32"]
    v = {variant.label: variant for variant in report.compare.variants}
    assert v["lean"].macs == v["lean-fp32"].macs < v["baseline-fp32"].macs == v["baseline"].macs
    assert report.quantization is not None and report.pruning_fp32 is not None
    assert report.quantization.value == pytest.approx(v["lean-fp32"].latency.p50_ms / v["lean"].latency.p50_ms)
    assert report.pruning_fp32.value == pytest.approx(v["baseline-fp32"].latency.p50_ms / v["lean-fp32"].latency.p50_ms)
    ops = {name: {n.op_type for n in onnx.load(str(out / f"{name}.onnx")).graph.node} for name in labels}
    assert "QuantizeLinear" in ops["lean"] and "QuantizeLinear" in ops["baseline"]
    assert "QuantizeLinear" not in ops["lean-fp32"] | ops["baseline-fp32"]
    markdown = (out / "report.md").read_text()
    assert "- int8 speedup (lean fp32 / lean int8, same channels): " in markdown
    assert "- **pruning speedup** at int8 (dense baseline / lean" in markdown
    assert (
        "## int8 accuracy (lean vs its fp32 twin)" in markdown and "![pruning × precision](precision.png)" in markdown
    )
    lean = report.optimize.precision
    worst = lean.layers[0] if lean is not None else None  # the layer that lost most, named as the table names it
    assert (
        worst is not None
        and worst.op in ("Conv", "Gemm")
        and f"| {worst.node} | {worst.module} | {worst.op} |" in markdown
    )
    assert (out / "precision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # where pruning's time went, per precision: the layers it shrank (their MACs fell) and the rest
    assert list(report.layers) == ["int8", "fp32"]
    shrunk_macs = {n for n, v in _mac_ratios(out / "baseline-fp32.onnx", out / "lean-fp32.onnx").items() if v < 1}
    for kind, layers in report.layers.items():
        assert {d.node for d in layers.layers if d.macs_after < d.macs_before} == shrunk_macs
        assert layers.shrunk == len(shrunk_macs) > 0  # (their times: a benchmark's to judge, not a test's)
        assert layers.shrunk_after_ms == pytest.approx(sum(d.ms_after for d in layers.layers if d.node in shrunk_macs))
        rest = layers.layers_after_ms - layers.shrunk_after_ms
        assert layers.ceiling == pytest.approx(layers.layers_before_ms / rest)
        assert f"- where pruning's time went at {kind} (per-layer profile, dense baseline → lean): the " in markdown
    assert {p.name for p in out.iterdir()} <= set(run_files([get_target("onnxruntime")], Precision("int8")))
    assert_standard_files_pass_the_checker(out)


def test_a_measured_run_at_int8_uses_the_format_measured_fastest_for_baseline_and_lean(
    tmp_path, checkpoint_factory, monkeypatch
):
    """With measured counts, `run --precision int8` asks the target which of its formats runs the lean graph
    fastest (passes/measured.py) and builds the dense baseline and lean in it: the pruning speedup is one
    format's."""
    import numpy as np

    import sparsecut.workflow as workflow

    asked = []

    def fastest(source, output, options, tuning):
        asked.append((options.precision.wanted, tuning.int8_formats))
        return "s8s8"  # not the target's first on this CPU

    monkeypatch.setattr(workflow, "fastest_int8_format", fastest)
    out = tmp_path / "run"
    argv = ["run", str(checkpoint_factory("resnet-tiny")), "--arch", "resnet-tiny", "-o", str(out), "--iterations",
            "10", "--rounds", "3", "--precision", "int8", "--tune-budget", "2"]  # fmt: skip
    assert main(argv) == 0
    assert (
        len(asked) == 1
        and str(asked[0][0]) == "int8"
        and asked[0][1] == get_target("onnxruntime").int8_formats(workflow.BuildOptions())
    )
    for name in ("baseline", "lean"):  # activations quantized to int8 (u8s8 would have them uint8)
        assert _activation_types(out / f"{name}.onnx") == {np.dtype(np.int8)}
    assert RunReport.from_dict(json.loads((out / "report.json").read_text())).optimize.precision.format == "s8s8"


@pytest.mark.parametrize(("argv", "measured"), [([], True), (["--no-measure"], False)])
def test_a_build_at_int8_converts_in_the_format_measured_fastest(tmp_path, monkeypatch, argv, measured):
    """`build --precision int8` without a format: measured (the default), the graph is quantized in the target's
    format that runs it fastest there; `--no-measure`, in the one it names first."""
    import numpy as np

    import sparsecut.workflow as workflow
    from sparsecut.passes import optimize_model
    from tests.passes.test_int8_formats import residual

    asked = []
    monkeypatch.setattr(workflow, "fastest_int8_format", lambda *args: asked.append(args) or "s8s8")
    lean = tmp_path / "lean.onnx"
    optimize_model(residual(tmp_path / "in.onnx"), lean)
    out = tmp_path / "lean.ort.onnx"
    assert main(["build", str(lean), "-o", str(out), "--precision", "int8", *argv]) == 0
    assert len(asked) == int(measured)
    first = get_target("onnxruntime").int8_formats(workflow.BuildOptions())[0]
    activations = {"s8s8": np.dtype(np.int8), "u8s8": np.dtype(np.uint8)}
    assert _activation_types(tmp_path / "lean.ort.int8.onnx") == {activations["s8s8" if measured else first]}


def test_run_takes_an_int8_format(tmp_path, checkpoint_factory):
    import numpy as np

    out = tmp_path / "run"
    argv = ["run", str(checkpoint_factory("resnet-tiny")), "--arch", "resnet-tiny", "-o", str(out), "--iterations",
            "10", "--rounds", "3", "--precision", "int8", "--int8-format", "s8s8", "--no-measure"]  # fmt: skip
    assert main(argv) == 0
    assert _activation_types(out / "baseline.onnx") == _activation_types(out / "lean.onnx") == {np.dtype(np.int8)}


def _activation_types(path):
    """The types activations are quantized to (QuantizeLinear of a value that is not a weight)."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def assert_standard_files_pass_the_checker(folder):
    """Every ONNX file written whose ops are all standard passes the ONNX checker (onnxruntime's optimized
    `.ort.onnx` may hold its own fused ops, which the checker does not know)."""
    import onnx

    checked = 0
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path))
        if all(node.domain in ("", "ai.onnx") for node in model.graph.node):
            onnx.checker.check_model(model, full_check=True)
            checked += 1
    assert checked >= 3, f"only {checked} files checked in {folder}"


def _mac_ratios(before, after) -> dict[str, float]:
    """Per weighted node of both graphs: its MACs after / before."""
    from sparsecut.cost import count_costs
    from sparsecut.modelfile import load_model

    macs = [{layer.node: layer.macs for layer in count_costs(load_model(path)).layers} for path in (before, after)]
    return {node: macs[1][node] / m for node, m in macs[0].items() if m and node in macs[1]}
