"""The OpenVINO target — x86 CPUs (Intel and AMD) and, where the machine has them, Intel GPUs and NPUs.

- build: OpenVINO reads the ONNX file, compiles it for `--device` (to check it runs there, and to time the
  compile), and writes the model as OpenVINO IR (`<name>.ov.xml` + `<name>.ov.bin`), its weights as they are (no
  fp16 compression); the compile options go into the JSON build report. The IR is what OpenVINO deployments load.
- precision: fp32 is asked of the plugin explicitly (a CPU with bf16 or fp16 units would otherwise use them);
  `--precision fp16` is the plugin's inference-precision hint, where the device has fast fp16 (refused where it
  has not: it would be slower, or silently fp32); int8 comes from the graph's Q/DQ, as onnxruntime's.
- runner: one infer request, inputs bound once; threads and the latency/throughput hint from the options.
- per-layer: OpenVINO's performance counters (real time and kernel per executed node), mapped back to the ONNX
  nodes each executed node came from (the runtime model's `originalLayersNames`: a fused node names all its
  sources), beside their MACs — the same table as onnxruntime's.

OpenVINO is imported inside the methods: without it only this target fails, with an install hint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from sparsecut.errors import TargetError
from sparsecut.feeds import InputSpec, input_specs, synthetic_inputs
from sparsecut.modelfile import graph_precision, sha256_of
from sparsecut.precision import FP32, Precision
from sparsecut.report import LayerTime
from sparsecut.targets.base import Artifact, BackendOptions, BuildOptions, Built, ProfileOptions, Runner, Target
from sparsecut.targets.environment import cpu_name, cpu_vector_extensions
from sparsecut.targets.timing import LatencyStats, measure, summarize

__all__ = ["DEVICES", "OpenVinoOptions", "OpenVinoTarget"]

log = logging.getLogger(__name__)

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
_INSTALL = "pip install openvino (or: pip install sparsecut[openvino])"
_SOURCE = ["sparsecut", "source"]  # where the IR records the ONNX file it was built from


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise TargetError(f"the openvino target needs OpenVINO, which is not installed: {_INSTALL}") from exc
    return openvino


@cache
def _core() -> Any:
    return _ov().Core()


@dataclasses.dataclass(frozen=True)
class OpenVinoOptions(BackendOptions):
    device: str = "CPU"  # CPU | GPU | NPU | AUTO
    hint: str = "latency"  # the plugin's performance hint: latency | throughput


class OpenVinoTarget(Target[OpenVinoOptions]):
    name = "openvino"
    options_type = OpenVinoOptions
    artifact_suffix = ".ov.xml"
    artifact_companions = (".bin",)  # the IR's weights
    artifact_suffix_required = "OpenVINO IR is written as .xml (with its .bin beside it)"
    no_sparse_kernels = "OpenVINO's CPU plugin has no 2:4 sparse kernels"

    # ------------------------------------------------------------------------------------------ build
    def _build_impl(self, source: Path, staged: Path, options: BuildOptions) -> Built:
        ov = _ov()
        read = self._read(source)
        own = self.own(options)
        config = self._config(source, own.device, options.precision, options.threads, own.hint)
        start = time.perf_counter()
        self._compile(read, own.device, config, source)
        compile_seconds = time.perf_counter() - start
        # the ONNX file it was read from, so that profiling the IR later names its layers' MACs: its name only (a
        # shipped model carries no path of the machine that built it), found again beside the IR if unchanged
        read.set_rt_info(source.name, [*_SOURCE, "path"])
        read.set_rt_info(sha256_of(source), [*_SOURCE, "sha256"])
        ov.save_model(read, str(staged), compress_to_fp16=False)
        return Built(
            {
                "openvino": self.backend_version(),
                "device": self.device(ProfileOptions(backends=(own,))),
                "compile_seconds": f"{compile_seconds:.3f}",
                **{f"config.{key}": str(value) for key, value in config.items()},
            }
        )

    def _load_impl(self, path: Path) -> Artifact:
        if path.suffix != ".xml":
            return Artifact(path, self.name, path)
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise TargetError(f"{path}: its weights file {weights.name} is missing")
        model = self._read(path)  # a truncated .bin fails here, in one line
        source = path
        if model.has_rt_info([*_SOURCE, "path"]):
            onnx_file = path.parent / Path(str(model.get_rt_info([*_SOURCE, "path"]).astype(str))).name
            digest = str(model.get_rt_info([*_SOURCE, "sha256"]).astype(str))
            if onnx_file.is_file() and sha256_of(onnx_file) == digest:
                source = onnx_file
        return Artifact(path, self.name, source)

    # ------------------------------------------------------------------------------------------ running
    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = self._compiled(artifact, ProfileOptions())
        request = compiled.create_infer_request()
        results = request.infer(inputs)
        return [np.array(results[out]) for out in compiled.outputs]

    @contextlib.contextmanager
    def runner(self, artifact: Artifact, options: ProfileOptions) -> Iterator[Runner]:
        feeds = synthetic_inputs(self.inputs(artifact), options.batch, options.seed, artifact.path)
        compiled = self._compiled(artifact, options)
        request = compiled.create_infer_request()
        ov = _ov()
        for name, array in feeds.items():
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(array)))

        def run_once() -> None:
            request.start_async()
            request.wait()

        yield run_once

    def _profile_impl(
        self, artifact: Artifact, options: ProfileOptions
    ) -> tuple[LatencyStats, list[LayerTime], dict[str, str]]:
        """With `per_layer`, the end-to-end times and the performance counters come from the same runs (of a model
        compiled with counters on; their cost was not measurable here, 1.31 vs 1.36 ms on a 1.3 ms net), so the
        per-layer times add up to the p50 they are shown beside (within 3 % on an idle machine). On a busy one the
        counters stop adding up to the runs' wall time (here, with one core taken by another process: their sum per
        run 0.3–6.6 × the run's time): a profile whose typical counters miss the p50 by more than COUNTER_DRIFT is
        taken again, up to COUNTER_TRIES times, and the last one says that its per-layer times are unreliable.
        `compare` and measured decisions time the plain compiled model."""
        if not options.per_layer:
            return super()._profile_impl(artifact, options)
        for _ in range(COUNTER_TRIES):
            stats, counters = self._counted(artifact, options)
            counted = sum(counters.typical().values())
            if abs(counted - stats.p50_ms) <= COUNTER_DRIFT * stats.p50_ms:
                return stats, counters.layers(), {"perf_counters": "on"}
            log.info("openvino: per-layer counters add up to %.3f ms, the p50 is %.3f ms: profiled again", counted,
                     stats.p50_ms)  # fmt: skip
        said = (
            f"they add up to {counted:.3f} ms, not the p50 {stats.p50_ms:.3f} ms: the machine was busy, the "
            "per-layer times are unreliable"
        )
        log.warning("openvino: per-layer counters: %s", said)
        return stats, counters.layers(), {"perf_counters": f"on; {said}"}

    def _counted(self, artifact: Artifact, options: ProfileOptions) -> tuple[LatencyStats, _Counters]:
        """`options.iterations` runs (or `options.duration` seconds of them), each timed and its counters kept."""
        counters = _Counters(self, artifact, options)
        request = counters.request

        def timed_run() -> None:
            request.start_async()
            request.wait()

        samples: list[int] = []
        deadline = None if options.duration is None else time.perf_counter() + options.duration
        while len(samples) < options.iterations if deadline is None else time.perf_counter() < deadline or not samples:
            samples += measure(timed_run, warmup=0, iterations=1)
            counters.collect()
        return summarize(samples, options.batch), counters

    def layer_times(self, artifact: Artifact, options: ProfileOptions) -> list[LayerTime]:
        """OpenVINO's performance counters per executed node, their mean over the typical runs
        (`_Counters.typical`), joined with the MACs of the ONNX nodes it computes (a fused node: all of them). A
        layout reorder the plugin added names no ONNX node (`x_abcd_acdb_…`: NCHW → blocked); the MACs of ONNX nodes
        no executed node claims are listed so that they still add up to the model's total."""
        counters = _Counters(self, artifact, options)
        for _ in range(max(5, min(options.iterations, 50))):
            counters.request.infer()
            counters.collect()
        return counters.layers()

    # ------------------------------------------------------------------------------------------ about it
    def precision_in_graph(self, precision: Precision) -> bool:
        return precision.kind == "int8"  # fp16 is the plugin's hint; int8 needs the graph's Q/DQ

    def precision(self, artifact: Artifact) -> str:
        if artifact.path.suffix == ".onnx":
            return str(graph_precision(artifact.path))
        model = self._read(artifact.path)
        types = {op.get_type_name() for op in model.get_ops()}
        return "int8" if types & {"FakeQuantize", "FakeConvert"} else "fp32"

    def int8_formats(self, options: BuildOptions) -> tuple[str, ...]:
        return ("s8s8", "u8s8")  # its CPU plugin runs signed int8 QDQ fast on x86 (6.7 ms vs onnxruntime's 19)

    def inputs(self, artifact: Artifact) -> list[InputSpec]:
        if artifact.path.suffix == ".onnx":
            return input_specs(artifact.path)
        model = self._read(artifact.path)
        specs = []
        for port in model.inputs:
            shape = tuple(
                dim.get_length() if dim.is_static else (f"d{i}" if i else "batch")
                for i, dim in enumerate(port.get_partial_shape())
            )
            specs.append(InputSpec(port.get_any_name(), str(port.get_element_type().to_dtype()), shape))
        return specs

    def device(self, options: ProfileOptions) -> str:
        device = self.own(options).device
        if device == "CPU":
            extensions = cpu_vector_extensions()
            return f"{cpu_name()} ({extensions})" if extensions else cpu_name()
        try:
            return f"{device}: {_core().get_property(device, 'FULL_DEVICE_NAME')}"
        except Exception:
            return device

    def backend_version(self) -> str:
        return str(_ov().__version__).split("-", 1)[0]

    def environment(self, options: ProfileOptions) -> dict[str, str]:
        own = self.own(options)
        return {"openvino": self.backend_version(), "ov_device": own.device, "hint": own.hint}

    # ------------------------------------------------------------------------------------------ internals
    def _read(self, path: Path) -> Any:
        try:
            return _core().read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError with its frontend's whole story
            said = _first_line(exc)
            raise TargetError(f"{path}: OpenVINO cannot read it ({said}{_unconverted_nodes(path, said)})") from exc

    def _config(
        self, path: Path, device: str, precision: Precision | None, threads: int | None, hint: str
    ) -> dict[str, Any]:
        """`precision` None: what the graph carries, the plugin left to its own choice."""
        if device not in DEVICES:
            raise TargetError(f"unknown --device {device!r}; known: {', '.join(DEVICES)}")
        if hint not in _HINTS:
            raise TargetError(f"unknown --hint {hint!r}; known: {', '.join(_HINTS)}")
        available = _core().available_devices
        if device != "AUTO" and not any(d == device or d.startswith(f"{device}.") for d in available):
            raise TargetError(
                f"--device {device}: this machine has no such OpenVINO device (it has {', '.join(available)})"
            )
        config: dict[str, Any] = {"PERFORMANCE_HINT": _HINTS[hint]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        in_graph = graph_precision(path) if path.suffix == ".onnx" else FP32
        kind = precision.kind if precision is not None else "best"
        if kind == "fp16":
            capabilities = self._capabilities(device)
            if "FP16" not in capabilities:
                raise TargetError(
                    f"--precision fp16: {device} has no fast fp16 (OpenVINO reports {', '.join(capabilities)}); "
                    "fp16 would run slower or silently in fp32 here — build fp32, or int8 from a quantized graph"
                )
            config["INFERENCE_PRECISION_HINT"] = "f16"
        elif kind == "int8":
            if in_graph.kind != "int8":
                raise TargetError(
                    f"{path}: the graph is {in_graph}, not int8; OpenVINO runs int8 from the graph's Q/DQ: run "
                    "`sparsecut optimize --precision int8` (or `sparsecut build --precision int8`) first"
                )
        elif kind != "best" and device != "AUTO":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # no silent bf16/fp16 where the CPU has them
        return config

    @staticmethod
    def _capabilities(device: str) -> list[str]:
        try:
            return [str(c) for c in _core().get_property(device, "OPTIMIZATION_CAPABILITIES")]
        except Exception:
            return []

    def _compile(self, model: Any, device: str, config: dict[str, Any], path: Path) -> Any:
        try:
            return _core().compile_model(model, device, config)
        except Exception as exc:
            raise TargetError(f"{path}: OpenVINO cannot compile it for {device} ({_first_line(exc)})") from exc

    def _compiled(self, artifact: Artifact, options: ProfileOptions, profiling: bool = False) -> Any:
        precision = options.precision if options.precision.kind == "fp16" else FP32
        own = self.own(options)
        config = self._config(artifact.path, own.device, precision, options.threads, own.hint)
        if profiling:
            config["PERF_COUNT"] = True
        return self._compile(self._read(artifact.path), own.device, config, artifact.path)


COUNTER_DRIFT = 0.1  # per-layer counters this far from the p50 of the same runs: the machine was busy
COUNTER_TRIES = 3


class _Counters:
    """A compiled model with performance counters on, its inputs bound, sampled run by run."""

    def __init__(self, target: OpenVinoTarget, artifact: Artifact, options: ProfileOptions) -> None:
        self.artifact = artifact
        self.compiled = target._compiled(artifact, options, profiling=True)
        self.request = self.compiled.create_infer_request()
        ov = _ov()
        feeds = synthetic_inputs(target.inputs(artifact), options.batch, options.seed, artifact.path)
        for name, array in feeds.items():
            self.request.set_tensor(name, ov.Tensor(np.ascontiguousarray(array)))
        for _ in range(max(5, options.warmup)):  # the first runs allocate and warm caches: not the steady state
            self.request.infer()
        self.runs: list[dict[str, float]] = []  # run by run, executed node → ms
        self.kinds: dict[str, str] = {}

    def collect(self) -> None:
        """The counters of the run just made."""
        run: dict[str, float] = defaultdict(float)
        for info in self.request.get_profiling_info():
            if str(info.status).rsplit(".", 1)[-1] == "EXECUTED":
                run[info.node_name] += info.real_time.total_seconds() * 1000.0
                self.kinds[info.node_name] = f"{info.node_type} ({info.exec_type})"
        self.runs.append(run)

    def typical(self) -> dict[str, float]:
        """Per executed node, its mean over the typical runs — those whose counters add up to within the middle
        half of all runs' sums: a hiccup is no layer's cost, and the layers shown come from the same runs, so they
        add up to a typical run's counters (per-node medians, each over other runs, need not)."""
        sums = sorted(sum(run.values()) for run in self.runs)
        low, high = sums[(len(sums) - 1) // 4], sums[(3 * (len(sums) - 1) + 3) // 4]
        middle = [run for run in self.runs if low <= sum(run.values()) <= high] or self.runs
        nodes = dict.fromkeys(node for run in self.runs for node in run)
        return {node: statistics.fmean(run.get(node, 0.0) for run in middle) for node in nodes}

    def layers(self) -> list[LayerTime]:
        from sparsecut.cost import count_costs
        from sparsecut.layer_names import module_names
        from sparsecut.modelfile import load_model

        source = self.artifact.source
        graph = load_model(source) if source.suffix == ".onnx" else None
        find = _onnx_nodes(graph)
        modules = module_names(graph) if graph is not None else {}
        costs = count_costs(graph) if graph is not None else None
        macs = {layer.node: layer.macs for layer in costs.layers} if costs is not None else {}
        total_macs = (costs.macs if costs is not None else 0) or 1
        sources = original_layers(self.compiled)
        per_run = self.typical()
        total_ms = sum(per_run.values()) or 1.0
        rows, claimed = [], set()
        for executed, ms in per_run.items():
            nodes = list(dict.fromkeys(n for name in sources.get(executed, [executed]) if (n := find(name))))
            m = sum(macs.get(n, 0) for n in nodes if n not in claimed)
            claimed.update(nodes)
            shown = " + ".join(nodes[:3]) + (f" + {len(nodes) - 3} more" if len(nodes) > 3 else "") or executed
            module = next((modules[n] for n in nodes if n in modules), "")
            achieved = m / (ms * 1e6) if ms > 0 else 0.0
            rows.append(LayerTime(shown, self.kinds[executed], ms, 100 * ms / total_ms, m, 100 * m / total_macs,
                                  achieved, nodes, module))  # fmt: skip
        for node, m in macs.items():
            if node not in claimed and m:
                rows.append(LayerTime(node, "(no kernel of its own)", 0.0, 0.0, m, 100 * m / total_macs, 0.0,
                                      [node], modules.get(node, "")))  # fmt: skip
        return sorted(rows, key=lambda r: r.ms, reverse=True)


def original_layers(compiled: Any) -> dict[str, list[str]]:
    """Per executed node of a compiled model, the names of the source-model nodes it computes (a fused node
    names all of them): OpenVINO's ONNX reader names its nodes after the ONNX nodes."""
    found = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        names = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
        found[op.get_friendly_name()] = [n for n in names.split(",") if n]
    return found


def _onnx_nodes(graph: Any) -> Callable[[str], str | None]:
    """Map a name OpenVINO gives an operation back to the ONNX node it came from. Its ONNX reader names an
    operation after its node (`Conv_4`), the parts of a decomposed node after the node and a suffix
    (`Conv_4/WithoutBiases`, and ONNX names may hold slashes themselves: `/layer1/conv1/Conv/WithoutBiases`),
    and an operation that produces a graph output after that output (`logits`)."""
    if graph is None:
        return lambda name: None
    nodes = {node.name for node in graph.graph.all_nodes() if node.name}
    producers = {
        out.name: node.name for node in graph.graph.all_nodes() for out in node.outputs if out.name and node.name
    }

    def find(name: str) -> str | None:
        candidate = name
        while candidate:
            if candidate in nodes:
                return candidate
            if candidate in producers:
                return producers[candidate]
            candidate = candidate.rpartition("/")[0]
        return None

    return find


_NOISE = ("Exception from ", "Check ", "FrontEnd API failed", "Summary:")


def _first_line(exc: BaseException) -> str:
    """OpenVINO's message without its source locations, in one line."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(_NOISE)]
    return ("; ".join(said) if said else type(exc).__name__)[:300]


def _unconverted_nodes(path: Path, message: str) -> str:
    """The ONNX nodes of the op types OpenVINO found no conversion for (it names only the types)."""
    marker = "No conversion rule found for operations:"
    if marker not in message or path.suffix != ".onnx":
        return ""
    import onnx

    wanted = {entry.strip().rsplit("-", 1)[0] for entry in message.split(marker, 1)[1].split(";")[0].split(",")}
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return ""
    nodes = [f"{node.name or '(unnamed)'} ({node.op_type})" for node in graph.node if node.op_type in wanted]
    return f"; node {', '.join(nodes[:3])}{' …' if len(nodes) > 3 else ''}" if nodes else ""
