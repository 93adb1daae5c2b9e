"""Which channel count pays on this device? Fixed alignments against counts measured on the target, on real
timm topologies pruned with Torch-Pruning's channel choice (ratio 0.4, masked: the channels zeroed, not removed).

Per model, in one run, interleaved on onnxruntime CPU against the masked input: `optimize --align 1/8/16/32` and
`optimize --target onnxruntime` (measured). Prints speedups vs the masked model with their 95 % intervals, the
measured p50 over the best fixed alignment's (target ≤ 1.03), whether measured is ever slower than masked beyond
noise, and the tuning time of a first run (empty latency table) and of a second run on the same table (target:
its layer measurements < 10 % of the first's).

timm and Torch-Pruning are benchmark-only dependencies: `pip install timm torch-pruning` into the venv (with
`torch==2.13.0` in the same call). timm needs torchvision, which does not load beside the CPU torch wheel here:
../shared/tvshim.py (by path, `--tvshim`) defines its operator schemas first.

    .venv/bin/python benchmarks/alignment.py [--models regnety_002 efficientnet_b0 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import TVSHIM, load_tvshim, prune_both_ways, trained_like_batchnorm
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import ExportOptions, export_module
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.measured import optimize_measured
from sparsecut.targets import ProfileOptions, compare_models
from sparsecut.targets.tuning import tuning_for

MODELS = {  # name: what it brings
    "regnety_002": "grouped convs (group width 8) + SE",
    "efficientnet_b0": "depthwise + SE + SiLU",
    "mobilenetv3_small_100": "depthwise + SE + hard-swish",
    "hrnet_w18_small": "multi-branch, multi-resolution fusion",
    "resnet18": "residual basic blocks",
    "mixnet_s": "mixed depthwise kernels (split/concat)",
    "vit_tiny_patch16_224": "transformer MLP hidden neurons",
}
ALIGNMENTS = (1, 8, 16, 32)


def masked_model(name: str, ratio: float) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """A timm model (seeded random init) whose channels Torch-Pruning would remove at `ratio` are zeroed."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    trained_like_batchnorm(model)
    shape = (1, *model.default_cfg["input_size"])
    if name.startswith(("vit", "convnext")):  # only the MLP hidden neurons: embedding channels flow through LayerNorm
        layers = (torch.nn.Linear, torch.nn.Conv2d)
        ignored = [m for n, m in model.named_modules() if isinstance(m, layers) and not n.endswith("mlp.fc1")]
    else:
        ignored = [model.get_classifier()]
    masked, _, failure = prune_both_ways(model, shape, ignored, ratio)
    assert not failure, failure
    return masked, shape


def bench(name: str, folder: Path, table: Path, ratio: float, rounds: int, iterations: int) -> dict[str, object]:
    model, shape = masked_model(name, ratio)
    masked = folder / f"{name}.onnx"
    export_module(model, masked, ExportOptions(input_shape=shape, rtol=1e-3, atol=1e-4))
    paths = [masked]
    for align in ALIGNMENTS:
        out = folder / f"{name}.align{align}.onnx"
        optimize_model(masked, out, OptimizeOptions(align=align, rtol=1e-3, atol=1e-4))
        paths.append(out)
    tuned = []
    for attempt in (1, 2):  # the second run finds every layer in the table
        out = folder / f"{name}.measured{attempt}.onnx"
        start = time.perf_counter()
        report = optimize_measured(
            masked, out, OptimizeOptions(rtol=1e-3, atol=1e-4), tuning_for("onnxruntime", table=table, budget=60.0)
        )
        assert report.decision is not None
        tuned.append((time.perf_counter() - start, report.decision))
    paths.append(folder / f"{name}.measured1.onnx")
    compared = compare_models(
        paths, options=ProfileOptions(iterations=iterations, warmup=5, per_layer=False), rounds=rounds
    )
    speedups = {label: v.speedup for label, v in zip(["masked", *(f"align {a}" for a in ALIGNMENTS), "measured"],
                                                        compared.variants, strict=True)}  # fmt: skip
    fixed = {k: v for k, v in speedups.items() if k.startswith("align")}
    best_fixed = max(fixed, key=lambda k: fixed[k].value)
    first, second = tuned
    return {
        "model": name,
        "what": MODELS.get(name, ""),
        "device": compared.device,
        "speedups": {k: {"value": v.value, "low": v.low, "high": v.high} for k, v in speedups.items()},
        "best_fixed": best_fixed,
        "measured_over_best_fixed_p50": fixed[best_fixed].value / speedups["measured"].value,
        "measured_slower_than_masked": speedups["measured"].high < 1.0,
        "written": first[1].written,
        "tuning_s": [first[0], second[0]],
        "layer_measuring_s": [first[1].measuring_seconds, second[1].measuring_seconds],
        "table_misses": [first[1].table_misses, second[1].table_misses],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--tvshim", type=Path, default=TVSHIM)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_tvshim(args.tvshim)
    console = Console(width=200)
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-alignment-") as tmp:
        table_path = Path(tmp) / "lut.json"
        for name in args.models:
            console.print(f"{name} …")
            results.append(bench(name, Path(tmp), table_path, args.ratio, args.rounds, args.iterations))
    table = Table(title=f"speedup vs the masked model (95 % interval), onnxruntime on {results[0]['device']}")
    for column in ("model", *(f"align {a}" for a in ALIGNMENTS), "measured", "written", "measured / best fixed p50",
                   "tuning s (1st, 2nd)", "layer timing s (1st, 2nd)"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        s = r["speedups"]
        cells = [f"{s[k]['value']:.2f} ({s[k]['low']:.2f}–{s[k]['high']:.2f})" for k in list(s)[1:]]  # type: ignore[index]
        t, m = r["tuning_s"], r["layer_measuring_s"]
        table.add_row(str(r["model"]), *cells, str(r["written"]), f"{r['measured_over_best_fixed_p50']:.3f}",
                      f"{t[0]:.1f}, {t[1]:.1f}", f"{m[0]:.1f}, {m[1]:.2f}")  # type: ignore[index]  # fmt: skip
    console.print(table)
    console.print("targets: measured / best fixed ≤ 1.03; never slower than masked beyond noise; 2nd layer timing "
                  "< 10 % of the 1st")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
