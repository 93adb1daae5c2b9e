"""quantize-int8 and to-fp16: graphs onnxruntime runs, drift within stated bounds, 2:4 labels kept, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sparsecut.calibration import Calibration
from sparsecut.cli import main
from sparsecut.errors import GraphError
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.precision import Precision
from tests.conftest import run_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint_factory):
    from sparsecut.exporter import export_checkpoint

    folder = tmp_path_factory.mktemp("precision")
    export_checkpoint(checkpoint_factory("resnet-tiny", "2:4"), folder / "m.onnx", arch="resnet-tiny")
    return folder / "m.onnx"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "data.npz"
    np.savez(path, input=np.random.default_rng(7).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return path


def test_int8_qdq_runs_keeps_2to4_labels_and_reports_drift(tmp_path, exported, calibration):
    options = OptimizeOptions(precision=PrecisionRequest(Precision("int8"), Calibration(calibration)))
    report = optimize_model(exported, tmp_path / "q.onnx", options)
    q = report.precision
    assert q is not None and (q.samples, q.held_out) == (13, 3)  # a fifth held out to judge accuracy
    assert q.calibration == f"{calibration} (13 samples, 3 held out)" and q.method == "minmax"
    reference = run_onnx(exported, np.load(calibration)["input"][:4])[0]
    assert q.max_abs_error < 0.1 * np.abs(reference).max()  # int8 on a random-weight net: within 10 % of range
    assert q.top1_agreement is not None and q.top1_agreement >= 0.75
    model = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:  # TensorRT's fusable placement: Q/DQ on conv weights, none on biases
        if node.op_type == "Conv":
            assert node.input[1] in dequantized
            assert len(node.input) < 3 or node.input[2] not in dequantized
    assert any(t.doc_string == "SPARSE_2_4" for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)


def test_fp16_keeps_fp32_io_and_small_drift(tmp_path, exported):
    report = optimize_model(
        exported, tmp_path / "h.onnx", OptimizeOptions(precision=PrecisionRequest(Precision("fp16")))
    )
    model = onnx.load(str(tmp_path / "h.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    reference = run_onnx(exported, x)[0]
    np.testing.assert_allclose(run_onnx(tmp_path / "h.onnx", x)[0], reference, atol=1e-2 * np.abs(reference).max())
    assert report.precision is not None and report.precision.top1_agreement == 1.0


def test_refuses_to_quantize_twice(tmp_path, exported, calibration):
    optimize_model(
        exported,
        tmp_path / "q.onnx",
        OptimizeOptions(precision=PrecisionRequest(Precision("int8"), Calibration(calibration))),
    )
    with pytest.raises(GraphError, match=r"q\.onnx: the model is already quantized .*; refusing to quantize twice"):
        optimize_model(
            tmp_path / "q.onnx", tmp_path / "qq.onnx", OptimizeOptions(precision=PrecisionRequest(Precision("int8")))
        )
    assert not (tmp_path / "qq.onnx").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: np.savez(p / "c.npz", input=np.zeros((4, 3, 16, 16), np.float32)),
            "c.npz: array 'input' has shape 4×3×16×16; the model expects N×3×32×32",
        ),
        (
            lambda p: np.savez(p / "c.npz", input=np.zeros((4, 3, 32, 32), np.float64)),
            "c.npz: array 'input' is float64; the model expects float32 N×3×32×32",
        ),
        (lambda p: None, "calibration folder holds no .npy, .npz or image files"),
    ],
)
def test_bad_calibration_is_one_line(tmp_path, exported, capsys, make, message):
    folder = tmp_path / "cal"
    folder.mkdir()
    make(folder)
    target = folder / "c.npz" if (folder / "c.npz").exists() else folder
    code = main(
        ["optimize", str(exported), "-o", str(tmp_path / "q.onnx"), "--precision", "int8", "--calibration", str(target)]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1
    assert not (tmp_path / "q.onnx").exists()


@pytest.fixture(scope="module")
def lean(tmp_path_factory, exported):
    path = tmp_path_factory.mktemp("lean") / "lean.onnx"
    optimize_model(exported, path, OptimizeOptions())
    return path


def _weights_quantized(path) -> set[str]:
    """Nodes whose weight is read through a DequantizeLinear."""
    model = onnx.load(str(path))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dequantized}


def test_per_output_and_per_layer_drift(tmp_path, lean, calibration):
    from sparsecut.passes.precision import convert_precision

    report = convert_precision(lean, tmp_path / "q.onnx", PrecisionRequest(Precision("int8"), Calibration(calibration)))
    (output,) = report.outputs
    assert output.sqnr_db is not None and 10 < output.sqnr_db < 60 and 0.99 < output.cosine <= 1
    assert output.top1_agreement == report.top1_agreement
    quantized = _weights_quantized(tmp_path / "q.onnx")
    assert {layer.node for layer in report.layers} == quantized  # every quantized layer, the Gemm included
    assert [layer.loss_db for layer in report.layers] == sorted(
        (layer.loss_db for layer in report.layers), reverse=True
    )
    assert all(layer.module for layer in report.layers)  # named after the PyTorch modules


def test_keep_fp32_by_node_or_module_name(tmp_path, lean, calibration):
    from sparsecut.passes.precision import convert_precision

    everything = convert_precision(
        lean, tmp_path / "all.onnx", PrecisionRequest(Precision("int8"), Calibration(calibration))
    )
    first = everything.layers[-1]  # any layer; its module name reaches the same node
    options = PrecisionRequest(
        Precision("int8"), Calibration(calibration), keep_fp32=(everything.layers[0].node, first.module)
    )
    report = convert_precision(lean, tmp_path / "q.onnx", options)
    assert report.kept_fp32 == [everything.layers[0].node, first.node] and report.fallback == []
    assert _weights_quantized(tmp_path / "q.onnx") == _weights_quantized(tmp_path / "all.onnx") - set(report.kept_fp32)


def test_max_drift_puts_the_worst_layers_back_one_by_one(tmp_path, lean, calibration):
    from sparsecut.passes.drift import DriftBound
    from sparsecut.passes.precision import convert_precision

    plain = convert_precision(
        lean, tmp_path / "all.onnx", PrecisionRequest(Precision("int8"), Calibration(calibration))
    )
    assert plain.outputs[0].sqnr_db is not None
    bound = DriftBound(min_sqnr_db=plain.outputs[0].sqnr_db + 1.0)
    report = convert_precision(lean, tmp_path / "q.onnx", PrecisionRequest(Precision("int8"), Calibration(calibration),
                                                                           max_drift=bound))  # fmt: skip
    assert report.fallback and report.fallback[0] == plain.layers[0].node  # the layer that lost most goes first
    assert report.kept_fp32 == report.fallback
    assert report.outputs[0].sqnr_db is None or report.outputs[0].sqnr_db >= bound.min_sqnr_db
    assert report.bound.startswith(f"SQNR ≥ {bound.min_sqnr_db:g} dB on every output: holds")
    assert _weights_quantized(tmp_path / "q.onnx") == _weights_quantized(tmp_path / "all.onnx") - set(report.fallback)


def _cli(tmp_path, model, *options):
    return main(["optimize", str(model), "-o", str(tmp_path / "q.onnx"), "--precision", "int8", *options])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--keep-fp32", "no_such_node"], "error: --keep-fp32: no node or module named 'no_such_node' in"),
        (["--max-drift", "200dB"], "error: --max-drift: SQNR ≥ 200 dB on every output holds only with every layer in "
                                   "fp32 — that is the fp32 graph; write fp32 or loosen the bound (nothing written)"),
        (["--max-drift", "5 percent"], "error: --max-drift: '5 percent' is neither an SQNR bound (30dB) nor a top-1 "
                                       "bound (1%)"),
        (["--calibration-samples", "40"], "error: --calibration-samples: 40 asked, but"),
        (["--mean", "0.5,0.5,0.5"], "error: --mean: only used with --precision int8"),
    ],
    ids=["keep-fp32", "unreachable", "bad-bound", "too-few", "mean-without-int8"],
)  # fmt: skip
def test_bad_int8_options_are_one_line_and_write_nothing(tmp_path, lean, calibration, capsys, options, message):
    argv = [*options, "--calibration", str(calibration)]
    if options[0] == "--mean":
        code = main(["optimize", str(lean), "-o", str(tmp_path / "q.onnx"), "--mean", "0.5,0.5,0.5"])
    else:
        code = _cli(tmp_path, lean, *argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1 and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_images_calibrate_from_the_cli(tmp_path, lean, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    code = main(["optimize", str(lean), "-o", str(out / "q.onnx"), "--precision", "int8", "--calibration",
                 str(folder), "--image-size", "32", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                 "--calibration-method", "percentile", "--json", str(out / "q.json")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "q.json").read_text())["precision"]
    assert (report["samples"], report["held_out"], report["method"]) == (8, 2, "percentile")
    assert "images 32×32, crop (crop_pct 0.875), bilinear, RGB, (p/255 − [0.485,0.456,0.406])" in report["calibration"]
    assert report["layers"] and report["outputs"][0]["sqnr_db"] > 0


def test_every_calibration_sample_counts(tmp_path, lean):
    """The ranges come from all samples, merged stride by stride (onnxruntime's own CalibMaxIntermediateOutputs
    drops what it collected): one loud sample first among 17 sets the input's scale."""
    from sparsecut.passes.precision import _quantize
    from sparsecut.quantization import FORMATS

    rng = np.random.default_rng(3)
    samples = [{"input": rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(17)]
    samples[0]["input"][0, 0, 0, 0] = 100.0
    _quantize(lean, tmp_path / "q.onnx", samples, FORMATS["s8s8"], "minmax", [], tmp_path / "ranges.json")
    model = onnx.load(str(tmp_path / "q.onnx"))
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    (first,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    assert float(scales[first.input[1]]) == pytest.approx(100.0 / 127, rel=1e-3)  # symmetric int8: |x| ≤ 100
