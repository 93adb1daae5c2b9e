"""Precision as one value: what a graph computes in — fp32, fp16, int8 in a format (sparsecut/quantization.py),
int4 weights in blocks — parsed once where text comes in (the CLI, a latency table's key) and turned back into
text only for reports and keys.

`Precision("int8")` without a format means "int8, in the format the target runs best" (or, with
`optimize --target`, each of the target's formats measured); `Precision.parse("int8 s8s8")` names one. A new int8
format is one entry in `quantization.FORMATS`; nothing here changes.
"""

from __future__ import annotations

import dataclasses

from sparsecut.errors import InputError
from sparsecut.quantization import FORMATS, Int8Format

__all__ = ["FP32", "INT4_METHODS", "KINDS", "Precision"]

KINDS = ("fp32", "fp16", "int8", "int4")
# round to nearest; half-quadratic quantization (onnxruntime's HQQ, no data needed); GPTQ (calibrates on --calibration)
INT4_METHODS = ("rtn", "hqq", "gptq")


@dataclasses.dataclass(frozen=True)
class Precision:
    kind: str = "fp32"
    format: Int8Format | None = None  # int8: its format; None: the target's best (or measured), decided later
    block_size: int | None = None  # int4: weights quantized in blocks of this many along the reduction axis
    method: str | None = None  # int4: how the weights are rounded (INT4_METHODS); None: round to nearest

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"--precision: unknown precision {self.kind!r}; known: {', '.join(KINDS)}")
        if self.format is not None and self.kind != "int8":
            raise InputError(f"--int8-format: only used with --precision int8 (not {self.kind})")
        if self.block_size is not None and (self.kind != "int4" or self.block_size < 16 or self.block_size & 15):
            raise InputError(
                f"--precision {self.kind}: a block size is int4's, a multiple of 16 (not {self.block_size})"
            )
        if self.method is not None and (self.kind != "int4" or self.method not in INT4_METHODS):
            raise InputError(
                f"--precision {self.kind}: {self.method!r} is no int4 method; known: {', '.join(INT4_METHODS)}"
            )

    @classmethod
    def parse(cls, text: str) -> Precision:
        """`fp32`, `fp16`, `int8`, `int8 FORMAT` (`int8 s8s8`), `int4`, `int4 bN` (`int4 b32`), `int4 [bN] hqq|gptq`:
        what `str` writes."""
        kind, _, detail = text.strip().partition(" ")
        if kind == "int8" and detail:
            if detail not in FORMATS:
                raise InputError(f"--int8-format: unknown format {detail!r}; known: {', '.join(FORMATS)}")
            return cls(kind, format=FORMATS[detail])
        if kind == "int4" and detail:
            block, method = None, None
            for part in detail.split():
                if part in INT4_METHODS and method is None:
                    method = part
                elif part.startswith("b") and part[1:].isdigit() and block is None:
                    block = int(part[1:])
                else:
                    raise InputError(
                        f"--precision {text!r}: int4 takes a block size bN and a method ({', '.join(INT4_METHODS)}), "
                        "e.g. int4 b32 hqq"
                    )
            return cls(kind, block_size=block, method=None if method == "rtn" else method)
        if detail:
            raise InputError(f"--precision {text!r}: {kind} takes no detail")
        return cls(kind)

    def __str__(self) -> str:
        if self.format is not None:
            return f"{self.kind} {self.format.name}"
        details = [f"b{self.block_size}"] if self.block_size is not None else []
        details += [self.method] if self.method is not None else []
        return " ".join([self.kind, *details])

    def in_format(self, name: str) -> Precision:
        """This int8 precision in the format named ("" keeps it as it is)."""
        if not name:
            return self
        return dataclasses.replace(self, format=Precision.parse(f"int8 {name}").format)

    @property
    def quantized(self) -> bool:
        return self.kind in ("int8", "int4")


FP32 = Precision("fp32")
