"""`sparsecut optimize` / `inspect` on bad input: one line on stderr, exit code 2, no file written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from sparsecut.cli import main
from tests.passes.graphs import GraphBuilder


def _good_model(path: Path) -> None:
    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(1,)))])
    onnx.save(g.model(g.conv(h, g.weight(2, 8, 1, 1))), path)


def _escaping_external_data(path: Path) -> None:
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2, 4, 1, 1], vals=np.zeros(8, np.float32).tobytes(), raw=True)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [tensor],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())


def _escaping_constant(path: Path) -> None:
    """A Constant node's tensor (not an initializer) read from outside the model's folder."""
    tensor = helper.make_tensor("c", TensorProto.FLOAT, [1, 4, 1, 1], vals=np.zeros(4, np.float32).tobytes(), raw=True)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=tensor), helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 2, 2])],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())


def _failing_checker(path: Path) -> None:
    node = helper.make_node("Relu", ["not_defined_anywhere"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())


CASES = {
    "not onnx": (lambda p: p.write_text("hello, I am not a model"), "not a readable ONNX model"),
    "truncated": (None, "not a readable ONNX model"),
    "checker": (_failing_checker, "fails the ONNX checker"),
    "external data escapes": (_escaping_external_data, "outside the model's folder; refusing to read it"),
    "a constant's external data escapes": (
        _escaping_constant,
        "tensor 'c' of Constant '' points to external data '../../etc/passwd' outside the model's folder",
    ),
    "missing": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("command", ["optimize", "inspect"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_file(tmp_path, capsys, command, case):
    source = tmp_path / "model.onnx"
    make, message = CASES[case]
    if case == "truncated":
        _good_model(source)
        source.write_bytes(source.read_bytes()[:150])
    else:
        make(source)
    argv = [command, str(source)] + (["-o", str(tmp_path / "out.onnx")] if command == "optimize" else [])
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("model.onnx", "is the input; sparsecut never overwrites its input"),
        ("file.txt/out.onnx", "file.txt is not a folder"),
        ("nodir/out.onnx", "does not exist"),
    ],
)
def test_bad_output_path(tmp_path, capsys, output, message):
    source = tmp_path / "model.onnx"
    _good_model(source)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["optimize", str(source), "-o", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_unknown_pass(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    _good_model(source)
    assert main(["optimize", str(source), "-o", str(tmp_path / "o.onnx"), "--passes", "fold-batchnorm,magic"]) == 2
    assert "unknown pass 'magic'" in capsys.readouterr().err


def test_optimize_and_inspect_cli(tmp_path, capsys):
    source, out, report = tmp_path / "model.onnx", tmp_path / "lean.onnx", tmp_path / "r.json"
    _good_model(source)
    assert main(["optimize", str(source), "-o", str(out), "--align", "1", "--json", str(report)]) == 0
    stdout = capsys.readouterr().out
    assert "8 → 7" in stdout and "verified" in stdout
    import json

    from sparsecut.report import OptimizeReport

    data = json.loads(report.read_text())
    assert OptimizeReport.from_dict(data).to_dict() == data
    assert main(["inspect", str(source), "--align", "1"]) == 0
    assert "8 → 7" in capsys.readouterr().out


def test_no_verify_is_loud(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    _good_model(source)
    assert main(["optimize", str(source), "-o", str(tmp_path / "o.onnx"), "--no-verify"]) == 0
    captured = capsys.readouterr()
    assert "NOT checked" in captured.err and "NOT verified" in captured.out


def test_user_data_is_checked_too(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    _good_model(source)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((3, 4, 6, 6)).astype(np.float32))
    assert (
        main(
            [
                "optimize",
                str(source),
                "-o",
                str(tmp_path / "o.onnx"),
                "--data",
                str(data),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    import json

    checks = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert [c["batch_size"] for c in checks] == [1, 2, 3]


def test_a_fold_alone_leaves_no_unread_weights(tmp_path, checkpoint_factory):
    """`--passes fold-batchnorm` without cleanup: BatchNorm's statistics, read by nothing after the fold, are not
    written (they were, and the written model held more parameters than its input: refused as a bug)."""
    from sparsecut.cost import count_params
    from sparsecut.exporter import export_checkpoint
    from sparsecut.passes import OptimizeOptions, optimize_model

    export_checkpoint(checkpoint_factory("resnet-tiny"), tmp_path / "m.onnx", arch="resnet-tiny")
    report = optimize_model(tmp_path / "m.onnx", tmp_path / "f.onnx", OptimizeOptions(passes=("fold-batchnorm",)))
    model = ir.load(tmp_path / "f.onnx")
    assert not [n for n in model.graph if n.op_type == "BatchNormalization"]
    assert all(v.uses() for v in model.graph.initializers.values())
    assert count_params(model) < count_params(ir.load(tmp_path / "m.onnx")) and report.verified
