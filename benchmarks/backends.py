"""Which runtime to ship, and does the pruning pay on it? onnxruntime and OpenVINO side by side, same files, one
interleaved run per model.

Per model: the exported (pruned, not yet lean) file, the dense baseline (every pass but channel removal), lean at a
fixed alignment of 8, lean with channel counts measured on onnxruntime and measured on OpenVINO, and the dense
baseline and lean (align 8) quantized to int8 (sparsecut's QDQ, random calibration: latency only). Every variant is
timed on both backends in the same rounds (`compare --target onnxruntime,openvino`). Printed: p50 per variant and
backend, the pruning speedup (dense / lean) on each backend with its 95 % interval, OpenVINO vs onnxruntime per
variant, and which backend wins each model. Models: the reference ResNet-18 and ResNet-50 (l1-filter 0.5), and timm's
MobileNetV2, EfficientNet-B0, ViT-tiny and ConvNeXt-atto (MLP hidden neurons) masked with Torch-Pruning's channel
choice (ratio 0.4).

timm and Torch-Pruning are benchmark-only (`pip install timm torch-pruning`, with `torch==2.13.0` in the same call);
OpenVINO comes with the dev extra.

    .venv/bin/python benchmarks/backends.py [--models resnet18 efficientnet_b0 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from common import TVSHIM, load_tvshim, masked_model
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import ExportOptions, export_module
from sparsecut.models import make_pruned_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.measured import optimize_measured
from sparsecut.passes.precision import PrecisionRequest, convert_precision
from sparsecut.precision import Precision
from sparsecut.targets import ProfileOptions, compare_models
from sparsecut.targets.tuning import tuning_for
from sparsecut.workflow import baseline_passes

MODELS = {
    "resnet18": "reference, l1-filter 0.5",
    "resnet50": "reference, l1-filter 0.5",
    "mobilenetv2_100": "timm, depthwise (Torch-Pruning 0.4, masked)",
    "efficientnet_b0": "timm, depthwise + SE (Torch-Pruning 0.4, masked)",
    "vit_tiny_patch16_224": "timm, MLP hidden (Torch-Pruning 0.4, masked)",
    "convnext_atto": "timm, MLP hidden (Torch-Pruning 0.4, masked)",
}
BACKENDS = ("onnxruntime", "openvino")
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def exported(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    if name in ("resnet18", "resnet50"):
        model, shape = make_pruned_model(name, "l1-filter", 0.5), (1, 3, 224, 224)
    else:
        model, shape = masked_model(name, 0.4)
    export_module(model, path, ExportOptions(input_shape=shape, **TOLERANCE))
    return path


def variants(source: Path, folder: Path, table: Path, budget: float) -> dict[str, Path]:
    stem = source.stem
    paths = {"exported": source}
    lean = OptimizeOptions(**TOLERANCE)
    paths["dense"] = folder / f"{stem}.dense.onnx"
    optimize_model(source, paths["dense"], OptimizeOptions(passes=baseline_passes(lean.passes), **TOLERANCE))
    paths["lean align 8"] = folder / f"{stem}.lean8.onnx"
    optimize_model(source, paths["lean align 8"], lean)
    for backend in BACKENDS:
        out = folder / f"{stem}.measured-{backend}.onnx"
        optimize_measured(source, out, lean, tuning_for(backend, table=table, budget=budget))
        paths[f"lean measured on {backend}"] = out
    for name, origin in (("dense int8", "dense"), ("lean int8", "lean align 8")):
        out = folder / f"{stem}.{origin.replace(' ', '')}.int8.onnx"
        convert_precision(paths[origin], out, PrecisionRequest(Precision("int8")))
        paths[name] = out
    return paths


def bench(name: str, folder: Path, table: Path, rounds: int, iterations: int, budget: float) -> dict[str, object]:
    start = time.perf_counter()
    paths = variants(exported(name, folder), folder, table, budget)
    labels = list(paths)
    report = compare_models(
        list(paths.values()), target=",".join(BACKENDS), baseline=paths["dense"],
        options=ProfileOptions(iterations=iterations, warmup=5, per_layer=False), rounds=rounds,
    )  # fmt: skip
    rows = {}
    for i, variant in enumerate(report.variants):
        label, backend = labels[i % len(labels)], variant.target
        rows[f"{label} @ {backend}"] = {
            "variant": label,
            "backend": backend,
            "p50_ms": variant.latency.p50_ms,
            "vs_dense": _interval(variant.speedup),
            "vs_onnxruntime": _interval(variant.backend_speedup) if variant.backend_speedup else None,
            "macs_ratio": variant.macs_ratio,
        }
    lean_p50 = {b: rows[f"lean align 8 @ {b}"]["p50_ms"] for b in BACKENDS}
    best = {b: min((r["p50_ms"], r["variant"]) for r in rows.values() if r["backend"] == b) for b in BACKENDS}
    return {
        "model": name,
        "what": MODELS[name],
        "device": report.device,
        "rows": rows,
        "pruning_speedup": {b: rows[f"lean align 8 @ {b}"]["vs_dense"] for b in BACKENDS},
        "pruning_speedup_int8": {
            b: rows[f"dense int8 @ {b}"]["p50_ms"] / rows[f"lean int8 @ {b}"]["p50_ms"] for b in BACKENDS
        },
        "fastest_lean_fp32_backend": min(lean_p50, key=lambda b: lean_p50[b]),
        "fastest_variant": {b: {"variant": v, "p50_ms": p} for b, (p, v) in best.items()},
        "seconds": time.perf_counter() - start,
    }


def _interval(s: object) -> dict[str, float]:
    return {"value": s.value, "low": s.low, "high": s.high}  # type: ignore[attr-defined]


def _cell(d: dict[str, float] | None) -> str:
    return "-" if d is None else f"{d['value']:.2f} ({d['low']:.2f}–{d['high']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--tune-budget", type=float, default=30.0)
    parser.add_argument("--tvshim", type=Path, default=TVSHIM)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_tvshim(args.tvshim)
    logging.getLogger("sparsecut.passes.precision").setLevel(logging.ERROR)  # random calibration: latency only
    console = Console(width=220)
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-backends-") as tmp:
        table_path = Path(tmp) / "lut.json"
        for name in args.models:
            console.print(f"{name} …")
            results.append(bench(name, Path(tmp), table_path, args.rounds, args.iterations, args.tune_budget))
            if args.json:  # written as it goes: a long run keeps what it measured
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        table = Table(title=f"{r['model']} ({r['what']}) on {r['device']}: p50 ms; speedup vs dense on the same "
                      "backend; OpenVINO vs onnxruntime (95 % intervals)", title_justify="left")  # fmt: skip
        for column in ("variant", *(f"{b} p50" for b in BACKENDS), *(f"vs dense, {b}" for b in BACKENDS),
                       "openvino vs onnxruntime"):  # fmt: skip
            table.add_column(column, justify="left" if column == "variant" else "right")
        rows = r["rows"]
        for variant in dict.fromkeys(row["variant"] for row in rows.values()):
            cells = [rows[f"{variant} @ {b}"] for b in BACKENDS]
            table.add_row(variant, *(f"{c['p50_ms']:.3f}" for c in cells), *(_cell(c["vs_dense"]) for c in cells),
                          _cell(cells[1]["vs_onnxruntime"]))  # fmt: skip
        console.print(table)
    summary = Table(title="per model: pruning speedup (dense / lean align 8) per backend, and which backend wins")
    for column in ("model", *(f"pruning {b}" for b in BACKENDS), *(f"pruning int8 {b}" for b in BACKENDS),
                   "faster lean fp32", *(f"fastest on {b}" for b in BACKENDS)):  # fmt: skip
        summary.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        summary.add_row(
            str(r["model"]), *(_cell(r["pruning_speedup"][b]) for b in BACKENDS),
            *(f"{r['pruning_speedup_int8'][b]:.2f}" for b in BACKENDS), str(r["fastest_lean_fp32_backend"]),
            *(f"{r['fastest_variant'][b]['variant']} {r['fastest_variant'][b]['p50_ms']:.2f} ms" for b in BACKENDS),
        )  # fmt: skip
    console.print(summary)


if __name__ == "__main__":
    main()
