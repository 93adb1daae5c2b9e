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

import bisect
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparsecut.cost import LAYER_OPS
from sparsecut.cpu import cpu_vector_extensions
from sparsecut.errors import TargetError
from sparsecut.feeds import input_specs, synthetic_inputs
from sparsecut.modelfile import graph_precision, input_sidecars
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


def _session(
    path: Path,
    provider: str,
    threads: int | None,
    optimization: str,
    config: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
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
    for key, text in (config or {}).items():
        options.add_session_config_entry(key, text)
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

    def layer_times(self, artifact: Artifact, options: ProfileOptions) -> list[LayerTime]:
        """onnxruntime's profiler (each kernel's median over the runs), joined by node name with the graph's MACs. A node fused into another kernel
        reports no time of its own; its MACs are listed so that they still add up to the model's total."""
        return self.layer_time_rounds([artifact], options, 1)[0][0]

    def layer_time_rounds(
        self,
        artifacts: list[Artifact],
        options: ProfileOptions,
        rounds: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[list[LayerTime]]]:
        """The rounds taken round-robin across the artifacts, each round's kernel times the median of its runs (the
        first ALLOCATING_RUNS of a session left out: they allocate); each graph's costs and inputs read once for all
        its rounds. One profiling session per artifact for all its rounds while the files fit in TOGETHER_BYTES
        (timm ResNet-50, 10 graphs × 3 rounds: 7.0 s instead of 7.8 s); beyond, a session per round, each closed
        before the next opens."""
        runs = max(5, min(options.iterations, 100))
        own = self.own(options)
        feeds = [random_inputs(artifact.path, options.batch, options.seed) for artifact in artifacts]
        rows = [_layer_rows(artifact) for artifact in artifacts]
        found: list[list[list[LayerTime]]] = [[] for _ in artifacts]
        step = itertools.count(1)

        def tick() -> None:
            if progress is not None:
                progress(next(step), rounds * len(artifacts))

        with tempfile.TemporaryDirectory(prefix="sparsecut-profile-") as tmp:
            if len(artifacts) == 1 or sum(_file_bytes(a.path) for a in artifacts) <= TOGETHER_BYTES:
                held = [_Profiling(a, feeds[i], own, options, Path(tmp) / str(i)) for i, a in enumerate(artifacts)]
                for _ in range(rounds):
                    for profiling in held:
                        profiling.run(runs)
                        tick()
                for i, profiling in enumerate(held):
                    per_run, ops = profiling.finish()
                    per_round = [per_run[r * runs : (r + 1) * runs] for r in range(rounds)]
                    found[i] = [rows[i](chosen, ops, profiling.tensors) for chosen in per_round]
                return found
            for r in range(rounds):
                for i, artifact in enumerate(artifacts):
                    profiling = _Profiling(artifact, feeds[i], own, options, Path(tmp) / f"{i}-{r}")
                    profiling.run(runs)
                    per_run, ops = profiling.finish()
                    found[i].append(rows[i](per_run, ops, profiling.tensors))
                    tick()
        return found


class _Profiling:
    """A profiling session of one graph, its first runs taken (they allocate), and the tensors of the graph it ran
    (on CPU; an execution provider that compiles subgraphs, TensorRT's, cannot save them): onnxruntime names its
    layout reorders anew in each session, so they are read from the session that is profiled. Its files go to
    `folder`, each removed once read."""

    def __init__(
        self,
        artifact: Artifact,
        feeds: dict[str, np.ndarray],
        own: OnnxRuntimeOptions,
        options: ProfileOptions,
        folder: Path,
    ) -> None:
        folder.mkdir()
        self.folder, self.feeds = folder, feeds
        ran = folder / "ran.onnx" if own.provider == "cpu" else None
        saving: dict[str, Any] = {} if ran is None else {"config": _GRAPH_ONLY, "optimized_model_filepath": str(ran)}
        self.session = _session(artifact.path, own.provider, options.threads, own.optimization, **saving,
                                enable_profiling=True, profile_file_prefix=str(folder / "ort"))  # fmt: skip
        self.tensors = {}
        if ran is not None:  # read, then removed with its weights
            self.tensors = _kernel_tensors(ran)
            ran.unlink()
            (folder / _GRAPH_ONLY["session.optimized_model_external_initializers_file_name"]).unlink(missing_ok=True)
        self.run(ALLOCATING_RUNS)

    def run(self, times: int) -> None:
        for _ in range(times):
            self.session.run(None, self.feeds)

    def finish(self) -> tuple[list[dict[str, float]], dict[str, str]]:
        """Ends the profile: per run after the allocating ones, each kernel's ms; and each kernel's op."""
        trace = json.loads(Path(self.session.end_profiling()).read_text())
        del self.session
        shutil.rmtree(self.folder)
        per_run, ops = _kernel_times_per_run(trace)
        return per_run[ALLOCATING_RUNS:], ops


ALLOCATING_RUNS = 2  # a session's first runs allocate: they are not what steady state costs
# the graph a session runs, saved with its weights apart (only the graph is read back)
_GRAPH_ONLY = {
    "session.optimized_model_external_initializers_file_name": "weights.bin",
    "session.optimized_model_external_initializers_min_size_in_bytes": "0",
}
# graphs profiled round-robin with their sessions held open together, up to this size of files (the sessions take
# about 2.4× their files: ten lean timm ResNet-50, 402 MB of files, 962 MB)
TOGETHER_BYTES = 1 << 30


def _file_bytes(path: Path) -> int:
    """The file and the external data it reads."""
    return sum(p.stat().st_size for p in [path, *input_sidecars(path)] if p.is_file())


def _kernel_tensors(ran: Path) -> dict[str, list[str]]:
    """Per kernel of the graph a session ran (`ran`: its layout transform and fusions applied, as it saved it), the
    tensors it reads or writes, outputs first (`_layer_rows` keeps those the source graph has too): where a kernel
    of onnxruntime's own (a layout reorder) sits. Read from the session that is profiled: onnxruntime names its
    reorders anew in each session (`ReorderOutput` and `ReorderOutput_token_131` of timm ResNet-50 swapped tensors
    in 3 of 8 sessions)."""
    import onnx

    graph = onnx.load(str(ran), load_external_data=False).graph
    return {node.name: [v for v in (*node.output, *node.input) if v] for node in graph.node if node.name}


def _kernel_times_per_run(trace: list[dict[str, Any]]) -> tuple[list[dict[str, float]], dict[str, str]]:
    """From onnxruntime's profile: per run (its `model_run` span, in order), each kernel's ms; and each kernel's op."""
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in spans]
    starts = [start for start, _ in spans]
    ops: dict[str, str] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, event["ts"]) - 1
        if run < 0 or event["ts"] > spans[run][1]:
            continue  # (outside every run: none is expected)
        kernel = event["name"][: -len("_kernel_time")]
        per_run[run][kernel] += event["dur"] / 1000.0
        ops[kernel] = event.get("args", {}).get("op_name", "?")
    return per_run, ops


def _layer_rows(
    artifact: Artifact,
) -> Callable[[list[dict[str, float]], dict[str, str], dict[str, list[str]]], list[LayerTime]]:
    """The rows of one profile of `artifact` from its runs' kernel times: each kernel's median over the runs, joined
    by node name with the graph's MACs (the graph read once for all its profiles)."""
    import onnx_ir as ir

    from sparsecut.cost import count_costs
    from sparsecut.layer_names import module_names

    graph = ir.load(artifact.source)
    cost = count_costs(graph)
    owner = _kernel_owners(graph)
    modules = module_names(graph)
    macs = {layer.node: layer.macs for layer in cost.layers}
    total_macs = cost.macs or 1
    known = {v.name for node in graph.graph for v in (*node.inputs, *node.outputs) if v is not None and v.name}

    def rows_of(runs: list[dict[str, float]], ops: dict[str, str], tensors: dict[str, list[str]]) -> list[LayerTime]:
        # the median of its runs: a hiccup of the machine is no layer's cost
        per_run = {kernel: statistics.median(run.get(kernel, 0.0) for run in runs) for kernel in ops}
        total_ms = sum(per_run.values()) or 1.0
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
                                  nodes, modules.get(node or "", ""),
                                  [] if node is not None else [v for v in tensors.get(kernel, []) if v in known]))  # fmt: skip
        for node, m in macs.items():
            if node not in claimed and m:
                rows.append(LayerTime(node, "(no kernel of its own)", 0.0, 0.0, m, 100 * m / total_macs, 0.0,
                                      [node], modules.get(node, "")))  # fmt: skip
        return sorted(rows, key=lambda r: r.ms, reverse=True)

    return rows_of


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
