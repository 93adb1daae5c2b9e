"""ONNX → something that runs on a named device, and honest measurements of it: onnxruntime (the default, on every
machine), OpenVINO (x86 CPUs, Intel GPUs/NPUs) and TensorRT (NVIDIA GPUs), the last two imported only when asked
for."""

from sparsecut.targets.base import TARGETS, Artifact, BuildOptions, InputSpec, ProfileOptions, Target, get_target
from sparsecut.targets.compare import compare_artifacts, compare_models, compare_runs

__all__ = [
    "TARGETS",
    "Artifact",
    "BuildOptions",
    "InputSpec",
    "ProfileOptions",
    "Target",
    "compare_artifacts",
    "compare_models",
    "compare_runs",
    "get_target",
]
