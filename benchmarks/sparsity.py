"""2:4 and precision on the ResNet-50-sized reference model, measured in one run:

- time of annotate-2to4 (2:4 detection on every weight) on the lean model;
- onnxruntime CPU latency of the lean model in fp32, fp16 and int8 QDQ (random calibration), interleaved —
  the ratios are printed whatever they are: a CPU without fast int8/fp16 paths may well run them slower.

    .venv/bin/python benchmarks/sparsity.py [--arch resnet50] [--iterations 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import export_checkpoint
from sparsecut.models import make_pruned_model, save_state_dict
from sparsecut.passes import AnnotateTwoFourPass, OptimizeOptions, optimize_model
from sparsecut.targets import ProfileOptions, compare_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_state_dict(make_pruned_model(args.arch, "l1-filter", 0.5), folder / "ckpt.pt")
        export_checkpoint(folder / "ckpt.pt", folder / "dense.onnx", arch=args.arch)
        optimize_model(folder / "dense.onnx", folder / "fp32.onnx")
        model = ir.load(folder / "fp32.onnx")
        start = time.perf_counter()
        annotate = AnnotateTwoFourPass()
        annotate(model)
        annotate_s = time.perf_counter() - start
        for precision in ("fp16", "int8"):
            optimize_model(folder / "dense.onnx", folder / f"{precision}.onnx", OptimizeOptions(precision=precision))
        report = compare_models(
            [folder / f"{p}.onnx" for p in ("fp32", "fp16", "int8")],
            options=ProfileOptions(iterations=args.iterations, warmup=5, threads=args.threads, per_layer=False),
            rounds=10,
        )
    console.print(
        f"annotate-2to4 on {len(annotate.layers)} weights of the lean {args.arch}: {annotate_s * 1000:.0f} ms"
    )
    table = Table(title=f"lean {args.arch} on {report.device}, onnxruntime CPU, {args.threads} threads, interleaved")
    for column in ("precision", "p50 ms", "p90 ms", "latency vs fp32"):
        table.add_column(column, justify="right")
    for v in report.variants:
        table.add_row(Path(v.model).stem, f"{v.latency.p50_ms:.2f}", f"{v.latency.p90_ms:.2f}", f"{1 / v.speedup:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
