"""The ONNX opsets sparsecut exports: from 18 (torch.onnx's dynamo exporter emits 18 for CNNs even when asked for
less, so a lower one would be a silent fallback) to the newest the installed onnx knows."""

from __future__ import annotations

import onnx

__all__ = ["MAX_OPSET", "MIN_OPSET"]

MIN_OPSET = 18
MAX_OPSET: int = onnx.defs.onnx_opset_version()
