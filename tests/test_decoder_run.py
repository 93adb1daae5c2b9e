"""`sparsecut run DIR` for a decoder folder: export → lean (gated) → exported vs lean timed as generators run them
→ report.json and report.md. The exporters need venvs of their own (tests/exporter/test_decoder_folder.py runs
them where named); here the export step writes the builder's folder form of the test decoder instead, so the rest
of the run is the real thing."""

from __future__ import annotations

import json
import shutil

import pytest

from sparsecut.cli import main
from sparsecut.report import ExportReport, OutputCheck
from tests.passes.decoders import LAYERS, Decoder, genai_folder, mask_like_llm_pruning


@pytest.fixture
def exported_by_builder(monkeypatch, tmp_path):
    """The export step replaced by the builder's folder of a masked test decoder (verified by nothing: it is the
    reference itself)."""
    model = Decoder()
    mask_like_llm_pruning(model)
    source = genai_folder(model, tmp_path / "made")

    def export(folder, out, options):
        for path in source.iterdir():
            shutil.copyfile(path, out / path.name)
        check = OutputCheck(1, 0.0, 0.0, True, label="(the test's own folder)")
        return ExportReport(str(folder), "", str(out / "model.onnx"), "LlamaForCausalLM", "test builder", None, 21, [],
                            0, 0, [], [], [check], 1e-4, 1e-5, False, 0.0, 0.0, {})  # fmt: skip

    monkeypatch.setattr("sparsecut.decoder_run.export_decoder_folder", export)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return folder


@pytest.mark.parametrize("target", ["onnxruntime", "onnxruntime-genai"])
def test_run_on_a_decoder_folder_writes_the_lean_model_and_the_timing_report(exported_by_builder, tmp_path, capsys,
                                                                             target):  # fmt: skip
    if target == "onnxruntime-genai":
        pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    out = tmp_path / "run"
    code = main(["run", str(exported_by_builder), "-o", str(out), "--target", target, "--prompt", "8", "--context",
                 "8", "--steps", "2", "--rounds", "3"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["baseline", "exported", "lean", "report.json", "report.md"]
    lean = sorted(p.name for p in (out / "lean").iterdir())
    assert lean == (["genai_config.json", "model.onnx", "tokenizer.json", "tokenizer_config.json"]
                    if target == "onnxruntime-genai" else ["model.onnx"])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "DecoderRunReport" and report["compare"]["target"] == target
    assert [v["kv_heads"] for v in report["compare"]["variants"]] == [[2] * LAYERS, [2] * LAYERS, [1] * LAYERS]
    assert [v["label"] for v in report["compare"]["variants"]] == ["exported", "dense baseline", "lean"]
    assert report["compare"]["baseline"] == 1  # lean's speedup is against the same graph without channel removal
    assert report["optimize"]["checks"][0]["label"].endswith("greedy tokens identical")
    assert str(tmp_path / "run") in report["optimize"]["output"] and ".sparsecut-staging" not in json.dumps(report)
    text = (out / "report.md").read_text()
    assert "K/V heads per layer: 2/2 → 1/1" in text and "| decode at context 8 |" in text
    assert "| | dense baseline | lean | pruning speedup (95 % interval) |" in text


def test_run_on_a_decoder_folder_refuses_other_targets(exported_by_builder, tmp_path, capsys):
    code = main(["run", str(exported_by_builder), "-o", str(tmp_path / "run"), "--target", "openvino"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --target openvino: a decoder folder runs on onnxruntime or onnxruntime-genai"
    )
    assert not (tmp_path / "run").exists()


def test_run_with_int4_times_the_two_by_two(exported_by_builder, tmp_path, capsys):
    """--precision int4: the dense baseline and lean in weight-only int4 too, all in the same rounds; the pruning
    speedup at int4, the int4 speedup and the total stated as ratios of their own."""
    out = tmp_path / "run"
    code = main(["run", str(exported_by_builder), "-o", str(out), "--precision", "int4", "--prompt", "8",
                 "--context", "8", "--steps", "2", "--rounds", "3"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["baseline", "baseline-int4", "exported", "lean", "lean-int4",
                                                     "report.json", "report.md"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    labels = [v["label"] for v in report["compare"]["variants"]]
    assert labels == ["exported", "dense baseline", "lean", "dense baseline int4", "lean int4"]
    ratios = [(r["name"], r["reference"], r["candidate"]) for r in report["compare"]["ratios"]]
    assert ratios == [("graph cleanup", "exported", "dense baseline"), ("total", "exported", "lean"),
                      ("pruning at int4", "dense baseline int4", "lean int4"), ("int4 (lean)", "lean", "lean int4"),
                      ("total: exported fp32 → lean int4", "exported", "lean int4")]  # fmt: skip
    assert [d["precision"] for d in report["int4"]] == ["int4", "int4"]
    assert "## More ratios (same rounds)" in (out / "report.md").read_text()


def test_int4_for_a_vision_checkpoint_run_is_refused(tmp_path, capsys):
    code = main(["run", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "run"), "--precision", "int4"])
    assert code == 2
    assert "weight-only int4 is for decoders" in capsys.readouterr().err
