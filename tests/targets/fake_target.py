"""A target that must build before it runs (as TensorRT does), recording what it was asked: it "builds" by copying
the ONNX file and runs it in onnxruntime. Registered under the name `fake` by the tests that use it."""

from __future__ import annotations

import shutil
from pathlib import Path

from sparsecut.targets.base import Artifact, BuildOptions, Built
from sparsecut.targets.onnxruntime import OnnxRuntimeTarget

BUILDS: list[tuple[str, BuildOptions]] = []
TIMED: list[str] = []


class FakeEngineTarget(OnnxRuntimeTarget):
    name = "fake"
    artifact_suffix = ".engine"

    def needs_build(self, path: Path) -> bool:
        return path.suffix == ".onnx"

    def _build_impl(self, source: Path, staged: Path, options: BuildOptions) -> Built:
        BUILDS.append((source.name, options))
        shutil.copyfile(source, staged)
        return Built({})

    def runner(self, artifact, options):  # type: ignore[no-untyped-def]
        TIMED.append(artifact.path.suffix)
        return super().runner(Artifact(artifact.path, self.name, artifact.source), options)
