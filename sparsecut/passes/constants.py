"""fold-constants: compute subgraphs that depend only on constants (e.g. the zero bias `Expand(CastLike(0),
Shape(W))` that torch.onnx's dynamo exporter builds for a conv without bias), so that weights and biases are plain
initializers the other passes can read. onnxscript's constant folder does the work; a Transpose of a weight is left
alone so the weight keeps its PyTorch name.

A fold that would store more numbers than it reads stays computed: a float tensor built from smaller constants
(LeViT's attention biases gathered from a small table into [heads, N, N], YOLO's anchor grid from its sizes) is
cheap to compute and would make the model larger — the lossless passes never add parameters. The exception is a
conv bias computed as zeros, folded and then dropped (no bias computes the same)."""

from __future__ import annotations

import math

import onnx_ir as ir

from sparsecut.folding import drop_computed_zero_biases, quiet_fold_constants
from sparsecut.passes.contract import OptimizePass
from sparsecut.shapes import infer_shapes

__all__ = ["FoldConstantsPass"]


def _should_fold(node: ir.Node) -> bool | None:
    """False where the folder must leave `node` alone: a Transpose of a weight stays (the weight keeps its PyTorch
    name); so does an Identity of one (the TorchScript exporter shares equal weights through Identity nodes:
    folding would copy the tensor, cleanup rewires it instead); so does a node whose float output holds more
    numbers than its constant inputs, unless it is a conv bias. None: the folder decides."""
    if (
        node.op_type in ("Transpose", "Identity")
        and node.inputs
        and node.inputs[0] is not None
        and node.inputs[0].is_initializer()
    ):
        return False
    return False if _expands(node) else None


def _expands(node: ir.Node) -> bool:
    """Whether folding `node` would store a float tensor larger than the constants it reads (or of a size
    inference does not know: what is computed from shapes at run time, an anchor grid, stays so)."""
    out = node.outputs[0] if node.outputs else None
    if out is None or out.dtype is None or not out.dtype.is_floating_point():
        return False
    if all(use.node.op_type in _BIASED and use.idx == 2 for use in out.uses()) and out.uses():
        return False  # a conv's bias: folded to be read (and dropped if zeros)
    dims = [d for d in out.shape if isinstance(d, int)] if out.shape is not None else []
    if out.shape is None or len(dims) != len(out.shape):
        return True
    read = sum(  # the stored numbers it reads that count as parameters: floats (indices and sizes do not)
        v.const_value.size
        for v in node.inputs
        if v is not None and v.const_value is not None and v.const_value.dtype.is_floating_point()
    )
    return math.prod(dims) > max(read, _SMALL)


_SMALL = 64  # a fold to at most this many numbers is not worth keeping computed
_BIASED = frozenset({"Conv", "ConvTranspose"})


_ROUNDS = 8  # folding and shape inference in turn, until neither finds more (real graphs settle in 2–3)

# ops onnxscript folds from static shapes alone, even when their input is computed
_SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape"})


class FoldConstantsPass(OptimizePass):
    name = "fold-constants"
    description = "compute constant subgraphs (dynamo's computed zero biases) into initializers"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not any(_foldable(node) for node in model.graph):
            return ir.passes.PassResult(model, modified=False)  # the folder visits every node: 0.1 s at 15k
        modified = False
        parameters = set(model.graph.initializers)
        for _ in range(_ROUNDS):
            # what folded constants tell (a Slice's bounds, a Reshape's target) gives later shapes, and those let
            # more fold (the TorchScript exporter computes every chunk and view from the shape before it)
            if not quiet_fold_constants(model, should_fold=_should_fold).modified:
                break
            modified = True
            infer_shapes(model, refine=True)
        if modified:
            drop_computed_zero_biases(model.graph, parameters)
        return ir.passes.PassResult(model, modified=modified)


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
    return constant_inputs > 0 and _should_fold(node) is None
