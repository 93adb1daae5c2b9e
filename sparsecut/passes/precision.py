"""to-fp16 and quantize-int8: put precision into the graph, as TensorRT 11 (strongly typed) and onnxruntime need it.

- quantize-int8: onnxruntime's static QDQ quantizer in the format the target runs fast (sparsecut/quantization.py:
  types, range, placement), per-channel weights, biases in fp32, calibrated with onnxruntime's own calibrator
  (minmax, entropy or percentile) on the user's samples (sparsecut/calibration.py: arrays or images with stated
  preprocessing) — or on random data, loudly. Nodes named by `--keep-fp32` (node or module names) stay fp32.
- to-fp16: onnxruntime's float16 converter with fp32 inputs/outputs (I/O casts) and numerically sensitive ops
  kept in fp32.
These change what the model computes by design, so they are exempt from the equivalence gate; instead the drift
against the fp32 graph is measured on samples held out from calibration (passes/drift.py: per output, and per
quantized layer for int8). With `--max-drift`, while the bound does not hold the layer whose rounding lost most
goes back to fp32, one at a time (the calibration ranges are computed once); if the bound holds only with every
layer in fp32, or no layer is left to put back, nothing is written and the report says why.
The 2:4 labels are applied again afterwards (annotate-2to4 looks through DequantizeLinear).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sparsecut.calibration import Calibration, CalibrationSet, calibration_set
from sparsecut.errors import AccuracyError, GraphError, InputError
from sparsecut.logs import quieted
from sparsecut.passes.drift import DriftBound, decoder_drift, measure_drift
from sparsecut.precision import FP32, Precision
from sparsecut.quantization import Int8Format, int8_format
from sparsecut.report import LayerDrift, OutputDrift, PrecisionReport

__all__ = ["FP16_BLOCKED_OPS", "PrecisionRequest", "convert_precision", "nodes_named"]

log = logging.getLogger(__name__)

FP16_BLOCKED_OPS = ("Softmax", "LayerNormalization", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp", "Erf")
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


@dataclasses.dataclass(frozen=True)
class PrecisionRequest:
    """What a command asks of the precision: one (or, `wanted` None, the best measured on a target — optimize
    --target), and how int8 is calibrated and judged."""

    wanted: Precision | None = FP32  # None: the fastest that meets `max_drift`, measured on a target
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    keep_fp32: tuple[str, ...] = ()  # int8: node or module names left in fp32
    max_drift: DriftBound | None = None  # int8: layers go back to fp32 until it holds; fp16: checked

    @property
    def best(self) -> bool:
        return self.wanted is None

    @property
    def precision(self) -> Precision:
        """The precision asked for (not `best`, which a target decides)."""
        if self.wanted is None:
            raise GraphError("--precision best: needs --target (fp32, fp16 and int8 are measured there)")
        return self.wanted

    def at(self, precision: Precision) -> PrecisionRequest:
        """The same request for `precision`: calibration, bound and kept layers as they are."""
        return dataclasses.replace(self, wanted=precision)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of samples, read in strides (`set_range`)."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]]) -> None:
        self._all = list(samples)
        self._samples = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._samples = iter(self._all[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)


def _stride(count: int, most: int = 16) -> int:
    """The samples run per calibration step: onnxruntime keeps every intermediate tensor of a step in memory and
    merges the ranges after it; its stride must divide the sample count."""
    return max(d for d in range(1, min(count, most) + 1) if count % d == 0)


def nodes_named(model: onnx.ModelProto, names: Sequence[str], source: Path) -> list[str]:
    """The node names `--keep-fp32` means: each entry a node's name, or a PyTorch module's (all its nodes)."""
    import onnx_ir as ir

    from sparsecut.layer_names import module_names

    nodes = [n.name for n in model.graph.node]
    by_module: dict[str, list[str]] = {}
    for node, module in module_names(ir.from_proto(model)).items():
        by_module.setdefault(module, []).append(node)
    chosen: list[str] = []
    for name in names:
        found = [name] if name in nodes else by_module.get(name, [])
        if not found:
            raise InputError(
                f"--keep-fp32: no node or module named {name!r} in {source} (names as `sparsecut inspect` and the "
                "per-layer table show them, e.g. node_Conv_17 or layer1.0.conv1)"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def convert_precision(source: Path, output: Path, request: PrecisionRequest, seed: int = 0) -> PrecisionReport:
    """Write `source` converted to the requested precision at `output` (atomically) and measure the drift on the
    held-out samples. int8 without a format: this CPU's best for onnxruntime, the default target."""
    from sparsecut.modelfile import atomic_write_bytes, check_output_path

    source, output = Path(source), Path(output)
    check_output_path(output, source)
    model = onnx.load(str(source))
    if QUANTIZED_OPS & {n.op_type for n in model.graph.node}:
        raise GraphError(
            f"{source}: the model is already quantized (it has Q/DQ or integer ops); refusing to quantize twice"
        )
    wanted = request.precision
    if wanted.kind not in ("fp16", "int8", "int4"):
        raise GraphError(f"precision {wanted} is not one this pass writes; known: fp16, int8, int4")
    if wanted.kind == "int4":
        del model
        return _int4(source, output, wanted, request, seed)
    keep = nodes_named(model, request.keep_fp32, source) if wanted.kind == "int8" else []
    data = calibration_set(request.calibration, model, source, seed)
    notes = []
    if data.random and wanted.kind == "int8":
        log.warning("int8 calibration on RANDOM data: scales will not fit real inputs; pass --calibration")
        notes.append("calibrated on random data: accuracy on real inputs is unknown — pass --calibration")
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        if wanted.kind == "int8":
            fmt = wanted.format or int8_format()
            notes.append(f"int8 format {fmt.describe()}")
            del model  # onnxruntime's quantizer reads the file itself
            result = _quantize_within(source, staged, Path(tmp) / "ranges.json", data, fmt, keep, request)
            outputs, layers, kept, fallback, bound = result
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_BLOCKED_OPS))
            onnx.save(half, str(staged))
            notes.append(f"kept in fp32: {', '.join(FP16_BLOCKED_OPS)}")
            _relabel_two_four(staged)
            outputs, _ = measure_drift(source, staged, data.held_out)
            layers, kept, fallback, bound = [], [], [], ""
            if request.max_drift is not None:
                if not request.max_drift.holds(outputs):
                    raise AccuracyError(
                        f"--max-drift: {request.max_drift.describe()} not reached in fp16: "
                        f"{request.max_drift.shortfall(outputs)} (nothing written)"
                    )
                bound = f"{request.max_drift.describe()}: holds ({request.max_drift.shortfall(outputs)})"
        atomic_write_bytes(output, staged.read_bytes())
    classes = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
    return PrecisionReport(
        precision=wanted.kind,
        calibration=data.origin,
        samples=len(data.calibrate),
        max_abs_error=max((o.max_abs_error for o in outputs), default=0.0),
        mean_abs_error=float(np.mean([o.mean_abs_error for o in outputs])) if outputs else 0.0,
        top1_agreement=classes[0] if classes else None,
        notes=notes,
        format=fmt.name if wanted.kind == "int8" else "",
        held_out=len(data.held_out),
        method=request.calibration.method if wanted.kind == "int8" else "",
        outputs=outputs,
        layers=layers,
        kept_fp32=kept,
        fallback=fallback,
        bound=bound,
    )


INT4_BLOCK = 32
INT4_ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (onnxruntime's fastest CPU path)


def _int4(source: Path, output: Path, wanted: Precision, request: PrecisionRequest, seed: int) -> PrecisionReport:
    """Weight-only int4: every MatMul with a constant 2-D weight becomes MatMulNBits (onnxruntime's
    MatMulNBitsQuantizer, blocks of `block_size` along the reduction axis): round to nearest (symmetric), HQQ
    (asymmetric, optimized per block; no data) or GPTQ (symmetric, each layer's rounding error compensated on the
    inputs it sees in `--calibration` samples: passes/gptq.py). The drift is measured on a KV-cache decoder's own generation
    (`decoder_drift`), else on held-out samples."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from sparsecut.decoder import is_kv_decoder
    from sparsecut.modelfile import atomic_write_bytes
    from sparsecut.passes.gptq import COLUMNS, DAMPING, quantize_gptq

    check_int4(source)
    decoder = is_kv_decoder(source)
    calibration = _gptq_samples(source, request, decoder, seed) if wanted.method == "gptq" else []
    model = onnx.load(str(source))
    large = sum(t.ByteSize() for t in model.graph.initializer) > (1 << 30)  # (the weights, as loaded)
    block = wanted.block_size or INT4_BLOCK
    symmetric = dict(block_size=block, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        if wanted.method == "gptq":  # error compensation on the layers' real inputs (passes/gptq.py: why our own)
            quantized, stats = quantize_gptq(model, calibration, block, INT4_ACCURACY_LEVEL)
            del model
            onnx.save(quantized, str(staged), save_as_external_data=large, location=f"{output.name}.data")
            del quantized
            describe = (
                f"b{block}, symmetric, GPTQ on {len(calibration)} sample(s) of {request.calibration.source} "
                f"({stats.rows} rows; damping {DAMPING}, {COLUMNS} columns a step), accuracy level "
                f"{INT4_ACCURACY_LEVEL}"
            )
        else:
            if wanted.method == "hqq":  # half-quadratic: scales and zero points optimized per block, asymmetric
                config: Any = HQQWeightOnlyQuantConfig(block_size=block, bits=4)
                describe = f"b{block}, asymmetric, HQQ (onnxruntime's HQQWeightOnlyQuantConfig)"
            else:
                config = DefaultWeightOnlyQuantConfig(**symmetric)
                describe = (
                    f"b{block}, symmetric, round to nearest (MatMulNBitsQuantizer), accuracy level "
                    f"{INT4_ACCURACY_LEVEL}"
                )
            quantizer = MatMulNBitsQuantizer(model, algo_config=config)
            with quieted("onnxruntime.quantization.matmul_nbits_quantizer"):  # (a log line per node otherwise)
                quantizer.process()
            quantizer.model.save_model_to_file(str(staged), use_external_data_format=large)
            del quantizer, model
        samples = (
            None
            if decoder
            else calibration_set(
                request.calibration, onnx.load(str(source), load_external_data=False), source, seed
            ).held_out
        )
        drift, notes = (
            decoder_drift(source, staged, seed) if samples is None else (measure_drift(source, staged, samples)[0], [])
        )
        if request.max_drift is not None and not request.max_drift.holds(drift):
            raise AccuracyError(
                f"--max-drift: {request.max_drift.describe()} not reached in int4: "
                f"{request.max_drift.shortfall(drift)} (nothing written)"
            )
        if large:
            for path in Path(tmp).iterdir():
                if path != staged:
                    os.replace(path, output.parent / path.name)
        atomic_write_bytes(output, staged.read_bytes())
    return PrecisionReport(
        precision="int4",
        calibration=f"{request.calibration.source} ({len(calibration)} samples)"
        if calibration
        else "none (weight-only)",
        samples=len(calibration),
        max_abs_error=max((o.max_abs_error for o in drift), default=0.0),
        mean_abs_error=float(np.mean([o.mean_abs_error for o in drift])) if drift else 0.0,
        top1_agreement=drift[0].top1_agreement if drift else None,
        notes=[f"int4 {describe}", *notes],
        format=f"b{block}" + (f" {wanted.method}" if wanted.method else ""),
        outputs=drift,
    )


def _gptq_samples(source: Path, request: PrecisionRequest, decoder: bool, seed: int) -> list[dict[str, np.ndarray]]:
    """What GPTQ calibrates on: the user's `--calibration` samples — for a KV-cache decoder, token ids
    (`input_ids` [samples, length]), each run as a prefill with an empty past; else arrays by input name."""
    from sparsecut.decoder import DecoderInterface, step_inputs
    from sparsecut.feeds import input_specs, read_arrays
    from sparsecut.modelfile import load_model

    path = request.calibration.source
    if path is None:
        raise InputError(
            "--precision int4 gptq: GPTQ calibrates on data and none was given; pass --calibration FILE.npz"
            + (" (input_ids [samples, length], int64)" if decoder else "")
            + " — or use int4 rtn / int4 hqq, which need none"
        )
    if not decoder:
        return calibration_set(
            request.calibration, onnx.load(str(source), load_external_data=False), source, seed
        ).calibrate
    interface = DecoderInterface.of(load_model(source), source)
    assert interface is not None
    spec = next(s for s in input_specs(source) if s.name == "input_ids")
    ids = read_arrays(Path(path), [spec], "--calibration")["input_ids"]
    if ids.min() < 0 or ids.max() >= interface.vocab:
        raise InputError(f"{path}: array 'input_ids' holds token ids outside the vocabulary [0, {interface.vocab})")
    samples = []
    for row in ids[: request.calibration.samples or len(ids)]:
        feed = step_inputs(interface, row[None].astype(np.int64), 0)
        for (past, _), (heads, dim) in zip(interface.caches, interface.cache_shapes, strict=True):
            feed[past] = np.zeros((1, heads, 0, dim), np.float32)
        samples.append(feed)
    return samples


def check_int4(source: Path) -> None:
    """int4 has something to quantize: a MatMul with a constant 2-D weight (read without loading the weights)."""
    model = onnx.load(str(source), load_external_data=False)
    weights = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    if not any(n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights for n in model.graph.node):
        raise GraphError(f"{source}: --precision int4 quantizes MatMul weights, and this graph has none")


def _quantize_within(
    source: Path,
    staged: Path,
    ranges: Path,
    data: CalibrationSet,
    fmt: Int8Format,
    keep: list[str],
    request: PrecisionRequest,
) -> tuple[list[OutputDrift], list[LayerDrift], list[str], list[str], str]:
    """Quantize, measure; while `request.max_drift` does not hold, put the layer that lost most back in fp32."""
    kept, fallback = list(keep), list[str]()
    bound = request.max_drift
    while True:
        _quantize(source, staged, data.calibrate, fmt, request.calibration.method, kept, ranges)
        _relabel_two_four(staged)
        outputs, layers = measure_drift(source, staged, data.held_out, layers=True)
        if bound is None:
            return outputs, layers, kept, fallback, ""
        if bound.holds(outputs):
            if not layers:
                raise AccuracyError(
                    f"--max-drift: {bound.describe()} holds only with every layer in fp32 — that is the fp32 graph; "
                    "write fp32 or loosen the bound (nothing written)"
                )
            held = f"{bound.describe()}: holds ({bound.shortfall(outputs)}"
            held += f"; {len(fallback)} layer(s) put back in fp32)" if fallback else ")"
            return outputs, layers, kept, fallback, held
        # worst loss first; a layer whose own loss reads ≤ 0 still costs the bound (its ReLU, folded into its
        # output range, hides the error on what it zeroes): it goes back too, once the ones that lose are back
        losing = [layer for layer in layers if layer.node not in kept]
        if not losing:
            raise AccuracyError(
                f"--max-drift: {bound.describe()} not reached: {bound.shortfall(outputs)} with {len(kept)} layer(s) "
                "in fp32 and no quantized layer left to put back (nothing written)"
            )
        log.info("--max-drift: %s; %s goes back to fp32", bound.shortfall(outputs), losing[0].node)
        kept.append(losing[0].node)
        fallback.append(losing[0].node)


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _quantize(
    source: Path,
    staged: Path,
    samples: Sequence[dict[str, np.ndarray]],
    fmt: Int8Format,
    method: str,
    exclude: Sequence[str],
    ranges: Path,
) -> None:
    """onnxruntime's static QDQ quantizer, with the format's types, range and placement. The calibration ranges are
    kept in `ranges` (onnxruntime ≥ 1.32 reads them back) so that a second call with other nodes excluded does not
    calibrate again."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cached = (
        {"calibration_cache_path": str(ranges)}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters
        else {}
    )
    with quieted():  # onnxruntime's quantizer logs advice on the root logger; we report ourselves
        quantize_static(
            str(source),
            str(staged),
            _Reader(samples),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(fmt.op_types),
            per_channel=True,
            reduce_range=fmt.reduce_range,
            activation_type=QuantType.QUInt8 if fmt.unsigned_activations else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=getattr(CalibrationMethod, _METHODS[method]),
            extra_options={
                "ActivationSymmetric": not fmt.unsigned_activations,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                # ranges merged every few samples: memory stays flat (onnxruntime's CalibMaxIntermediateOutputs
                # drops the samples it collected instead of merging them)
                "CalibStridedMinMax": _stride(len(samples)),
            },
            **cached,
        )


def _relabel_two_four(path: Path) -> None:
    import onnx_ir as ir

    from sparsecut.passes.two_four import AnnotateTwoFourPass

    model = ir.load(path)
    if AnnotateTwoFourPass()(model).modified:
        ir.save(model, path)
