"""onnxscript's constant folder, quiet: it warns "Evaluation failed" for every node it tries and cannot compute
(a Reshape of a symbolic batch) — expected, and not the user's business; its errors still show. And what folding
must not leave behind: a conv bias computed as zeros becomes no bias, not C stored zeros. Used by the exporter's
cleaning and by the fold-constants pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import fold_constants

from sparsecut.logs import quieted

__all__ = ["drop_computed_zero_biases", "quiet_fold_constants"]


def quiet_fold_constants(model: ir.Model, **options: Any) -> Any:
    """`onnxscript.optimizer.fold_constants(model, **options)` without its per-node warnings."""
    with quieted("onnxscript.optimizer._constant_folding"):
        return fold_constants(model, **options)


def drop_computed_zero_biases(graph: ir.Graph, parameters: set[str]) -> None:
    """A Conv/ConvTranspose bias that folding made a constant of zeros (dynamo writes a conv without bias as
    `Expand(CastLike(0, W), Shape(W)[0:1])`) is dropped: without it the conv computes the same, and the graph holds
    only the parameters it came with (`parameters`: the initializer names before folding)."""
    for node in graph:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.inputs) != 3:
            continue
        bias = node.inputs[2]
        if bias is None or bias.name in parameters or bias.const_value is None:
            continue
        if not np.any(bias.const_value.numpy()):
            node.resize_inputs(2)
