"""Where time goes, before vs after: the per-layer profiles of a model and of its pruned version, paired by node
name (the lean graph keeps its nodes' names), with the reason the tool can see wherever a layer's time fell
much less than its MACs.

The reasons, each checked on the graphs and the profiles, never guessed:
- alignment: the layer's channel count is no longer a multiple of the target's block (onnxruntime's NCHWc and
  OpenVINO's blocked layouts: 8 floats on AVX2, 16 on AVX-512; TensorRT's tensor cores: 8) although it was one;
- a layout reorder: the lean profile has a reorder kernel next to the layer that the dense one has not;
- memory-bound: few MACs per byte the layer reads and writes — its time follows its bytes, not its MACs;
- a kernel change: the backend runs the layer with another kernel (exec type) than before.

A layer's time is the time of the kernels that computed it (a fused kernel counts once, for the node whose MACs
it carries); the sums are shown beside the end-to-end p50s so that what the per-layer view covers is plain.

Beside the layers, the split that bounds what pruning can give (Amdahl's law, measured): the layers pruning
shrank, before → after, and the rest — layers it left, pooling, elementwise, layout and precision conversions —
whose time stays whatever the counts. At int8 the rest weighs more: the demo's ResNet-18 on onnxruntime, its
shrunk convolutions 1.94× faster in fp32 and 1.90× in int8, and the rest about 0.83 ms in both precisions, 18 %
of the lean fp32 model and 42 % of the lean int8 one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import onnx_ir as ir

from sparsecut.cost import LAYER_OPS, dims_at_batch_one
from sparsecut.errors import TargetError
from sparsecut.report import LatencyReport, LayerDiff, LayerDiffReport, LayerTime

__all__ = ["SLOWER_THAN_MACS", "diff_layers"]

SLOWER_THAN_MACS = 1.25  # flagged: time ratio above this many times the MACs ratio
MIN_SHARE = 0.01  # layers under 1 % of the baseline's time are not judged (their times are mostly noise)
MEMORY_BOUND = 8.0  # MACs per byte read and written below which a layer's time follows its bytes


def diff_layers(
    before: LatencyReport, after: LatencyReport, before_model: Path, after_model: Path, block: int
) -> LayerDiffReport:
    """Pair the layers of two profiles of the same network (`before`: the dense baseline) by node name."""
    graphs = [_load(before_model), _load(after_model)]
    rows_before, rows_after = _by_node(before.layers), _by_node(after.layers)
    shared = [node for node in rows_before if node in rows_after and (rows_before[node].macs or rows_after[node].macs)]
    if not shared:
        raise TargetError(
            f"--baseline {before_model}: its layers share no names with those of {after_model}; the per-layer "
            "view pairs layers by node name (give the dense model this one was pruned from)"
        )
    shapes = [_layer_shapes(g) for g in graphs]
    reorders_before = _reorders(before.layers)
    reorders_after = _reorders(after.layers)
    total_before = sum(layer.ms for layer in before.layers) or 1.0
    diffs = []
    for node in shared:
        b, a = rows_before[node], rows_after[node]
        mac_ratio = a.macs / b.macs if b.macs else 1.0
        time_ratio = a.ms / b.ms if b.ms else 1.0
        flags: list[str] = []
        # only layers pruning shrank are judged: an unchanged one's time ratio is the machine's noise (a 0.1 ms
        # first conv came out 1.27× on one run of the same graph)
        judged = mac_ratio < 1.0 and b.ms / total_before >= MIN_SHARE and b.ms > 0
        if judged and time_ratio > SLOWER_THAN_MACS * mac_ratio:
            flags = _reasons(node, b, a, shapes, block, reorders_before, reorders_after)
        diffs.append(
            LayerDiff(
                node=node,
                module=a.module or b.module,
                op_before=b.op_type,
                op_after=a.op_type,
                ms_before=b.ms,
                ms_after=a.ms,
                macs_before=b.macs,
                macs_after=a.macs,
                mac_ratio=mac_ratio,
                time_ratio=time_ratio,
                flags=flags,
            )
        )
    diffs.sort(key=lambda d: d.ms_before, reverse=True)
    layers_before_ms = sum(layer.ms for layer in before.layers)
    layers_after_ms = sum(layer.ms for layer in after.layers)
    shrunk = [d for d in diffs if d.macs_after < d.macs_before]
    rest_after_ms = layers_after_ms - sum(d.ms_after for d in shrunk)
    return LayerDiffReport(
        before=str(before_model),
        after=str(after_model),
        target=after.target,
        device=after.device,
        block=block,
        p50_before_ms=before.p50_ms,
        p50_after_ms=after.p50_ms,
        layers_before_ms=layers_before_ms,
        layers_after_ms=layers_after_ms,
        paired=len(diffs),
        layers=diffs,
        shrunk=len(shrunk),
        shrunk_before_ms=sum(d.ms_before for d in shrunk),
        shrunk_after_ms=sum(d.ms_after for d in shrunk),
        ceiling=layers_before_ms / rest_after_ms if rest_after_ms > 0 else None,
    )


def _by_node(layers: list[LayerTime]) -> dict[str, LayerTime]:
    """Node → the layer row that carries its MACs (the row of a fused kernel for the node it names first)."""
    found: dict[str, LayerTime] = {}
    for layer in layers:
        carrier = (layer.nodes or [layer.name])[0]  # a fused kernel names its weighted node first
        if carrier not in found or (layer.ms > found[carrier].ms):
            found[carrier] = layer
    return found


def _reorders(layers: list[LayerTime]) -> dict[str, float]:
    """Layout reorder kernels by name, with their time (OpenVINO's `Reorder`, onnxruntime's `ReorderInput/Output`)."""
    return {layer.name: layer.ms for layer in layers if "Reorder" in layer.op_type}


@dataclasses.dataclass(frozen=True)
class _Shape:
    channels_in: int | None
    channels_out: int | None
    bytes: int | None  # read and written: input, output and weight, 4 bytes per element at batch 1


def _layer_shapes(model: ir.Model) -> dict[str, _Shape]:
    from sparsecut.shapes import infer_shapes

    infer_shapes(model)
    shapes = {}
    for node in model.graph:
        if node.op_type not in LAYER_OPS or len(node.inputs) < 2:
            continue
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        dims = [dims_at_batch_one(v) for v in (x, w, y)]
        channels_in = channels_out = None
        if node.op_type.startswith("Conv") and dims[1] is not None and len(dims[1]) >= 2:
            groups = node.attributes.get_int("group", 1)
            channels_in, channels_out = dims[1][1] * groups, dims[1][0]
            if node.op_type == "ConvTranspose":
                channels_in, channels_out = dims[1][0], dims[1][1] * groups
        elif dims[1] is not None and len(dims[1]) == 2:
            trans = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
            channels_in, channels_out = (dims[1][1], dims[1][0]) if trans else (dims[1][0], dims[1][1])
        size = None
        if all(d is not None for d in dims):
            size = 4 * sum(math.prod(d) for d in dims if d is not None)
        shapes[node.name or ""] = _Shape(channels_in, channels_out, size)
    return shapes


def _reasons(
    node: str,
    before: LayerTime,
    after: LayerTime,
    shapes: list[dict[str, _Shape]],
    block: int,
    reorders_before: dict[str, float],
    reorders_after: dict[str, float],
) -> list[str]:
    reasons = []
    was, now = shapes[0].get(node), shapes[1].get(node)
    if was is not None and now is not None:
        for side, old, new in (("output", was.channels_out, now.channels_out), ("input", was.channels_in,
                                                                                 now.channels_in)):  # fmt: skip
            if old and new and old % block == 0 and new % block:
                reasons.append(f"{side} channels {old} → {new}: not a multiple of the target's block of {block}")
        if now.bytes and after.macs and after.macs / now.bytes < MEMORY_BOUND:
            reasons.append(f"memory-bound: {after.macs / now.bytes:.1f} MACs per byte read and written")
    added = [name for name, ms in reorders_after.items() if node in name and name not in reorders_before]
    if added:
        spent = sum(reorders_after[name] for name in added)
        reasons.append(f"a layout reorder added next to it ({len(added)} kernel(s), {spent:.3f} ms)")
    if before.op_type != after.op_type:
        reasons.append(f"kernel changed: {before.op_type} → {after.op_type}")
    return reasons or ["no reason visible to sparsecut (timing noise, or the backend's choice)"]


def _load(path: Path) -> ir.Model:
    from sparsecut.modelfile import load_model

    if Path(path).suffix != ".onnx":
        raise TargetError(f"{path}: the per-layer view before → after needs the ONNX files (their shapes, names)")
    return load_model(Path(path))
