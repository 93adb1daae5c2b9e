"""Does int8 pay, and in which format? Dense and lean × fp32 and every int8 format, interleaved, per backend.

Per model: the dense baseline (every pass but channel removal) and lean (align 8), each in fp32 and quantized in
every format of sparsecut/quantization.py (calibrated on seeded random inputs: the latency does not depend on the
data, the drift figures are for a random-weight net and only show the formats' relative loss). All variants are
timed in one interleaved run on each backend (onnxruntime; OpenVINO with --backends). Printed per backend: p50 and
speedup vs dense fp32 with 95 % intervals, the drift of each int8 variant vs its fp32 graph on held-out samples
(max abs, worst output SQNR, top-1), per model the per-layer SQNR of lean int8 in every format, and the four figures
the issue asks for: quantization speedup (lean fp32 / lean int8, best format), pruning speedup at int8 (dense int8
/ lean int8, same format), total (exported fp32 / lean int8), and which format the target names first
(`int8_formats`) against the format that measured fastest.

    .venv/bin/python benchmarks/precision.py [--models resnet18 resnet50 ...] [--backends onnxruntime openvino]
        [--max-drift 40dB]   # every int8 variant held to the bound: layers back in fp32 until it holds
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from common import TVSHIM, load_tvshim, masked_model
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import ExportOptions, export_module
from sparsecut.models import make_pruned_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.drift import DriftBound, parse_drift_bound
from sparsecut.passes.precision import PrecisionRequest, convert_precision
from sparsecut.precision import Precision
from sparsecut.quantization import FORMATS
from sparsecut.report import decibels
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models, get_target
from sparsecut.targets.noise import speedup
from sparsecut.workflow import baseline_passes

MODELS = ("resnet18", "resnet50", "efficientnet_b0", "vit_tiny_patch16_224")
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def build_variants(
    name: str, folder: Path, formats: list[str], bound: DriftBound | None = None
) -> tuple[dict[str, Path], dict[str, dict]]:
    exported = folder / f"{name}.onnx"
    if name.startswith("resnet"):
        model, shape = make_pruned_model(name, "l1-filter", 0.5), (1, 3, 224, 224)
    else:
        model, shape = masked_model(name, 0.4)
    export_module(model, exported, ExportOptions(input_shape=shape, **TOLERANCE))
    paths = {"exported fp32": exported}
    dense, lean = folder / f"{name}.dense.onnx", folder / f"{name}.lean.onnx"
    optimize_model(exported, dense, OptimizeOptions(passes=baseline_passes(OptimizeOptions().passes), **TOLERANCE))
    optimize_model(exported, lean, OptimizeOptions(**TOLERANCE))
    paths["dense fp32"], paths["lean fp32"] = dense, lean
    drift = {}
    for fmt in formats:
        for kind, source in (("dense", dense), ("lean", lean)):
            out = folder / f"{name}.{kind}.{fmt}.onnx"
            report = convert_precision(source, out, PrecisionRequest(Precision("int8").in_format(fmt), max_drift=bound))
            paths[f"{kind} {fmt}"] = out
            sqnr = [o.sqnr_db for o in report.outputs if o.sqnr_db is not None]
            drift[f"{kind} {fmt}"] = {"max_abs": report.max_abs_error, "mean_abs": report.mean_abs_error,
                                      "top1": report.top1_agreement, "sqnr_db": min(sqnr) if sqnr else None,
                                      "layers": [layer.to_dict() for layer in report.layers],
                                      "fallback": report.fallback}  # fmt: skip
    return paths, drift


def bench(
    name: str,
    folder: Path,
    backends: list[str],
    formats: list[str],
    rounds: int,
    iterations: int,
    bound: DriftBound | None = None,
) -> dict:
    paths, drift = build_variants(name, folder, formats, bound)
    labels = list(paths)
    report = compare_models(
        list(paths.values()), target=",".join(backends), baseline=paths["dense fp32"],
        options=ProfileOptions(iterations=iterations, warmup=5, per_layer=False), rounds=rounds,
    )  # fmt: skip
    per_backend: dict[str, dict] = {}
    samples: dict[str, dict[str, list[list[float]]]] = {}
    for i, v in enumerate(report.variants):
        per_backend.setdefault(v.target, {})[labels[i % len(labels)]] = {
            "p50_ms": v.latency.p50_ms,
            "vs_dense_fp32": {"value": v.speedup.value, "low": v.speedup.low, "high": v.speedup.high},
        }
        samples.setdefault(v.target, {})[labels[i % len(labels)]] = v.rounds_ms
    summary = {}
    for backend, rows in per_backend.items():
        p50 = {label: row["p50_ms"] for label, row in rows.items()}
        best = min(formats, key=lambda f: p50[f"lean {f}"])
        named = get_target(backend).int8_formats(BuildOptions())[0]

        def ratio(reference: str, candidate: str) -> dict:  # with its interval over the same rounds
            s = speedup(samples[backend][reference], samples[backend][candidate])  # noqa: B023
            return {"value": s.value, "low": s.low, "high": s.high}

        summary[backend] = {
            "fastest_format": best,
            "target_names_first": named,
            "named_over_fastest_p50": p50[f"lean {named}"] / p50[f"lean {best}"] if named in formats else None,
            "quantization_speedup": ratio("lean fp32", f"lean {best}"),
            "pruning_speedup_int8": ratio(f"dense {best}", f"lean {best}"),
            "pruning_speedup_fp32": ratio("dense fp32", "lean fp32"),
            "total": ratio("exported fp32", f"lean {best}"),
        }
    return {"model": name, "device": report.device, "rows": per_backend, "drift": drift, "summary": summary}


def layers_table(console: Console, result: dict, formats: list[str], shown: int = 8) -> None:
    """Per-layer SQNR of lean int8, each format side by side: the layers that lose most in the first format."""
    drift = result["drift"]
    first = drift[f"lean {formats[0]}"]["layers"]
    by_format = {f: {layer["node"]: layer for layer in drift[f"lean {f}"]["layers"]} for f in formats}
    table = Table(title=f"{result['model']}: lean int8, the {shown} layers that lose most in {formats[0]} (of "
                  f"{len(first)}): output SQNR dB / dB lost, per format", title_justify="left")  # fmt: skip
    table.add_column("node")
    table.add_column("module")
    for f in formats:
        table.add_column(f, justify="right")
    for layer in first[:shown]:
        cells = []
        for f in formats:
            other = by_format[f].get(layer["node"])
            cells.append(f"{decibels(other['sqnr_db'])} / {other['loss_db']:.1f}" if other else "-")
        table.add_row(layer["node"], layer["module"] or "-", *cells)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=["onnxruntime"], choices=["onnxruntime", "openvino"])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--tvshim", type=Path, default=TVSHIM)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--max-drift", help="hold every int8 variant to this bound (30dB, 1%%): layers back in fp32")
    args = parser.parse_args()
    bound = parse_drift_bound(args.max_drift) if args.max_drift else None
    load_tvshim(args.tvshim)
    logging.getLogger("sparsecut.passes.precision").setLevel(logging.ERROR)  # random calibration: said above
    console = Console(width=200)
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-precision-") as tmp:
        for name in args.models:
            console.print(f"{name} …")
            results.append(bench(name, Path(tmp), args.backends, args.formats, args.rounds, args.iterations, bound))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        for backend, rows in r["rows"].items():
            table = Table(title=f"{r['model']} on {r['device']} ({backend}): p50 and speedup vs dense fp32 (95 % "
                          "interval); int8 drift vs its fp32 graph", title_justify="left")  # fmt: skip
            for column in ("variant", "p50 ms", "vs dense fp32", "max abs drift", "SQNR dB", "top-1 agreement",
                           "layers in fp32"):  # fmt: skip
                table.add_column(column, justify="left" if column == "variant" else "right")
            for label, row in rows.items():
                s, d = row["vs_dense_fp32"], r["drift"].get(label)
                table.add_row(label, f"{row['p50_ms']:.3f}", f"{s['value']:.2f} ({s['low']:.2f}–{s['high']:.2f})",
                              f"{d['max_abs']:.3g}" if d else "-",
                              f"{d['sqnr_db']:.1f}" if d and d["sqnr_db"] is not None else "-",
                              f"{100 * d['top1']:.0f} %" if d and d["top1"] is not None else "-",
                              str(len(d["fallback"])) if d else "-")  # fmt: skip
            console.print(table)
        layers_table(console, r, args.formats)
    summary = Table(title="per model and backend (p50 ratios with 95 % intervals over the rounds, best int8 format)")
    for column in ("model", "backend", "fastest format", "target names first", "named / fastest", "lean fp32 / int8",
                   "pruning at int8", "pruning at fp32", "exported fp32 / lean int8"):  # fmt: skip
        summary.add_column(column, justify="left" if column in ("model", "backend") else "right")
    for r in results:
        for backend, s in r["summary"].items():
            named = s["named_over_fastest_p50"]
            interval = lambda x: f"{x['value']:.2f} ({x['low']:.2f}–{x['high']:.2f})"  # noqa: E731
            summary.add_row(r["model"], backend, s["fastest_format"], s["target_names_first"],
                            f"{named:.2f}" if named else "-", interval(s["quantization_speedup"]),
                            interval(s["pruning_speedup_int8"]), interval(s["pruning_speedup_fp32"]),
                            interval(s["total"]))  # fmt: skip
    console.print(summary)


if __name__ == "__main__":
    main()
