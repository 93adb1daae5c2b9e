"""The TensorRT target: ONNX parser → serialized engine, timed with CUDA events; written for TensorRT 10 and 11.

- TensorRT ≤ 10.x still has the FP16/INT8 builder flags: `--precision` sets them. TensorRT 11 builds strongly
  typed networks only (the flags are gone): precision must already be in the graph (FP16 tensors, explicit Q/DQ),
  so a request the graph does not carry is refused with the pass to run first.
- `--sparsity` sets `BuilderFlag.SPARSE_WEIGHTS`; the build report lists the layers TensorRT ran with sparse
  kernels (engine inspector, detailed profiling verbosity, and the builder's "(Sparsity)" log lines) beside the
  weights that were 2:4 in the graph.
- Timing: CUDA events around `execute_async_v3` on a private stream; per-layer times from an `IProfiler`.
Everything TensorRT or CUDA is imported inside the methods: without TensorRT, only this target fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparsecut.errors import TargetError
from sparsecut.modelfile import atomic_write_bytes, graph_precision
from sparsecut.precision import Precision
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
from sparsecut.targets.environment import gpu_name
from sparsecut.targets.timing import LatencyStats, summarize

__all__ = ["TensorRTOptions", "TensorRTTarget"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the tensorrt target needs NVIDIA TensorRT and a CUDA build of torch on a machine with an NVIDIA GPU: "
    "pip install 'sparsecut[tensorrt]' (its libraries come from NVIDIA's package index)"
)


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TargetError(INSTALL_HINT) from exc
    return trt


def _torch_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise TargetError("the tensorrt target needs a CUDA device, and torch sees none (a CPU build of torch?)")
    return torch


@dataclasses.dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    workspace_mb: int | None = None  # the builder's workspace limit
    timing_cache: Path | None = None  # read before the build and updated after it
    cuda_graph: bool = False  # timing: replay a captured CUDA graph


class TensorRTTarget(Target[TensorRTOptions]):
    name = "tensorrt"
    options_type = TensorRTOptions
    artifact_suffix = ".plan"

    # ------------------------------------------------------------------------------------------------ build
    def _build_impl(self, source: Path, staged: Path, options: BuildOptions) -> Built:
        trt = _tensorrt()
        logger = _CapturingLogger(trt)
        builder = trt.Builder(logger)
        legacy_precision = hasattr(trt.BuilderFlag, "FP16")  # gone in TensorRT 11
        in_graph = graph_precision(source).kind
        asked = options.precision.kind if options.precision is not None else "best"
        flags = 0
        if not legacy_precision:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            wanted = in_graph if asked == "best" else asked
            if wanted != in_graph:
                step = {"fp16": "--precision fp16", "int8": "--precision int8 --calibration DATA"}.get(wanted, "")
                raise TargetError(
                    f"{source}: TensorRT {trt.__version__} builds strongly typed networks; the graph is {in_graph}, "
                    f"not {wanted}: run `sparsecut optimize {step}` first"
                )
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            detail = "; ".join(f"node {e.node()} ({e.node_name()}, {e.node_operator()}): {e.desc()}" for e in errors)
            raise TargetError(f"{source}: TensorRT's ONNX parser rejected the graph: {detail}")

        own = self.own(options)
        config = builder.create_builder_config()
        if own.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, own.workspace_mb << 20)
        if legacy_precision and asked in ("fp16", "best"):
            config.set_flag(trt.BuilderFlag.FP16)
        if legacy_precision and asked in ("int8", "best"):
            if in_graph != "int8" and asked == "int8":
                raise TargetError(
                    f"{source}: INT8 needs explicit Q/DQ in the graph: run `sparsecut optimize --precision int8` first"
                )
            config.set_flag(trt.BuilderFlag.INT8)
        if options.sparsity:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        cache_bytes = own.timing_cache.read_bytes() if own.timing_cache and own.timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
        self._add_batch_profile(trt, builder, network, config, options.batch)

        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TargetError(f"{source}: TensorRT could not build an engine: {logger.last_error() or 'see --verbose'}")
        seconds = time.perf_counter() - start
        staged.write_bytes(bytes(serialized))
        if own.timing_cache:
            atomic_write_bytes(own.timing_cache, bytes(config.get_timing_cache().serialize()))
        return Built(
            {"tensorrt": trt.__version__, "gpu": gpu_name() or "?"},
            notes=[] if legacy_precision else ["strongly typed network: precision taken from the graph"],
            sparse_layers=self._sparse_layers(trt, logger, bytes(serialized)),
            expected_sparse=_two_four_weights(source),
            seconds=seconds,
        )

    @staticmethod
    def _add_batch_profile(trt: Any, builder: Any, network: Any, config: Any, batch: tuple[int, int, int]) -> None:
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
        if not dynamic:
            return
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            dims = tuple(tensor.shape)
            if -1 in dims[1:]:
                raise TargetError(f"input {tensor.name!r} has dynamic dimensions beyond the batch: {dims}")
            profile.set_shape(tensor.name, (batch[0], *dims[1:]), (batch[1], *dims[1:]), (batch[2], *dims[1:]))
        config.add_optimization_profile(profile)

    @staticmethod
    def _sparse_layers(trt: Any, logger: _CapturingLogger, serialized: bytes) -> list[str]:
        picked = [
            line.split(":", 1)[1].strip() for line in logger.lines if "picked sparse implementation for layers" in line
        ]
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector()
        layers = []
        for i in range(engine.num_layers):
            info = json.loads(inspector.get_layer_information(i, trt.LayerInformationFormat.JSON))
            if (
                isinstance(info, dict)
                and info.get("HasSparseWeights")
                and "sparse" in str(info.get("TacticName", "")).lower()
            ):
                layers.append(str(info.get("Name")))
        return layers or [name.strip() for line in picked for name in line.split(",") if name.strip()]

    # ------------------------------------------------------------------------------------------------ run
    def _engine(self, artifact: Artifact) -> tuple[Any, Any]:
        trt = _tensorrt()
        logger = _CapturingLogger(trt)
        engine = trt.Runtime(logger).deserialize_cuda_engine(artifact.path.read_bytes())
        if engine is None:
            raise TargetError(
                f"{artifact.path}: TensorRT {trt.__version__} cannot load this engine (built by another TensorRT "
                f"version or for another GPU?): {logger.last_error() or 'no detail'}; rebuild it here"
            )
        return trt, engine

    def _bind(
        self, trt: Any, engine: Any, context: Any, batch: int, inputs: dict[str, np.ndarray] | None
    ) -> tuple[dict, dict]:
        torch = _torch_cuda()
        if batch < 1:
            raise TargetError(f"--batch {batch}: the batch size must be at least 1")
        tensors, outputs = {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            shape = list(engine.get_tensor_shape(name))
            if shape and shape[0] == -1:
                low, _, high = engine.get_tensor_profile_shape(name, 0)
                if not low[0] <= batch <= high[0]:
                    raise TargetError(f"batch {batch} is outside the engine's profile for {name!r}: {low[0]}…{high[0]}")
                shape[0] = batch
            context.set_input_shape(name, shape)
            dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            data = torch.from_numpy(inputs[name]) if inputs else torch.randn(shape).to(dtype)
            tensors[name] = data.to("cuda").contiguous()
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(name)))).dtype
                outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        for name, tensor in {**tensors, **outputs}.items():
            context.set_tensor_address(name, tensor.data_ptr())
        return tensors, outputs

    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = _torch_cuda()
        trt, engine = self._engine(artifact)
        context = engine.create_execution_context()
        batch = next(iter(inputs.values())).shape[0] if inputs else 1
        _, outputs = self._bind(trt, engine, context, batch, inputs)
        stream = torch.cuda.Stream()
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [t.cpu().numpy() for t in outputs.values()]

    def channel_block(self, precision: str = "fp32") -> int:
        return 32 if precision == "int8" else 8  # tensor cores: int8 tiles of 32 channels, fp16/tf32 of 8

    def needs_build(self, path: Path) -> bool:
        return Path(path).suffix == ".onnx"

    def precision_in_graph(self, precision: Precision) -> bool:
        try:
            import tensorrt as trt
        except ImportError:
            return True  # the build itself will say that TensorRT is missing
        return not hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 builds strongly typed networks only

    def precision(self, artifact: Artifact) -> str:
        return str(graph_precision(artifact.source)) if artifact.source.suffix == ".onnx" else "engine"

    def int8_formats(self, options: BuildOptions) -> tuple[str, ...]:
        return ("trt-s8",)  # symmetric, outputs kept int8: TensorRT picks (sparse) int8 kernels only there

    def inputs(self, artifact: Artifact) -> list[InputSpec]:
        if artifact.source.suffix == ".onnx":
            from sparsecut.feeds import input_specs

            return input_specs(artifact.source)
        trt, engine = self._engine(artifact)
        specs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                dims = tuple(d if d >= 0 else "?" for d in engine.get_tensor_shape(name))
                specs.append(InputSpec(name, str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1].lower(), dims))
        return specs

    def device(self, options: ProfileOptions) -> str:
        return gpu_name() or _torch_cuda().cuda.get_device_name()

    def backend_version(self) -> str:
        return str(_tensorrt().__version__)

    @contextlib.contextmanager
    def runner(self, artifact: Artifact, options: ProfileOptions) -> Iterator[Runner]:
        """One inference = a launch on a private stream and a wait for it, so that a timing loop around it
        measures the GPU's work."""
        with self._launcher(artifact, options) as (launch, stream, _, _):

            def run_once() -> None:
                launch()
                stream.synchronize()

            yield run_once

    @contextlib.contextmanager
    def _launcher(self, artifact: Artifact, options: ProfileOptions) -> Iterator[tuple[Any, Any, Any, Any]]:
        """(launch, stream, context, trt): inputs bound at `options.batch`; with `cuda_graph`, launch replays a
        captured CUDA graph."""
        torch = _torch_cuda()
        trt, engine = self._engine(artifact)
        context = engine.create_execution_context()
        buffers = self._bind(trt, engine, context, options.batch, None)  # held: the context points into them
        stream = torch.cuda.Stream()

        def launch() -> None:
            context.execute_async_v3(stream.cuda_stream)

        if self.own(options).cuda_graph:
            launch()  # TensorRT allocates on the first launch; capture a steady-state one
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                launch()
            launch = graph.replay
        yield launch, stream, context, trt
        del buffers

    def _profile_impl(
        self, artifact: Artifact, options: ProfileOptions
    ) -> tuple[LatencyStats, list[LayerTime], dict[str, str]]:
        """CUDA events around each launch: the GPU's time, not the host's."""
        with self._launcher(artifact, options) as (launch, stream, context, trt):
            stats = self._time(launch, stream, options)
            layers = self._layer_times(trt, context, stream) if options.per_layer else []
        return stats, layers, {}

    def layer_times(self, artifact: Artifact, options: ProfileOptions) -> list[LayerTime]:
        with self._launcher(artifact, options) as (launch, stream, context, trt):
            launch()  # TensorRT allocates on the first launch
            stream.synchronize()
            return self._layer_times(trt, context, stream)

    def _time(self, launch: Any, stream: Any, options: ProfileOptions) -> LatencyStats:
        torch = _torch_cuda()
        for _ in range(options.warmup):
            launch()
        stream.synchronize()
        samples: list[int] = []
        deadline = None if options.duration is None else time.perf_counter() + options.duration
        while True:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                begin.record()
                launch()
                end.record()
            end.synchronize()
            samples.append(int(begin.elapsed_time(end) * 1e6))
            if (deadline is None and len(samples) >= options.iterations) or (
                deadline and time.perf_counter() >= deadline
            ):
                break
        return summarize(samples, options.batch)

    def environment(self, options: ProfileOptions) -> dict[str, str]:
        return {"tensorrt": self.backend_version(), "cuda_graph": str(self.own(options).cuda_graph)}

    @staticmethod
    def _layer_times(trt: Any, context: Any, stream: Any, runs: int = 20) -> list[LayerTime]:
        class LayerClock(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.ms: dict[str, float] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.ms[layer_name] = self.ms.get(layer_name, 0.0) + ms

        clock = LayerClock()
        context.profiler = clock
        for _ in range(runs):
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
        total = sum(clock.ms.values()) or 1.0
        rows = [LayerTime(name, "trt", ms / runs, 100 * ms / total, 0, 0.0, 0.0) for name, ms in clock.ms.items()]
        return sorted(rows, key=lambda r: r.ms, reverse=True)


class _CapturingLogger:
    """A TensorRT logger that keeps the builder's messages (the "(Sparsity)" lines, the last error)."""

    def __new__(cls, trt: Any) -> Any:
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.lines: list[str] = []
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                self.lines.append(msg)
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                log.debug("tensorrt: %s", msg)

            def last_error(self) -> str | None:
                return self.errors[-1] if self.errors else None

        return Logger()

    lines: list[str]

    def last_error(self) -> str | None: ...


def _two_four_weights(path: Path) -> list[str]:
    """Initializers the graph labels 2:4 (`SPARSE_2_4` doc string, as Polygraphy's weight-strip writes it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [t.name for t in model.graph.initializer if "SPARSE_2_4" in (t.doc_string or "")]
