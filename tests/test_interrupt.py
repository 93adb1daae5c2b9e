"""Ctrl-C at any moment of an optimize: either nothing is written (exit 130, one line) or it came too late to
matter (exit 0, the complete, verified output) — never a partial file, never a staging folder left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from sparsecut.exporter import export_checkpoint
from tests.test_cli_contract import snapshot


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint_factory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt")
    export_checkpoint(checkpoint_factory("resnet18"), folder / "model.onnx", arch="resnet18")
    return folder / "model.onnx"


# where Ctrl-C lands, and whether the command still finishes: before the outputs move into place, nothing is written
MOMENTS = {
    "sparsecut.passes.pipeline:_load_checked": 130,  # reading the input
    "sparsecut.passes.pipeline:run_steps": 130,  # inside the passes
    "sparsecut.passes.pipeline:save_model": 130,  # writing the staged graph
    "sparsecut.passes.pipeline:compare_files": 130,  # the equivalence gate
    "sparsecut.cli.app:write_json": 130,  # the report's JSON, staged
    "sparsecut.outputs:os.replace": 0,  # moving into place: too late to matter, the outputs are complete
}


@pytest.mark.parametrize(("moment", "code"), MOMENTS.items(), ids=[m.split(":")[1] for m in MOMENTS])
def test_sigint_at_any_moment_leaves_nothing_partial(tmp_path, exported, moment, code):
    (tmp_path / "model.onnx").write_bytes(exported.read_bytes())
    before = snapshot(tmp_path)
    argv = ["optimize", "model.onnx", "-o", "lean.onnx", "--json", "r.json"]
    process = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "interrupt_at.py"), moment, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_default_sigint,  # a runner that ignores SIGINT must not pass that on to the child
    )
    assert process.returncode == code, (process.returncode, process.stderr[-2000:])
    if code == 130:
        assert process.stderr.strip().splitlines() == ["error: interrupted; nothing written"], process.stderr
        assert snapshot(tmp_path) == before
    else:
        onnx.checker.check_model(str(tmp_path / "lean.onnx"))
        assert (tmp_path / "r.json").is_file()
        assert set(snapshot(tmp_path)) == set(before) | {"lean.onnx", "r.json"}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
