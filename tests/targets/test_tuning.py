"""One layer alone, in the precision the model will run in: the graph timed for a latency-table entry."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparsecut.passes.latency_table import LayerSignature
from sparsecut.targets.tuning import one_layer_model

CONV = LayerSignature("Conv", 16, 24, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, (8, 8))
MATMUL = LayerSignature("MatMul", 32, 48, spatial=(1, 10))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("layer", [CONV, MATMUL], ids=["conv", "matmul"])
@pytest.mark.parametrize(
    ("fmt", "activation", "zero", "limit"),
    [("u8s8", np.uint8, 128, 127), ("u8s8-reduce-range", np.uint8, 128, 63), ("s8s8", np.int8, 0, 127),
     ("trt-s8", np.int8, 0, 127)],
)  # fmt: skip
def test_an_int8_layer_is_the_quantizers_qdq_form(layer, fmt, activation, zero, limit):
    signature = LayerSignature(**{**layer.__dict__, "precision": f"int8 {fmt}"})
    model = one_layer_model(signature)
    ops = [n.op_type for n in model.graph.node]
    assert ops[:3] == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear"] and ops[-2:] == ops[:2]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["a_zero"].dtype == activation and int(inits["a_zero"]) == zero
    assert inits["w_q"].dtype == np.int8 and np.abs(inits["w_q"]).max() == limit  # the format's weight range
    assert not inits["w_zero"].any() and inits["b"].dtype == np.float32  # symmetric weights, fp32 bias
    # the same layer as fp32 computes what the int8 one approximates (the scales are for timing, not accuracy)
    shape = [layer.batch, layer.c_in, *layer.spatial] if layer is CONV else [*layer.spatial, layer.c_in]
    x = np.random.default_rng(1).uniform(-0.5, 0.5, shape).astype(np.float32)
    reference = _run(one_layer_model(layer), x)
    got = _run(model, x)
    inside = np.abs(reference) < 0.05 * (255 if activation is np.uint8 else 127) / 2  # where the output Q clips not
    assert np.corrcoef(reference[inside], got[inside])[0, 1] > 0.99


def test_an_fp16_layer_is_fp16_throughout():
    model = one_layer_model(LayerSignature(**{**CONV.__dict__, "precision": "fp16"}))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float16)
    np.testing.assert_allclose(_run(model, x), _run(one_layer_model(CONV), x.astype(np.float32)), rtol=0.05, atol=0.1)


def test_fp32_keys_stay_what_they_were():
    """Tables written before the precision was part of a layer's key still answer for fp32 layers."""
    fields = [getattr(CONV, f) for f in ("op", "c_in", "c_out", "kernel", "strides", "dilations", "pads", "groups",
                                         "spatial", "batch")]  # fmt: skip
    assert CONV.key() == json.dumps(fields, separators=(",", ":"))
    int8 = LayerSignature(**{**CONV.__dict__, "precision": "int8 u8s8"})
    assert int8.key() != CONV.key() and json.loads(int8.key())[-1] == "int8 u8s8"
