"""Checkpoint → verified ONNX: safe loading, mask folding, shrunk-layer fitting, torch.onnx export, checking."""

from sparsecut.exporter.checkpoint import Checkpoint, load_checkpoint
from sparsecut.exporter.export import ExportOptions, export_checkpoint, export_module, parse_input_shape

__all__ = ["Checkpoint", "ExportOptions", "export_checkpoint", "export_module", "load_checkpoint", "parse_input_shape"]
