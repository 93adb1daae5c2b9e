"""onnxscript's constant folder, quiet: it warns "Evaluation failed" for every node it tries and cannot compute
(a Reshape of a symbolic batch) — expected, and not the user's business; its errors still show. Used by the
exporter's cleaning and by the fold-constants pass."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript.optimizer import fold_constants

from sparsecut.logs import quieted

__all__ = ["quiet_fold_constants"]


def quiet_fold_constants(model: ir.Model, **options: Any) -> Any:
    """`onnxscript.optimizer.fold_constants(model, **options)` without its per-node warnings."""
    with quieted("onnxscript.optimizer._constant_folding"):
        return fold_constants(model, **options)
