"""`sparsecut export DIR`: a Hugging Face decoder folder through onnxruntime-genai's model builder (default) or
optimum-onnx, run in the Python given by --python, verified against transformers' generation. The exporters are
not dependencies of sparsecut: the refusals are tested here; the exports themselves where their venvs are named
(SPARSECUT_GENAI_PYTHON, SPARSECUT_OPTIMUM_PYTHON; benchmarks/llm.py says how to make them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsecut.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _folder(tmp_path: Path, architecture: str = "LlamaForCausalLM", pickled: bool = False) -> Path:
    from safetensors.numpy import save_file

    folder = tmp_path / "masked"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": "llama"}))
    if pickled:
        (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    else:
        save_file({"w": np.zeros((2, 2), np.float32)}, str(folder / "model.safetensors"))
    return folder


def _imports(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


@pytest.mark.skipif(_imports("onnxruntime_genai.models.builder"), reason="the genai builder runs in this Python")
def test_a_missing_exporter_is_one_line_and_writes_nothing(tmp_path, capsys):
    folder = _folder(tmp_path)
    code, _, err = _run(capsys, "export", str(folder), "-o", str(tmp_path / "out"))
    assert code != 0
    assert err.strip() == (
        f"error: --exporter genai: onnxruntime-genai's exporter does not import in {sys.executable} (pip install "
        "'onnxruntime-genai>=0.18' 'transformers>=5' onnx-ir there, or point --python at a venv that has it)"
    )
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masked"]  # no staging left behind


def test_pickled_weights_are_refused_unread(tmp_path, capsys):
    folder = _folder(tmp_path, pickled=True)
    code, _, err = _run(capsys, "export", str(folder), "-o", str(tmp_path / "out"))
    assert code != 0
    assert err.strip() == (
        f"error: {folder}: its weights are pickled (pytorch_model.bin); sparsecut never unpickles a checkpoint by "
        "default: save them as safetensors (save_pretrained(..., safe_serialization=True))"
    )


def test_a_folder_that_is_no_causal_language_model_is_refused(tmp_path, capsys):
    folder = _folder(tmp_path, architecture="BertModel")
    code, _, err = _run(capsys, "export", str(folder), "-o", str(tmp_path / "out"))
    assert code != 0
    assert err.strip() == f"error: {folder}: not a causal language model (architectures ['BertModel'])"


def test_a_non_empty_output_folder_is_refused_and_left_alone(tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    code, _, err = _run(capsys, "export", str(folder), "-o", str(out))
    assert code != 0
    assert err.strip() == f"error: {out}: --output for a decoder folder must be a new or empty folder"
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "the user's"


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["genai", "optimum"])
def test_a_masked_decoder_folder_exports_verified_and_optimizes_per_layer(tmp_path, capsys, exporter):
    """The real exporters on a masked random Llama (benchmarks/llm_model.py, tiny): the export matches
    transformers' 32 greedy tokens; optimize then takes one K/V head of 4 from every layer, gated."""
    python = os.environ.get(f"SPARSECUT_{exporter.upper()}_PYTHON")
    if not python:
        pytest.skip(f"set SPARSECUT_{exporter.upper()}_PYTHON to a Python with the {exporter} exporter")
    masked = tmp_path / "masked"
    subprocess.run([python, str(ROOT / "benchmarks" / "llm_model.py"), str(masked)], check=True, capture_output=True)
    out = tmp_path / "exported"
    code, _, err = _run(capsys, "export", str(masked), "-o", str(out), "--exporter", exporter, "--python", python,
                        "--json", str(tmp_path / "report.json"))  # fmt: skip
    assert code == 0, err
    (check,) = json.loads((tmp_path / "report.json").read_text())["checks"]
    assert check["passed"] and check["label"].endswith("tokens identical")
    if exporter == "genai":
        assert (out / "genai_config.json").is_file()
    code, _, err = _run(capsys, "optimize", str(out / "model.onnx"), "-o", str(tmp_path / "lean.onnx"), "--align",
                        "1", "--json", str(tmp_path / "lean.json"))  # fmt: skip
    assert code == 0, err
    removal = next(
        p for p in json.loads((tmp_path / "lean.json").read_text())["passes"] if p["name"] == "remove-dead-channels"
    )
    assert [len(next(iter(h["cache"].values()))) for h in removal["heads"]] == [3, 3, 3, 3]
