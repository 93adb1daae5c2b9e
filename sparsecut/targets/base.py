"""The target interface: turn an ONNX file into something that runs on a named device, run it, measure it.

`Target` is a base class in Polygraphy's runner pattern: the public `build`, `load`, `profile` and
`latency_report` are final and do what every target shares — input and output checks, the user's surgery, the
2:4 note, staging the artifact and its companions beside the destination, the build report, the runner → measure
→ summarize loop, the environment every latency report records. A target implements hooks (`_build_impl`,
`_load_impl`, `runner`, `layer_times`, `environment`, `int8_formats`, `channel_block`, `device`, `precision`, …):
a new target is one file.

Targets are found by name (`get_target`); heavy backends are imported only when their target is asked for, so a
missing TensorRT makes only the TensorRT commands fail, with an install hint.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, final

import numpy as np

from sparsecut.cpu import cpu_vector_extensions
from sparsecut.errors import TargetError
from sparsecut.feeds import InputSpec
from sparsecut.modelfile import check_output_path
from sparsecut.precision import FP32, Precision
from sparsecut.report import BuildReport, LatencyReport, LayerTime
from sparsecut.targets.timing import LatencyStats, measure, summarize

__all__ = [
    "TARGETS",
    "Artifact",
    "BackendOptions",
    "BuildOptions",
    "Built",
    "InputSpec",
    "ProfileOptions",
    "Runner",
    "Target",
    "get_target",
]


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """A target's own settings: each target has one subclass (`Target.options_type`) and reads only its own."""


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


@dataclasses.dataclass(frozen=True)
class _WithBackends:
    backends: tuple[BackendOptions, ...] = ()  # the targets' own settings, one per target; absent: its defaults

    def backend(self, kind: type[OptionsT]) -> OptionsT:
        """The settings of the target whose options are `kind` (its defaults where none were given)."""
        return next((b for b in self.backends if isinstance(b, kind)), kind())


@dataclasses.dataclass(frozen=True)
class BuildOptions(_WithBackends):
    precision: Precision | None = FP32  # None: what the graph carries (best: TensorRT ≤ 10 picks per layer)
    sparsity: bool = False  # TensorRT: enable 2:4 sparse kernels
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max of the dynamic batch axis
    threads: int | None = None
    surgery: str | None = None  # MODULE:FUNCTION on a gs.Graph, applied just before the build


@dataclasses.dataclass(frozen=True)
class ProfileOptions(_WithBackends):
    batch: int = 1
    warmup: int = 10
    iterations: int = 100
    duration: float | None = None
    threads: int | None = None
    per_layer: bool = True
    seed: int = 0
    precision: Precision = FP32  # what a target that takes the precision as a hint (OpenVINO) is asked for


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What a build produced: a file the target can load, and where it came from."""

    path: Path
    target: str
    source: Path


@dataclasses.dataclass(frozen=True)
class Built:
    """What a target's `_build_impl` tells the shared `build` about the artifact it wrote."""

    environment: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)
    sparse_layers: list[str] = dataclasses.field(default_factory=list)  # layers the backend ran with 2:4 kernels
    expected_sparse: list[str] = dataclasses.field(default_factory=list)  # weights the graph labels 2:4
    seconds: float | None = None  # the backend's own build time, where the staging around it is not its cost


Runner = Callable[[], object]  # one inference on inputs bound once, as a timing loop calls it


class Target(abc.ABC, Generic[OptionsT]):
    """A backend that builds, runs and times ONNX models on one kind of device; `OptionsT`, its own settings."""

    name: ClassVar[str]
    options_type: type[OptionsT]  # its settings, as `BuildOptions.backends` / `ProfileOptions.backends` carry them
    artifact_suffix: ClassVar[str]  # what `build` writes: ".ort.onnx", ".plan"
    artifact_companions: ClassVar[tuple[str, ...]] = ()  # written beside it, suffix in place of its last: (".bin",)
    # an output not ending in the artifact suffix's last part is refused with this reason, where one is given
    artifact_suffix_required: ClassVar[str | None] = None
    no_sparse_kernels: ClassVar[str | None] = None  # why --sparsity changes nothing here, where it does not
    measures_layers: ClassVar[bool] = True  # False: it times whole models only (no measured channel counts)

    # ------------------------------------------------------------------------------------------ shared, final
    @final
    def build(self, model: Path, output: Path, options: BuildOptions) -> tuple[Artifact, BuildReport]:
        """Build `model` into `output` (and its companions, and the surgery's graph): all written only when
        everything succeeded, none of them an input or a file an input reads."""
        from sparsecut.targets.surgery import apply_surgery

        model, output = Path(model), Path(output)
        if not model.exists():
            raise TargetError(f"{model}: no such file")
        if self.artifact_suffix_required and output.suffix != Path(self.artifact_suffix).suffix:
            raise TargetError(f"{output}: {self.artifact_suffix_required}")
        written = list(self.build_files(output, options))
        for path in written:
            check_output_path(path, model)
        notes = []
        if options.sparsity and self.no_sparse_kernels:
            notes.append(f"{self.no_sparse_kernels}; --sparsity changes nothing here")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
            staged = Path(tmp) / output.name
            source = model
            if options.surgery:
                edited = surgery_file(output).name
                source = apply_surgery(model, options.surgery, Path(tmp) / edited)
                notes.append(f"surgery {options.surgery} applied; edited graph saved as {edited}")
            built = self._build_impl(source, staged, options)
            for path in reversed(written):  # the artifact last: whoever sees it sees its companions in place
                os.replace(Path(tmp) / path.name, path)
        report = BuildReport(
            target=self.name,
            source=str(model),
            artifact=str(output),
            precision=options.precision.kind if options.precision is not None else "best",
            sparsity=options.sparsity,
            seconds=built.seconds if built.seconds is not None else time.perf_counter() - start,
            environment={**_host_environment(), **built.environment},
            notes=[*notes, *built.notes],
            sparse_layers=built.sparse_layers,
            expected_sparse=built.expected_sparse,
        )
        return Artifact(output, self.name, model), report

    def build_files(self, output: Path, options: BuildOptions) -> dict[Path, str]:
        """Every file `build(…, output, options)` writes, with the option that asks for it: the artifact, its
        companions, then the surgery's graph."""
        output = Path(output)
        files = {output: "--output", **{output.with_suffix(suffix): "--output" for suffix in self.artifact_companions}}
        if options.surgery:
            files[surgery_file(output)] = "--surgery"
        return files

    @final
    def load(self, path: Path) -> Artifact:
        path = Path(path)
        if not path.exists():
            raise TargetError(f"{path}: no such file")
        return self._load_impl(path)

    @final
    def profile(self, artifact: Artifact, options: ProfileOptions) -> LatencyReport:
        """Latency of `artifact` at `options`: p50/p90/p99 and throughput, per-layer times where asked."""
        stats, layers, environment = self._profile_impl(artifact, options)
        report = self.latency_report(artifact, options, stats, layers=layers)
        return dataclasses.replace(report, environment={**report.environment, **environment})

    @final
    def latency_report(
        self, artifact: Artifact, options: ProfileOptions, stats: LatencyStats, **extra: Any
    ) -> LatencyReport:
        """A report of `stats` measured on this target, with the host and backend it was measured in."""
        return LatencyReport(
            model=str(artifact.path),
            target=self.name,
            device=self.device(options),
            batch=options.batch,
            precision=self.precision(artifact),
            threads=options.threads,
            warmup=options.warmup,
            **dataclasses.asdict(stats),
            environment={
                **_host_environment(),
                **self.environment(options),
                **self.timing_settings(options),
                "threads": str(options.threads or "default"),
            },
            **extra,
        )

    def own(self, options: BuildOptions | ProfileOptions) -> OptionsT:
        """This target's settings among `options.backends`."""
        return options.backend(self.options_type)

    # ------------------------------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _build_impl(self, source: Path, staged: Path, options: BuildOptions) -> Built:
        """Write the artifact built from `source` to `staged` (companions beside it, by `artifact_companions`)."""

    def _load_impl(self, path: Path) -> Artifact:
        """An existing file as an artifact of this target (an ONNX file, or an artifact `build` wrote)."""
        return Artifact(path, self.name, path)

    def _profile_impl(
        self, artifact: Artifact, options: ProfileOptions
    ) -> tuple[LatencyStats, list[LayerTime], dict[str, str]]:
        """(stats, per-layer times, environment entries of this measurement): by default the runner timed with
        `perf_counter_ns`, then `layer_times` in runs of its own."""
        with self.runner(artifact, options) as run_once:
            samples = measure(run_once, warmup=options.warmup, iterations=options.iterations, duration=options.duration)
        layers = self.layer_times(artifact, options) if options.per_layer else []
        return summarize(samples, options.batch), layers, {}

    @abc.abstractmethod
    def runner(self, artifact: Artifact, options: ProfileOptions) -> contextlib.AbstractContextManager[Runner]:
        """Inputs bound once at `options.batch`; yields a callable that runs one inference (and waits for it)."""

    @abc.abstractmethod
    def layer_times(self, artifact: Artifact, options: ProfileOptions) -> list[LayerTime]:
        """Time per layer (the backend's profiler), beside each layer's MACs where the ONNX source is known."""

    def layer_time_rounds(
        self,
        artifacts: list[Artifact],
        options: ProfileOptions,
        rounds: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[list[LayerTime]]]:
        """`layer_times` of each artifact `rounds` times, taken round-robin across the artifacts (a slow moment of
        the machine hits each alike): per artifact, its rows per round. `progress(done, total)` after each."""
        found: list[list[list[LayerTime]]] = [[] for _ in artifacts]
        for r in range(rounds):
            for i, artifact in enumerate(artifacts):
                found[i].append(self.layer_times(artifact, options))
                if progress is not None:
                    progress(r * len(artifacts) + i + 1, rounds * len(artifacts))
        return found

    @abc.abstractmethod
    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    @abc.abstractmethod
    def inputs(self, artifact: Artifact) -> list[InputSpec]: ...

    @abc.abstractmethod
    def device(self, options: ProfileOptions) -> str:
        """The device as a report names it."""

    def device_signature(self, options: ProfileOptions) -> str:
        """The device as a latency table keys it: whatever changes which kernels run (a CPU's vector extensions)."""
        return self.device(options)

    @abc.abstractmethod
    def backend_version(self) -> str:
        """The version of the library that builds and runs artifacts (onnxruntime, TensorRT)."""

    @abc.abstractmethod
    def environment(self, options: ProfileOptions) -> dict[str, str]:
        """The backend's entries in a latency report's environment (its version, provider, hint …)."""

    def timing_settings(self, options: ProfileOptions) -> dict[str, str]:
        """How this target runs what it times, where that changes the numbers (onnxruntime: when its threads
        spin): a latency table measured otherwise is not reused."""
        return {}

    @abc.abstractmethod
    def precision(self, artifact: Artifact) -> str:
        """What the artifact computes in: fp32, fp16, int8 (or what the engine reports)."""

    @abc.abstractmethod
    def int8_formats(self, options: BuildOptions) -> tuple[str, ...]:
        """The int8 formats (sparsecut/quantization.py) this target runs fast on this machine, best first."""

    def needs_build(self, path: Path) -> bool:
        """Whether `path` must go through `build` before this target can time it (an ONNX file for TensorRT)."""
        return False

    def precision_in_graph(self, precision: Precision) -> bool:
        """Whether `precision` (fp16, int8), when not the graph's, must be put into the graph before `build`
        (True), or can be asked of the builder (TensorRT ≤ 10's FP16/INT8 flags, OpenVINO's fp16 hint)."""
        return True

    def channel_block(self, precision: str = "fp32") -> int:
        """The channel count this target's fast kernels work in multiples of, on this machine: a CPU's NCHWc block
        is 16 with AVX-512 and 8 with AVX2."""
        return 16 if "avx512f" in cpu_vector_extensions().split(",") else 8


def surgery_file(output: Path) -> Path:
    """Where a build with `--surgery` saves the edited graph it built from: beside the artifact, named after it."""
    return output.with_name(f"{output.stem}.surgery.onnx")


def _host_environment() -> dict[str, str]:
    from sparsecut.targets.environment import host_environment

    return host_environment()


TARGETS = {
    "onnxruntime": "sparsecut.targets.onnxruntime:OnnxRuntimeTarget",
    "openvino": "sparsecut.targets.openvino:OpenVinoTarget",
    "tensorrt": "sparsecut.targets.tensorrt:TensorRTTarget",
    "onnxruntime-genai": "sparsecut.targets.onnxruntime_genai:OnnxRuntimeGenaiTarget",
}


def get_target(name: str) -> Target[Any]:
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    module_name, _, cls = TARGETS[name].partition(":")
    module = importlib.import_module(module_name)  # the module imports its backend lazily, in the target's methods
    target: Target[Any] = getattr(module, cls)()
    return target
