"""Export time of `sparsecut export` vs a bare `torch.onnx.export(dynamo=True)` of the same model, same run.

sparsecut does more than the bare export (safe load, mask folding, onnxruntime verification at two batch sizes,
metadata, atomic write); this prints what that costs as a ratio of medians.

    .venv/bin/python benchmarks/export.py [--arch resnet50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import export_checkpoint
from sparsecut.exporter.export import _silence_stdout
from sparsecut.exporter.masks import remove_prune_reparametrizations
from sparsecut.models import get_architecture, make_pruned_model, save_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--recipe", default="l1-filter")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    console = Console()
    shape = get_architecture(args.arch).input_shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_pruned_model(args.arch, args.recipe)
        checkpoint = folder / "ckpt.pt"
        save_state_dict(model, checkpoint)
        remove_prune_reparametrizations(model)
        example = torch.randn(2, *shape[1:])

        bare, ours = [], []
        for i in range(args.repeats):  # interleaved, so drift of the machine hits both alike
            start = time.perf_counter()
            with warnings.catch_warnings(), _silence_stdout():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    optimize=False,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                    verbose=False,
                )
                program.save(str(folder / f"bare{i}.onnx"))
            bare.append(time.perf_counter() - start)

            start = time.perf_counter()
            export_checkpoint(checkpoint, folder / f"ours{i}.onnx", arch=args.arch)
            ours.append(time.perf_counter() - start)

    table = Table(title=f"export time, {args.arch} ({args.recipe}), {args.repeats} repeats, median")
    for column in ("", "median s", "min s", "max s"):
        table.add_column(column)
    for name, times in (
        ("bare torch.onnx.export + save", bare),
        ("sparsecut export (load, fold, verify, write)", ours),
    ):
        table.add_row(name, f"{statistics.median(times):.2f}", f"{min(times):.2f}", f"{max(times):.2f}")
    console.print(table)
    console.print(f"ratio sparsecut / bare: {statistics.median(ours) / statistics.median(bare):.2f}×")


if __name__ == "__main__":
    main()
