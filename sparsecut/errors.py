"""The one exception hierarchy of sparsecut: every error a user can cause or meet is a `SparsecutError`."""

from __future__ import annotations

__all__ = [
    "AccuracyError",
    "CheckpointError",
    "ExportError",
    "GraphError",
    "InputError",
    "OutputPathError",
    "SparsecutError",
    "TargetError",
    "VerificationError",
]


class SparsecutError(Exception):
    """Base class. The message is one line that names the file (or node, tensor) and what to do."""


class AccuracyError(SparsecutError):
    """A converted graph (int8, fp16) cannot meet the accuracy bound asked for (--max-drift)."""


class CheckpointError(SparsecutError):
    """A checkpoint is missing, corrupt, unsafe to load, or does not fit the architecture."""


class ExportError(SparsecutError):
    """PyTorch could not be turned into ONNX (bad input shape, unsupported op, bad factory)."""


class VerificationError(SparsecutError):
    """Two computations that must agree (PyTorch vs ONNX, graph before vs after) did not."""


class GraphError(SparsecutError):
    """An ONNX file is unreadable, invalid, or unsafe (external data escaping its folder)."""


class InputError(SparsecutError):
    """An input file or array is missing, unreadable, or does not fit the model (names, shapes, dtypes, NaN)."""


class OutputPathError(SparsecutError):
    """An output path cannot be written: missing folder, equal to the input, not writable."""


class TargetError(SparsecutError):
    """A backend (onnxruntime, TensorRT) is missing, or failed to build or run a model."""
