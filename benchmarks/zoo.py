"""Does remove-dead-channels read the nets users prune, whichever exporter wrote them? A corpus of real
topologies (families.py: timm, Ultralytics YOLO, segmentation_models_pytorch, plain torch), each masked with the
channels Torch-Pruning removes, exported by both of PyTorch's exporters, optimized by sparsecut, and compared with
Torch-Pruning's own physically pruned model exported the same way.

Per model (seeded random init with trained-like BatchNorm; Torch-Pruning's MetaPruner, L1 magnitude, ratio 0.4,
its DepGraph groups, the classifier or head ignored as its examples do): the masked model (those channels'
weights zeroed, nothing removed) is exported by dynamo (`sparsecut export`'s path) and by the TorchScript exporter
(`torch.onnx.export(dynamo=False, opset_version=17)`, dynamic batch), and optimized (`align 1`, lossless, gated at
rtol 1e-4); Torch-Pruning's physical copy is exported by the same exporter. Printed per model and exporter:

- exact: the gate's max relative error of lean vs masked (≤ 1e-4 or nothing is written);
- TP = masked: whether Torch-Pruning's physical model computes what the masked one does (max relative error in
  PyTorch). Where it does not (it renormalizes GroupNorm over the kept channels only), no exact tool can remove
  what it removed, and its share is shown but not a target;
- removed: the weights sparsecut removed over those Torch-Pruning removed (both counted in the ONNX files of the
  same exporter, so folded and explicit BatchNorm count alike); target ≥ 95 % where TP = masked;
- lean / physical p50 (align 1, and with `--measured` the counts `optimize --target onnxruntime` chooses),
  interleaved on onnxruntime CPU, with the 95 % interval; target ≤ 1.03 for the measured lean;
- barriers (ops without a rule), rules that declined (with their condition) and rule errors (a bug).

Where Torch-Pruning itself fails (raises, or its pruned model does not run), the row says so, and the model is
masked per layer instead (each conv's 40 % lowest-L1 filters, independently): sparsecut removes what it can
exactly; "params removed / zero" (removed weights over weights zero in the masked file) says how much.

    .venv/bin/python benchmarks/zoo.py [--models resnet18 yolov8n ...] [--exporters dynamo torchscript]
                                       [--measured] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import load_tvshim, model_arguments
from families import FAMILIES
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import nn

from sparsecut.cost import count_costs
from sparsecut.exporter import ExportOptions, export_module
from sparsecut.modelfile import load_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.targets import ProfileOptions, compare_models

EXPORTERS = ("dynamo", "torchscript")
MODELS = list(FAMILIES)
TP_EXACT = 1e-3  # Torch-Pruning's physical model "computes what the masked one does" within this relative error


def export(model: nn.Module, path: Path, shape: tuple[int, ...], exporter: str) -> None:
    if exporter == "dynamo":
        export_module(model, path, ExportOptions(input_shape=shape, rtol=1e-3, atol=1e-4))
        return
    example = torch.randn(2, *shape[1:])  # (batch 2 traced, batch axis dynamic)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, and tracer warnings about Python values
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip


def bench(
    name: str,
    folder: Path,
    ratio: float,
    rounds: int,
    iterations: int,
    exporters: tuple[str, ...] = EXPORTERS,
    measured: bool = False,
) -> list[dict[str, object]]:
    """One row per exporter for family `name`."""
    family = FAMILIES[name]
    torch.manual_seed(0)
    model, ignored = family.build()
    shape = (1, 3, family.size, family.size)
    masked, physical, tp_failure = family.prune(model, shape, ignored, ratio)
    tp_error = _tp_error(masked, physical, shape) if physical is not None else None
    rows = []
    for exporter in exporters:
        masked_file, lean_file, physical_file = (folder / f"{name}.{exporter}.{kind}.onnx"
                                                 for kind in ("masked", "lean", "tp"))  # fmt: skip
        start = time.perf_counter()
        export(family.prepare(masked, exporter), masked_file, shape, exporter)
        report = optimize_model(masked_file, lean_file, OptimizeOptions(align=1))
        seconds = time.perf_counter() - start
        step = next(p for p in report.passes if p.name == "remove-dead-channels")
        row: dict[str, object] = {
            "model": name,
            "exporter": exporter,
            "source": family.source,
            "what": family.what,
            "exact_max_rel_error": max(c.max_rel_error for c in report.checks),
            "params_masked": report.before.params,
            "params_lean": report.after.params,
            "params_zero": _zero_params(masked_file),
            "barriers": step.barriers,
            "declined": step.declined,
            "rule_errors": step.rule_errors,
            "dead": sum(g.dead for g in step.groups),
            "kept_dead": _kept_dead(step.groups),
            "export_optimize_s": seconds,
            "tp_failure": tp_failure,
            "tp_max_rel_error": tp_error,
            "tp_exact": tp_error is not None and tp_error <= TP_EXACT,
            "layernorm_family": family.layernorm,
        }
        if physical is not None:
            export(family.prepare(physical, exporter), physical_file, shape, exporter)
            params_tp = count_costs(load_model(physical_file)).params
            removed_tp = report.before.params - params_tp
            row["params_tp"] = params_tp
            row["removed_fraction"] = (report.before.params - report.after.params) / removed_tp if removed_tp else None
            files = [physical_file, lean_file]
            if measured:
                files.append(_measured_lean(masked_file, folder / f"{name}.{exporter}.measured.onnx", row))
            compared = compare_models(
                files, options=ProfileOptions(iterations=iterations, warmup=5, per_layer=False), rounds=rounds
            )
            for key, variant in zip(("lean_over_physical_p50", "measured_over_physical_p50"),
                                    compared.variants[1:], strict=False):  # fmt: skip
                speedup = variant.speedup  # physical p50 / lean p50
                row[key] = {"value": 1 / speedup.value, "low": 1 / speedup.high, "high": 1 / speedup.low}
            row["device"] = compared.device
        rows.append(row)
    return rows


def _measured_lean(masked: Path, output: Path, row: dict[str, object]) -> Path:
    """The lean model with channel counts chosen by latency on onnxruntime (`optimize --target onnxruntime`)."""
    from sparsecut.passes.measured import optimize_measured
    from sparsecut.targets.tuning import tuning_for

    report = optimize_measured(masked, output, OptimizeOptions(), tuning_for("onnxruntime", budget=30.0))
    row["measured_params"] = report.after.params
    return output


def _tp_error(masked: nn.Module, physical: nn.Module, shape: tuple[int, ...]) -> float:
    """Max relative error of Torch-Pruning's physical model against the masked one, in PyTorch."""
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = _first_tensor(masked.eval()(x)), _first_tensor(physical.eval()(x))
    return float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))


def _first_tensor(out: object) -> torch.Tensor:
    while isinstance(out, (list, tuple)):
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out


def _zero_params(path: Path) -> int:
    """Weights that are exactly zero in the exported masked model (what masking left for removal)."""
    model = load_model(path)
    return sum(int((v.const_value.numpy() == 0).sum()) for v in model.graph.initializers.values()
               if v.const_value is not None and v.const_value.dtype.is_floating_point())  # fmt: skip


def _kept_dead(groups: list) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for group in groups:
        for reason, count in group.kept_dead.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return reasons


def _ratio(value: object) -> str:
    return f"{value['value']:.3f} ({value['low']:.3f}–{value['high']:.3f})" if isinstance(value, dict) else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(parser, MODELS, iterations=30)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--exporters", nargs="+", default=list(EXPORTERS), choices=EXPORTERS)
    parser.add_argument("--measured", action="store_true", help="also time the lean model of optimize --target")
    args = parser.parse_args()
    load_tvshim(args.tvshim)
    logging.disable(logging.WARNING)  # the tables say what matters; rule warnings land in the rows
    console = Console(width=260)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-zoo-") as tmp:
        for name in track(args.models, description="models", console=console):
            results += bench(name, Path(tmp), args.ratio, args.rounds, args.iterations, tuple(args.exporters),
                             args.measured)  # fmt: skip
    table = Table(title=f"remove-dead-channels on models masked by Torch-Pruning (ratio {args.ratio:.1f})")
    columns = ["model", "exporter", "exact (max rel)", "TP = masked", "removed / TP removed", "params removed / zero",
               "lean / TP p50 (95 %)", *(["measured / TP p50 (95 %)"] if args.measured else []),
               "barriers", "declined", "dead kept (why)"]  # fmt: skip
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("model", "exporter", "declined", "dead kept (why)") else "right"
        )
    for r in results:
        fraction = r.get("removed_fraction")
        tp = r["tp_max_rel_error"]
        table.add_row(
            str(r["model"]),
            str(r["exporter"]),
            f"{r['exact_max_rel_error']:.1e}",
            "–" if tp is None else ("yes" if r["tp_exact"] else f"no ({tp:.0e})"),
            f"{fraction:.1%}" if isinstance(fraction, float) else f"TP failed: {r['tp_failure']}",
            f"{(r['params_masked'] - r['params_lean']) / r['params_zero']:.1%}" if r["params_zero"] else "–",  # type: ignore[operator]
            _ratio(r.get("lean_over_physical_p50")),
            *([_ratio(r.get("measured_over_physical_p50"))] if args.measured else []),
            ", ".join(f"{k} ×{v}" for k, v in r["barriers"].items()) or "none",  # type: ignore[attr-defined]
            "; ".join(f"{k} ×{v}" for k, v in r["declined"].items())[:160] or "none",  # type: ignore[attr-defined]
            "; ".join(f"{v} {k}" for k, v in r["kept_dead"].items())[:160] or "–",  # type: ignore[attr-defined]
        )
    console.print(table)
    judged = [r for r in results if r["tp_exact"] and isinstance(r.get("removed_fraction"), float)]
    measured = [r["measured_over_physical_p50"]["value"] for r in results if "measured_over_physical_p50" in r]  # type: ignore[index]
    console.print(
        f"targets: exact on every model ({all(r['exact_max_rel_error'] <= 1e-4 for r in results)}); ≥ 95 % of "
        f"Torch-Pruning's removed weights wherever its model equals the masked one "
        f"({all(r['removed_fraction'] >= 0.95 for r in judged)}, lowest "  # type: ignore[operator]
        f"{min((r['removed_fraction'] for r in judged), default=float('nan')):.1%}); "  # type: ignore[type-var]
        f"no rule error ({not any(r['rule_errors'] for r in results)})"
        + (f"; measured lean / TP p50 ≤ 1.03 (worst {max(measured):.3f})" if measured else "")
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
