"""ONNX → leaner ONNX: one pass per module on the onnx-ir graph; pipelines are lists of passes, gated by an
equivalence check before anything is written."""

from sparsecut.passes.channels import DeadChannelAnalysis
from sparsecut.passes.cleanup import CleanupPass
from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.dead_channels import RemoveDeadChannelsPass
from sparsecut.passes.fold_batchnorm import FoldBatchNormPass
from sparsecut.passes.pipeline import DEFAULT_PASSES, PASSES, OptimizeOptions, inspect_model, optimize_model
from sparsecut.passes.two_four import AnnotateTwoFourPass

__all__ = [
    "DEFAULT_PASSES",
    "PASSES",
    "AnnotateTwoFourPass",
    "CleanupPass",
    "DeadChannelAnalysis",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "OptimizeOptions",
    "RemoveDeadChannelsPass",
    "inspect_model",
    "optimize_model",
]
