"""What a target lends measured decisions (passes/measured.py): one layer timed alone, and whole models timed
interleaved — the same build, runner and interval as `compare`, so a decision is made the way it is later shown.

A layer becomes a one-node ONNX model (seeded weights, its real kernel, stride, dilation, pads, groups and input
size), built by the target where it builds (TensorRT: an engine of that one layer) and run with the options the
whole model will run with (onnxruntime: graph optimizations on, so the NCHWc layout transform decides for the
layer as it will in the model; threads spinning as the target times whole models). Its time is the median of
repeated runs. A latency table's context names the device — a CPU with its vector extensions (NCHWc's block is 8
on AVX2 and 16 on AVX-512) —, the backend and its version, threads, provider, batch and how the target times
(`Target.timing_settings`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsecut.errors import TargetError
from sparsecut.passes.latency_table import LayerSignature, Timed, default_table_path, median_interval
from sparsecut.passes.measured import Tuning
from sparsecut.precision import Precision
from sparsecut.quantization import Int8Format
from sparsecut.report import LayerTime, MeasuredVariant
from sparsecut.targets.base import BackendOptions, BuildOptions, ProfileOptions, Target, get_target
from sparsecut.targets.compare import compare_models
from sparsecut.targets.onnxruntime import OnnxRuntimeOptions
from sparsecut.targets.timing import measure

__all__ = ["TargetLayerTimer", "one_layer_model", "tuning_for"]


def tuning_for(
    target: str,
    *,
    batch: int = 1,
    threads: int | None = None,
    backends: tuple[BackendOptions, ...] = (),
    table: Path | None = None,
    budget: float = 30.0,
    rounds: int = 20,
    iterations: int = 60,
    seconds: float = 5.0,
    build: BuildOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Tuning:
    """`backends`: the targets' own settings (its provider, device …); `table`: the latency table file (default: in
    the user cache folder); `build`: the user's build options, for the candidates timed end to end (where the
    target builds). The candidates are timed in at least `rounds` rounds of `iterations // rounds` runs each, and
    in more rounds until `seconds` have passed (at most MAX_ROUNDS): a fast model gets many short rounds (a burst
    of machine noise then hits a few of many), a slow one no more than the rounds asked."""
    backend = get_target(target)
    if not backend.measures_layers:
        raise TargetError(
            f"--target {target}: channel counts are not measured through it (it times whole decoders); optimize "
            "without --target, or measure on onnxruntime"
        )
    alone = ProfileOptions(batch=batch, threads=threads, warmup=3, per_layer=False, backends=backends)
    timer = TargetLayerTimer(backend, alone)
    timer.context()  # a target that cannot run here (TensorRT missing) says so now, before anything is measured

    def compare(
        paths: list[Path], rounds: int = rounds, iterations: int = iterations, seconds: float = seconds
    ) -> list[MeasuredVariant]:
        options = ProfileOptions(batch=batch, threads=threads, iterations=iterations, warmup=5, per_layer=False,
                                 backends=backends)  # fmt: skip
        report = compare_models(
            paths,
            target=target,
            options=options,
            build=build,
            rounds=rounds,
            budget=seconds,
            max_rounds=MAX_ROUNDS,
            progress=None if progress is None else lambda done, total: progress("timing end to end", done, total),
        )
        return [MeasuredVariant("", v.model, v.latency.p50_ms, v.speedup) for v in report.variants]

    def quick(paths: list[Path], thorough: bool = False) -> list[MeasuredVariant]:
        if thorough:
            return compare(paths, BASE_ROUNDS, BASE_ITERATIONS, BASE_SECONDS)
        return compare(paths, QUICK_ROUNDS, QUICK_ITERATIONS, QUICK_SECONDS)

    def profile(paths: list[Path]) -> list[dict[str, Timed]]:
        options = ProfileOptions(batch=batch, threads=threads, iterations=PROFILE_RUNS, warmup=3, per_layer=True,
                                 backends=backends)  # fmt: skip
        return profile_in_context(backend, paths, options, build, progress)

    def confirm(paths: list[Path]) -> list[MeasuredVariant]:
        return compare(paths, BASE_ROUNDS, BASE_ITERATIONS, CONFIRM_SECONDS)

    formats = backend.int8_formats(build or BuildOptions(backends=backends))
    return Tuning(target=target, timer=timer, compare=compare, batch=batch, table=table or default_table_path(),
                  int8_formats=formats,
                  budget=budget,
                  progress=progress,
                  profile=profile,
                  quick=quick,
                  # a target that builds (TensorRT) would build both engines again for each window
                  confirm=None if backend.needs_build(Path("model.onnx")) else confirm)  # fmt: skip


# (rounds, runs per variant over them, seconds at least): each comparison goes on in rounds until its seconds
# have passed — a fast model's comparison of 0.6 s could be turned by one burst of machine noise (timm ResNeXt-26ts:
# align 1 timed 10 % slower than align 8 in the base's comparison, 4 % faster in the final one)
MAX_ROUNDS = 200  # a tiny model's seconds would run thousands of rounds, each resampled by the bootstrap
QUICK_ROUNDS, QUICK_ITERATIONS, QUICK_SECONDS = 6, 30, 1.5  # the in-context probes end to end: an interval, quickly
BASE_ROUNDS, BASE_ITERATIONS, BASE_SECONDS = 12, 80, 3.0  # the fixed alignments, for the base: the probes' reference
CONFIRM_SECONDS = 2.0  # each further window of the run-off between the two fastest candidates (measured.py)
PROFILE_RUNS = 15  # runs per profile: the backend's profiler takes each kernel's median over them
PROFILE_ROUNDS = 3  # profiles per model, interleaved across the models


def profile_in_context(
    backend: Target[Any],
    paths: list[Path],
    options: ProfileOptions,
    build: BuildOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Timed]]:
    """Per model, each graph node's kernel time in the whole model (the kernels the backend ran for it, fused
    activations included; a fused kernel counts for the weighted node it names first): the median over
    PROFILE_ROUNDS profiles taken round-robin across the models — a slow moment of the machine hits each alike —
    and, as its noise, half the spread of those profiles. A kernel of the backend's own (a layout reorder) is
    keyed `value:TENSOR`, by the source tensor it writes or reads where the backend says (`LayerTime.tensors`),
    else `kernel:NAME`: every kernel is in the profile, so its sum is the model's."""
    with tempfile.TemporaryDirectory(prefix="sparsecut-context-") as tmp:
        artifacts = []
        for i, path in enumerate(paths):
            artifact = backend.load(path)
            if backend.needs_build(path):
                artifact, _ = backend.build(path, Path(tmp) / f"{i}{backend.artifact_suffix}", build or BuildOptions())
            artifacts.append(artifact)
        report = None if progress is None else lambda done, total: progress("profiling in context", done, total)
        profiles = backend.layer_time_rounds(artifacts, options, PROFILE_ROUNDS, report)
    samples: list[dict[str, list[float]]] = [{} for _ in paths]
    for i, per_round in enumerate(profiles):
        for rows in per_round:
            per_node: dict[str, float] = {}
            for row in rows:
                key = _profile_key(row)
                per_node[key] = per_node.get(key, 0.0) + row.ms
            for node, ms in per_node.items():
                samples[i].setdefault(node, []).append(ms)
    found = []
    for per_model in samples:
        found.append({node: Timed(sorted(ms)[len(ms) // 2], (max(ms) - min(ms)) / 2) for node, ms in per_model.items()})
    return found


def _profile_key(row: LayerTime) -> str:
    """Where a kernel's time counts: the graph node it ran for, else the source tensor a reorder of the backend's
    own sits on, else the kernel itself."""
    if row.nodes:
        return row.nodes[0]
    return f"value:{row.tensors[0]}" if row.tensors else f"kernel:{row.name}"


class TargetLayerTimer:
    """One layer alone on a target, through the target's own build and runner."""

    def __init__(self, backend: Target[Any], options: ProfileOptions, seconds: float = 0.02) -> None:
        self.backend = backend
        self.options = options
        self.seconds = seconds  # per layer: runs until this much time was spent (and at least 5 runs)

    def context(self) -> dict[str, str]:
        version = self.backend.backend_version()  # first: a missing backend says how to install it
        return {
            "device": self.backend.device_signature(self.options),
            "backend": self.backend.name,
            "version": version,
            # the key of tables written before targets owned their options: onnxruntime's provider, for all
            "provider": self.options.backend(OnnxRuntimeOptions).provider,
            "threads": str(self.options.threads or "default"),
            "batch": str(self.options.batch),
            **self.backend.timing_settings(self.options),
        }

    def time_layer(self, layer: LayerSignature) -> Timed:
        with tempfile.TemporaryDirectory(prefix="sparsecut-layer-") as tmp:
            path = Path(tmp) / "layer.onnx"
            onnx.save(one_layer_model(layer), path)
            artifact = self.backend.load(path)
            if self.backend.needs_build(path):
                artifact, _ = self.backend.build(path, Path(tmp) / f"layer{self.backend.artifact_suffix}",
                                                 BuildOptions(batch=(layer.batch,) * 3))  # fmt: skip
            with self.backend.runner(artifact, self.options) as run_once:
                measure(run_once, warmup=3, iterations=0)
                samples: list[int] = []
                deadline = time.perf_counter() + self.seconds
                while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 200):
                    samples += measure(run_once, warmup=0, iterations=1)
        return median_interval([ns / 1e6 for ns in samples])


def one_layer_model(layer: LayerSignature) -> onnx.ModelProto:
    """The layer alone, in the precision it will run in; seeded weights.

    fp32: Conv (with bias), or a MatMul + bias Add over `rows × c_in`. fp16: the same in float16 throughout (a whole
    fp16 graph casts only at its inputs and outputs). "int8 FORMAT": the Q/DQ form onnxruntime's quantizer writes
    for a layer between quantized layers — input Q → DQ, per-output-channel int8 weight → DQ, fp32 bias, output
    Q → DQ (the next layer's input) — in the format's activation type and weight range, which the backend fuses
    into its int8 kernel (onnxruntime: QLinearConv / MatMulIntegerToFloat)."""
    rng = np.random.default_rng(0)
    precision = Precision.parse(layer.precision)
    dtype = np.float16 if precision.kind == "fp16" else np.float32
    bias = numpy_helper.from_array(rng.standard_normal(layer.c_out).astype(dtype), "b")
    if layer.op == "Conv":
        x_shape = [layer.batch, layer.c_in, *layer.spatial]
        w = rng.standard_normal((layer.c_out, layer.c_in // layer.groups, *layer.kernel)).astype(dtype)
        attrs: dict[str, Any] = {
            "group": layer.groups,
            "strides": list(layer.strides),
            "dilations": list(layer.dilations),
        }
        if layer.pads:
            attrs["pads"] = list(layer.pads)
        nodes = [helper.make_node("Conv", ["input", "w", "b"], ["y"], kernel_shape=list(layer.kernel), **attrs)]
        channel_axis = 0
    else:
        x_shape = [*layer.spatial, layer.c_in] if layer.spatial else [layer.batch, layer.c_in]
        w = rng.standard_normal((layer.c_in, layer.c_out)).astype(dtype)
        nodes = [helper.make_node("MatMul", ["input", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
        channel_axis = 1
    weights = [numpy_helper.from_array(w, "w"), bias]
    if precision.format is not None:
        nodes, extra = _quantized(nodes, w, channel_axis, precision.format)
        weights = [bias, *extra]
    elem = TensorProto.FLOAT16 if precision.kind == "fp16" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("input", elem, x_shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantized(
    nodes: list[onnx.NodeProto], w: np.ndarray, axis: int, fmt: Int8Format
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`nodes` (reading `input` and `w`, writing `y`) with Q/DQ on the input, the weight and the output."""
    activation = np.uint8 if fmt.unsigned_activations else np.int8
    zero = activation(128 if fmt.unsigned_activations else 0)
    limit = 63 if fmt.reduce_range else 127
    scales = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis)).astype(np.float32) / limit
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    w_q = np.clip(np.round(w / scales.reshape(shape)), -limit, limit).astype(np.int8)
    tensors = [
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(scales, "w_scale"),
        numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.05, np.float32), "a_scale"),
        numpy_helper.from_array(np.array(zero), "a_zero"),
    ]
    renamed = []
    for node in nodes:
        inputs = ["x_dq" if i == "input" else "w_dq" if i == "w" else i for i in node.input]
        outputs = ["y_float" if o == "y" else o for o in node.output]
        renamed.append(helper.make_node(node.op_type, inputs, outputs, **{a.name: helper.get_attribute_value(a)
                                                                          for a in node.attribute}))  # fmt: skip
    return [
        helper.make_node("QuantizeLinear", ["input", "a_scale", "a_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=axis),
        *renamed,
        helper.make_node("QuantizeLinear", ["y_float", "a_scale", "a_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "a_scale", "a_zero"], ["y"]),
    ], tensors
