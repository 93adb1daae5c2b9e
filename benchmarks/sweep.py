"""The same sweep twice on this machine — in this process (local) and on a throwaway one-machine Ray (`--ray
local`) — and what they agree on: the same cells, each row's speedup inside the other run's interval; and what
Ray costs per cell (the run's wall time over the cells, the cell's own timing span, and the difference).

Inputs: sparsecut's reference ResNet-18/50 pruned by l1-filter at each `--ratios` (checkpoints: the sweep exports
them), and with `--yolo` Ultralytics YOLOv8n masked by Torch-Pruning (families.py; benchmark-only). The grid:
`--precisions` × `--modes` × `--targets` on device class `local`.

    YOLO_OFFLINE=1 .venv/bin/python benchmarks/sweep.py [--models resnet18 resnet50] [--ratios 0.3 0.5] \\
        [--precisions fp32 int8] [--modes "align 8" measured] [--targets onnxruntime openvino] [--yolo] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sparsecut.models.recipes import make_pruned_model, save_state_dict
from sparsecut.precision import Precision
from sparsecut.sweep import Device, Grid, SweepInput, run_sweep
from sparsecut.sweep.onray import RayExecutor


def inputs(folder: Path, models: list[str], ratios: list[float], yolo: bool, tvshim: Path) -> list[SweepInput]:
    found = []
    for arch in models:
        for ratio in ratios:
            path = folder / f"{arch}-l1-{ratio:g}.pt"
            save_state_dict(make_pruned_model(arch, "l1-filter", ratio), path)
            found.append(SweepInput(path, arch, f"{arch} {ratio:g}"))
    if yolo:
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from common import load_tvshim
        from families import FAMILIES

        from sparsecut.exporter import ExportOptions, export_module

        load_tvshim(tvshim)
        family = FAMILIES["yolov8n"]
        for ratio in ratios:
            model, ignored = family.build()
            shape = (1, 3, family.size, family.size)
            masked, _, failure = family.prune(model, shape, ignored, ratio)
            assert not failure, failure
            path = folder / f"yolov8n-{ratio:g}.onnx"
            export_module(
                family.prepare(masked, "dynamo"), path, ExportOptions(input_shape=shape, rtol=1e-3, atol=1e-4)
            )
            found.append(SweepInput(path, name=f"yolov8n {ratio:g}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--modes", nargs="+", default=["align 8", "measured"])
    parser.add_argument("--targets", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--yolo", action="store_true")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--tvshim", type=Path, default=Path(__file__).parents[2] / "shared" / "tvshim.py")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console(width=200)
    with tempfile.TemporaryDirectory(prefix="sparsecut-sweep-bench-") as tmp:
        folder = Path(tmp)
        grid = Grid(
            inputs=tuple(inputs(folder, args.models, args.ratios, args.yolo, args.tvshim)),
            precisions=tuple(Precision.parse(p) for p in args.precisions),
            modes=tuple(args.modes),
            devices=tuple(Device(t, "local") for t in args.targets),
            rounds=args.rounds,
            iterations=args.iterations,
        )
        runs = {}
        start = time.perf_counter()
        runs["local"] = (run_sweep(grid, folder / "local"), time.perf_counter() - start)
        start = time.perf_counter()
        with RayExecutor("local") as executor:
            runs["ray"] = (run_sweep(grid, folder / "ray", executor), time.perf_counter() - start)
    local, ray = (runs[k][0] for k in ("local", "ray"))
    table = Table(title="local vs Ray-local: speedup vs dense on the device (95 % interval)")
    for column in ("cell", "mode", "local", "ray", "agree"):
        table.add_column(column, justify="left" if column in ("cell", "mode") else "right")
    agree, compared = 0, 0
    rows_json = []
    cells = {c.key: c for c in ray.cells}
    assert [c.key for c in local.cells] == [c.key for c in ray.cells], "the two runs differ in cells"
    for a in local.cells:
        b = cells[a.key]
        for row_a, row_b in zip(a.rows, b.rows, strict=True):
            if row_a.mode == "dense":
                continue
            sa, sb = row_a.speedup, row_b.speedup
            inside = sa.low <= sb.value <= sa.high and sb.low <= sa.value <= sb.high
            agree += inside
            compared += 1
            table.add_row(a.key, row_a.mode, f"{sa.value:.2f} ({sa.low:.2f}–{sa.high:.2f})",
                          f"{sb.value:.2f} ({sb.low:.2f}–{sb.high:.2f})", "yes" if inside else "no")  # fmt: skip
            rows_json.append({"cell": a.key, "mode": row_a.mode, "local": sa.to_dict(), "ray": sb.to_dict(),
                              "agree": inside})  # fmt: skip
    console.print(table)
    spans = {
        k: sum(c.ended - c.started for c in r.cells if c.status == "ok") for k, r in (("local", local), ("ray", ray))
    }
    walls = {k: runs[k][1] for k in runs}
    per_cell = (walls["ray"] - walls["local"]) / max(1, len(local.cells))
    console.print(
        f"{agree} of {compared} rows agree (each inside the other's interval); wall: local {walls['local']:.0f} s, "
        f"Ray {walls['ray']:.0f} s (cells' own timing spans {spans['local']:.0f} s and {spans['ray']:.0f} s); Ray's "
        f"overhead {per_cell:+.1f} s per cell ({len(local.cells)} cells)"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows_json, "walls": walls, "spans": spans,
                                         "overhead_per_cell_s": per_cell}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
