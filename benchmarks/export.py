"""`sparsecut export` against `torch.onnx.export(dynamo=True)` with its default optimization, same run:

1. latency: the dense model sparsecut exports (constants folded, BatchNorm kept explicit, names kept) vs the one
   torch.onnx writes with `optimize=True` (BatchNorm folded, names lost), timed interleaved on onnxruntime CPU —
   p50 ratio with its 95 % bootstrap interval; target ≤ 1.00 (a deployer loses nothing by shipping ours);
2. export time: sparsecut export (safe load, mask folding, cleaning, verification on the file, metadata, atomic
   write) vs the bare export + save, medians of interleaved repeats; target ≤ 1.5×;
3. cleaning is linear in graph size: seconds per 1k nodes on graphs of 1k, 5k and 15k nodes built the way dynamo
   writes a conv without bias (its zero bias computed by Shape → Slice → Expand → CastLike at run time).

    .venv/bin/python benchmarks/export.py [--arch resnet50 mobilenetv2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from sparsecut.exporter import export_checkpoint
from sparsecut.exporter.clean import clean_exported_graph, constant_computable_nodes
from sparsecut.exporter.export import _silence_stdout
from sparsecut.exporter.masks import remove_prune_reparametrizations
from sparsecut.models import get_architecture, make_pruned_model, save_state_dict
from sparsecut.targets import ProfileOptions, compare_models


def torch_default_export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    with warnings.catch_warnings(), _silence_stdout():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.randn(2, *shape[1:]),),
            dynamo=True,  # optimize=True is torch's default
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
            input_names=["input"],
            verbose=False,
        )
        program.save(str(path))


def measure(arch: str, recipe: str, repeats: int, rounds: int, iterations: int) -> dict[str, object]:
    shape = get_architecture(arch).input_shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_pruned_model(arch, recipe)
        checkpoint = folder / "ckpt.pt"
        save_state_dict(model, checkpoint)
        remove_prune_reparametrizations(model)
        model.eval()
        bare, ours = [], []
        for i in range(repeats):  # interleaved, so drift of the machine hits both alike
            start = time.perf_counter()
            torch_default_export(model, shape, folder / f"torch{i}.onnx")
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            report = export_checkpoint(checkpoint, folder / f"ours{i}.onnx", arch=arch)
            ours.append(time.perf_counter() - start)
        compared = compare_models(
            [folder / "torch0.onnx", folder / "ours0.onnx"],
            options=ProfileOptions(iterations=iterations, warmup=5, per_layer=False),
            rounds=rounds,
        )
    theirs, mine = compared.variants
    ratio = mine.speedup  # p50(torch) / p50(ours): > 1 means ours is faster
    return {
        "arch": arch,
        "nodes_exported": report.nodes_exported,
        "nodes": report.nodes,
        "torch_p50_ms": theirs.latency.p50_ms,
        "ours_p50_ms": mine.latency.p50_ms,
        "ours_over_torch_p50": 1 / ratio.value,
        "ours_over_torch_interval": [1 / ratio.high, 1 / ratio.low],
        "within_noise": ratio.within_noise,
        "export_s_torch": statistics.median(bare),
        "export_s_ours": statistics.median(ours),
        "export_time_ratio": statistics.median(ours) / statistics.median(bare),
        "device": compared.device,
    }


def dynamo_like_graph(nodes: int, channels: int = 8) -> onnx.ModelProto:
    """Conv blocks whose zero bias is computed at run time, as dynamo's `optimize=False` export writes them."""
    rng = np.random.default_rng(0)
    graph_nodes, inits = [], []
    x = "input"
    for i in range(nodes // 8):
        w = f"blocks.{i}.conv.weight"
        inits.append(numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32), w))
        graph_nodes += [
            helper.make_node("Shape", [w], [f"s{i}"]),
            helper.make_node(
                "Constant", [], [f"z{i}"], value=helper.make_tensor(f"zv{i}", TensorProto.FLOAT, [], [0.0])
            ),
            helper.make_node(
                "Constant", [], [f"b{i}"], value=helper.make_tensor(f"bv{i}", TensorProto.INT64, [1], [0])
            ),
            helper.make_node(
                "Constant", [], [f"e{i}"], value=helper.make_tensor(f"ev{i}", TensorProto.INT64, [1], [1])
            ),
            helper.make_node("Slice", [f"s{i}", f"b{i}", f"e{i}"], [f"k{i}"]),
            helper.make_node("CastLike", [f"z{i}", w], [f"zc{i}"]),
            helper.make_node("Expand", [f"zc{i}", f"k{i}"], [f"bias{i}"]),
            helper.make_node("Conv", [x, w, f"bias{i}"], [f"c{i}"]),
        ]
        x = f"c{i}"
    graph = helper.make_graph(
        graph_nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, 4, 4])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, 4, 4])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def cleaning_scaling(sizes: list[int]) -> list[dict[str, float]]:
    rows = []
    for size in sizes:
        model = ir.from_proto(dynamo_like_graph(size))
        start = time.perf_counter()
        before, after = clean_exported_graph(model)
        seconds = time.perf_counter() - start
        assert not constant_computable_nodes(model)
        rows.append({"nodes": before, "after": after, "seconds": seconds, "per_1k": 1000 * seconds / before})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet50", "mobilenetv2"])
    parser.add_argument("--recipe", default="l1-filter")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sizes", default="1000,5000,15000", help="graph sizes for the cleaning scaling")
    args = parser.parse_args()

    console = Console()
    scaling = cleaning_scaling([int(n) for n in args.sizes.split(",")])
    table = Table(title="cleaning an exported graph: time vs nodes")
    for column in ("nodes", "after cleaning", "seconds", "s per 1k nodes"):
        table.add_column(column, justify="right")
    for row in scaling:
        table.add_row(f"{row['nodes']:,.0f}", f"{row['after']:,.0f}", f"{row['seconds']:.2f}", f"{row['per_1k']:.3f}")
    console.print(table)
    results = [measure(a, args.recipe, args.repeats, args.rounds, args.iterations) for a in args.arch]
    table = Table(title=f"sparsecut export vs torch.onnx.export(dynamo=True) default, on {results[0]['device']}")
    for column in ("model", "nodes raw → clean", "p50 torch ms", "p50 ours ms", "ours / torch p50 (95 %)",
                   "export s torch", "export s ours", "time ratio"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        low, high = r["ours_over_torch_interval"]  # type: ignore[misc]
        noise = ", within noise" if r["within_noise"] else ""
        table.add_row(
            str(r["arch"]), f"{r['nodes_exported']} → {r['nodes']}", f"{r['torch_p50_ms']:.2f}", f"{r['ours_p50_ms']:.2f}",
            f"{r['ours_over_torch_p50']:.3f} ({low:.3f}–{high:.3f}{noise})", f"{r['export_s_torch']:.2f}",
            f"{r['export_s_ours']:.2f}", f"{r['export_time_ratio']:.2f}×",
        )  # fmt: skip
    console.print(table)
    console.print("targets: ours / torch p50 ≤ 1.00 (or within noise); export time ratio ≤ 1.5×")
    if args.json:
        args.json.write_text(json.dumps({"models": results, "cleaning": scaling}, indent=2) + "\n")


if __name__ == "__main__":
    main()
