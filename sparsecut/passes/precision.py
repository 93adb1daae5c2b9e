"""to-fp16 and quantize-int8: put precision into the graph, as TensorRT 11 (strongly typed) and onnxruntime need it.

- quantize-int8: onnxruntime's static QDQ quantization — symmetric int8 activations and per-channel symmetric int8
  weights, Q/DQ on the inputs of convs and matmuls and none on biases (the placement TensorRT fuses), calibrated
  on the user's real inputs (`--calibration` .npz or a folder of .npy/.npz), or on random data with a loud warning.
- to-fp16: onnxruntime's float16 converter with fp32 inputs/outputs (I/O casts) and numerically sensitive ops
  kept in fp32.
These change what the model computes by design, so they are exempt from the equivalence gate; instead the drift
against the fp32 graph is measured on the calibration data and reported (max/mean abs error, top-1 agreement).
The 2:4 labels are applied again afterwards (annotate-2to4 looks through DequantizeLinear).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from sparsecut.checking import checking_session
from sparsecut.cpu import cpu_vector_extensions
from sparsecut.errors import GraphError, InputError
from sparsecut.feeds import input_specs, read_arrays, synthetic_inputs
from sparsecut.logs import quieted
from sparsecut.quantization import Int8Format, cpu_int8_formats, int8_format
from sparsecut.report import PrecisionReport

__all__ = ["FP16_BLOCKED_OPS", "PrecisionOptions", "convert_precision", "load_calibration"]

log = logging.getLogger(__name__)

FP16_BLOCKED_OPS = ("Softmax", "LayerNormalization", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp", "Erf")
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


@dataclasses.dataclass(frozen=True)
class PrecisionOptions:
    precision: str = "fp32"  # fp32 | fp16 | int8
    calibration: Path | None = None
    random_samples: int = 16  # calibration samples when no data is given (int8 then warns loudly)
    fp16_blocked_ops: tuple[str, ...] = FP16_BLOCKED_OPS
    seed: int = 0
    int8_format: str = ""  # see sparsecut/quantization.py; "": this CPU's best for onnxruntime, the default target


def load_calibration(path: Path, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Samples (batch 1 each) from an .npz (arrays by input name, first axis = samples) or a folder of .npy/.npz,
    every array checked against the model's inputs (names, dtypes, shapes, finite values)."""
    path = Path(path)
    specs = input_specs(model)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"{path}: calibration folder holds no .npy or .npz files")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: no such calibration file or folder")
    samples = []
    for file in files:
        batch = read_arrays(file, specs, "--calibration")
        count = len(next(iter(batch.values())))
        samples += [{name: array[i : i + 1] for name, array in batch.items()} for i in range(count)]
    return samples


def _random_samples(model: onnx.ModelProto, count: int, seed: int, source: Path) -> list[dict[str, np.ndarray]]:
    specs = input_specs(model)
    return [synthetic_inputs(specs, 1, seed + i, source) for i in range(count)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of samples."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._samples = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)


def convert_precision(source: Path, output: Path, options: PrecisionOptions) -> PrecisionReport:
    """Write `source` converted to `options.precision` at `output` (atomically) and measure the drift."""
    from sparsecut.modelfile import atomic_write_bytes, check_output_path

    source, output = Path(source), Path(output)
    check_output_path(output, source)
    model = onnx.load(str(source))
    if QUANTIZED_OPS & {n.op_type for n in model.graph.node}:
        raise GraphError(
            f"{source}: the model is already quantized (it has Q/DQ or integer ops); refusing to quantize twice"
        )
    notes = []
    if options.calibration is not None:
        samples = load_calibration(options.calibration, model)
        origin = str(options.calibration)
    else:
        samples = _random_samples(model, options.random_samples, options.seed, source)
        origin = f"random normal ({len(samples)} samples)"
        if options.precision == "int8":
            log.warning("int8 calibration on RANDOM data: scales will not fit real inputs; pass --calibration")
            notes.append("calibrated on random data: accuracy on real inputs is unknown — pass --calibration")
    chosen = ""
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        if options.precision == "int8":
            fmt = int8_format(options.int8_format or cpu_int8_formats(cpu_vector_extensions())[0])
            _quantize(source, staged, samples, fmt)
            chosen = fmt.name
            notes.append(f"int8 format {fmt.describe()}")
        elif options.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(options.fp16_blocked_ops))
            onnx.save(half, str(staged))
            notes.append(f"kept in fp32: {', '.join(options.fp16_blocked_ops)}")
        else:
            raise GraphError(f"unknown precision {options.precision!r}; known: fp32, fp16, int8")
        _relabel_two_four(staged)
        max_abs, mean_abs, agreement = _drift(source, staged, samples)
        atomic_write_bytes(output, staged.read_bytes())
    return PrecisionReport(
        precision=options.precision,
        calibration=origin,
        samples=len(samples),
        max_abs_error=max_abs,
        mean_abs_error=mean_abs,
        top1_agreement=agreement,
        notes=notes,
        format=chosen,
    )


def _quantize(source: Path, staged: Path, samples: list[dict[str, np.ndarray]], fmt: Int8Format) -> None:
    """onnxruntime's static QDQ quantizer, with the format's types, range and placement."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

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
            extra_options={
                "ActivationSymmetric": not fmt.unsigned_activations,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            },
        )


def _relabel_two_four(path: Path) -> None:
    import onnx_ir as ir

    from sparsecut.passes.two_four import AnnotateTwoFourPass

    model = ir.load(path)
    if AnnotateTwoFourPass()(model).modified:
        ir.save(model, path)


def _drift(reference: Path, candidate: Path, samples: list[dict[str, np.ndarray]]) -> tuple[float, float, float | None]:
    errors, agree, total = [], 0, 0
    with checking_session(reference) as ref, checking_session(candidate) as got:
        for sample in samples:
            a = ref.run(None, sample)  # type: ignore[attr-defined]
            b = got.run(None, sample)  # type: ignore[attr-defined]
            for x, y in zip(a, b, strict=True):
                errors.append(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).ravel())
            if a[0].ndim == 2:  # a classifier: does the top-1 class survive?
                agree += int(np.sum(np.argmax(a[0], axis=1) == np.argmax(b[0], axis=1)))
                total += a[0].shape[0]
    flat = np.concatenate(errors) if errors else np.zeros(1)
    return float(flat.max()), float(flat.mean()), (agree / total if total else None)
