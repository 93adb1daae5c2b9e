"""Ctrl-C at any moment of an optimize: either nothing is written (exit 130, one line) or it came too late to
matter (exit 0, the complete, verified output) — never a partial file, never a staging folder left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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


def test_sigint_in_flight_leaves_nothing_partial(tmp_path, exported):
    (tmp_path / "model.onnx").write_bytes(exported.read_bytes())
    argv = [sys.executable, "-m", "sparsecut", "optimize", "model.onnx", "-o", "lean.onnx", "--json", "r.json"]
    start = time.perf_counter()
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)
    whole = time.perf_counter() - start
    (tmp_path / "lean.onnx").unlink()
    (tmp_path / "r.json").unlink()
    before = snapshot(tmp_path)
    outcomes = []
    for fraction in (0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9, 0.97):
        process = subprocess.Popen(
            argv,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,  # a runner that ignores SIGINT must not pass that on to the child
        )
        time.sleep(whole * fraction)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        if process.returncode == 130:
            assert err.strip().splitlines() == ["error: interrupted; nothing written"], err
            assert snapshot(tmp_path) == before
        else:
            assert process.returncode == 0, (fraction, process.returncode, err)
            onnx.checker.check_model(str(tmp_path / "lean.onnx"))
            assert (tmp_path / "r.json").is_file()
            assert set(snapshot(tmp_path)) == set(before) | {"lean.onnx", "r.json"}
            (tmp_path / "lean.onnx").unlink()
            (tmp_path / "r.json").unlink()
        outcomes.append(process.returncode)
    assert outcomes.count(130) >= 3, (outcomes, whole)  # most of them landed while it worked


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
