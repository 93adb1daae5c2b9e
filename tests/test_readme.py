"""The README's examples are run: what it shows a user is what works."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"MACs [\d,]+ → [\d,]+; pruning speedup \d+\.\d\d× \(95 % interval", printed), printed
    assert {p.name for p in tmp_path.iterdir()} == {"pruned.pt", "pruned.onnx", "lean.onnx", "dense.onnx"}


def test_readme_commands_are_the_ones_ci_runs():
    text = README.read_text()
    assert "./setup.sh && .venv/bin/sparsecut demo" in text
    assert "./setup.sh && .venv/bin/python -m pytest" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./setup.sh && .venv/bin/python -m pytest" in ci
