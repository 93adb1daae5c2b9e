"""quantize-int8 and to-fp16: graphs onnxruntime runs, drift within stated bounds, 2:4 labels kept, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsecut.cli import main
from sparsecut.errors import GraphError
from sparsecut.passes import OptimizeOptions, optimize_model
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
    report = optimize_model(exported, tmp_path / "q.onnx", OptimizeOptions(precision="int8", calibration=calibration))
    q = report.precision
    assert q is not None and q.samples == 16 and q.calibration == str(calibration)
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
    report = optimize_model(exported, tmp_path / "h.onnx", OptimizeOptions(precision="fp16"))
    model = onnx.load(str(tmp_path / "h.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    reference = run_onnx(exported, x)[0]
    np.testing.assert_allclose(run_onnx(tmp_path / "h.onnx", x)[0], reference, atol=1e-2 * np.abs(reference).max())
    assert report.precision is not None and report.precision.top1_agreement == 1.0


def test_refuses_to_quantize_twice(tmp_path, exported, calibration):
    optimize_model(exported, tmp_path / "q.onnx", OptimizeOptions(precision="int8", calibration=calibration))
    with pytest.raises(GraphError, match=r"q\.onnx: the model is already quantized .*; refusing to quantize twice"):
        optimize_model(tmp_path / "q.onnx", tmp_path / "qq.onnx", OptimizeOptions(precision="int8"))
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
        (lambda p: None, "calibration folder holds no .npy or .npz files"),
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
