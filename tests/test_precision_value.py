"""Precision is one value: parsed once from text, written back to the same text, a new int8 format one entry."""

from __future__ import annotations

import pytest

from sparsecut.errors import InputError
from sparsecut.precision import FP32, KINDS, Precision
from sparsecut.quantization import FORMATS


@pytest.mark.parametrize(
    "text",
    [
        *KINDS,
        *(f"int8 {name}" for name in FORMATS),
        "int4 b32",
        "int4 b128",
        "int4 hqq",
        "int4 b64 hqq",
        "int4 b32 gptq",
    ],
)
def test_text_round_trips(text):
    assert str(Precision.parse(text)) == text
    assert Precision.parse(str(Precision.parse(text))) == Precision.parse(text)


def test_every_int8_format_is_a_precision_through_its_one_entry():
    for name, fmt in FORMATS.items():
        assert Precision("int8").in_format(name) == Precision("int8", format=fmt) == Precision.parse(f"int8 {name}")
    assert Precision("int8").in_format("") == Precision("int8")  # no format named: the target's best, later
    assert Precision() == FP32 and not FP32.quantized and Precision("int4").quantized


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Precision.parse("int3"), "unknown precision 'int3'"),
        (lambda: Precision.parse("int8 u4"), "--int8-format: unknown format 'u4'; known: u8s8"),
        (lambda: Precision.parse("fp16 fast"), "fp16 takes no detail"),
        (lambda: Precision.parse("int4 32"), "int4 takes a block size bN and a method"),
        (lambda: Precision.parse("int4 awq"), "int4 takes a block size bN and a method"),
        (lambda: Precision("int8", method="hqq"), "'hqq' is no int4 method"),
        (lambda: Precision("int4", block_size=24), "a multiple of 16"),
        (lambda: Precision("fp16").in_format("s8s8"), "--int8-format: only used with --precision int8"),
        (lambda: Precision("fp32", block_size=32), "a block size is int4's"),
    ],
)
def test_what_is_not_a_precision_says_why(make, message):
    with pytest.raises(InputError, match=message):
        make()
