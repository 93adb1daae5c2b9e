"""The surgery hook: a user function on an onnx-graphsurgeon `gs.Graph`, applied just before a target builds.

TensorRT users already write their fixes in graphsurgeon (swap in a plugin, rewrite a pattern the parser
rejects). The result must pass the ONNX checker and is saved next to the artifact, so the build is reproducible.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import onnx

from sparsecut.errors import TargetError
from sparsecut.modelfile import atomic_write_bytes

__all__ = ["apply_surgery"]


def apply_surgery(model: Path, spec: str, output: Path) -> Path:
    """Run `MODULE:FUNCTION` on the model's `gs.Graph`; write the checked result to `output`."""
    import onnx_graphsurgeon as gs

    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TargetError(f"--surgery {spec!r}: cannot load it ({type(exc).__name__}: {exc})") from exc
    graph = gs.import_onnx(onnx.load(str(model)))
    result = function(graph)
    if not isinstance(result, gs.Graph):
        raise TargetError(f"--surgery {spec!r}: returned {type(result).__name__}, not a gs.Graph")
    edited = gs.export_onnx(result.cleanup().toposort())
    try:
        onnx.checker.check_model(edited)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise TargetError(f"--surgery {spec!r}: the edited graph fails the ONNX checker ({first})") from exc
    atomic_write_bytes(output, edited.SerializeToString())
    return output
