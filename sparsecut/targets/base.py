"""The target interface: turn an ONNX file into something that runs on a named device, run it, measure it.

Targets are found by name (`get_target`); heavy backends are imported only when their target is asked for, so a
missing TensorRT makes only the TensorRT commands fail, with an install hint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sparsecut.errors import TargetError
from sparsecut.feeds import InputSpec
from sparsecut.report import BuildReport, LatencyReport
from sparsecut.targets.timing import LatencyStats

__all__ = [
    "TARGETS",
    "Artifact",
    "BuildOptions",
    "InputSpec",
    "ProfileOptions",
    "Runner",
    "Target",
    "get_target",
    "latency_report_of",
]


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"  # fp32 | fp16 | int8 | best
    sparsity: bool = False  # TensorRT: enable 2:4 sparse kernels
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max of the dynamic batch axis
    workspace_mb: int | None = None
    provider: str = "cpu"  # onnxruntime: cpu | cuda | tensorrt
    threads: int | None = None
    optimization: str = "all"  # onnxruntime graph optimization level: disable | basic | extended | all
    device: str = "CPU"  # OpenVINO: CPU | GPU | NPU | AUTO
    hint: str = "latency"  # OpenVINO's performance hint: latency | throughput
    surgery: str | None = None  # MODULE:FUNCTION on a gs.Graph, applied just before the build
    timing_cache: Path | None = None  # TensorRT
    int8_format: str = ""  # int8 put into the graph first: this format ("": the target's best, int8_formats()[0])


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
    batch: int = 1
    warmup: int = 10
    iterations: int = 100
    duration: float | None = None
    threads: int | None = None
    per_layer: bool = True
    provider: str = "cpu"
    optimization: str = "all"
    cuda_graph: bool = False  # TensorRT
    seed: int = 0
    device: str = "CPU"  # OpenVINO: CPU | GPU | NPU | AUTO
    hint: str = "latency"  # OpenVINO's performance hint: latency | throughput
    precision: str = "fp32"  # what a target that takes the precision as a hint (OpenVINO) is asked for


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What a build produced: a file the target can load, and where it came from."""

    path: Path
    target: str
    source: Path


Runner = Callable[[], object]  # one inference on inputs bound once, as a timing loop calls it


class Target(Protocol):
    name: str
    artifact_suffix: str  # what `build` writes: ".ort.onnx", ".plan"
    artifact_companions: tuple[str, ...]  # files `build` writes beside it, by suffix in place of its last: (".bin",)

    def build(self, model: Path, output: Path, options: BuildOptions) -> tuple[Artifact, BuildReport]: ...

    def load(self, path: Path) -> Artifact: ...

    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def profile(self, artifact: Artifact, options: ProfileOptions) -> LatencyReport: ...

    def needs_build(self, path: Path) -> bool:
        """Whether `path` must go through `build` before this target can time it (an ONNX file for TensorRT)."""
        ...

    def precision_in_graph(self, precision: str) -> bool:
        """Whether `precision` (fp16, int8), when not the graph's, must be put into the graph before `build`
        (True), or can be asked of the builder (TensorRT ≤ 10's FP16/INT8 flags, OpenVINO's fp16 hint)."""
        ...

    def precision(self, artifact: Artifact) -> str:
        """What the artifact computes in: fp32, fp16, int8 (or what the engine reports)."""
        ...

    def int8_formats(self, options: BuildOptions) -> tuple[str, ...]:
        """The int8 formats (sparsecut/quantization.py) this target runs fast on this machine, best first."""
        ...

    def inputs(self, artifact: Artifact) -> list[InputSpec]: ...

    def device(self, options: ProfileOptions) -> str: ...

    def backend_version(self) -> str:
        """The version of the library that builds and runs artifacts (onnxruntime, TensorRT)."""
        ...

    def latency_report(
        self, artifact: Artifact, options: ProfileOptions, stats: LatencyStats, **extra: Any
    ) -> LatencyReport:
        """A report of `stats` measured on this target, with the environment it was measured in."""
        ...

    def runner(self, artifact: Artifact, options: ProfileOptions) -> contextlib.AbstractContextManager[Runner]:
        """Inputs bound once at `options.batch`; yields a callable that runs one inference (and waits for it)."""
        ...


def latency_report_of(
    target: Target,
    artifact: Artifact,
    options: ProfileOptions,
    stats: LatencyStats,
    environment: dict[str, str],
    **extra: Any,
) -> LatencyReport:
    """The report every target writes: `stats` of `artifact`, with the host and `environment` (the backend's)."""
    from sparsecut.targets.environment import host_environment

    return LatencyReport(
        model=str(artifact.path),
        target=target.name,
        device=target.device(options),
        batch=options.batch,
        precision=target.precision(artifact),
        threads=options.threads,
        warmup=options.warmup,
        **dataclasses.asdict(stats),
        environment={**host_environment(), **environment, "threads": str(options.threads or "default")},
        **extra,
    )


TARGETS = {
    "onnxruntime": "sparsecut.targets.onnxruntime:OnnxRuntimeTarget",
    "openvino": "sparsecut.targets.openvino:OpenVinoTarget",
    "tensorrt": "sparsecut.targets.tensorrt:TensorRTTarget",
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    module_name, _, cls = TARGETS[name].partition(":")
    module = importlib.import_module(module_name)  # the module imports its backend lazily, in the target's methods
    target: Target = getattr(module, cls)()
    return target
