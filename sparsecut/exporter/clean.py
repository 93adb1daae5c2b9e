"""Clean an exported graph: compute at export time everything that does not depend on the model's inputs.

torch.onnx's dynamo exporter (with `optimize=False`, which keeps parameter names and BatchNorm explicit) writes
a graph that computes constants at run time: a conv without bias gets `Expand(CastLike(0, W), Shape(W)[0:1])`,
nn.Linear on a 3-D input reads `Transpose(W)`, small tensors arrive as `Constant` nodes. onnxruntime runs such a
file 1.7–2.9× slower than the same model folded, and a deployer ships the exported file, so it is cleaned here:

1. `Transpose(W)` of a parameter used nowhere else becomes W's own value, transposed, *under W's name* (the
   initializer still answers to its state_dict key; its metadata `pkg.sparsecut.layout` records the permutation);
2. onnxscript's constant folder computes every node whose inputs are all constant (linear in graph size); a
   conv bias that folds to zeros is dropped (a Conv without bias adds nothing), so the graph holds only the
   parameters the checkpoint has;
3. a few rewrite rules of onnxscript, chosen one by one (its default set is quadratic on big graphs and would
   fold BatchNorm): a Reshape whose shape is computed from `Shape(x)` but whose output shape is known gets a
   constant shape (torch's `flatten` before the classifier), and no-op Cast/Expand/Transpose and successive
   Reshape/Transpose/Unsqueeze pairs collapse;
4. `Constant` nodes become initializers, unused nodes and initializers go, the graph is sorted.

BatchNormalization stays explicit (folding it into the conv is `optimize`'s `fold-batchnorm`). Nothing here
changes what the graph computes; the exporter's PyTorch-vs-ONNX check runs on the cleaned file.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass, TopologicalSortPass
from onnxscript.rewriter import RewritePass
from onnxscript.rewriter.rules import common as rules

from sparsecut.folding import drop_computed_zero_biases, quiet_fold_constants

__all__ = ["LAYOUT_KEY", "clean_exported_graph", "constant_computable_nodes"]

LAYOUT_KEY = "pkg.sparsecut.layout"
_RULES = [
    rules.materialize_reshape_shape_rule,
    rules.reshape_reshape_rule,
    rules.no_op_cast_rule,
    rules.cast_cast_rule,
    rules.no_op_expand_rule,
    rules.no_op_transpose_rule,
    rules.transpose_transpose_rule,
    rules.unsqueeze_unsqueeze_rule,
]


def clean_exported_graph(model: ir.Model) -> tuple[int, int]:
    """Clean `model` in place; returns the node counts before and after."""
    before = len(model.graph)
    parameters = set(model.graph.initializers)
    _fold_weight_transposes(model.graph)
    quiet_fold_constants(model)
    drop_computed_zero_biases(model.graph, parameters)
    RewritePass(_RULES)(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    return before, len(model.graph)


def constant_computable_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes whose every input is a constant (a `Constant` node has none): what cleaning should have computed."""
    return [
        node
        for node in model.graph
        if all(v is None or v.const_value is not None for v in node.inputs)
        and not any(out.is_graph_output() for out in node.outputs)
    ]


def _fold_weight_transposes(graph: ir.Graph) -> None:
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        weight = node.inputs[0]
        if (
            weight is None
            or not weight.is_initializer()
            or weight.const_value is None
            or weight.is_graph_input()
            or weight.is_graph_output()
            or len(weight.uses()) != 1
            or node.outputs[0].is_graph_output()
        ):
            continue
        array = weight.const_value.numpy()
        perm_attr = node.attributes.get("perm")
        perm = list(perm_attr.as_ints()) if perm_attr is not None else list(reversed(range(array.ndim)))
        transposed = ir.Tensor(np.ascontiguousarray(np.transpose(array, perm)), name=weight.name)
        transposed.metadata_props[LAYOUT_KEY] = f"transposed {perm} from the PyTorch parameter"
        weight.const_value = transposed
        weight.shape = ir.Shape(transposed.shape)
        node.outputs[0].replace_all_uses_with(weight)
        graph.remove(node, safe=True)
