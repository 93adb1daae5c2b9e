"""INT8 formats: which types and which placement of Q/DQ a graph is quantized with. The best one is a property of
the target, like channel alignment — targets name the formats they run fast (`Target.int8_formats`, best first),
the precision pass writes the one it is given.

- `u8s8`: uint8 activations (asymmetric, with a zero point), int8 per-channel symmetric weights — onnxruntime's
  fast path on x86 (its U8S8 kernels; on the demo's ResNet-18 with AVX-512 VNNI, 6.8 ms vs 19.5 ms fp32). A ReLU or
  Clip after a quantized layer becomes that layer's output range (`RANGED`): no requantization between layers.
- `u8s8-reduce-range`: the same with 7-bit weights: x86 without VNNI multiplies u8 × s8 pairs into 16-bit sums that
  saturate on full-range weights (onnxruntime's own advice for such CPUs).
- `s8s8`: int8 activations and weights, both symmetric (zero points 0): ARM's fast path, what OpenVINO runs fast,
  and no faster than fp32 on onnxruntime x86 (19.0 ms there).
- `trt-s8`: TensorRT's: symmetric int8 with output-keeping placement — Q/DQ also on the inputs of residual Adds,
  Concats and pooling, so a conv's output stays int8 into the next layer (TensorRT picks int8, and sparse int8,
  kernels only there). Zero points 0 keep a 2:4 weight's zeros zero.

Every format quantizes weights per output channel and leaves biases in fp32 (the placement TensorRT fuses).
"""

from __future__ import annotations

import dataclasses

from sparsecut.errors import InputError

__all__ = ["FORMATS", "Int8Format", "cpu_int8_formats", "int8_format"]

WEIGHTED = ("Conv", "MatMul", "Gemm")
# with a zero point, a ReLU (or a Clip from 0) after a quantized layer is its output range: onnxruntime's quantizer
# drops it and gives the layer the activation's scale, so the layer's int8 output feeds the next one without a
# DequantizeLinear → QuantizeLinear requantization (timm ResNet-18 masked at 0.4, u8s8: 15 such pairs in the graph
# onnxruntime runs; dense 0.997 → 0.911 ms, lean 0.531 → 0.485 ms, interleaved)
RANGED = (*WEIGHTED, "Relu", "Clip")
OUTPUT_KEEPING = (*WEIGHTED, "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize")


@dataclasses.dataclass(frozen=True)
class Int8Format:
    name: str
    unsigned_activations: bool  # uint8 with a zero point, or int8 symmetric (zero point 0)
    reduce_range: bool  # 7-bit weights
    op_types: tuple[str, ...]  # the ops whose inputs (and, output-keeping, outputs) get Q/DQ
    summary: str

    def describe(self) -> str:
        return f"{self.name}: {self.summary}"


FORMATS = {
    f.name: f
    for f in (
        Int8Format("u8s8", True, False, RANGED, "uint8 activations, int8 per-channel weights (onnxruntime x86)"),
        Int8Format(
            "u8s8-reduce-range", True, True, RANGED,
            "uint8 activations, 7-bit int8 per-channel weights (onnxruntime x86 without VNNI)",
        ),
        Int8Format("s8s8", False, False, WEIGHTED, "int8 symmetric activations and per-channel weights"),
        Int8Format(
            "trt-s8", False, False, OUTPUT_KEEPING,
            "int8 symmetric, Q/DQ also on residual Adds, Concats and pooling: outputs stay int8 (TensorRT)",
        ),
    )
}  # fmt: skip


def int8_format(name: str = "") -> Int8Format:
    """The format named, or — "" — the default target's (onnxruntime's best on this CPU)."""
    if not name:
        from sparsecut.cpu import cpu_vector_extensions

        name = cpu_int8_formats(cpu_vector_extensions())[0]
    if name not in FORMATS:
        raise InputError(f"--int8-format: unknown format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def cpu_int8_formats(extensions: str) -> tuple[str, ...]:
    """onnxruntime's CPU formats, best first, for a CPU with these vector extensions (`cpu_vector_extensions`)."""
    flags = set(extensions.split(","))
    if "asimd" in flags or "sve" in flags:  # ARM: signed dot products
        return ("s8s8", "u8s8")
    if flags & {"avx512_vnni", "avx_vnni", "amx_tile"}:
        return ("u8s8", "s8s8")
    return ("u8s8-reduce-range", "u8s8", "s8s8")
