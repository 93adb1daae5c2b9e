"""ONNX → something that runs on a named device, and honest measurements of it: onnxruntime (the default, on every
machine) and TensorRT (NVIDIA GPUs, imported only when asked for)."""

from sparsecut.targets.base import TARGETS, Artifact, BuildOptions, InputSpec, ProfileOptions, Target, get_target
from sparsecut.targets.compare import compare_artifacts, compare_models

__all__ = [
    "TARGETS",
    "Artifact",
    "BuildOptions",
    "InputSpec",
    "ProfileOptions",
    "Target",
    "compare_artifacts",
    "compare_models",
    "get_target",
]
