"""fold-batchnorm: fold inference BatchNormalization into the Conv or Gemm that feeds it.

With σ = √(var + ε):  W' = W · γ/σ (per output channel),  b' = (b − μ) · γ/σ + β.
onnxscript's rewrite rules do the algebra; only these two rules run (its default rule set is quadratic on big
graphs). A BatchNormalization that follows anything else (a Concat, an Add) stays: remove-dead-channels reads it.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.rules.common._fuse_batchnorm import FuseBatchNormIntoConv, FuseBatchNormIntoGemm

from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.contract import OptimizePass
from sparsecut.report import PassReport

__all__ = ["FoldBatchNormPass"]


class FoldBatchNormPass(OptimizePass):
    name = "fold-batchnorm"
    description = "fold BatchNormalization into the preceding Conv/Gemm"

    def __init__(self) -> None:
        super().__init__()
        self.folded = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not any(node.op_type == "BatchNormalization" for node in model.graph):
            return ir.passes.PassResult(model, modified=False)
        FoldConstantsPass()(model)  # a dynamo-exported conv without bias gets a computed zero bias: make it constant
        # fresh rule objects each time: onnxscript's module-level rules keep their last match, and with it the whole
        # graph and its weights, alive after the pass
        rules = RewriteRuleSet([FuseBatchNormIntoConv().rule(), FuseBatchNormIntoGemm().rule()])
        self.folded = rules.apply_to_model(model)
        return ir.passes.PassResult(model, modified=self.folded > 0)

    def report(self, modified: bool, seconds: float) -> PassReport:
        return PassReport(self.name, modified, seconds, f"{self.folded} BatchNormalization folded")
