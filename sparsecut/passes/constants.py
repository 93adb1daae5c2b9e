"""fold-constants: compute subgraphs that depend only on constants (e.g. the zero bias `Expand(CastLike(0),
Shape(W))` that torch.onnx's dynamo exporter builds for a conv without bias), so that weights and biases are plain
initializers the other passes can read. onnxscript's constant folder does the work; a Transpose of a weight is left
alone so the weight keeps its PyTorch name."""

from __future__ import annotations

import onnx_ir as ir

from sparsecut.folding import quiet_fold_constants

__all__ = ["FoldConstantsPass"]


def _keep_weight_transposes(node: ir.Node) -> bool | None:
    """A Transpose of a weight stays (the weight keeps its PyTorch name); so does an Identity of one (the
    TorchScript exporter shares equal weights through Identity nodes: folding would copy the tensor, cleanup
    rewires it instead)."""
    if (
        node.op_type in ("Transpose", "Identity")
        and node.inputs
        and node.inputs[0] is not None
        and node.inputs[0].is_initializer()
    ):
        return False
    return None


# ops onnxscript folds from static shapes alone, even when their input is computed
_SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape"})


class FoldConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not any(_foldable(node) for node in model.graph):
            return ir.passes.PassResult(model, modified=False)  # the folder visits every node: 0.1 s at 15k
        result = quiet_fold_constants(model, should_fold=_keep_weight_transposes)
        return ir.passes.PassResult(model, modified=bool(result.modified))


def _foldable(node: ir.Node) -> bool:
    op = node.op_type
    if op in _SHAPE_OPS or op == "Constant":
        return True
    constant_inputs = 0
    for v in node.inputs:  # most nodes read a computed tensor first: a plain loop stops there
        if v is not None:
            if v.const_value is None:
                return False
            constant_inputs += 1
    return constant_inputs > 0 and _keep_weight_transposes(node) is None
