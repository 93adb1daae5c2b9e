"""2:4 and precision on the ResNet-50-sized reference model, measured in one run:

- time of annotate-2to4 (2:4 detection on every weight) on the lean model;
- permutation restore: the model pruned 2:4 first, then L1 filters (channel removal breaks 2:4 groups): how many
  2:4 weights kept 2:4 in place, were restored by a channel reorder, or were lost (with why), and the time of the
  search; then a synthetic 2,048-channel layer whose kept channels hide a valid grouping (found, and how fast) and
  one where none exists (how fast it says so);
- enforce-2to4 with the ASP-style reorder search: share of |w| kept with and without the reorder, and its time;
- onnxruntime CPU latency of the lean model in fp32, fp16 and int8 QDQ (random calibration), interleaved —
  the ratios are printed whatever they are: a CPU without fast int8/fp16 paths may well run them slower.

    .venv/bin/python benchmarks/sparsity.py [--arch resnet50] [--iterations 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import export_checkpoint
from sparsecut.models import get_architecture, make_pruned_model, save_state_dict
from sparsecut.models.recipes import l1_filter
from sparsecut.passes import AnnotateTwoFourPass, OptimizeOptions, optimize_model
from sparsecut.passes.enforce_two_four import two_four_mask
from sparsecut.passes.permutation import restore_order
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.passes.two_four import two_four_violations
from sparsecut.precision import Precision
from sparsecut.report import OptimizeReport
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
            optimize_model(
                folder / "dense.onnx",
                folder / f"{precision}.onnx",
                OptimizeOptions(precision=PrecisionRequest(Precision(precision))),
            )
        restore = _restore(args.arch, folder, console)
        enforce = optimize_model(folder / "dense.onnx", folder / "enforced.onnx", OptimizeOptions(enforce_2to4=True))
        report = compare_models(
            [folder / f"{p}.onnx" for p in ("fp32", "fp16", "int8")],
            options=ProfileOptions(iterations=args.iterations, warmup=5, threads=args.threads, per_layer=False),
            rounds=10,
        )
    console.print(
        f"annotate-2to4 on {len(annotate.layers)} weights of the lean {args.arch}: {annotate_s * 1000:.0f} ms"
    )
    _print_restore(restore, console)
    _print_enforce(enforce, console)
    table = Table(title=f"lean {args.arch} on {report.device}, onnxruntime CPU, {args.threads} threads, interleaved")
    for column in ("precision", "p50 ms", "p90 ms", "latency vs fp32"):
        table.add_column(column, justify="right")
    for v in report.variants:
        table.add_row(Path(v.model).stem, f"{v.latency.p50_ms:.2f}", f"{v.latency.p90_ms:.2f}", f"{1 / v.speedup:.3f}")
    console.print(table)


def _restore(arch: str, folder: Path, console: Console) -> OptimizeReport:
    model = make_pruned_model(arch, "2:4")
    l1_filter(model, 0.5, get_architecture(arch).input_shape)
    save_state_dict(model, folder / "sparse.pt")
    export_checkpoint(folder / "sparse.pt", folder / "sparse.onnx", arch=arch)
    return optimize_model(folder / "sparse.onnx", folder / "sparse-lean.onnx")


def _print_restore(report: OptimizeReport, console: Console) -> None:
    restores = [r for p in report.passes for r in p.two_four]
    sparse_after = next(p for p in report.passes if p.name == "annotate-2to4").sparsity
    restored = sum(len(r.weights) for r in restores if r.restored)
    console.print(
        f"2:4 then L1 filters: {sum(layer.is_2to4 for layer in sparse_after)} weights are 2:4 after optimize "
        f"({restored} of them thanks to a channel reorder), {len(report.lost_two_four)} lost it; restore search "
        f"{sum(r.seconds for r in restores) * 1000:.0f} ms in all, at most "
        f"{max((r.seconds for r in restores), default=0) * 1000:.0f} ms for one channel group"
    )
    reasons: dict[str, int] = {}
    for r in restores:
        if not r.restored:
            reasons[r.reason or "?"] = reasons.get(r.reason or "?", 0) + len(r.weights)
    for reason, count in reasons.items():
        console.print(f"  lost: {count} weight(s): {reason}")
    rng = np.random.default_rng(0)
    for label, (pattern, removed) in (("hidden grouping", _hidden(rng)), ("no grouping", _dense(rng))):
        start = time.perf_counter()
        order = restore_order(pattern, removed)
        seconds = time.perf_counter() - start
        found = "found" if order is not None and two_four_violations(pattern[order], 0)[0] == 0 else "none found"
        console.print(
            f"synthetic layer, {int((~removed).sum())} kept channels x {pattern.shape[1]} rows, {label}: "
            f"{found} in {seconds * 1000:.0f} ms"
        )


def _hidden(rng: np.random.Generator, bins: int = 512, rows: int = 4608) -> tuple[np.ndarray, np.ndarray]:
    """2,048 kept channels in valid groups of 4, cut in pairs; each original group is a pair and 2 dead channels."""
    hidden = np.zeros((bins * 4, rows), bool)
    picks = np.argsort(rng.random((bins, rows, 4)), axis=2)[:, :, :2]
    for b in range(bins):
        hidden[b * 4 + picks[b], np.arange(rows)[:, None]] = True
    pieces = [hidden[b * 4 + h : b * 4 + h + 2] for b in range(bins) for h in (0, 2)]
    pattern = np.zeros((len(pieces) * 4, rows), bool)
    removed = np.zeros(len(pieces) * 4, bool)
    for i, p in enumerate(rng.permutation(len(pieces))):
        pattern[i * 4 : i * 4 + 2] = pieces[p]
        removed[i * 4 + 2 : i * 4 + 4] = True
    return pattern, removed


def _dense(rng: np.random.Generator, channels: int = 2730, rows: int = 4608) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude 2:4 of a dense weight with a quarter of its channels removed: about 2,048 kept channels."""
    pattern = two_four_mask(rng.standard_normal((channels - channels % 4, rows)), 0)
    return pattern, rng.random(pattern.shape[0]) < 0.25


def _print_enforce(report: OptimizeReport, console: Console) -> None:
    pruned = [e for e in report.enforced if e.pruned]
    reordered = [e for e in pruned if e.permutation.startswith("reordered")]
    with_order = np.mean([e.magnitude_kept for e in pruned])
    without = np.mean([e.magnitude_kept_without_permutation for e in pruned])
    console.print(
        f"enforce-2to4 on the lean model: {len(pruned)} weights pruned, {len(reordered)} after a channel reorder; "
        f"mean |w| kept {100 * with_order:.2f} % (without reorder {100 * without:.2f} %); "
        f"optimize with enforce {report.seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
