"""Which channel count pays on this device? Fixed alignments against counts measured on the target — the one-layer
table's proposal and the counts decided in context (whole-model profiles) — on real topologies pruned by
Torch-Pruning (families.py; masked: the channels zeroed, not removed).

Per model, in one run, interleaved on the CPU target (`--target`, onnxruntime by default; openvino): the masked
export, `optimize --align 1/8/16`, the table's proposal, the counts decided in context, and what `optimize --target
T` wrote (cold latency table,
default `--tune-budget`; it writes the fastest of its candidates — the fixed alignments, the table's, the
context's). Each distinct graph is timed once: a label whose graph equals another's (the context fell back to its
base; optimize wrote a fixed alignment) shares its timing and says so. Every model is timed in `--windows` windows
apart in time (each model right after its tuning, then all again): on a shared machine a slow spell can favour one
graph for a whole window (align-1 graphs, im2col-bound, slow down more). Prints each speedup vs the masked model
(paired within each window, the geometric mean over the windows, with its 95 % interval), the written and the
in-context p50 over the best fixed alignment's the same way (goal ≥ 0.97) and the written one's in each window,
the tuning's own run-off, whether the written one's speedup lies beyond the best fixed alignment's interval,
and the tuning time of a cold run (goal for ResNet-50: ≤ 60 s on 2 cores). `--int8 FAMILY` adds the same with
`--precision int8` for one family, each against its own dense baseline (the masked model through the same passes
and precision, no channel removal): the int8 pruning speedup over the fp32 one (goal ≥ 0.95). Every int8 graph is
in one format (`--int8-format`; by default the one the target names first), so that the counts, the baseline and
the fixed alignments are timed in the format written.

timm, Torch-Pruning and ultralytics are benchmark-only dependencies: `pip install timm torch-pruning ultralytics`
into the venv (with `torch==2.13.0` in the same call). timm needs torchvision, which does not load beside the CPU
torch wheel here: ../shared/tvshim.py (by path, `--tvshim`) defines its operator schemas first.

    YOLO_OFFLINE=1 .venv/bin/python benchmarks/alignment.py [--models resnet resnext ...] [--int8 resnet] \\
        [--windows 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import TVSHIM, load_tvshim
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import ExportOptions, export_module
from sparsecut.modelfile import graph_digest
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.measured import optimize_measured
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.passes.registry import DEFAULT_PASSES, baseline_passes
from sparsecut.precision import Precision
from sparsecut.quantization import FORMATS
from sparsecut.report import CompareReport, MeasuredDecision, Speedup
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models, get_target
from sparsecut.targets.environment import cpu_name, cpu_vector_extensions
from sparsecut.targets.noise import speedup
from sparsecut.targets.tuning import tuning_for

MODELS = ["resnet", "resnext", "efficientnet", "regnet", "mobilenetv3", "convnext", "vit", "yolov8n", "resnet50"]
ALIGNMENTS = (1, 8, 16)
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def masked_export(name: str, folder: Path, ratio: float) -> Path:
    """The family's model, masked by Torch-Pruning at `ratio`, exported (dynamo exporter)."""
    import torch
    from families import FAMILIES, TIMM, Family, _timm

    if name == "resnet50":  # the tuning-time goal's model
        TIMM["resnet50"] = ("resnet50", 224, "bottleneck residual blocks")
        family = Family("resnet50", "bottleneck residual blocks", 224, _timm("resnet50"), source="timm resnet50")
    else:
        family = FAMILIES[name]
    torch.manual_seed(0)
    model, ignored = family.build()
    shape = (1, 3, family.size, family.size)
    masked, _, failure = family.prune(model, shape, ignored, ratio)
    assert not failure, failure
    path = folder / f"{name}.onnx"
    export_module(family.prepare(masked, "dynamo"), path, ExportOptions(input_shape=shape, rtol=1e-3, atol=1e-4))
    return path


@dataclasses.dataclass
class Bench:
    """One model's candidates, tuned once and timed in windows apart in time (`window`)."""

    name: str
    precision: str
    target: str
    paths: dict[str, Path]  # label → graph
    digests: dict[str, str]  # label → graph digest (metadata left out)
    decision: MeasuredDecision
    tuning_s: float
    windows: list[CompareReport] = dataclasses.field(default_factory=list)

    @property
    def timed(self) -> list[Path]:
        """One file per distinct graph, the reference (masked, or the dense baseline) first."""
        distinct = dict.fromkeys(self.digests.values())
        return [next(self.paths[k] for k in self.paths if self.digests[k] == d) for d in distinct]

    def window(self, rounds: int, iterations: int) -> None:
        options = ProfileOptions(iterations=iterations, warmup=5, per_layer=False)
        self.windows.append(compare_models(self.timed, target=self.target, options=options, rounds=rounds))


def bench(name: str, folder: Path, ratio: float, precision: str, budget: float, target: str) -> Bench:
    """Tune `name` with `optimize --target TARGET` (cold table) and build its fixed alignments, the table's and
    the in-context counts beside what it wrote, in `folder`."""
    folder.mkdir()
    masked = masked_export(name, folder, ratio)
    wanted = PrecisionRequest(Precision.parse(precision))
    options = OptimizeOptions(precision=wanted, **TOLERANCE)  # type: ignore[arg-type]
    reference = masked
    if precision != "fp32":  # the dense baseline: every pass but channel removal, in the same precision
        reference = folder / f"{name}.dense.onnx"
        optimize_model(masked, reference, dataclasses.replace(options, passes=baseline_passes(DEFAULT_PASSES)))
    table = folder / f"{name}.lut.json"  # cold: a table of its own
    written = folder / f"{name}.written.onnx"
    start = time.perf_counter()
    report = optimize_measured(masked, written, options, tuning_for(target, table=table, budget=budget))
    tuning_s = time.perf_counter() - start
    decision = report.decision
    assert decision is not None
    paths = {"masked": reference}
    for align in ALIGNMENTS:
        paths[f"align {align}"] = folder / f"{name}.align{align}.onnx"
        optimize_model(masked, paths[f"align {align}"], dataclasses.replace(options, align=align))
    for label, counts, align in (("table", decision.proposed_counts, options.align),
                                 ("in context", decision.counts, decision.counts_align)):  # fmt: skip
        # every space the counts do not name keeps `align` (the context's base; no counts: the base itself)
        paths[label] = folder / f"{name}.{label.replace(' ', '-')}.onnx"
        optimize_model(
            masked, paths[label], dataclasses.replace(options, align=align, counts=tuple(sorted(counts.items())))
        )
    paths["written"] = written
    # each distinct graph is timed once: a label whose graph another label has (the context fell back to its base,
    # optimize wrote a fixed alignment) shares that timing — the same graph timed twice differs only by noise
    digests = {label: graph_digest(path) for label, path in paths.items()}
    return Bench(name, precision, target, paths, digests, decision, tuning_s)


def across_windows(reference: list[list[list[float]]], candidate: list[list[list[float]]], seed: int = 0) -> Speedup:
    """p50(reference) / p50(candidate) in each window (`[window][round]` latencies, the rounds paired), their
    geometric mean over the windows, and its 95 % interval by resampling the rounds within each window. (The p50 of
    the windows' rounds pooled would fall between two machine states wherever the windows ran in different ones.)"""
    rng = np.random.default_rng(seed)

    def ratio(picks: list[np.ndarray] | None) -> float:
        logs = []
        for w, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
            chosen = range(len(ref)) if picks is None else picks[w]
            logs.append(np.log(np.median(np.concatenate([ref[k] for k in chosen]))
                               / np.median(np.concatenate([cand[k] for k in chosen]))))  # fmt: skip
        return float(np.exp(np.mean(logs)))

    value = ratio(None)
    resampled = [ratio([rng.integers(0, len(ref), len(ref)) for ref in reference]) for _ in range(1000)]
    low, high = np.quantile(resampled, [0.025, 0.975])
    return Speedup(value, float(min(low, value)), float(max(high, value)))


def summary(b: Bench) -> dict[str, Any]:
    """Speedups over every window (`across_windows`: paired within each, their geometric mean), and written / best
    fixed in each window alone."""
    distinct = list(dict.fromkeys(b.digests.values()))
    by_graph = {d: [w.variants[i].rounds_ms for w in b.windows] for i, d in enumerate(distinct)}
    rounds = {label: by_graph[b.digests[label]] for label in b.paths}
    same_as = {label: next(k for k in b.paths if b.digests[k] == b.digests[label]) for label in b.paths}
    speedups = {label: across_windows(rounds["masked"], rounds[label]) for label in b.paths}
    fixed = {k: v for k, v in speedups.items() if k.startswith("align")}
    best_fixed = max(fixed, key=lambda k: fixed[k].value)

    def against_best(label: str, window: int | None = None) -> dict[str, float]:
        """p50(best fixed) / p50(label) with its interval over the same rounds (paired)."""
        if window is None:
            paired = across_windows(rounds[best_fixed], rounds[label])
        else:
            paired = speedup(rounds[best_fixed][window], rounds[label][window])
        return {"value": paired.value, "low": paired.low, "high": paired.high}

    run_off = b.decision.run_off
    return {
        "model": b.name,
        "precision": b.precision,
        "target": b.target,
        "device": b.windows[0].device,
        "windows": len(b.windows),
        "speedups": {k: {"value": v.value, "low": v.low, "high": v.high} for k, v in speedups.items()},
        "speedups_by_window": {
            label: [speedup(rounds["masked"][w], rounds[label][w]).value for w in range(len(b.windows))]
            for label in b.paths
        },
        "p50_ms_by_window": {
            label: [w.variants[distinct.index(b.digests[label])].latency.p50_ms for w in b.windows] for label in b.paths
        },
        "same_graph_as": {k: v for k, v in same_as.items() if v != k},
        "best_fixed": best_fixed,
        "written_over_best_fixed": against_best("written"),
        "written_over_best_fixed_by_window": [against_best("written", w) for w in range(len(b.windows))],
        "in_context_over_best_fixed": against_best("in context"),
        # the words: beyond the best fixed alignment's interval (its speedup vs the masked model)
        "written_beyond_best_fixed": speedups["written"].value > fixed[best_fixed].high,
        "in_context_beyond_best_fixed": speedups["in context"].value > fixed[best_fixed].high,
        "written": b.decision.written,
        # what the tuning itself measured: its comparison of all (p50 ms) and its run-off
        "tuning_p50_ms": {v.name: v.p50_ms for v in b.decision.variants},
        "run_off": run_off.describe() if run_off is not None else None,
        "tuning_s": b.tuning_s,
        "layer_measuring_s": b.decision.measuring_seconds,
        "spaces": len(b.decision.groups),
        "context_overrode_table": len([g for g in b.decision.groups if g.proposed is not None]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--int8", nargs="*", default=[], help="families also measured with --precision int8")
    parser.add_argument("--target", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--int8-format", choices=list(FORMATS), help="the int8 graphs' (default: the target's first)")
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=400, help="per variant, over all rounds")
    parser.add_argument("--tune-budget", type=float, default=30.0, help="optimize --target's (its default: 30 s)")
    parser.add_argument("--windows", type=int, default=2,
                        help="timing windows per model, apart in time (every model tuned and timed once, then timed "
                        "again after all): a slow spell of a shared machine can favour one graph in one window")  # fmt: skip
    parser.add_argument("--tvshim", type=Path, default=TVSHIM)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_tvshim(args.tvshim)
    console = Console(width=220)
    console.print(f"CPU: {cpu_name()} ({cpu_vector_extensions()})", markup=False)
    benches: list[Bench] = []
    int8 = f"int8 {args.int8_format or get_target(args.target).int8_formats(BuildOptions())[0]}"
    runs = [(m, "fp32") for m in args.models] + [(m, int8) for m in args.int8]
    with tempfile.TemporaryDirectory(prefix="sparsecut-alignment-") as tmp:
        for name, precision in runs:
            console.print(f"{name} ({precision}) …")
            folder = Path(tmp) / f"{name}-{precision.replace(' ', '-')}"
            benches.append(bench(name, folder, args.ratio, precision, args.tune_budget, args.target))
            benches[-1].window(args.rounds, args.iterations)
            if args.json:
                args.json.write_text(json.dumps([summary(b) for b in benches], indent=2) + "\n")
        for window in range(1, args.windows):
            for b in benches:
                console.print(f"{b.name} ({b.precision}): window {window + 1} …")
                b.window(args.rounds, args.iterations)
        results = [summary(b) for b in benches]
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"speedup vs the masked model (int8: vs its dense int8 baseline), 95 % interval, {args.target}")
    labels = [*(f"align {a}" for a in ALIGNMENTS), "table", "in context", "written"]
    columns = ("model", *labels, "written / best fixed", "by window", "in context / best fixed", "beyond?",
               "tuning s", "overrode")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")

    def interval(x: dict[str, float]) -> str:
        return f"{x['value']:.3f} ({x['low']:.3f}–{x['high']:.3f})"

    for r in results:
        s, same = r["speedups"], r["same_graph_as"]
        cells = [f"{s[k]['value']:.2f} ({s[k]['low']:.2f}–{s[k]['high']:.2f})" for k in labels]
        cells = [c + (f" = {same[k]}" if k in same else "") for c, k in zip(cells, labels, strict=True)]
        cells[-1] += f" [{r['written']}]"
        by_window = ", ".join(f"{w['value']:.3f}" for w in r["written_over_best_fixed_by_window"])
        table.add_row(f"{r['model']} {r['precision']}", *cells, interval(r["written_over_best_fixed"]),
                      by_window,
                      interval(r["in_context_over_best_fixed"]),
                      "yes" if r["written_beyond_best_fixed"] else "no",
                      f"{r['tuning_s']:.1f}", f"{r['context_overrode_table']}/{r['spaces']}")  # fmt: skip
    console.print(table)
    for r in results:
        if r["run_off"]:
            console.print(f"{r['model']} {r['precision']}: run-off {r['run_off']}", markup=False)
    console.print("goals: written / best fixed ≥ 0.97 everywhere, beyond the best fixed's interval on ≥ 3 models; "
                  "ResNet-50 tuning ≤ 60 s; int8 pruning speedup ≥ 0.95 × fp32's. Ratios to the best fixed "
                  "alignment: paired within each window, the geometric mean over the windows; a label '= X' is X's graph, "
                  "timed once")  # fmt: skip


if __name__ == "__main__":
    main()
