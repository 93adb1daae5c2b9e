"""`sparsecut run`: one folder with every artifact and one report."""

from __future__ import annotations

import json

from sparsecut.cli import main
from sparsecut.report import RunReport


def test_run_end_to_end(tmp_path, checkpoint_factory, capsys):
    out = tmp_path / "run"
    code = main(
        ["run", str(checkpoint_factory("resnet-tiny")), "--arch", "resnet-tiny", "-o", str(out), "--iterations", "10"]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {
        "dense.onnx",
        "lean.onnx",
        "dense.ort.onnx",
        "lean.ort.onnx",
        "report.json",
        "report.md",
        "compare.png",
    }
    data = json.loads((out / "report.json").read_text())
    report = RunReport.from_dict(data)
    assert report.to_dict() == data
    dense, lean = report.compare.variants
    assert lean.macs < dense.macs
    assert "| lean.onnx |" in (out / "report.md").read_text()
    assert "speedup" in capsys.readouterr().out
