"""The CLI: reports as tables and JSON; every bad input is one line on stderr, exit code 2, no file left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsecut.cli import main
from sparsecut.report import ExportReport


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_writes_onnx_and_json_report(tmp_path, capsys, checkpoint_factory):
    out, report_path = tmp_path / "m.onnx", tmp_path / "r.json"
    code, stdout, _ = _run(
        capsys,
        "export",
        str(checkpoint_factory("resnet-tiny")),
        "--arch",
        "resnet-tiny",
        "-o",
        str(out),
        "--json",
        str(report_path),
    )
    assert code == 0
    assert "check batch 2" in stdout
    data = json.loads(report_path.read_text())
    assert data["kind"] == "ExportReport"
    report = ExportReport.from_dict(data)
    assert report.to_dict() == data
    assert report.output == str(out) and out.exists()


def test_models_lists_architectures_and_recipes(capsys):
    code, stdout, _ = _run(capsys, "models")
    assert code == 0
    for name in ("resnet50", "mobilenetv2-tiny", "vit-tiny", "densenet-tiny", "resnext-tiny", "se-resnet-tiny"):
        assert name in stdout
    for recipe in ("l1-filter", "slimming", "2:4", "torch-pruning"):
        assert recipe in stdout


def test_models_make(tmp_path, capsys):
    out = tmp_path / "ck.pt"
    code, _, _ = _run(capsys, "models", "make", "resnet-tiny", "--recipe", "slimming", "-o", str(out))
    assert code == 0
    assert "fc.weight" in torch.load(out, weights_only=True)


def _bad(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    out = str(tmp_path / "out.onnx")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(checkpoint.read_bytes()[:1000])
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    return {
        "missing file": (
            ["export", str(tmp_path / "nope.pt"), "--arch", "resnet-tiny", "-o", out],
            "nope.pt: no such file",
        ),
        "truncated": (
            ["export", str(garbage), "--arch", "resnet-tiny", "-o", out],
            "garbage.pt: truncated or not a PyTorch checkpoint",
        ),
        "needs trust": (["export", str(pickled), "-o", out], "pass --trust-checkpoint"),
        "wrong arch": (
            ["export", str(checkpoint), "--arch", "vit-tiny", "-o", out],
            "does not fit architecture vit-tiny",
        ),
        "unknown arch": (["export", str(checkpoint), "--arch", "nope", "-o", out], "unknown architecture 'nope'"),
        "factory import": (["export", str(checkpoint), "--model", "nosuchmod:f", "-o", out], "cannot import nosuchmod"),
        "input shape": (
            ["export", str(checkpoint), "--arch", "resnet-tiny", "--input-shape", "1,3,a", "-o", out],
            "bad --input-shape '1,3,a'",
        ),
        "missing dir": (
            ["export", str(checkpoint), "--arch", "resnet-tiny", "-o", str(tmp_path / "nodir" / "m.onnx")],
            "does not exist",
        ),
        "output is input": (
            ["export", str(checkpoint), "--arch", "resnet-tiny", "-o", str(checkpoint)],
            "is the input; sparsecut never overwrites its input",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "truncated",
        "needs trust",
        "wrong arch",
        "unknown arch",
        "factory import",
        "input shape",
        "missing dir",
        "output is input",
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(tmp_path, capsys, checkpoint_factory, case):
    source = tmp_path / "ck.pt"
    source.write_bytes(checkpoint_factory("resnet-tiny").read_bytes())
    argv, message = _bad(tmp_path, source)[case]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, _, stderr = _run(capsys, *argv)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and message in stderr
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, "a failed command must leave no file behind and change none"


def test_verbose_shows_traceback(tmp_path, capsys):
    code, _, stderr = _run(
        capsys,
        "--verbose",
        "export",
        str(tmp_path / "nope.pt"),
        "--arch",
        "resnet-tiny",
        "-o",
        str(tmp_path / "o.onnx"),
    )
    assert code == 2
    assert "Traceback" in stderr and "no such file" in stderr


def test_usage_error_exit_code(capsys):
    code, _, _ = _run(capsys, "export")
    assert code == 2


def test_optimize_says_which_weights_kept_2to4_by_a_reorder_and_which_lost_it(tmp_path, capsys):
    import onnx

    from tests.passes.graphs import GraphBuilder
    from tests.passes.test_permutation import DEAD, _consumer

    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=DEAD))])
    onnx.save(g.model(g.conv(h, _consumer())), tmp_path / "restorable.onnx")
    code, stdout, _ = _run(capsys, "optimize", str(tmp_path / "restorable.onnx"), "-o", str(tmp_path / "a.onnx"))
    assert code == 0
    assert "2:4 kept by reordering channels (outputs unchanged) for 1 weight(s): w6" in " ".join(stdout.split())

    g = GraphBuilder()
    h = g.op("Relu", [g.conv("x", g.weight(16, 4, 1, 1, dead_rows=DEAD))])
    both = g.op("Concat", [h, g.op("Relu", [g.conv("x", g.weight(4, 4, 1, 1))])], axis=1)
    consumer = torch.zeros(2, 20, 1, 1).numpy()
    consumer[:, :16] = _consumer()
    consumer[0, [16, 18]], consumer[1, [17, 19]] = 1.0, 1.0
    onnx.save(g.model(g.conv(both, consumer)), tmp_path / "tied.onnx")
    code, stdout, _ = _run(
        capsys, "optimize", str(tmp_path / "tied.onnx"), "-o", str(tmp_path / "b.onnx"), "--align", "1"
    )
    assert code == 0
    flat = " ".join(stdout.split())
    assert "1 weight(s) were 2:4 in the input and lost it to channel removal:" in flat
    assert "w13: coupled to other channels by Concat/Split/Slice/Flatten" in flat


def test_piped_tables_are_not_cut(tmp_path, capsys, monkeypatch):
    """Without a terminal, names and numbers stay whole (rich would cut tables at 80 columns)."""
    import onnx

    from tests.passes.graphs import GraphBuilder

    monkeypatch.delenv("COLUMNS", raising=False)
    g = GraphBuilder()
    name = "a_rather_long_weight_name_that_a_real_exporter_would_write_for_a_deep_layer.weight"
    w = g.weight(16, 4, 1, 1)
    w[:, 2::4] = w[:, 3::4] = 0.0  # 2:4 along the input channels
    y = g.conv("x", w)
    model = g.model(y)
    for tensor in model.graph.initializer:
        tensor.name = name
    model.graph.node[0].input[1] = name
    onnx.save(model, tmp_path / "m.onnx")
    code, stdout, _ = _run(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 0
    assert name in stdout
    assert max(len(line) for line in stdout.splitlines()) > 80
