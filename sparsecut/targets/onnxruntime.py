"""The onnxruntime target — the embedded default, on every machine: CPU, and CUDA/TensorRT execution providers
where the installed onnxruntime has them.

- build: onnxruntime optimizes the graph at the chosen level and serializes the result (`<name>.ort.onnx`), with
  a JSON build report beside it.
- profile: inputs bound once (IOBinding), `perf_counter_ns` around `run_with_iobinding`; per-layer times from
  onnxruntime's profiler, joined by node name with the MACs of the graph. Worker threads spin during a run, as a
  session alone spins by default, and stop when it returns (`session.force_spinning_stop`): a worker left spinning
  takes a core from the session timed next, and workers that never spin wake for every operator. The demo's lean
  int8 ResNet-18, three identical copies timed in turn on 2 cores (benchmarks/latency.py --spinning): never
  spinning 1.165× the model alone in a process of its own, left spinning 1.236× (copies 2.6 % apart), spinning
  during runs 1.051× (copies within 1 %); fp32 1.096×, 1.071×, 1.051×.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparsecut.cost import LAYER_OPS
from sparsecut.cpu import cpu_vector_extensions
from sparsecut.errors import TargetError
from sparsecut.feeds import input_specs, synthetic_inputs
from sparsecut.modelfile import graph_precision
from sparsecut.quantization import cpu_int8_formats
from sparsecut.report import LayerTime
from sparsecut.targets.base import (
    Artifact,
    BackendOptions,
    BuildOptions,
    Built,
    InputSpec,
    ProfileOptions,
    Runner,
    Target,
)
from sparsecut.targets.environment import cpu_name

__all__ = ["OnnxRuntimeOptions", "OnnxRuntimeTarget", "random_inputs"]

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _session(path: Path, provider: str, threads: int | None, optimization: str, **extra: Any) -> Any:
    import onnxruntime as ort

    if provider not in _PROVIDERS:
        raise TargetError(f"unknown --provider {provider!r}; known: {', '.join(_PROVIDERS)}")
    wanted = _PROVIDERS[provider][0]
    if wanted not in ort.get_available_providers():
        raise TargetError(
            f"this onnxruntime ({ort.__version__}) has no {wanted} (available: {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu for CUDA/TensorRT"
        )
    if optimization not in _LEVELS:
        raise TargetError(f"unknown optimization level {optimization!r}; known: {', '.join(_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
    options.log_severity_level = 3
    options.add_session_config_entry("session.force_spinning_stop", "1")  # spin during a run, not after it
    if threads is not None:
        options.intra_op_num_threads = threads
    for key, value in extra.items():
        setattr(options, key, value)
    try:
        return ort.InferenceSession(str(path), options, providers=_PROVIDERS[provider])
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NoSuchFile
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"{path}: onnxruntime cannot load it ({first[:300]})") from exc


def random_inputs(path: Path, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input of the file; the first axis is the batch."""
    return synthetic_inputs(input_specs(path), batch, seed, path)


@dataclasses.dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    provider: str = "cpu"  # cpu | cuda | tensorrt (execution providers, where the installed onnxruntime has them)
    optimization: str = "all"  # graph optimization level: disable | basic | extended | all


class OnnxRuntimeTarget(Target[OnnxRuntimeOptions]):
    name = "onnxruntime"
    options_type = OnnxRuntimeOptions
    artifact_suffix = ".ort.onnx"
    no_sparse_kernels = "onnxruntime on CPU has no 2:4 sparse kernels"

    def _build_impl(self, source: Path, staged: Path, options: BuildOptions) -> Built:
        in_graph, wanted = graph_precision(source), options.precision
        if wanted is not None and wanted.kind != in_graph.kind:
            raise TargetError(
                f"{source}: the graph is {in_graph}, not {wanted.kind}; onnxruntime runs the precision the "
                f"graph carries: run `sparsecut optimize --precision {wanted.kind}` (or `sparsecut build "
                f"--precision {wanted.kind}`, which does it for you) first"
            )
        own = self.own(options)
        _session(source, own.provider, options.threads, own.optimization, optimized_model_filepath=str(staged))
        return Built(_environment(own.provider, own.optimization))

    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = _session(artifact.path, "cpu", None, "all")
        return list(session.run(None, inputs))

    def precision(self, artifact: Artifact) -> str:
        return str(graph_precision(artifact.path))

    def int8_formats(self, options: BuildOptions) -> tuple[str, ...]:
        provider = self.own(options).provider
        if provider == "tensorrt":
            return ("trt-s8",)
        if provider == "cuda":
            return ("s8s8",)  # onnxruntime's CUDA provider runs signed int8 QDQ
        return cpu_int8_formats(cpu_vector_extensions())  # x86: u8s8 (reduce-range without VNNI); ARM: s8s8

    def inputs(self, artifact: Artifact) -> list[InputSpec]:
        return input_specs(artifact.path)

    def device(self, options: ProfileOptions) -> str:
        provider = self.own(options).provider
        return cpu_name() if provider == "cpu" else provider

    def device_signature(self, options: ProfileOptions) -> str:
        device = self.device(options)
        return f"{device} [{cpu_vector_extensions()}]" if self.own(options).provider == "cpu" else device

    def backend_version(self) -> str:
        return _ort_version()

    def environment(self, options: ProfileOptions) -> dict[str, str]:
        own = self.own(options)
        return _environment(own.provider, own.optimization)

    def timing_settings(self, options: ProfileOptions) -> dict[str, str]:
        return {"spinning": SPINNING}

    @contextlib.contextmanager
    def runner(self, artifact: Artifact, options: ProfileOptions) -> Iterator[Runner]:
        feeds = random_inputs(artifact.path, options.batch, options.seed)  # reads the file first: clearer errors
        own = self.own(options)
        session = _session(artifact.path, own.provider, options.threads, own.optimization)
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cpu")
        yield functools.partial(session.run_with_iobinding, binding)

    def kernel_tensors(self, artifact: Artifact, options: ProfileOptions) -> dict[str, list[str]]:
        """From the graph onnxruntime runs (its layout transform and fusions applied, saved once): each kernel's
        tensors that the source graph has too."""
        import onnx

        source = {str(v) for n in onnx.load(str(artifact.path), load_external_data=False).graph.node
                  for v in (*n.input, *n.output) if v}  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="sparsecut-optimized-") as tmp:
            own = self.own(options)
            saved = Path(tmp) / "optimized.onnx"
            _session(artifact.path, own.provider, options.threads, own.optimization,
                     optimized_model_filepath=str(saved))  # fmt: skip
            graph = onnx.load(str(saved), load_external_data=False).graph
        return {node.name: [v for v in (*node.output, *node.input) if v in source] for node in graph.node if node.name}

    def layer_times(self, artifact: Artifact, options: ProfileOptions) -> list[LayerTime]:
        """onnxruntime's profiler (each kernel's median over the runs), joined by node name with the graph's MACs. A node fused into another kernel
        reports no time of its own; its MACs are listed so that they still add up to the model's total."""
        import onnx_ir as ir

        from sparsecut.cost import count_costs
        from sparsecut.layer_names import module_names

        runs = max(5, min(options.iterations, 100))
        with tempfile.TemporaryDirectory(prefix="sparsecut-profile-") as tmp:
            own = self.own(options)
            session = _session(
                artifact.path, own.provider, options.threads, own.optimization,
                enable_profiling=True, profile_file_prefix=str(Path(tmp) / "ort"),
            )  # fmt: skip
            feeds = random_inputs(artifact.path, options.batch, options.seed)
            for _ in range(runs + 2):  # the first runs allocate: they are not what steady state costs
                session.run(None, feeds)
            trace = json.loads(Path(session.end_profiling()).read_text())
        times: dict[str, list[float]] = defaultdict(list)
        ops: dict[str, str] = {}
        for event in trace:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            node = event["name"][: -len("_kernel_time")]
            times[node].append(event["dur"] / 1000.0)
            ops[node] = event.get("args", {}).get("op_name", "?")
        # the median of its runs (the first two, which allocate, left out): a hiccup of the machine is no layer's cost
        per_run = {node: statistics.median(ms[2:] or ms) for node, ms in times.items()}
        graph = ir.load(artifact.source)
        cost = count_costs(graph)
        owner = _kernel_owners(graph)
        modules = module_names(graph)
        macs = {layer.node: layer.macs for layer in cost.layers}
        total_ms = sum(per_run.values()) or 1.0
        total_macs = cost.macs or 1
        rows, claimed = [], set()
        for kernel, ms in per_run.items():
            node = owner(kernel)
            m = macs.get(node, 0) if node is not None and node not in claimed else 0
            if m:
                claimed.add(node)
            name = kernel if node is None or node == kernel else f"{kernel} ({node})"
            achieved = m / (ms * 1e6) if ms > 0 else 0.0
            nodes = [node] if node is not None else []
            rows.append(LayerTime(name, ops[kernel], ms, 100 * ms / total_ms, m, 100 * m / total_macs, achieved,
                                  nodes, modules.get(node or "", "")))  # fmt: skip
        for node, m in macs.items():
            if node not in claimed and m:
                rows.append(LayerTime(node, "(no kernel of its own)", 0.0, 0.0, m, 100 * m / total_macs, 0.0,
                                      [node], modules.get(node, "")))  # fmt: skip
        return sorted(rows, key=lambda r: r.ms, reverse=True)


_FUSABLE = {"Relu", "Clip", "Add", "Sigmoid", "Mul", "HardSigmoid", "LeakyRelu", "BatchNormalization", "Sum"}


def _kernel_owners(graph: Any) -> Any:
    """Map an onnxruntime kernel name to the graph node whose MACs it computes. onnxruntime names a kernel after
    its node, or — for fused and layout-transformed kernels (`relu_nchwc`: Conv + Add + Relu in NCHWc) — after
    the value the fused chain produces; follow such chains back to the Conv/Gemm/MatMul that starts them."""
    names = {node.name: node.name for node in graph.graph if node.name}
    for node in graph.graph:
        if node.op_type not in LAYER_OPS:
            continue
        value = node.outputs[0]
        for _ in range(4):  # a fused chain is short: Conv → Add → Relu at most, in practice
            names.setdefault(value.name, node.name)
            uses = list(value.uses())
            if len(uses) != 1 or uses[0].node.op_type not in _FUSABLE:
                break
            value = uses[0].node.outputs[0]

    def owner(kernel: str) -> str | None:
        for candidate in (kernel, kernel.removesuffix("_nchwc"), kernel.rsplit("_token_", 1)[0]):
            if candidate in names:
                return names[candidate]
        return None

    return owner


SPINNING = "during runs"  # worker threads spin while a run lasts and stop when it returns (`_session`)


def _environment(provider: str, optimization: str) -> dict[str, str]:
    return {"onnxruntime": _ort_version(), "provider": provider, "optimization": optimization}


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
