"""What `sparsecut optimize` buys and what it costs, measured in one run.

(a) latency — onnxruntime CPU, interleaved round-robin, medians: the masked model as exported (dense compute),
    the same model after `optimize`, and the same channels removed physically in PyTorch by Torch-Pruning and
    exported. Prints lean/dense and lean/physical (sparsecut's promise: lean runs as fast as physical pruning).
(b) scaling — time and peak RSS of `optimize` (pipeline + equivalence gate) on synthetic graphs of 1k, 5k and 15k
    nodes, each in a fresh process, interleaved with its floor (onnx-ir load + save, two onnxruntime sessions run
    and released) in `--repeats` pairs: the medians' ratio and the pairs' range.
(c) memory on a large model with external data — peak RSS of `optimize` against the size of the weights.

    .venv/bin/python benchmarks/optimize.py [--arch resnet50] [--repeats 5] [--skip-large] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

console = Console(width=150)


# ------------------------------------------------------------------------------------------------ (a) latency
def latency(arch: str, rounds: int, per_round: int, threads: int) -> dict:
    import onnxruntime as ort
    import torch
    import torch_pruning as tp
    from torch import nn

    from sparsecut.exporter import ExportOptions, export_module
    from sparsecut.exporter.masks import remove_prune_reparametrizations
    from sparsecut.models import ARCHITECTURES, make_pruned_model
    from sparsecut.models.recipes import _channel_groups
    from sparsecut.passes import OptimizeOptions, optimize_model

    shape = ARCHITECTURES[arch].input_shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        masked = make_pruned_model(arch, "l1-filter", 0.5)
        dead = [
            (g.layer.weight_mask.flatten(1).amax(1) == 0).nonzero().flatten().tolist() for g in _channel_groups(masked)
        ]
        remove_prune_reparametrizations(masked)
        export_module(masked, folder / "dense.onnx", ExportOptions(input_shape=shape))
        start = time.perf_counter()
        report = optimize_model(folder / "dense.onnx", folder / "lean.onnx", OptimizeOptions())
        optimize_seconds = time.perf_counter() - start

        physical = make_pruned_model(arch, "l1-filter", 0.5)
        remove_prune_reparametrizations(physical)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(physical, example_inputs=torch.randn(*shape))
        for group, idxs in zip(_channel_groups(physical), dead, strict=True):
            prune_fn = (
                tp.prune_conv_out_channels if isinstance(group.layer, nn.Conv2d) else tp.prune_linear_out_channels
            )
            graph.get_pruning_group(group.layer, prune_fn, idxs=idxs).prune()
        export_module(physical, folder / "physical raw.onnx", ExportOptions(input_shape=shape))
        # Compare like with like: the same graph clean-up (constant and BatchNorm folding) on every variant, only
        # `lean` loses channels. The raw dynamo exports are timed too: they are what a user has without sparsecut.
        same_cleanup = OptimizeOptions(passes=("fold-constants", "fold-batchnorm", "cleanup"))
        optimize_model(folder / "dense.onnx", folder / "dense folded.onnx", same_cleanup)
        optimize_model(folder / "physical raw.onnx", folder / "physical.onnx", same_cleanup)
        (folder / "dense raw.onnx").write_bytes((folder / "dense.onnx").read_bytes())

        sessions = {}
        for name in ("dense folded", "lean", "physical", "dense raw", "physical raw"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[name] = ort.InferenceSession(
                str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
            )
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for session in sessions.values():  # warm-up
            for _ in range(3):
                session.run(None, {"input": x})
        for _ in range(rounds):
            for name, session in sessions.items():
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    session.run(None, {"input": x})
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)

    table = Table(
        title=f"(a) onnxruntime CPU latency, {arch} l1-filter 0.5, batch {shape[0]}, {threads} threads, interleaved"
    )
    for column in ("variant", "MACs", "p50 ms", "p90 ms", "n"):
        table.add_column(column)
    for name, samples in times.items():
        p50, p90 = np.percentile(samples, [50, 90])
        macs = report.after.macs if name in ("lean", "physical", "physical raw") else report.before.macs
        table.add_row(name, f"{macs / 1e9:.2f} G", f"{p50:.2f}", f"{p90:.2f}", str(len(samples)))
    console.print(table)
    median = {name: statistics.median(samples) for name, samples in times.items()}
    console.print(f"optimize took {optimize_seconds:.1f} s (pipeline + gate)")
    console.print(
        f"lean / dense folded = {median['lean'] / median['dense folded']:.3f}  (MACs ratio {report.after.macs / report.before.macs:.3f})"
    )
    console.print(f"lean / physical     = {median['lean'] / median['physical']:.3f}  (target ≤ 1.03)")
    console.print(
        f"lean / dense raw    = {median['lean'] / median['dense raw']:.3f}  (what a user had before sparsecut)"
    )
    return {
        "arch": arch,
        "optimize_seconds": optimize_seconds,
        "p50_ms": median,
        "macs": {"before": report.before.macs, "after": report.after.macs},
        "lean_over_dense_folded": median["lean"] / median["dense folded"],
        "lean_over_physical": median["lean"] / median["physical"],
        "lean_over_dense_raw": median["lean"] / median["dense raw"],
    }


# ------------------------------------------------------------------------------------------------ (b) scaling
def synthetic_graph(nodes: int, channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Residual blocks conv1×1 → Relu → conv1×1 → Add, 4 nodes each, half of the inner channels dead (so that the
    default alignment of 8 lets them go)."""
    rng = np.random.default_rng(seed)
    graph_nodes, initializers = [], []
    x = "x"
    for b in range(nodes // 4):
        w1 = rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.2
        w1[rng.choice(channels, channels // 2, replace=False)] = 0.0
        w2 = rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.2
        initializers += [numpy_helper.from_array(w1, f"w1_{b}"), numpy_helper.from_array(w2, f"w2_{b}")]
        graph_nodes += [
            helper.make_node("Conv", [x, f"w1_{b}"], [f"c1_{b}"], name=f"conv1_{b}"),
            helper.make_node("Relu", [f"c1_{b}"], [f"r_{b}"], name=f"relu_{b}"),
            helper.make_node("Conv", [f"r_{b}", f"w2_{b}"], [f"c2_{b}"], name=f"conv2_{b}"),
            helper.make_node("Add", [x, f"c2_{b}"], [f"y_{b}"], name=f"add_{b}"),
        ]
        x = f"y_{b}"
    graph = helper.make_graph(
        graph_nodes,
        "synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 4, 4])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, 4, 4])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


_CHILD = r"""
import json, re, sys, time
from pathlib import Path
import onnxruntime  # imported before the clock starts, as the floor's child does
from sparsecut.passes import OptimizeOptions, optimize_model
source, target, verify = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
start = time.perf_counter()
report = optimize_model(source, target, OptimizeOptions(verify=verify))
pipeline = sum(p.seconds for p in report.passes)
print(json.dumps({"seconds": time.perf_counter() - start, "pipeline": pipeline,
                  # VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak
                  "rss_mb": int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024,
                  "params": [report.before.params, report.after.params]}))
"""


_FLOOR = r"""
import json, sys, time
import numpy as np, onnx_ir as ir, onnxruntime as ort
from pathlib import Path
source, target = Path(sys.argv[1]), Path(sys.argv[2])
start = time.perf_counter()
ir.save(ir.load(source), target)  # what any tool that edits the graph pays: read it, write it
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
for path in (source, target):  # what any check of the result pays: run both graphs once, batch 1 and 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        session.run(None, {"x": np.zeros((batch, 16, 4, 4), np.float32)})
    del session  # released inside the clock, as optimize releases both of its sessions before it returns
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def _floor_in_child(source: Path, target: Path) -> float:
    """The floor an optimize of `source` cannot go under: onnx-ir load + save, and two onnxruntime sessions
    (optimizations off, as the gate runs them) each run on batch 1 and 2, and released."""
    out = subprocess.run([sys.executable, "-c", _FLOOR, str(source), str(target)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def _optimize_in_child(source: Path, target: Path, verify: bool = True) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(source), str(target), "1" if verify else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(sizes: list[int], repeats: int) -> list[dict]:
    table = Table(title=f"(b) optimize on synthetic graphs (fresh process each, {repeats} interleaved pairs)")
    for column in ("nodes", "total s (median)", "floor s (median)", "total / floor", "pairs: min–max", "pipeline s",
                   "gate + I/O s", "peak RSS MB", "s per 1k nodes"):  # fmt: skip
        table.add_column(column)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            source = Path(tmp) / f"g{n}.onnx"
            onnx.save(synthetic_graph(n), source)
            runs, floors = [], []
            for _ in range(repeats):  # interleaved: optimize, floor, optimize, floor, … (this machine drifts)
                runs.append(_optimize_in_child(source, Path(tmp) / f"g{n}.lean.onnx"))
                floors.append(_floor_in_child(source, Path(tmp) / f"g{n}.copy.onnx"))
            r = sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
            floor = statistics.median(floors)
            pairs = [run["seconds"] / f for run, f in zip(runs, floors, strict=True)]
            results.append({"nodes": n, "optimize_seconds": [run["seconds"] for run in runs], "floor_seconds": floors,
                            "ratio_of_medians": r["seconds"] / floor, "pipeline_seconds": r["pipeline"],
                            "peak_rss_mb": r["rss_mb"]})  # fmt: skip
            table.add_row(
                str(n),
                f"{r['seconds']:.2f}",
                f"{floor:.2f}",
                f"{r['seconds'] / floor:.2f}",
                f"{min(pairs):.2f}–{max(pairs):.2f}",
                f"{r['pipeline']:.2f}",
                f"{r['seconds'] - r['pipeline']:.2f}",
                f"{r['rss_mb']:.0f}",
                f"{r['seconds'] / n * 1000:.3f}",
            )
    console.print(table)
    console.print("target: total / floor ≤ 1.2 at 15k nodes (the floor: onnx-ir load + save, two onnxruntime "
                  "sessions with optimizations off, each run at batch 1 and 2 and released)")  # fmt: skip
    return results


# ------------------------------------------------------------------------------------------------ (c) memory
def large(gigabytes: float, verify: bool) -> dict:
    """A chain of 4096×4096 Gemms (64 MiB each) with external data; a quarter of each hidden layer dead."""
    width = 4096
    layers = max(2, int(gigabytes * 2**30 / (width * width * 4)))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        nodes, initializers = [], []
        x = "x"
        for i in range(layers):
            w = (rng.standard_normal((width, width), dtype=np.float32) * (1 / 64)).astype(np.float32)
            if i < layers - 1:
                w[:, rng.choice(width, width // 4, replace=False)] = 0.0  # dead output neurons
            initializers.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"h{i}"], name=f"gemm{i}"))
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}"))
            x = f"a{i}"
        graph = helper.make_graph(
            nodes,
            "large",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])],
            initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        source = folder / "large.onnx"
        onnx.save(model, source, save_as_external_data=True, all_tensors_to_one_file=True, location="large.onnx.data")
        del model, initializers, graph
        size_mb = (folder / "large.onnx.data").stat().st_size / 2**20
        r = _optimize_in_child(source, folder / "large.lean.onnx", verify=verify)
    table = Table(title=f"(c) optimize on a {size_mb / 1024:.2f} GiB model with external data ({layers} Gemm layers)")
    for column in ("weights MB", "total s", "peak RSS MB", "RSS / weights", "gate"):
        table.add_column(column)
    table.add_row(
        f"{size_mb:.0f}",
        f"{r['seconds']:.1f}",
        f"{r['rss_mb']:.0f}",
        f"{r['rss_mb'] / size_mb:.2f}",
        "on" if verify else "off",
    )
    console.print(table)
    return {"weights_mb": size_mb, "seconds": r["seconds"], "peak_rss_mb": r["rss_mb"], "gate": verify}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="1000,5000,15000")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved optimize/floor pairs per size")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--large-gb", type=float, default=2.1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: dict = {}
    if not args.skip_latency:
        results["latency"] = latency(args.arch, args.rounds, args.per_round, args.threads)
    results["scaling"] = scaling([int(s) for s in args.sizes.split(",")], args.repeats)
    if not args.skip_large:
        results["large"] = [large(args.large_gb, verify=False), large(args.large_gb, verify=True)]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
