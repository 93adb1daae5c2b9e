"""`sparsecut sweep` on this machine (no Ray): the grid checked before anything runs, each cell timed against its
dense baseline, results streamed to results.jsonl and `--resume` running only what is missing, a failing input
failing its own row only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

from sparsecut.cli import main
from sparsecut.errors import InputError
from sparsecut.precision import Precision
from sparsecut.sweep import RESULTS, Device, Grid, SweepInput, load_grid, run_sweep
from sparsecut.sweep import runner as runner_module
from tests.passes.graphs import GraphBuilder


def dead_conv(path: Path, size: int = 16) -> Path:
    """conv 3 → 32 with 13 dead filters, ReLU, conv 32 → 8, on a size × size input: align 1 keeps 19, align 8 24."""
    g = GraphBuilder(shape=(3, size, size))
    hidden = g.op("Relu", [g.conv("x", g.weight(32, 3, 3, 3, dead_rows=tuple(range(0, 26, 2))), pad=1)])
    onnx.save(g.model(g.conv(hidden, g.weight(8, 32, 1, 1))), path)
    return path


def small_grid(tmp_path: Path, **changes) -> Grid:
    settings = dict(
        inputs=(SweepInput(dead_conv(tmp_path / "a.onnx")), SweepInput(dead_conv(tmp_path / "b.onnx", 24))),
        modes=("align 1", "align 8"),
        devices=(Device("onnxruntime", "local"),),
        rounds=3,
        iterations=5,
    )
    settings.update(changes)
    return Grid(**settings)


def test_every_cell_is_timed_against_its_dense_baseline(tmp_path):
    report = run_sweep(small_grid(tmp_path), tmp_path / "out")
    assert [c.key for c in report.cells] == ["a | fp32 | onnxruntime@local", "b | fp32 | onnxruntime@local"]
    for cell in report.cells:
        assert cell.status == "ok" and [r.mode for r in cell.rows] == ["dense", "align 1", "align 8"]
        dense, one, eight = cell.rows
        assert dense.speedup.value == 1.0 and one.speedup.low <= one.speedup.value <= one.speedup.high
        assert one.params < eight.params < dense.params  # 19 filters, 24 (align 8), 32
        assert cell.started <= cell.ended
    lines = (tmp_path / "out" / RESULTS).read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "SweepHeader" and len(lines) == 3


def test_resume_runs_only_the_missing_cells(tmp_path, monkeypatch):
    grid = small_grid(tmp_path)
    run_sweep(grid, tmp_path / "out")
    results = tmp_path / "out" / RESULTS
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # interrupted: the last cell cut short
    timed = []
    real = runner_module.timing_job
    monkeypatch.setattr(runner_module, "timing_job", lambda *a: timed.append(a[2]) or real(*a))
    with pytest.raises(InputError, match="exists; a sweep writes a new folder"):
        run_sweep(grid, tmp_path / "out")
    report = run_sweep(grid, tmp_path / "out", resume=True)
    assert timed == ["b"] and [c.status for c in report.cells] == ["ok", "ok"]
    other = small_grid(tmp_path, rounds=4)
    with pytest.raises(InputError) as raised:
        run_sweep(other, tmp_path / "out", resume=True)
    assert str(raised.value) == (
        f"{results}: written by another grid (or its inputs changed); --resume continues the same"
    )


def test_an_input_that_fails_to_export_fails_its_row_only(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    grid = small_grid(tmp_path, inputs=(SweepInput(tmp_path / "broken.pt", "resnet18"),
                                        SweepInput(dead_conv(tmp_path / "a.onnx"))))  # fmt: skip
    report = run_sweep(grid, tmp_path / "out")
    broken, good = report.cells
    assert broken.status == "failed" and broken.reason.startswith(f"{tmp_path / 'broken.pt'}")
    assert good.status == "ok"


def test_a_device_class_no_node_has_is_refused_before_anything_runs(tmp_path):
    grid = small_grid(tmp_path, devices=(Device("onnxruntime", "local"), Device("onnxruntime", "epyc-avx512")))
    with pytest.raises(InputError) as raised:
        run_sweep(grid, tmp_path / "out")
    assert str(raised.value) == "sweep: no node has device class 'epyc-avx512' (there are: local (this machine))"
    assert not (tmp_path / "out").exists()


def test_the_local_sweep_needs_no_ray(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    report = run_sweep(small_grid(tmp_path, inputs=(SweepInput(dead_conv(tmp_path / "a.onnx")),)), tmp_path / "out")
    assert report.cells[0].status == "ok" and report.executor == "local"


@pytest.mark.parametrize(
    "text, message",
    [
        ('inputs = ["a.onnx"]\nspeed = 3\n', "unknown key 'speed' (known: inputs, precisions, modes, devices, rounds, "
                                             "iterations, batch, calibration)"),
        ('inputs = [{path = "a.onnx", ratio = 1}]\n', "unknown key 'ratio' in an input (known: path, arch, name)"),
        ('inputs = ["a.onnx"]\ndevices = ["tpu@local"]\n', "device 'tpu@local': unknown target 'tpu'"),
        ('inputs = ["a.onnx"]\nmodes = ["align 0"]\n', "sweep: mode 'align 0': 'align N' (N ≥ 1) or 'measured'"),
        ('inputs = ["nope.onnx"]\n', "nope.onnx: no such file"),
        ("inputs = [\n", "not a readable TOML file"),
    ],
)  # fmt: skip
def test_a_bad_sweep_file_is_refused_naming_what(tmp_path, text, message):
    dead_conv(tmp_path / "a.onnx")
    (tmp_path / "grid.toml").write_text(text)
    with pytest.raises(InputError) as raised:
        load_grid(tmp_path / "grid.toml")
    assert message in str(raised.value)


def test_the_cli_writes_the_table_and_refuses_an_existing_folder(tmp_path, capsys):
    dead_conv(tmp_path / "a.onnx")
    (tmp_path / "grid.toml").write_text(
        'inputs = ["a.onnx"]\nprecisions = ["fp32"]\nmodes = ["align 1"]\ndevices = ["onnxruntime@local"]\n'
        "rounds = 3\niterations = 5\n"
    )
    assert main(["sweep", str(tmp_path / "grid.toml"), "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.md", "results.jsonl", "sweep.json",
                                                                      "sweep.png"]  # fmt: skip
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| a | fp32 | align 1 |" in markdown and "onnxruntime@local" in markdown
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(tmp_path / "grid.toml"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {tmp_path / 'out'}: exists; a sweep writes a new folder (or continues its own with --resume)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_precision_int4_is_not_a_sweep_precision(tmp_path):
    with pytest.raises(InputError, match="int4 is for decoders"):
        small_grid(tmp_path, precisions=(Precision("int4"),))
