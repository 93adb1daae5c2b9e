"""The int8 option group (optimize, build, run): calibration data and its preprocessing, the calibrator, the
held-out split, layers kept in fp32 and the accuracy bound — declared once, reaching a command checked, as one
`Int8Settings` (see sparsecut/calibration.py and passes/drift.py)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from inspect import Parameter
from inspect import signature as signature_of
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.options import one_of
from sparsecut.errors import InputError
from sparsecut.precision import Precision

if TYPE_CHECKING:
    from sparsecut.calibration import Calibration
    from sparsecut.passes.drift import DriftBound
    from sparsecut.passes.precision import PrecisionRequest

__all__ = ["Int8Settings", "int8_options"]

# int8 calibration and accuracy (optimize, build, run): see sparsecut/calibration.py and passes/drift.py
INT8_PANEL = "int8 calibration and accuracy"
CalibrationOption = Annotated[
    Path | None,
    typer.Option(rich_help_panel=INT8_PANEL, help="int8 calibration samples: .npz, a folder of .npy/.npz, or a folder of images (then state "
                 "--mean/--std or --data-config)."),
]  # fmt: skip
MethodOption = Annotated[
    str,
    typer.Option(
        rich_help_panel=INT8_PANEL,
        callback=one_of("minmax", "entropy", "percentile"),
        help="int8 calibrator (onnxruntime's).",
    ),
]
SamplesOption = Annotated[
    int | None,
    typer.Option(rich_help_panel=INT8_PANEL, min=1, help="int8: samples to calibrate on (default: up to 256)."),
]
HeldOutOption = Annotated[
    int | None,
    typer.Option(
        rich_help_panel=INT8_PANEL,
        min=1,
        help="int8: samples held out to judge accuracy (default: a fifth, up to 100).",
    ),
]
ImageSizeOption = Annotated[
    str | None, typer.Option(rich_help_panel=INT8_PANEL, help="Calibration images resized to H[,W].")
]
ResizeOption = Annotated[
    str | None,
    typer.Option(rich_help_panel=INT8_PANEL, callback=lambda v: v and one_of("crop", "squash")(v),
                 help="crop (default): shorter side to size/crop-pct, centre crop (timm); squash: straight to H×W."),
]  # fmt: skip
CropPctOption = Annotated[
    float | None,
    typer.Option(rich_help_panel=INT8_PANEL, min=0.05, max=1.0, help="--resize crop: crop fraction (default 0.875)."),
]
InterpolationOption = Annotated[
    str | None,
    typer.Option(rich_help_panel=INT8_PANEL, callback=lambda v: v and one_of("nearest", "bilinear", "bicubic", "lanczos")(v),
                 help="Resize filter (default bilinear)."),
]  # fmt: skip
MeanOption = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=INT8_PANEL, help="Calibration images: per-channel mean of p/255, e.g. 0.485,0.456,0.406."
    ),
]
StdOption = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=INT8_PANEL, help="Calibration images: per-channel std of p/255, e.g. 0.229,0.224,0.225."
    ),
]
ChannelOrderOption = Annotated[
    str,
    typer.Option(
        rich_help_panel=INT8_PANEL,
        callback=one_of("rgb", "bgr"),
        help="Calibration images: channel order the model takes.",
    ),
]
DataConfigOption = Annotated[
    Path | None,
    typer.Option(
        rich_help_panel=INT8_PANEL, help="timm-style data config JSON (input_size, mean, std, crop_pct, interpolation)."
    ),
]
KeepFp32Option = Annotated[
    str | None,
    typer.Option(rich_help_panel=INT8_PANEL, help="int8: node or module names kept in fp32, comma-separated."),
]
MaxDriftOption = Annotated[
    str | None,
    typer.Option(rich_help_panel=INT8_PANEL, help="int8: accuracy bound on held-out samples, 30dB (SQNR) or 1% (top-1 lost); the worst layers "
                 "go back to fp32 until it holds."),
]  # fmt: skip


def _numbers(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{option}: {text!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{option}: {text!r}: every value must be finite")
    return values


def _calibration(
    calibration: Path | None,
    calibration_method: str,
    calibration_samples: int | None,
    held_out: int | None,
    image_size: str | None,
    resize: str | None,
    crop_pct: float | None,
    interpolation: str | None,
    mean: str | None,
    std: str | None,
    channel_order: str,
    data_config: Path | None,
    keep_fp32: str | None,
    max_drift: str | None,
) -> Int8Settings:
    """The int8 options, parsed and checked."""
    from sparsecut.calibration import Calibration, ImagePreprocessing, preprocessing_from_config
    from sparsecut.passes.drift import parse_drift_bound

    images = preprocessing_from_config(data_config) if data_config is not None else ImagePreprocessing()
    if image_size is not None:
        size = _numbers("--image-size", image_size)
        if len(size) not in (1, 2) or not all(v >= 1 and v == int(v) for v in size):
            raise InputError(f"--image-size: {image_size!r}: give H or H,W in pixels")
        images = dataclasses.replace(images, size=(int(size[0]), int(size[-1])))
    # given on the command line: over the data config's entries
    images = dataclasses.replace(
        images,
        resize=resize or images.resize,
        crop_pct=crop_pct or images.crop_pct,
        interpolation=interpolation or images.interpolation,
        channel_order=channel_order,
    )
    if mean is not None:
        images = dataclasses.replace(images, mean=_numbers("--mean", mean))
    if std is not None:
        images = dataclasses.replace(images, std=_numbers("--std", std))
    settings = Calibration(calibration, images, calibration_method, calibration_samples, held_out)
    keep = tuple(name.strip() for name in (keep_fp32 or "").split(",") if name.strip())
    if keep_fp32 is not None and not keep:
        raise InputError("--keep-fp32: name at least one node or module")
    bound = parse_drift_bound(max_drift) if max_drift is not None else None
    return Int8Settings(settings, keep, bound, data_config)


class Int8Settings(NamedTuple):
    calibration: Calibration
    keep_fp32: tuple[str, ...]
    max_drift: DriftBound | None
    data_config: Path | None  # an input file too: never written over

    def request(self, wanted: Precision | None) -> PrecisionRequest:
        """The library's precision request: `wanted` (None: best), calibrated and judged as these options say."""
        from sparsecut.passes.precision import PrecisionRequest

        return PrecisionRequest(wanted, self.calibration, self.keep_fp32, self.max_drift)


_INT8_PARAMETERS = [
    Parameter(name, Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("calibration", CalibrationOption, None),
        ("calibration_method", MethodOption, "minmax"),
        ("calibration_samples", SamplesOption, None),
        ("held_out", HeldOutOption, None),
        ("image_size", ImageSizeOption, None),
        ("resize", ResizeOption, None),
        ("crop_pct", CropPctOption, None),
        ("interpolation", InterpolationOption, None),
        ("mean", MeanOption, None),
        ("std", StdOption, None),
        ("channel_order", ChannelOrderOption, "rgb"),
        ("data_config", DataConfigOption, None),
        ("keep_fp32", KeepFp32Option, None),
        ("max_drift", MaxDriftOption, None),
    )
]


_GPTQ = ("calibration", "calibration_samples", "max_drift")  # what --precision "int4 gptq" reads


def int8_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the int8 calibration and accuracy options. They reach it checked, as one keyword argument
    `int8` (Int8Settings), and need the command's --precision int8 (or best): an option given off its default
    otherwise is refused. One declaration for every command that quantizes (Typer reads the wrapper's signature)."""
    signature = signature_of(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "int8"]

    @functools.wraps(command)
    def with_int8(**kwargs: object) -> None:
        values = {p.name: kwargs.pop(p.name) for p in _INT8_PARAMETERS}
        given = [p.name for p in _INT8_PARAMETERS if values[p.name] != p.default]
        precision = kwargs["precision"]
        if isinstance(precision, Precision) and precision.kind == "int4":  # GPTQ calibrates; every int4 is judged
            given = [name for name in given if name not in (_GPTQ if precision.method == "gptq" else ("max_drift",))]
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')}: not used with --precision {precision}")
        elif given and isinstance(precision, Precision) and precision.kind != "int8":
            raise UsageError(f"--{given[0].replace('_', '-')}: only used with --precision int8 or best")
        kwargs["int8"] = _calibration(**values)  # type: ignore[arg-type]
        command(**kwargs)

    with_int8.__signature__ = signature.replace(parameters=[*own, *_INT8_PARAMETERS])  # type: ignore[attr-defined]
    with_int8.__annotations__ = {p.name: p.annotation for p in [*own, *_INT8_PARAMETERS]}
    return with_int8
