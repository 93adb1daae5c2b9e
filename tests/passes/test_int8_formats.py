"""int8 formats belong to the target: exact Q/DQ types and placement per format, the default named in the report,
and `optimize --target --precision int8` timing each format of the target against fp32 (on a fake timer)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsecut.cpu import cpu_vector_extensions
from sparsecut.errors import AccuracyError
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.drift import DriftBound
from sparsecut.passes.measured import Tuning, optimize_measured
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.precision import Precision
from sparsecut.quantization import FORMATS, cpu_int8_formats
from sparsecut.report import MeasuredVariant, Speedup
from tests.passes.graphs import GraphBuilder
from tests.passes.test_channel_counts import FakeTimer, dead_model


def residual(path: Path) -> Path:
    """conv → relu → conv (2:4 weight) + skip → relu → conv: a residual Add between convs."""
    g = GraphBuilder(shape=(8, 6, 6), seed=3)
    a = g.op("Relu", [g.conv("x", g.weight(8, 8, 3, 3), np.zeros(8), pad=1)])
    w = g.weight(8, 8, 1, 1)
    w.reshape(8, 2, 4)[:, :, :2] = 0.0  # 2:4 along the input channels
    b = g.conv(a, w, np.zeros(8))
    h = g.op("Relu", [g.op("Add", [b, a])])
    onnx.save(g.model(g.conv(h, g.weight(4, 8, 1, 1))), path)
    return path


def quantized(tmp_path: Path, fmt: str) -> onnx.ModelProto:
    out = tmp_path / f"{fmt}.onnx"
    report = optimize_model(
        residual(tmp_path / "in.onnx"),
        out,
        OptimizeOptions(precision=PrecisionRequest(Precision("int8").in_format(fmt))),
    )
    assert report.precision is not None and report.precision.format == fmt
    assert f"int8 format {FORMATS[fmt].describe()}" in report.precision.notes
    return onnx.load(str(out))


def _activation_zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {t.name for t in model.graph.initializer if t.dims and len(t.dims) == 4}
    return [inits[n.input[2]] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in weights and len(n.input) > 2]  # fmt: skip


@pytest.mark.parametrize(("fmt", "dtype"), [("u8s8", np.uint8), ("s8s8", np.int8), ("trt-s8", np.int8)])
def test_activation_types_and_zero_points(tmp_path, fmt, dtype):
    zero_points = _activation_zero_points(quantized(tmp_path, fmt))
    assert zero_points and all(z.dtype == dtype for z in zero_points)
    if dtype == np.int8:
        assert all(int(z) == 0 for z in zero_points)  # symmetric: zero stays zero


def test_reduce_range_uses_seven_bit_weights(tmp_path):
    full, reduced = quantized(tmp_path, "u8s8"), quantized(tmp_path, "u8s8-reduce-range")

    def widest(model: onnx.ModelProto) -> int:
        return max(int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
                   for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4)  # fmt: skip

    assert widest(full) == 127 and widest(reduced) <= 64


def test_tensorrt_placement_keeps_outputs_int8(tmp_path):
    """Every format quantizes the weighted layers' inputs and outputs (onnxruntime's QDQ units), so the residual
    Add reads int8 on both sides; trt-s8 also quantizes the Add's output, so the block's output stays int8 into the
    next conv — where TensorRT can pick (sparse) int8 kernels. The others leave the Add's output in fp32."""
    for fmt, expected in (("trt-s8", True), ("s8s8", False), ("u8s8", False)):
        model = quantized(tmp_path, fmt)
        producers = {out: n for n in model.graph.node for out in n.output}
        add = next(n for n in model.graph.node if n.op_type == "Add")
        assert all(producers[i].op_type == "DequantizeLinear" for i in add.input), fmt
        readers = [n.op_type for n in model.graph.node if add.output[0] in n.input]
        assert readers == (["QuantizeLinear"] if expected else ["Relu"]), (fmt, readers)


def test_with_a_zero_point_a_relu_after_a_layer_is_its_output_range(tmp_path):
    """u8s8: the ReLU after the first conv is gone — the conv's uint8 output starts at zero point 0, which is the
    ReLU — so onnxruntime runs no requantization between the convs; the ReLU after the residual Add (fp32 in this
    placement) stays. Symmetric formats cannot fold it (zero point 0 is mid-range): both stay."""
    models = {fmt: quantized(tmp_path, fmt) for fmt in ("u8s8", "s8s8", "trt-s8")}
    relus = {fmt: sum(n.op_type == "Relu" for n in m.graph.node) for fmt, m in models.items()}
    assert relus == {"u8s8": 1, "s8s8": 2, "trt-s8": 2}
    u8 = models["u8s8"]
    inits = {t.name: numpy_helper.to_array(t) for t in u8.graph.initializer}
    first = next(n for n in u8.graph.node if n.op_type == "Conv")
    q = next(n for n in u8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == first.output[0])
    assert int(inits[q.input[2]]) == 0


def test_two_four_survives_quantization(tmp_path):
    model = quantized(tmp_path, "trt-s8")
    labelled = [t for t in model.graph.initializer if t.doc_string == "SPARSE_2_4"]
    assert labelled and all(t.data_type == onnx.TensorProto.INT8 for t in labelled)
    w = numpy_helper.to_array(labelled[0])
    assert (w.reshape(w.shape[0], -1, 4)[:, :, :2] == 0).all()  # the zeros stayed zero


def test_default_is_this_cpus_format_for_onnxruntime(tmp_path):
    report = optimize_model(
        residual(tmp_path / "in.onnx"),
        tmp_path / "q.onnx",
        OptimizeOptions(precision=PrecisionRequest(Precision("int8"))),
    )
    assert report.precision is not None
    assert report.precision.format == cpu_int8_formats(cpu_vector_extensions())[0]


def test_formats_follow_the_cpu():
    assert cpu_int8_formats("avx512f,avx512_vnni,avx512bw,avx2,fma") == ("u8s8", "s8s8")
    assert cpu_int8_formats("avx_vnni,avx2,fma") == ("u8s8", "s8s8")
    assert cpu_int8_formats("avx2,fma") == ("u8s8-reduce-range", "u8s8", "s8s8")
    assert cpu_int8_formats("asimd") == ("s8s8", "u8s8")


def by_format(p50s: dict[str, float]):
    """A fake comparison: channel-count candidates 10 ms each; the format round by the file's quantization."""

    def compare(paths: list[Path]) -> list[MeasuredVariant]:
        times = [_p50(path, p50s) for path in paths]
        return [MeasuredVariant("", str(p), t, Speedup(times[0] / t, times[0] / t * 0.97, times[0] / t * 1.03))
                for p, t in zip(paths, times, strict=True)]  # fmt: skip

    return compare


def _p50(path: Path, p50s: dict[str, float]) -> float:
    model = onnx.load(str(path))
    fmt = next((p.value for p in model.metadata_props if p.key == "pkg.sparsecut.test.format"), None)
    zero_points = _activation_zero_points(model)
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return p50s["fp16"]
    if not zero_points:
        return p50s.get("fp32", 10.0)
    if zero_points[0].dtype == np.uint8:
        return p50s["u8s8"]
    return p50s["s8s8"] if fmt is None else p50s[fmt]


def _optimize(tmp_path, p50s, formats=("u8s8", "s8s8"), **options):
    tuning = Tuning(target="fake", timer=FakeTimer(lambda layer: 1.0), compare=by_format(p50s),
                    int8_formats=formats, budget=30.0)  # fmt: skip
    source = residual(tmp_path / "in.onnx")
    wanted = options.pop("precision", Precision("int8"))  # None: best
    request = PrecisionRequest(wanted, **options)
    return optimize_measured(source, tmp_path / "out.onnx", OptimizeOptions(precision=request), tuning)


def test_the_fastest_int8_format_is_written(tmp_path):
    report = _optimize(tmp_path, {"fp32": 10.0, "u8s8": 6.0, "s8s8": 9.0})
    decision = report.decision
    assert [v.name for v in decision.formats] == ["fp32", "int8 u8s8", "int8 s8s8"]
    assert decision.int8_pays is True and report.precision.format == "u8s8"
    assert _activation_zero_points(onnx.load(str(tmp_path / "out.onnx")))[0].dtype == np.uint8
    report = _optimize(tmp_path, {"fp32": 10.0, "u8s8": 9.0, "s8s8": 5.0})
    assert report.precision.format == "s8s8" and report.decision.int8_pays is True


@pytest.mark.parametrize(
    ("p50s", "decided_in"),
    [
        ({"fp32": 10.0, "u8s8": 9.0, "s8s8": 5.0}, "s8s8"),  # the second beyond noise: its format
        ({"fp32": 10.0, "u8s8": 9.0, "s8s8": 8.9}, "u8s8"),  # within noise: the target's first
        ({"fp32": 10.0, "u8s8": 6.0, "s8s8": 9.0}, "u8s8"),
    ],
)
def test_the_counts_are_decided_in_the_format_that_runs_fastest(tmp_path, p50s, decided_in):
    """The target names u8s8 first; the formats are timed at --align first, and the channel round — its dense
    baseline and every candidate — runs in the one that was faster beyond noise."""
    seen: list[list[str]] = []
    compare = by_format(p50s)

    def recording(paths: list[Path]) -> list[MeasuredVariant]:
        seen.append([_format_of(path) for path in paths])
        return compare(paths)

    tuning = Tuning(target="fake", timer=FakeTimer(lambda layer: 1.0), compare=recording,
                    int8_formats=("u8s8", "s8s8"), budget=30.0)  # fmt: skip
    options = OptimizeOptions(precision=PrecisionRequest(Precision("int8")))
    report = optimize_measured(residual(tmp_path / "in.onnx"), tmp_path / "out.onnx", options, tuning)
    assert seen[0] == ["u8s8", "s8s8"]
    assert len(seen[1]) >= 2 and set(seen[1]) == {decided_in}
    assert seen[2] == ["fp32", "u8s8", "s8s8"]  # the precision round, on the counts chosen
    assert report.precision.format == min(("u8s8", "s8s8"), key=lambda f: p50s[f])


def _format_of(path: Path) -> str:
    zero_points = _activation_zero_points(onnx.load(str(path)))
    if not zero_points:
        return "fp32"
    return "u8s8" if zero_points[0].dtype == np.uint8 else "s8s8"


def test_int8_that_does_not_pay_is_said(tmp_path):
    report = _optimize(tmp_path, {"fp32": 10.0, "u8s8": 10.1, "s8s8": 12.0})
    decision = report.decision
    assert decision.int8_pays is False and report.precision.format == "u8s8"
    assert "int8 does not pay on this target" in decision.verdict
    assert (tmp_path / "out.onnx").exists()  # written as asked, flagged


def test_a_format_named_by_the_user_is_not_chosen_for_them(tmp_path):
    tuning = Tuning(target="fake", timer=FakeTimer(lambda layer: 1.0), compare=by_format({"u8s8": 1.0, "s8s8": 9.0}),
                    int8_formats=("u8s8", "s8s8"), budget=30.0)  # fmt: skip
    options = OptimizeOptions(precision=PrecisionRequest(Precision.parse("int8 s8s8")))
    report = optimize_measured(residual(tmp_path / "in.onnx"), tmp_path / "out.onnx", options, tuning)
    assert report.decision.formats == [] and report.decision.int8_pays is None
    assert report.precision.format == "s8s8"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "int8", "--int8-format", "u4"], "--int8-format: unknown format 'u4'; known: u8s8, "),
        (["--int8-format", "u8s8"], "--int8-format: only used with --precision int8"),
    ],
)
def test_bad_int8_format(tmp_path, capsys, argv, message):
    from sparsecut.cli import main

    source = residual(tmp_path / "in.onnx")
    assert main(["optimize", str(source), "-o", str(tmp_path / "out.onnx"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_the_fp32_twin_has_the_written_channels(tmp_path):
    tuning = Tuning(target="fake", timer=FakeTimer(lambda layer: 1.0), compare=by_format({"u8s8": 6.0, "s8s8": 9.0}),
                    int8_formats=("u8s8", "s8s8"), budget=30.0)  # fmt: skip
    source = residual(tmp_path / "in.onnx")
    optimize_measured(
        source,
        tmp_path / "out.onnx",
        OptimizeOptions(precision=PrecisionRequest(Precision("int8"))),
        tuning,
        tmp_path / "t.onnx",
    )
    twin, written = onnx.load(str(tmp_path / "t.onnx")), onnx.load(str(tmp_path / "out.onnx"))
    assert "QuantizeLinear" not in {n.op_type for n in twin.graph.node}

    def conv_shapes(model: onnx.ModelProto) -> list[list[int]]:
        inits = {t.name: list(t.dims) for t in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        shapes = []
        for node in (n for n in model.graph.node if n.op_type == "Conv"):
            w = node.input[1]
            w = producers[w].input[0] if w in producers else w  # behind its DequantizeLinear
            shapes.append(inits[w])
        return shapes

    assert conv_shapes(twin) == conv_shapes(written)


def test_best_writes_the_fastest_precision_that_meets_the_bound(tmp_path):
    p50s = {"fp32": 10.0, "fp16": 7.0, "u8s8": 6.0, "s8s8": 9.0}
    report = _optimize(tmp_path, p50s, precision=None, max_drift=DriftBound(min_sqnr_db=1.0))
    decision = report.decision
    assert [v.name for v in decision.formats] == ["fp32", "fp16", "int8 u8s8", "int8 s8s8"]
    assert decision.precision_written == "int8 u8s8" and report.precision.format == "u8s8"
    assert _activation_zero_points(onnx.load(str(tmp_path / "out.onnx")))[0].dtype == np.uint8
    assert all(v.drift.startswith("SQNR ") for v in decision.formats[1:])
    assert "--precision best: int8 u8s8 written" in decision.verdict
    report = _optimize(tmp_path, {**p50s, "fp16": 5.0}, precision=None, max_drift=DriftBound(min_sqnr_db=1.0))
    assert report.decision.precision_written == "fp16" and report.precision.precision == "fp16"
    report = _optimize(tmp_path, {**p50s, "fp32": 4.0}, precision=None)  # fp32 is a candidate like any other
    assert report.decision.precision_written == "fp32" and report.precision is None
    assert "SQNR ≥ 25 dB on every output" in report.decision.verdict  # the default bound, said


def test_a_candidate_over_the_bound_is_refused_not_timed(tmp_path):
    p50s = {"fp32": 10.0, "fp16": 7.0, "u8s8": 6.0, "s8s8": 9.0}
    report = _optimize(tmp_path, p50s, precision=None, max_drift=DriftBound(min_sqnr_db=200.0))
    refused = report.decision.refused
    assert report.decision.precision_written == "fp32"  # nothing else reaches 200 dB
    assert refused["fp16"].startswith("SQNR ≥ 200 dB on every output not reached in fp16: the worst output")
    assert refused["int8 u8s8"].startswith("SQNR ≥ 200 dB on every output holds only with every layer in fp32")
    assert report.decision.formats == []  # the refused are not timed; fp32 alone has nothing to be timed against
    assert "refused by --max-drift: fp16, int8 u8s8, int8 s8s8" in report.decision.verdict
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node}


def test_int8_with_no_format_within_the_bound_writes_nothing(tmp_path):
    with pytest.raises(AccuracyError, match=r"--max-drift: no int8 format meets the bound \(int8 u8s8: SQNR ≥ 200 dB"):
        _optimize(tmp_path, {"fp32": 10.0, "u8s8": 6.0, "s8s8": 9.0}, max_drift=DriftBound(min_sqnr_db=200.0))
    assert not (tmp_path / "out.onnx").exists()


def test_best_needs_a_target(tmp_path, capsys):
    from sparsecut.cli import main

    code = main(
        ["optimize", str(residual(tmp_path / "in.onnx")), "-o", str(tmp_path / "o.onnx"), "--precision", "best"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "error: --precision best: needs --target (fp32, fp16 and int8 are measured there)" in err


def test_channel_counts_are_timed_at_the_precision_written(tmp_path):
    """Measured counts are decided on layers as they will run: int8 in the format written, fp32 for best."""
    seen: list[str] = []
    timer = FakeTimer(lambda layer: seen.append(layer.precision) or 1.0)
    tuning = Tuning(target="fake", timer=timer, compare=by_format({"fp16": 12.0, "u8s8": 6.0, "s8s8": 9.0}),
                    int8_formats=("u8s8", "s8s8"), budget=30.0)  # fmt: skip
    source = dead_model(tmp_path)  # dead channels: their counts are timed
    optimize_measured(
        source, tmp_path / "out.onnx", OptimizeOptions(precision=PrecisionRequest(Precision("int8"))), tuning
    )
    assert seen and set(seen) == {"int8 u8s8"}  # the target's first format, the one the channel round writes
    seen.clear()
    optimize_measured(
        source, tmp_path / "out.onnx", OptimizeOptions(precision=PrecisionRequest(Precision.parse("int8 s8s8"))), tuning
    )
    assert set(seen) == {"int8 s8s8"}
    seen.clear()
    optimize_measured(source, tmp_path / "out.onnx", OptimizeOptions(precision=PrecisionRequest(None)), tuning)
    assert set(seen) == {"fp32"}  # best: the precision is chosen after the channels


def test_pruning_at_int8_is_measured_against_the_dense_graph_at_int8(tmp_path):
    """The channel round's reference is the input through the same pipeline and precision without channel removal:
    the speedup credited to pruning is never the precision's."""
    seen: list[tuple[bool, list[list[int]]]] = []
    timing = by_format({"u8s8": 6.0, "s8s8": 9.0})
    calls = itertools.count()

    def compare(paths: list[Path]) -> list[MeasuredVariant]:
        if next(calls) == 1:  # the channel round (after the formats at --align): what its reference holds
            reference = onnx.load(str(paths[0]))
            quantized = "QuantizeLinear" in {n.op_type for n in reference.graph.node}
            seen.append((quantized, sorted(list(t.dims) for t in reference.graph.initializer if len(t.dims) == 4)))
        return timing(paths)

    tuning = Tuning(target="fake", timer=FakeTimer(lambda layer: 1.0), compare=compare, int8_formats=("u8s8", "s8s8"),
                    budget=30.0)  # fmt: skip
    source = dead_model(tmp_path)
    report = optimize_measured(
        source, tmp_path / "out.onnx", OptimizeOptions(precision=PrecisionRequest(Precision("int8")), align=1), tuning
    )
    assert report.decision.variants[0].name == "dense int8 (no channel removal)"
    assert "dense int8 (no channel removal)" in report.decision.verdict
    weights = sorted(list(t.dims) for t in onnx.load(str(source)).graph.initializer if len(t.dims) == 4)
    assert seen == [(True, weights)]  # quantized, every channel still there
