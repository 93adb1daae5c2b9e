"""A target that must build before it runs (as TensorRT does), recording what it was asked: it "builds" by copying
the ONNX file and runs it in onnxruntime. Registered under the name `fake` by the tests that use it."""

from __future__ import annotations

import shutil
from pathlib import Path

from sparsecut.report import BuildReport
from sparsecut.targets.base import Artifact, BuildOptions
from sparsecut.targets.onnxruntime import OnnxRuntimeTarget

BUILDS: list[tuple[str, BuildOptions]] = []
TIMED: list[str] = []


class FakeEngineTarget(OnnxRuntimeTarget):
    name = "fake"
    artifact_suffix = ".engine"

    def needs_build(self, path: Path) -> bool:
        return path.suffix == ".onnx"

    def build(self, model: Path, output: Path, options: BuildOptions) -> tuple[Artifact, BuildReport]:
        BUILDS.append((Path(model).name, options))
        shutil.copyfile(model, output)
        report = BuildReport(self.name, str(model), str(output), options.precision, options.sparsity, 0.0, {})
        return Artifact(Path(output), self.name, Path(model)), report

    def runner(self, artifact, options):  # type: ignore[no-untyped-def]
        TIMED.append(artifact.path.suffix)
        return super().runner(Artifact(artifact.path, self.name, artifact.source), options)
