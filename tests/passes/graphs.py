"""A small builder of ONNX graphs for pass tests, and helpers to optimize them and read the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.report import OptimizeReport


class GraphBuilder:
    """Nodes and float32 initializers with generated names; the input is `x` with a symbolic batch."""

    def __init__(self, shape: tuple[int, ...] = (4, 6, 6), seed: int = 0) -> None:
        self.shape = shape
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, array: np.ndarray | list, prefix: str = "c") -> str:
        array = np.asarray(array)
        array = array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32)
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"{op_type}_"), **attrs))
        return names[0] if outputs == 1 else names

    def weight(self, *shape: int, dead_rows: tuple[int, ...] = ()) -> np.ndarray:
        w = self.rng.standard_normal(shape).astype(np.float32)
        w[list(dead_rows)] = 0.0
        return w

    def conv(
        self,
        x: str,
        w: np.ndarray,
        b: np.ndarray | None = None,
        pad: int = 0,
        group: int = 1,
    ) -> str:
        inputs = [x, self.const(w, "w")] + ([self.const(b, "b")] if b is not None else [])
        return self.op("Conv", inputs, pads=[pad] * 4, group=group)  # type: ignore[return-value]

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.shape])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model = onnx.shape_inference.infer_shapes(model)  # fills in the outputs' shapes
        onnx.checker.check_model(model, full_check=True)
        return model


def optimize(
    tmp: Path, model: onnx.ModelProto, rule_errors: bool = False, **options
) -> tuple[OptimizeReport, ir.Model]:
    """Optimize `model` (align 1 unless given), gated; no channel rule may have failed on it unless `rule_errors`
    (a rule that fails makes its node a barrier, so the gate alone would not notice)."""
    source, target = tmp / "in.onnx", tmp / "out.onnx"
    onnx.save(model, source)
    options.setdefault("align", 1)
    report = optimize_model(source, target, OptimizeOptions(**options))
    assert report.verified and all(c.passed for c in report.checks)
    failures = [e for p in report.passes for e in p.rule_errors]
    assert rule_errors or not failures, f"a channel rule failed: {failures}"
    return report, ir.load(target)


def weights(model: ir.Model, op_type: str) -> list[np.ndarray]:
    """The weight (input 1) of every `op_type` node, in graph order, as the node sees it."""
    from sparsecut.passes.nodes import weight_array

    return [weight_array(n.inputs[1]) for n in model.graph if n.op_type == op_type]


def removal(report: OptimizeReport) -> list:
    return next(p for p in report.passes if p.name == "remove-dead-channels").groups


def remove_in_memory(model: onnx.ModelProto, align: int = 1, batch: int = 2) -> tuple[ir.Model, list]:
    """A channel rule's analysis and rewrite checked in memory, with no file and no CLI: the graph is read as
    remove-dead-channels reads it, its dead channels removed, and both graphs run in onnxruntime (from bytes) on
    seeded inputs — the outputs must agree (rtol 1e-4). Returns the lean graph and its group reports."""
    import onnxruntime as ort

    from sparsecut.passes.channels import DeadChannelAnalysis, rewrite_channels
    from sparsecut.passes.dead_channels import prepare_for_analysis

    lean = ir.from_proto(model)
    prepare_for_analysis(lean)
    analysis = DeadChannelAnalysis(lean, align)
    assert not analysis.walk.rule_errors, analysis.walk.rule_errors
    groups = analysis.group_reports()
    rewrite_channels(lean, analysis)
    rng = np.random.default_rng(0)
    feeds = {}
    for i in ir.from_proto(model).graph.inputs:
        dims = [batch if not isinstance(d, int) else d for d in i.shape]
        integer = i.dtype is not None and not i.dtype.is_floating_point()  # token ids: small, valid indices
        feeds[i.name] = rng.integers(0, 4, dims) if integer else rng.standard_normal(dims).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    before = ort.InferenceSession(model.SerializeToString(), options).run(None, feeds)
    after = ort.InferenceSession(ir.to_proto(lean).SerializeToString(), options).run(None, feeds)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    return lean, groups
