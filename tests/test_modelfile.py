"""The files an input reads besides itself, read once per version of the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsecut.errors import OutputPathError
from sparsecut.modelfile import check_output_path, input_sidecars


def _model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    return helper.make_model(graph)


def test_an_input_rewritten_with_external_data_names_it(tmp_path: Path) -> None:
    """The sidecars are cached per version of the file: the same path saved again with its weights apart is
    read again (a cache by path alone would let an output overwrite the new weights)."""
    model = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(model))
    check_output_path(tmp_path / "w.bin", model)
    assert input_sidecars(model) == []

    onnx.save_model(_model(), str(model), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert input_sidecars(model) == [tmp_path / "w.bin"]
    with pytest.raises(OutputPathError, match=r"w\.bin: is external data of the input .*m\.onnx"):
        check_output_path(tmp_path / "w.bin", model)
