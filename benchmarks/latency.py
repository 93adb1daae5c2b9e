"""Does sparsecut's harness add overhead, and how stable are its numbers? On the ResNet-50-sized reference model
and its pruned (lean) variant, in one run:

- sparsecut's p50 (IOBinding, perf_counter_ns around run_with_iobinding) vs a bare `InferenceSession.run` loop
  timed the same way — the ratio should stay within 5 %;
- stability: the p50 spread (max/min) over 5 repeats of each;
- the demo's pruning speedup (ResNet-18, l1-filter 0.5: dense baseline / lean, `sparsecut run`'s defaults) with
  its 95 % interval, measured 5 times: the interval should be about ±5 % or tighter, and the 5 values should
  fall inside each other's intervals;
- threads spinning (`--spinning`): three identical copies of the demo's lean model (fp32 and int8) timed in turn,
  with worker threads that never spin, that spin during a run only (sparsecut's sessions) and that spin as
  onnxruntime's default leaves them (on after a run), each against the model alone in a process of its own with
  onnxruntime's defaults — what one deployed session runs at. Copies should agree, and sit near "alone".

    .venv/bin/python benchmarks/latency.py [--arch resnet50] [--iterations 40] [--threads 2] [--skip-harness] \\
        [--spinning]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import export_checkpoint
from sparsecut.models import make_pruned_model, save_state_dict
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.targets import ProfileOptions, compare_artifacts, get_target
from sparsecut.targets.onnxruntime import _session
from sparsecut.workflow import RunOptions, baseline_passes


def bare_p50(path: Path, iterations: int, threads: int) -> float:
    session = _session(path, "cpu", threads, "all")
    x = np.random.default_rng(0).standard_normal((1, *session.get_inputs()[0].shape[1:])).astype(np.float32)
    name = session.get_inputs()[0].name
    for _ in range(5):
        session.run(None, {name: x})
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        session.run(None, {name: x})
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(samples)


def demo_pruning_speedups(console: Console, repeats: int) -> None:
    """The like-for-like ratio `sparsecut demo` prints, measured `repeats` times with run's default timing."""
    target = get_target("onnxruntime")
    run = RunOptions()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_state_dict(make_pruned_model("resnet18", "l1-filter", 0.5), folder / "ckpt.pt")
        export_checkpoint(folder / "ckpt.pt", folder / "exported.onnx", arch="resnet18")
        optimize_model(folder / "exported.onnx", folder / "lean.onnx")
        optimize_model(
            folder / "exported.onnx",
            folder / "baseline.onnx",
            OptimizeOptions(passes=baseline_passes(OptimizeOptions().passes)),
        )
        artifacts = [target.load(folder / "baseline.onnx"), target.load(folder / "lean.onnx")]
        table = Table(title=f"demo (ResNet-18, l1-filter 0.5): pruning speedup, {run.rounds} rounds × "
                      f"{run.profile.iterations // run.rounds} runs, {repeats} repeats")  # fmt: skip
        for column in ("repeat", "baseline p50 ms", "lean p50 ms", "pruning speedup", "95 % interval", "± %"):
            table.add_column(column, justify="right")
        values = []
        for i in range(repeats):
            start = time.perf_counter()
            report = compare_artifacts(artifacts, target, options=run.profile, rounds=run.rounds)
            base, lean = report.variants
            ratio = lean.speedup
            values.append(ratio)
            half = 100 * (ratio.high - ratio.low) / 2 / ratio.value
            table.add_row(str(i + 1), f"{base.latency.p50_ms:.2f}", f"{lean.latency.p50_ms:.2f}",
                          f"{ratio.value:.3f}", f"{ratio.low:.3f}–{ratio.high:.3f}",
                          f"{half:.1f} ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    console.print(table)
    overlap = max(v.low for v in values) <= min(v.high for v in values)
    console.print(
        f"median {statistics.median(v.value for v in values):.3f}; spread of the 5 values "
        f"{max(v.value for v in values) / min(v.value for v in values):.3f}; all intervals share a point: {overlap}"
    )


ALONE = """
import sys, time, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
feed = {inp.name: np.random.default_rng(0).standard_normal([1, *inp.shape[1:]]).astype(np.float32)}
for _ in range(20):
    session.run(None, feed)
samples = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter_ns()
    session.run(None, feed)
    samples.append(time.perf_counter_ns() - start)
print(np.median(samples) / 1e6)
"""
MODES = {"never": {"session.intra_op.allow_spinning": "0"}, "during runs": {"session.force_spinning_stop": "1"},
         "on after a run": {}}  # fmt: skip


def spinning(console: Console, rounds: int = 20, runs: int = 20, copies: int = 3) -> None:
    """The demo's lean model (fp32, int8) in `copies` identical sessions timed in turn, per spinning mode, against
    the model alone in a process of its own with onnxruntime's defaults (median of three such processes)."""
    import onnxruntime as ort

    from sparsecut.passes.precision import PrecisionRequest
    from sparsecut.precision import Precision

    table = Table(title=f"threads spinning: {copies} identical copies timed in turn ({rounds} rounds × {runs} runs) "
                  "vs the model alone in its own process")  # fmt: skip
    for column in ("model", "workers spin", "p50 ms of each copy", "copies max / min", "p50 / alone"):
        table.add_column(column, justify="left" if column in ("model", "workers spin") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_state_dict(make_pruned_model("resnet18", "l1-filter", 0.5), folder / "ckpt.pt")
        export_checkpoint(folder / "ckpt.pt", folder / "exported.onnx", arch="resnet18")
        for precision in ("fp32", "int8"):
            path = folder / f"lean-{precision}.onnx"
            optimize_model(folder / "exported.onnx", path,
                           OptimizeOptions(precision=PrecisionRequest(Precision.parse(precision))))  # fmt: skip
            command = [sys.executable, "-c", ALONE, str(path), str(rounds * runs)]
            alone = statistics.median(
                float(subprocess.run(command, check=True, capture_output=True, text=True).stdout) for _ in range(3)
            )
            for mode, entries in MODES.items():
                sessions = []
                for _ in range(copies):
                    options = ort.SessionOptions()
                    for key, value in entries.items():
                        options.add_session_config_entry(key, value)
                    sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
                inp = sessions[0].get_inputs()[0]
                feed = {inp.name: np.random.default_rng(0).standard_normal([1, *inp.shape[1:]]).astype(np.float32)}
                for session in sessions:
                    for _ in range(20):
                        session.run(None, feed)
                medians: list[list[float]] = [[] for _ in sessions]
                for r in range(rounds):
                    for k in range(copies):  # each round starts one copy later
                        i = (r + k) % copies
                        samples = []
                        for _ in range(runs):
                            start = time.perf_counter_ns()
                            sessions[i].run(None, feed)
                            samples.append((time.perf_counter_ns() - start) / 1e6)
                        medians[i].append(statistics.median(samples))
                p50s = [statistics.median(m) for m in medians]
                table.add_row(f"ResNet-18 lean {precision}", mode, ", ".join(f"{p:.3f}" for p in p50s),
                              f"{max(p50s) / min(p50s):.3f}", f"{statistics.median(p50s) / alone:.3f}")  # fmt: skip
            table.add_row(f"ResNet-18 lean {precision}", "alone (own process)", f"{alone:.3f}", "", "1.000")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-harness", action="store_true", help="only the demo's pruning speedup")
    parser.add_argument("--spinning", action="store_true", help="only the threads-spinning comparison")
    args = parser.parse_args()
    console = Console(width=160)
    if args.spinning:
        spinning(console)
        return
    demo_pruning_speedups(console, args.repeats)
    if args.skip_harness:
        return
    target = get_target("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_state_dict(make_pruned_model(args.arch, "l1-filter", 0.5), folder / "ckpt.pt")
        export_checkpoint(folder / "ckpt.pt", folder / "dense.onnx", arch=args.arch)
        optimize_model(folder / "dense.onnx", folder / "lean.onnx")
        options = ProfileOptions(iterations=args.iterations, warmup=5, threads=args.threads, per_layer=False)
        ours: dict[str, list[float]] = {"dense": [], "lean": []}
        bare: dict[str, list[float]] = {"dense": [], "lean": []}
        for _ in range(args.repeats):  # interleaved: ours and bare alternate, so drift hits both alike
            for name in ours:
                path = folder / f"{name}.onnx"
                ours[name].append(target.profile(target.load(path), options).p50_ms)
                bare[name].append(bare_p50(path, args.iterations, args.threads))

    table = Table(title=f"{args.arch}: sparsecut profile vs bare InferenceSession.run, {args.repeats} repeats")
    for column in ("model", "sparsecut p50 ms", "bare p50 ms", "ratio", "sparsecut spread", "bare spread"):
        table.add_column(column, justify="right")
    for name in ours:
        a, b = statistics.median(ours[name]), statistics.median(bare[name])
        table.add_row(
            name,
            f"{a:.2f}",
            f"{b:.2f}",
            f"{a / b:.3f}",
            f"{max(ours[name]) / min(ours[name]):.3f}",
            f"{max(bare[name]) / min(bare[name]):.3f}",
        )
    console.print(table)
    console.print("ratio = median of sparsecut's p50s / median of the bare loop's p50s; spread = max p50 / min p50")


if __name__ == "__main__":
    main()
