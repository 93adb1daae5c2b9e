"""The `sparsecut` command line: parses arguments, calls the library, renders reports with rich.

Every error a user can cause is a `SparsecutError`; it becomes one line on stderr and exit code 2 (the
traceback only with `--verbose`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from inspect import Parameter
from inspect import signature as signature_of  # `inspect` is a command here
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click.exceptions import MissingParameter, NoSuchOption, UsageError  # typer ships click inside

from sparsecut.errors import InputError, SparsecutError, TargetError
from sparsecut.opsets import MAX_OPSET, MIN_OPSET
from sparsecut.outputs import OutputPlan
from sparsecut.passes.registry import DEFAULT_PASSES, PASSES
from sparsecut.report import OptimizeReport, Report, write_json

if TYPE_CHECKING:
    from sparsecut.calibration import Calibration
    from sparsecut.passes.drift import DriftBound

__all__ = ["app", "main"]

console = Console()
error_console = Console(stderr=True)

app = typer.Typer(
    name="sparsecut",
    help="Turn pruned PyTorch checkpoints into lean, verified ONNX and measure their real latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List the reference architectures and pruning recipes, or make a pruned example.")
app.add_typer(models_app, name="models")


@dataclasses.dataclass
class _Session:
    verbose: bool = False


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress and show tracebacks.")] = False,
) -> None:
    if isinstance(ctx.obj, _Session):
        ctx.obj.verbose = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _positive(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a positive number of seconds")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _target_name(value: str | None) -> str | None:
    from sparsecut.targets import TARGETS

    return None if value is None else _one_of(*TARGETS)(value)


def _tolerance(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value} is not a finite number ≥ 0")
    return value


def _target_names(value: str) -> str:
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        _target_name(name)
    if not names or len(set(names)) != len(names):
        raise typer.BadParameter(f"{value!r}: name each target once (onnxruntime,openvino)")
    return ",".join(names)


TargetOption = Annotated[str, typer.Option(callback=_target_name, help="onnxruntime, openvino or tensorrt.")]
TargetsOption = Annotated[
    str, typer.Option(callback=_target_names, help="onnxruntime, openvino, tensorrt, or several: onnxruntime,openvino.")
]
DeviceOption = Annotated[
    str, typer.Option(callback=_one_of("CPU", "GPU", "NPU", "AUTO"), help="--target openvino: CPU, GPU, NPU or AUTO.")
]


def _int8_format(value: str) -> str:
    from sparsecut.quantization import FORMATS

    if value and value not in FORMATS:
        raise typer.BadParameter(f"unknown format {value!r}; known: {', '.join(FORMATS)}")
    return value


Int8FormatOption = Annotated[
    str,
    typer.Option(
        callback=_int8_format,
        help="int8 format: u8s8, u8s8-reduce-range, s8s8, trt-s8 (default: the target's best on this machine; with "
        "optimize --target, each of the target's formats is timed and the fastest written).",
    ),
]
HintOption = Annotated[
    str, typer.Option(callback=_one_of("latency", "throughput"), help="--target openvino: performance hint.")
]
ThreadsOption = Annotated[int | None, typer.Option(min=0, help="Intra-op threads (CPU; 0: onnxruntime's default).")]
BudgetOption = Annotated[
    float | None, typer.Option(callback=_positive, help="Seconds of timing (more rounds, tighter interval).")
]
ProviderOption = Annotated[
    str, typer.Option(callback=_one_of("cpu", "cuda", "tensorrt"), help="onnxruntime execution provider.")
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")]

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
        callback=_one_of("minmax", "entropy", "percentile"),
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
    typer.Option(rich_help_panel=INT8_PANEL, callback=lambda v: v and _one_of("crop", "squash")(v),
                 help="crop (default): shorter side to size/crop-pct, centre crop (timm); squash: straight to H×W."),
]  # fmt: skip
CropPctOption = Annotated[
    float | None,
    typer.Option(rich_help_panel=INT8_PANEL, min=0.05, max=1.0, help="--resize crop: crop fraction (default 0.875)."),
]
InterpolationOption = Annotated[
    str | None,
    typer.Option(rich_help_panel=INT8_PANEL, callback=lambda v: v and _one_of("nearest", "bilinear", "bicubic", "lanczos")(v),
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
        callback=_one_of("rgb", "bgr"),
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


def _int8_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the int8 calibration and accuracy options. They reach it checked, as one keyword argument
    `int8` (Int8Settings), and need the command's --precision int8 (or best): an option given off its default
    otherwise is refused. One declaration for every command that quantizes (Typer reads the wrapper's signature)."""
    signature = signature_of(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "int8"]

    @functools.wraps(command)
    def with_int8(**kwargs: object) -> None:
        values = {p.name: kwargs.pop(p.name) for p in _INT8_PARAMETERS}
        given = [p.name for p in _INT8_PARAMETERS if values[p.name] != p.default]
        if given and kwargs["precision"] not in ("int8", "best"):
            raise UsageError(f"--{given[0].replace('_', '-')}: only used with --precision int8 or best")
        kwargs["int8"] = _calibration(**values)  # type: ignore[arg-type]
        command(**kwargs)

    with_int8.__signature__ = signature.replace(parameters=[*own, *_INT8_PARAMETERS])  # type: ignore[attr-defined]
    with_int8.__annotations__ = {p.name: p.annotation for p in [*own, *_INT8_PARAMETERS]}
    return with_int8


# --------------------------------------------------------------------------------------------------- export
@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help=".pt/.pth state_dict, .safetensors, or torch.export .pt2")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    arch: Annotated[str | None, typer.Option(help="Reference architecture (see `sparsecut models`).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="MODULE:FACTORY returning the nn.Module.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="Input shape, e.g. 1,3,224,224.")] = None,
    opset: Annotated[
        int, typer.Option(min=MIN_OPSET, max=MAX_OPSET, help=f"ONNX opset ({MIN_OPSET} to {MAX_OPSET}).")
    ] = MIN_OPSET,
    rtol: Annotated[
        float, typer.Option(callback=_tolerance, help="Relative tolerance of the PyTorch-vs-ONNX check.")
    ] = 1e-4,
    atol: Annotated[
        float, typer.Option(callback=_tolerance, help="Absolute tolerance of the PyTorch-vs-ONNX check.")
    ] = 1e-5,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="Allow unpickling (runs code from the file): only for checkpoints you trust.")
    ] = False,
    keep_stack_traces: Annotated[
        bool, typer.Option("--keep-stack-traces", help="Keep the exporter's per-node Python stack traces.")
    ] = False,
    json_path: JsonOption = None,
) -> None:
    """Export a pruned checkpoint to ONNX, verified against PyTorch in onnxruntime."""
    from sparsecut.exporter import ExportOptions, export_checkpoint, parse_input_shape

    options = ExportOptions(
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        opset=opset,
        rtol=rtol,
        atol=atol,
        trust_checkpoint=trust_checkpoint,
        keep_stack_traces=keep_stack_traces,
    )
    _require(checkpoint)
    with OutputPlan([checkpoint]) as plan:
        staged = plan.file(output, "--output", model=True)
        staged_json = plan.file(json_path, "--json") if json_path else None
        with console.status(f"exporting {checkpoint} …"):
            report = export_checkpoint(checkpoint, staged, arch=arch, model_factory=model, options=options)
        report = _finish(plan, report, staged_json)
    _render_export(report)
    _announce_json(json_path)


def _render_export(report: object) -> None:
    from sparsecut.report import ExportReport

    assert isinstance(report, ExportReport)
    table = Table(title=f"export: {report.checkpoint} → {report.output}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    exporter = report.exporter + (f" ({report.exporter_note})" if report.exporter_note else "")
    rows = [
        ("architecture", report.architecture),
        ("exporter", exporter),
        ("opset", str(report.opset)),
        ("graph nodes", f"{report.nodes_exported} as torch.onnx wrote them → {report.nodes} after folding constants"),
        ("input shape", "×".join(map(str, report.input_shape)) + " (batch dynamic)"),
        ("parameters", f"{report.parameters:,} ({report.zero_parameters:,} exactly zero)"),
        ("masks folded", str(len(report.folded_masks))),
        ("layers resized", str(len(report.resized_layers))),
        ("sha256", report.checkpoint_sha256[:16] + "…" if report.checkpoint_sha256 else "-"),
        ("export time", f"{report.export_seconds:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for check in report.checks:
        verdict = "[green]ok[/green]" if check.passed else "[red]FAILED[/red]"
        table.add_row(
            f"check batch {check.batch_size}",
            f"{verdict}  max abs {check.max_abs_error:.2e}, rel {check.max_rel_error:.2e} (rtol {report.rtol:g})",
        )
    console.print(table)


# --------------------------------------------------------------------------------------------------- models
@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List reference architectures and recipes (no subcommand), or `models make` an example checkpoint."""
    if ctx.invoked_subcommand is not None:
        return
    from sparsecut.models import ARCHITECTURES, RECIPES

    table = Table(title="reference architectures (--arch)", title_justify="left")
    for column in ("name", "input shape", "description"):
        table.add_column(column)
    for arch in ARCHITECTURES.values():
        table.add_row(arch.name, "×".join(map(str, arch.input_shape)), arch.description)
    console.print(table)
    recipes = Table(title="pruning recipes (sparsecut models make ARCH --recipe NAME)", title_justify="left")
    recipes.add_column("recipe")
    recipes.add_column("what it does")
    for recipe in RECIPES.values():
        recipes.add_row(recipe.name, recipe.description)
    console.print(recipes)


@models_app.command("make")
def models_make(
    arch: Annotated[str, typer.Argument(help="Reference architecture.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint (.pt) to write.")],
    recipe: Annotated[str, typer.Option(help="Pruning recipe.")] = "l1-filter",
    amount: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Share of channels pruned per group (ignored by 2:4).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the reference weights.")] = 0,
) -> None:
    """Make an example pruned checkpoint (a state_dict, with prune masks where the recipe leaves them)."""
    from sparsecut.models import make_pruned_model, save_state_dict

    with OutputPlan() as plan:
        staged = plan.file(output, "--output")
        save_state_dict(make_pruned_model(arch, recipe, amount, seed), staged)
        plan.commit()
    console.print(f"wrote {output}: {arch} pruned by {recipe} (amount {amount})")


# --------------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the demo's files.")] = Path("sparsecut-demo"),
    arch: Annotated[str, typer.Option(help="Reference architecture.")] = "resnet18",
    recipe: Annotated[str, typer.Option(help="Pruning recipe.")] = "l1-filter",
    amount: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share of channels pruned.")] = 0.5,
    budget: BudgetOption = None,
    precision: Annotated[
        str,
        typer.Option(
            callback=_one_of("fp32", "fp16", "int8"),
            help="fp32, fp16 or int8 (then dense and lean are also timed in fp32: pruning × precision).",
        ),
    ] = "fp32",
) -> None:
    """The main job end to end on a reference model: prune, export, remove dead channels, measure like for like."""
    from sparsecut.models import make_pruned_model, save_state_dict
    from sparsecut.workflow import RunOptions

    with tempfile.TemporaryDirectory(prefix="sparsecut-demo-") as tmp:
        checkpoint = Path(tmp) / f"{arch}-{recipe}.pt"
        with console.status(f"pruning {arch} with {recipe} …"):
            save_state_dict(make_pruned_model(arch, recipe, amount), checkpoint)
        console.print(f"pruned {arch} with {recipe} (amount {amount}) → timing exported, dense baseline and lean")
        _run(checkpoint, out_dir, "--out-dir", arch, None, RunOptions(budget=budget, precision=precision))


# --------------------------------------------------------------------------------------------------- optimize
@app.command()
@_int8_options
def optimize(
    model: Annotated[Path, typer.Argument(help="ONNX file to optimize.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Lean ONNX file to write.")],
    passes: Annotated[str, typer.Option(help="Comma-separated pipeline of: " + ", ".join(PASSES))] = (
        ",".join(DEFAULT_PASSES)
    ),
    align: Annotated[int, typer.Option(min=1, help="Keep channel counts at multiples of N (1: off).")] = 8,
    data: Annotated[Path | None, typer.Option(help=".npz of real inputs for the equivalence gate.")] = None,
    rtol: Annotated[
        float, typer.Option(callback=_tolerance, help="Relative tolerance of the equivalence gate.")
    ] = 1e-4,
    atol: Annotated[
        float, typer.Option(callback=_tolerance, help="Absolute tolerance of the equivalence gate.")
    ] = 1e-5,
    enforce_2to4: Annotated[bool, typer.Option("--enforce-2to4", help="Prune to 2:4 (changes the model).")] = False,
    min_channels: Annotated[int, typer.Option(min=1, help="--enforce-2to4 skips layers with fewer channels.")] = 64,
    permutation_budget: Annotated[
        float,
        typer.Option(
            callback=_tolerance, help="--enforce-2to4: seconds per channel group to search a reorder (0: off)."
        ),
    ] = 0.5,
    precision: Annotated[
        str,
        typer.Option(
            callback=_one_of("fp32", "fp16", "int8", "best"),
            help="fp32, fp16, int8, or best (with --target: the fastest that meets --max-drift, default 25dB).",
        ),
    ] = "fp32",
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the equivalence gate (loudly).")] = False,
    target: Annotated[
        str | None,
        typer.Option(callback=_target_name, help="Choose channel counts by latency measured on this target."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="--target: batch size the decisions are measured at.")] = 1,
    threads: Annotated[int | None, typer.Option(min=0, help="--target: intra-op threads (0: default).")] = None,
    provider: Annotated[
        str, typer.Option(callback=_one_of("cpu", "cuda", "tensorrt"), help="--target onnxruntime: provider.")
    ] = "cpu",
    lut: Annotated[
        Path | None, typer.Option(help="--target: latency table file (default: in the user cache folder).")
    ] = None,
    tune_budget: Annotated[
        float, typer.Option(callback=_positive, help="--target: seconds of layer measurements at most.")
    ] = 30.0,
    device: DeviceOption = "CPU",
    int8_format: Int8FormatOption = "",
    keep_stack_traces: Annotated[
        bool, typer.Option("--keep-stack-traces", help="Keep the exporter's per-node Python stack traces.")
    ] = False,
    json_path: JsonOption = None,
    int8: Int8Settings | None = None,
) -> None:
    """Fold BatchNorm and remove dead channels; written only if verified equal to the input graph. With
    --target, channel counts are chosen by latency measured there, and the candidates are timed end to end."""
    from sparsecut.passes import OptimizeOptions, optimize_model

    assert int8 is not None
    calibrating, keep, bound, data_config = int8
    calibration = calibrating.source
    options = OptimizeOptions(
        passes=tuple(p.strip() for p in passes.split(",") if p.strip()),
        align=align,
        rtol=rtol,
        atol=atol,
        verify=not no_verify,
        data=data,
        precision=precision,
        calibration=calibrating,
        keep_fp32=keep,
        max_drift=bound,
        enforce_2to4=enforce_2to4,
        min_channels=min_channels,
        permutation_budget=permutation_budget,
        keep_stack_traces=keep_stack_traces,
        int8_format=int8_format,
    )
    if int8_format and precision != "int8":
        raise UsageError("--int8-format: only used with --precision int8")
    if precision == "best" and target is None:
        raise UsageError("--precision best: needs --target (fp32, fp16 and int8 are measured there)")
    _require(model, data, calibration, data_config)
    if no_verify:
        error_console.print(
            "[bold red]warning:[/bold red] --no-verify: the output is NOT checked against the input graph"
        )
    with OutputPlan([model, data, calibration, data_config]) as plan:
        staged = plan.file(output, "--output", model=True)
        staged_json = plan.file(json_path, "--json") if json_path else None
        if target is None:
            with console.status(f"optimizing {model} …"):
                report = optimize_model(model, staged, options)
        else:
            report = _optimize_measured(
                model, staged, options, target, batch, threads, provider, lut, tune_budget, device
            )
        report = _finish(plan, report, staged_json)
    _render_optimize(report)
    _announce_json(json_path)


def _optimize_measured(
    model: Path,
    output: Path,
    options: object,
    target: str,
    batch: int,
    threads: int | None,
    provider: str,
    lut: Path | None,
    budget: float,
    device: str,
) -> OptimizeReport:
    from sparsecut.passes import OptimizeOptions
    from sparsecut.passes.measured import optimize_measured
    from sparsecut.targets.tuning import tuning_for

    assert isinstance(options, OptimizeOptions)
    with _progress() as bar:
        task = bar.add_task("timing layers", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        tuning = tuning_for(target, batch=batch, threads=threads or None, provider=provider, device=device,
                            table=lut, budget=budget, progress=progress)  # fmt: skip
        return optimize_measured(model, output, options, tuning)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX file to analyse.")],
    align: Annotated[int, typer.Option(min=1, help="Channel alignment `optimize` would use.")] = 8,
    json_path: JsonOption = None,
) -> None:
    """Dead channels per coupled group and MACs, without changing anything."""
    from sparsecut.passes import inspect_model

    _require(model)
    with OutputPlan([model]) as plan:
        staged_json = plan.file(json_path, "--json") if json_path else None
        with console.status(f"analysing {model} …"):
            report = inspect_model(model, align)
        report = _finish(plan, report, staged_json)
    _render_optimize(report, inspecting=True)
    _announce_json(json_path)


def _render_optimize(report: object, inspecting: bool = False) -> None:
    """`inspecting` (or --verbose) shows the 2:4 table in full; otherwise it is shown only when some weight is
    2:4 (a table of "no" says nothing the summary line does not)."""
    from sparsecut.report import OptimizeReport

    assert isinstance(report, OptimizeReport)
    full = inspecting or logging.getLogger().isEnabledFor(logging.INFO)
    for step in report.passes:
        console.print(f"[bold]{step.name}[/bold]: {step.summary} ({step.seconds:.2f} s)")
        if step.groups:
            table = Table(title_justify="left")
            for column in ("group", "channels", "dead", "kept dead: why"):
                table.add_column(column)
            for group in step.groups:
                why = "; ".join(f"{n}× {reason}" for reason, n in group.kept_dead.items()) or "-"
                table.add_row(group.location, f"{group.channels_before} → {group.channels_after}", str(group.dead), why)
            console.print(table)
        if step.heads:
            heads = Table(title="attention heads", title_justify="left")
            for column in ("block (output projection)", "heads", "K/V heads", "dead", "removed", "head dim q/k, v",
                           "dead kept: why"):  # fmt: skip
                heads.add_column(column)
            for block in step.heads:
                why = "; ".join(f"{n}× {reason}" for reason, n in block.kept.items()) or "-"
                dims = f"{block.head_dim} → {block.qk_dim_after}, {block.v_dim_after}"
                heads.add_row(block.location, str(block.heads), str(block.kv_heads), str(block.dead),
                              str(block.removable), dims, why)  # fmt: skip
            console.print(heads)
        if step.sparsity and (full or any(layer.is_2to4 for layer in step.sparsity)):
            sparse = Table(title_justify="left")
            for column in ("layer", "weight", "reduction", "2:4", "violating", "note"):
                sparse.add_column(column)
            for layer in step.sparsity[: None if full else 40]:
                notes = [n for n, on in (("padded to ×4", layer.padded), ("< 256 ch", layer.too_small)) if on]
                sparse.add_row(layer.node, layer.weight, str(layer.reduction), "yes" if layer.is_2to4 else "no",
                               f"{100 * layer.violating_share:.0f} %", "; ".join(notes))  # fmt: skip
            console.print(sparse)
        if step.barriers:
            stops = ", ".join(f"{op} ×{n}" for op, n in sorted(step.barriers.items()))
            console.print(f"  channels stopped at ops without a rule: {stops}")
        if step.declined:
            console.print("  channels stopped where a rule declined:")
            for why, n in sorted(step.declined.items()):
                console.print(f"    {escape(why)} ×{n}")
        for failure in step.rule_errors:
            console.print(
                f"  [yellow]warning:[/yellow] a channel rule gave up, its channels are kept: {escape(failure)}"
            )
    totals = Table(title="totals (per sample)", title_justify="left")
    for column in ("", "before", "after", "after/before"):
        totals.add_column(column)
    for name, b, a in (
        ("params", report.before.params, report.after.params),
        ("MACs", report.before.macs, report.after.macs),
    ):
        totals.add_row(name, f"{b:,}", f"{a:,}", f"{a / b:.3f}" if b else "-")
    console.print(totals)
    for note in report.notes:
        console.print(f"note: {escape(note)}")
    restores = [r for p in report.passes for r in p.two_four]
    reordered = [w for r in restores if r.restored and r.reordered for w in r.weights]
    if reordered:
        console.print(
            f"2:4 kept by reordering channels (outputs unchanged) for {len(reordered)} weight(s): "
            f"{', '.join(reordered[:5])}{' …' if len(reordered) > 5 else ''}"
        )
    if report.lost_two_four:
        reasons = {w: r.reason for r in restores if not r.restored for w in r.weights}
        console.print(
            f"[yellow]{len(report.lost_two_four)} weight(s) were 2:4 in the input and lost it to channel removal:[/yellow]"
        )
        for weight in report.lost_two_four[:10]:
            console.print(
                f"  [yellow]{weight}: {reasons.get(weight) or 'its channels could not be reordered'}[/yellow]"
            )
    if report.enforced:
        pruned = [e for e in report.enforced if e.pruned]
        console.print(
            f"[bold red]enforce-2to4[/bold red]: pruned {len(pruned)} of {len(report.enforced)} weights to 2:4: the "
            "output does NOT compute what the input computes (the lossless steps before it were verified)"
        )
        if pruned:
            table = Table(title="enforce-2to4: share of |w| kept", title_justify="left")
            for column in ("weight", "kept", "without reorder", "channel reorder"):
                table.add_column(column)
            for enforced in pruned:
                table.add_row(
                    enforced.weight,
                    f"{100 * enforced.magnitude_kept:.2f} %",
                    f"{100 * enforced.magnitude_kept_without_permutation:.2f} %",
                    enforced.permutation,
                )
            console.print(table)
        if not pruned:
            console.print("  [yellow]no layer was eligible; nothing pruned[/yellow]")
    if report.precision is not None:
        _render_precision(report.precision)
    if report.decision is not None:
        _render_decision(report.decision)
    if report.output is None:
        console.print("inspect only: nothing written")
    elif report.verified:
        worst = max(report.checks, key=lambda c: c.max_rel_error)
        console.print(
            f"[green]verified[/green] on {len(report.checks)} input set(s): max abs {worst.max_abs_error:.2e}, "
            f"rel {worst.max_rel_error:.2e} (rtol {report.rtol:g}, atol {report.atol:g}) → {report.output}"
        )
    else:
        console.print(f"[bold red]NOT verified[/bold red] (--no-verify) → {report.output}")


def _render_precision(p: object, layers_shown: int = 10) -> None:
    """The drift a precision conversion caused: per output, and the quantized layers that lost most."""
    from sparsecut.report import LayerDrift, OutputDrift, PrecisionReport

    assert isinstance(p, PrecisionReport)
    how = f", {p.format}, {p.method} calibration" if p.format else ""
    console.print(
        f"[bold]{p.precision}[/bold]{how} on {escape(p.calibration)}: drift vs fp32 on {p.held_out} held-out "
        "sample(s) (not gated: precision changes the numbers by design)"
    )
    outputs = Table(title_justify="left")
    for column in OutputDrift.COLUMNS:
        outputs.add_column(column, justify="left" if column == "output" else "right")
    for o in p.outputs:
        outputs.add_row(*o.cells())
    console.print(outputs)
    if p.layers:
        shown = p.layers[:layers_shown]
        layers = Table(title=f"quantized layers that lose most ({len(shown)} of {len(p.layers)}; all in --json)",
                       title_justify="left")  # fmt: skip
        for column in LayerDrift.COLUMNS:
            layers.add_column(column, justify="right" if "dB" in column else "left")
        for layer in shown:
            layers.add_row(*layer.cells())
        console.print(layers)
    if p.kept_fp32:
        fallback = f" ({len(p.fallback)} put back by --max-drift)" if p.fallback else ""
        shown_kept = ", ".join(p.kept_fp32[:8]) + (" …" if len(p.kept_fp32) > 8 else "")
        console.print(f"kept in fp32: {len(p.kept_fp32)} layer(s){fallback}: {shown_kept}")
    if p.bound:
        console.print(f"--max-drift: {p.bound}")
    for note in p.notes:
        console.print(f"  [yellow]{escape(note)}[/yellow]")


def _render_decision(decision: object) -> None:
    from sparsecut.report import MeasuredDecision

    assert isinstance(decision, MeasuredDecision)
    context = escape(", ".join(f"{k} {v}" for k, v in decision.context.items()))
    if decision.groups:
        table = Table(title=f"channel counts measured on {context}", title_justify="left")
        for column in ("space", "live", "chosen", "original", "predicted ms of the candidates (count: ms)"):
            table.add_column(
                column, justify="left" if column in ("space", "predicted ms of the candidates (count: ms)") else "right"
            )
        for g in decision.groups:
            best = sorted(g.predicted_ms.items(), key=lambda item: item[1])[:4]
            table.add_row(g.location, str(g.live), str(g.chosen), str(g.original),
                          "  ".join(f"{c}: {ms:.3f}" for c, ms in best))  # fmt: skip
        console.print(table)
    reference = decision.variants[0].name
    end = Table(title=f"end to end, interleaved: {reference} and the lean candidates", title_justify="left")
    for column in ("variant", "p50 ms", f"speedup vs {reference.split(' (')[0]} (95 % interval)"):
        end.add_column(column, justify="left" if column == "variant" else "right")
    for v in decision.variants:
        end.add_row(
            v.name + (" (written)" if v.name == decision.written else ""), f"{v.p50_ms:.3f}", v.speedup.describe()
        )
    console.print(end)
    if decision.formats:
        formats = Table(title="the lean graph in each precision, interleaved", title_justify="left")
        for column in ("precision", "p50 ms", "speedup vs fp32 (95 % interval)", "accuracy (held out)"):
            formats.add_column(column, justify="right" if column == "p50 ms" else "left")
        for v in decision.formats:
            name = v.name + (" (written)" if v.name == decision.precision_written else "")
            ratio = "reference" if v.name == "fp32" else v.speedup.describe()
            formats.add_row(name, f"{v.p50_ms:.3f}", ratio, escape(v.drift))
        for name, why in decision.refused.items():
            formats.add_row(name, "-", "refused by --max-drift, not timed", escape(why))
        console.print(formats)
    budget = "; the budget ran out (undecided spaces kept the fixed alignment)" if decision.budget_exhausted else ""
    console.print(
        f"latency table {decision.table or '(memory)'}: {decision.table_hits} hits, {decision.table_misses} "
        f"measured in {decision.measuring_seconds:.1f} s{budget}"
    )
    style = "green" if decision.pays and decision.int8_pays is not False else "bold yellow"
    console.print(f"[{style}]{decision.verdict}[/{style}]")


@app.command()
@_int8_options
def build(
    model: Annotated[Path, typer.Argument(help="ONNX file to build.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Engine (.plan) or optimized model to write.")],
    target: TargetOption = "onnxruntime",
    precision: Annotated[
        str, typer.Option(callback=_one_of("fp32", "fp16", "int8", "best"), help="fp32, fp16, int8 or best.")
    ] = "fp32",
    sparsity: Annotated[bool, typer.Option("--sparsity", help="Enable 2:4 sparse kernels (TensorRT).")] = False,
    batch: Annotated[str, typer.Option(help="Batch sizes min,opt,max for the optimization profile.")] = "1,1,1",
    workspace: Annotated[int | None, typer.Option(min=1, help="TensorRT workspace limit, MiB.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache file (read and updated).")] = None,
    provider: ProviderOption = "cpu",
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    int8_format: Int8FormatOption = "",
    surgery: Annotated[str | None, typer.Option(help="MODULE:FUNCTION on a gs.Graph, applied before build.")] = None,
    measure: Annotated[
        bool,
        typer.Option("--measure/--no-measure", help="Remove dead channels left in the graph first, counts measured."),
    ] = True,
    lut: Annotated[Path | None, typer.Option(help="Latency table file (default: in the user cache folder).")] = None,
    tune_budget: Annotated[
        float, typer.Option(callback=_positive, help="Seconds of layer measurements at most.")
    ] = 30.0,
    json_path: JsonOption = None,
    int8: Int8Settings | None = None,
) -> None:
    """Build an engine for a target (onnxruntime on CPU by default, TensorRT on NVIDIA GPUs). Dead channels still
    in the graph are removed first, with channel counts measured on the target (`--no-measure`: built as given)."""
    from sparsecut.passes.precision import PrecisionOptions
    from sparsecut.targets import BuildOptions, get_target
    from sparsecut.workflow import build_for_target, side_file

    assert int8 is not None
    calibrating, keep, bound, data_config = int8
    calibration = calibrating.source
    if int8_format and precision != "int8":
        raise UsageError("--int8-format: only used with --precision int8")
    if precision == "best" and (calibration is not None or keep or bound is not None or data_config is not None):
        raise UsageError(
            "--precision best: build takes the precision the graph has (TensorRT picks per layer); to quantize, "
            "build with --precision int8 and the calibration options"
        )
    batches = _batch_range(batch)
    _require(model, calibration, data_config)
    with OutputPlan([model, calibration, data_config]) as plan:
        artifact, *beside = get_target(target).build_files(output, BuildOptions(surgery=surgery)).items()
        for path, option in beside:  # planned first: in place before the artifact
            plan.file(path, option, model=path.suffix == ".onnx")
        staged = plan.file(artifact[0], "--output", model=output.suffix == ".onnx")
        # written beside the artifact when they happen: the graph converted to the precision, the lean graph (named
        # by side_file, never an input)
        sides = {}
        if precision in ("fp16", "int8"):
            converted_file = side_file(output, precision, [model, calibration])
            sides[precision] = plan.file(converted_file, "--precision", model=True, optional=True)
        if measure:
            lean_file = side_file(output, "lean", [model, calibration])
            sides["lean"] = plan.file(lean_file, "--measure", model=True, optional=True)
        staged_cache = None
        if timing_cache is not None:  # read and updated: the staged copy starts from the current one
            staged_cache = plan.file(timing_cache, "--timing-cache", optional=True)
            if timing_cache.is_file():
                shutil.copyfile(timing_cache, staged_cache)
        staged_json = plan.file(json_path, "--json") if json_path else None
        options = BuildOptions(
            precision=precision,
            sparsity=sparsity,
            batch=batches,
            workspace_mb=workspace,
            provider=provider,
            device=device,
            hint=hint,
            int8_format=int8_format,
            surgery=surgery,
            timing_cache=staged_cache,
        )
        tuning = None
        if measure:
            from sparsecut.targets.tuning import tuning_for

            tuning = tuning_for(target, batch=batches[1], provider=provider, device=device, table=lut,
                                budget=tune_budget, build=BuildOptions(sparsity=sparsity, device=device))  # fmt: skip
        with console.status(f"building {model} for {target} …"):
            converting = PrecisionOptions(calibration=calibrating, keep_fp32=keep, max_drift=bound)
            report, converted = build_for_target(model, staged, target, options, converting, tuning, sides)
        report = _finish(plan, report, staged_json)
    if converted is not None:
        console.print(f"the graph was converted to {converted.precision} first:")
        _render_precision(converted)
    table = Table(title=f"build: {report.source} → {report.artifact}", show_header=False, title_justify="left")
    for name, value in (("target", report.target), ("precision", report.precision), ("sparsity", str(report.sparsity)),
                        ("build time", f"{report.seconds:.1f} s"), *(("note", n) for n in report.notes),
                        ("sparse layers", ", ".join(report.sparse_layers) or "-")):  # fmt: skip
        table.add_row(name, value)
    console.print(table)
    _announce_json(json_path)


def _batch_range(text: str) -> tuple[int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise TargetError(f"bad --batch {text!r}: expected MIN,OPT,MAX like 1,8,32") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise TargetError(f"bad --batch {text!r}: expected 1 ≤ MIN ≤ OPT ≤ MAX")
    return values[0], values[1], values[2]


@app.command()
def profile(
    model: Annotated[Path, typer.Argument(help="ONNX file (onnxruntime) or engine (tensorrt) to time.")],
    target: TargetOption = "onnxruntime",
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up iterations.")] = 10,
    iterations: Annotated[int, typer.Option(min=1, help="Timed iterations.")] = 100,
    duration: Annotated[
        float | None, typer.Option(callback=_positive, help="Time for this many seconds instead.")
    ] = None,
    threads: ThreadsOption = None,
    provider: ProviderOption = "cpu",
    per_layer: Annotated[bool, typer.Option("--per-layer/--no-per-layer", help="Per-layer time vs MACs.")] = True,
    top: Annotated[int, typer.Option(min=1, help="Layers shown in the per-layer table.")] = 15,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="TensorRT: time a captured CUDA graph.")] = False,
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    baseline: Annotated[
        Path | None, typer.Option(help="The same model before pruning: per layer before → after, and why.")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Measure latency (p50/p90/p99, throughput) and per-layer time beside MACs. With --baseline, both models are
    profiled and their layers paired by node name: time and MACs before → after, and why a layer's time fell much
    less than its MACs."""
    from sparsecut.targets import ProfileOptions, get_target

    _require(model, baseline)
    if baseline is not None and not per_layer:
        raise UsageError("--baseline: the view before → after is per layer; drop --no-per-layer")
    backend = get_target(target)
    options = ProfileOptions(
        batch=batch,
        warmup=warmup,
        iterations=iterations,
        duration=duration,
        threads=threads or None,
        per_layer=per_layer,
        provider=provider,
        cuda_graph=cuda_graph,
        device=device,
        hint=hint,
    )
    with OutputPlan([model, baseline]) as plan:
        staged_json = plan.file(json_path, "--json") if json_path else None
        if baseline is None:
            with console.status(f"timing {model} on {target} …"):
                report = backend.profile(backend.load(model), options)
            report = _finish(plan, report, staged_json)
        else:
            from sparsecut.targets.layer_diff import diff_layers

            with console.status(f"timing {baseline} and {model} on {target}, per layer …"):
                before = backend.profile(backend.load(baseline), options)
                after = backend.profile(backend.load(model), options)
            block = backend.channel_block(after.precision)
            diff = _finish(plan, diff_layers(before, after, baseline, model, block), staged_json)
    if baseline is None:
        _render_latency(report, top)
    else:
        _render_latency(after, top)
        _render_layer_diff(diff, top)
    _announce_json(json_path)


def _render_layer_diff(report: object, top: int) -> None:
    from sparsecut.report import LayerDiffReport

    assert isinstance(report, LayerDiffReport)
    table = Table(
        title=f"per layer, {Path(report.before).name} → {Path(report.after).name} on {report.device} "
        f"({report.target}; top {top} by time before)",
        title_justify="left",
    )
    for column in ("layer", "ms before", "ms after", "MACs ratio", "time ratio", "why time fell less than MACs"):
        table.add_column(column, justify="left" if column in ("layer", "why time fell less than MACs") else "right")
    shown = sorted(report.layers[:top] + [d for d in report.layers[top:] if d.flags], key=lambda d: -d.ms_before)
    for d in shown:
        name = f"{d.module} ({d.node})" if d.module else d.node
        style = "bold yellow" if d.flags else ""
        table.add_row(name, f"{d.ms_before:.3f}", f"{d.ms_after:.3f}", f"{d.mac_ratio:.2f}",
                      f"[{style}]{d.time_ratio:.2f}[/{style}]" if style else f"{d.time_ratio:.2f}",
                      "; ".join(d.flags) or "-")  # fmt: skip
    console.print(table)
    flagged = sum(1 for d in report.layers if d.flags)
    console.print(
        f"{report.paired} layers paired; {flagged} fell in time much less than in MACs. Per-layer sums "
        f"{report.layers_before_ms:.3f} → {report.layers_after_ms:.3f} ms, end to end p50 {report.p50_before_ms:.3f} "
        f"→ {report.p50_after_ms:.3f} ms (timed one after the other: `compare` gives the interval)"
    )


def _render_latency(report: object, top: int) -> None:
    from sparsecut.report import LatencyReport

    assert isinstance(report, LatencyReport)
    table = Table(
        title=f"{report.model} on {report.device} ({report.target}, batch {report.batch})", title_justify="left"
    )
    for column in ("min", "p50", "p90", "p99", "mean", "max", "throughput", "iterations"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{v:.3f} ms" for v in (report.min_ms, report.p50_ms, report.p90_ms, report.p99_ms,
                   report.mean_ms, report.max_ms)), f"{report.throughput:.1f}/s", str(report.iterations))  # fmt: skip
    console.print(table)
    if report.layers:
        layers = Table(title=f"per layer (top {top} by time): where MACs and time disagree", title_justify="left")
        for column in ("layer", "op", "ms", "time %", "MACs %", "GMAC/s"):
            layers.add_column(column, justify="left" if column in ("layer", "op") else "right")
        for layer in report.layers[:top]:
            layers.add_row(f"{layer.module} ({layer.name})" if layer.module else layer.name, layer.op_type, f"{layer.ms:.3f}", f"{layer.time_pct:.1f}",
                           f"{layer.macs_pct:.1f}", f"{layer.gmacs_per_s:.1f}" if layer.macs else "-")  # fmt: skip
        console.print(layers)


@app.command()
def compare(
    models: Annotated[list[Path], typer.Argument(help="ONNX files (or built artifacts) to compare, two or more.")],
    baseline: Annotated[
        Path | None, typer.Option(help="The model every ratio is taken against (default: the first).")
    ] = None,
    target: TargetsOption = "onnxruntime",
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    iterations: Annotated[int, typer.Option(min=1, help="Timed iterations per model, spread over the rounds.")] = 200,
    rounds: Annotated[int, typer.Option(min=3, help="Round-robin rounds (at least 3: the interval needs them).")] = 20,
    budget: BudgetOption = None,
    threads: ThreadsOption = None,
    precision: Annotated[
        str,
        typer.Option(callback=_one_of("fp32", "fp16", "int8", "best"), help="TensorRT builds: fp32, fp16, int8, best."),
    ] = "fp32",
    sparsity: Annotated[bool, typer.Option("--sparsity", help="TensorRT builds: 2:4 sparse kernels.")] = False,
    allow_different_inputs: Annotated[
        bool,
        typer.Option("--allow-different-inputs", help="Time models whose inputs differ (their ratio means little)."),
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="PNG plot of MACs vs latency.")] = None,
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    json_path: JsonOption = None,
) -> None:
    """Measure variants interleaved; params, MACs, latency and speedup vs a baseline, with its interval. Several
    targets (`--target onnxruntime,openvino`): every variant on every backend in the same rounds."""
    from sparsecut.targets import BuildOptions, ProfileOptions, compare_models

    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the plot is a PNG file; name it *.png")
    _require(*models)
    options = ProfileOptions(batch=batch, iterations=iterations, threads=threads or None, per_layer=False,
                             device=device, hint=hint)  # fmt: skip
    with OutputPlan(models) as plan:
        staged_plot = plan.file(plot, "--plot") if plot else None
        staged_json = plan.file(json_path, "--json") if json_path else None
        with _progress() as bar:
            task = bar.add_task("timing, interleaved", total=rounds)
            report = compare_models(
                models, target=target, options=options,
                build=BuildOptions(precision=precision, sparsity=sparsity, device=device, hint=hint),
                rounds=rounds, budget=budget, baseline=baseline, allow_different_inputs=allow_different_inputs,
                plot=staged_plot, progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        report = _finish(plan, report, staged_json)
    _render_compare(report)
    _announce_json(json_path)


def _render_compare(report: object) -> None:
    from sparsecut.report import CompareReport

    assert isinstance(report, CompareReport)
    base = report.variants[report.baseline]
    table = Table(
        title=f"compare on {report.device} ({report.target}, {report.rounds} interleaved rounds); ratios vs "
        f"{base.label or Path(base.model).name}",
        title_justify="left",
    )
    targets = report.targets
    several = len(targets) > 1
    columns = ["model", *(["backend"] if several else []), "params", "MACs", "p50 ms", "p90 ms",
               "speedup (95 % interval)", *([f"vs {targets[0]}"] if several else []), "MACs ratio"]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "backend") else "right")
    per_backend = len(report.variants) // len(targets)
    for i, v in enumerate(report.variants):
        name = f"{v.label} ({Path(v.model).name})" if v.label else Path(v.model).name
        ratio = "baseline" if i % per_backend == report.baseline else v.speedup.describe()
        across = [] if not several else ["-" if v.target == targets[0] or v.backend_speedup is None
                                         else v.backend_speedup.describe()]  # fmt: skip
        table.add_row(name, *([v.target] if several else []), f"{v.params:,}", f"{v.macs:,}",
                      f"{v.latency.p50_ms:.3f}", f"{v.latency.p90_ms:.3f}", ratio, *across,
                      f"{v.macs_ratio:.3f}")  # fmt: skip
    console.print(table)
    if report.plot:
        console.print(f"plot → {report.plot}")


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    )


@app.command()
@_int8_options
def run(
    checkpoint: Annotated[Path, typer.Argument(help="Pruned checkpoint.")],
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="Folder for every artifact and the report.")],
    arch: Annotated[str | None, typer.Option(help="Reference architecture.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="MODULE:FACTORY returning the nn.Module.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="Input shape, e.g. 1,3,224,224.")] = None,
    target: TargetsOption = "onnxruntime",
    precision: Annotated[
        str, typer.Option(callback=_one_of("fp32", "fp16", "int8"), help="fp32, fp16 or int8.")
    ] = "fp32",
    sparsity: Annotated[bool, typer.Option("--sparsity", help="Enable 2:4 sparse kernels.")] = False,
    align: Annotated[int, typer.Option(min=1, help="Keep channel counts at multiples of N (1: off).")] = 8,
    iterations: Annotated[int, typer.Option(min=1, help="Timed iterations per variant, spread over the rounds.")] = 300,
    rounds: Annotated[int, typer.Option(min=3, help="Interleaved rounds (at least 3: the interval needs them).")] = 30,
    budget: BudgetOption = None,
    threads: ThreadsOption = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow unpickling (runs code from the file).")] = False,
    measure: Annotated[
        bool, typer.Option("--measure/--no-measure", help="Choose channel counts by latency on the target.")
    ] = True,
    lut: Annotated[Path | None, typer.Option(help="Latency table file (default: in the user cache folder).")] = None,
    tune_budget: Annotated[
        float, typer.Option(callback=_positive, help="Seconds of layer measurements at most.")
    ] = 30.0,
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    int8: Int8Settings | None = None,
) -> None:
    """Export → optimize → build → time exported, dense baseline and lean interleaved, in one go, one report."""
    from sparsecut.exporter import ExportOptions, parse_input_shape
    from sparsecut.passes import OptimizeOptions
    from sparsecut.targets import ProfileOptions
    from sparsecut.workflow import RunOptions

    assert int8 is not None
    options = RunOptions(
        target=target,
        precision=precision,
        sparsity=sparsity,
        export=ExportOptions(
            input_shape=parse_input_shape(input_shape) if input_shape else None, trust_checkpoint=trust_checkpoint
        ),
        optimize=OptimizeOptions(
            align=align, calibration=int8.calibration, keep_fp32=int8.keep_fp32, max_drift=int8.max_drift
        ),
        profile=ProfileOptions(
            iterations=iterations, warmup=5, threads=threads or None, per_layer=False, device=device, hint=hint
        ),
        rounds=rounds,
        budget=budget,
        measured=measure,
        table=lut,
        tune_budget=tune_budget,
    )
    _require(checkpoint, int8.calibration.source)
    _run(checkpoint, out_dir, "--output", arch, model, options)


def _run(checkpoint: Path, out_dir: Path, option: str, arch: str | None, model: str | None, options: object) -> None:
    from sparsecut.targets import get_target
    from sparsecut.workflow import PRECISION_PLOT, STEPS, RunOptions, run_files, run_workflow, speedup_lines

    assert isinstance(options, RunOptions)
    with OutputPlan([checkpoint]) as plan:
        staged = plan.folder(
            out_dir, option, run_files([get_target(name) for name in options.target.split(",")], options.precision)
        )
        with _progress() as bar:
            task = bar.add_task("starting", total=len(STEPS))
            timing = bar.add_task("timing, interleaved", total=options.rounds, visible=False)

            def step(name: str) -> None:
                bar.update(task, description=name, completed=STEPS.index(name))

            def rounds(done: int, total: int) -> None:
                bar.update(timing, visible=True, completed=done, total=total)

            report = run_workflow(
                checkpoint, staged, arch=arch, model_factory=model, options=options, step=step, progress=rounds,
                publish_as=out_dir,
            )  # fmt: skip
            bar.update(task, description="done", completed=len(STEPS))
        plan.commit()
    _render_export(report.export)
    _render_optimize(report.optimize)
    _render_compare(report.compare)
    for line in speedup_lines(report):
        console.print(line.removeprefix("- ").replace("**", ""))
    grid = f", pruning × precision → {out_dir / PRECISION_PLOT}" if options.precision != "fp32" else ""
    console.print(
        f"report → {out_dir / 'report.json'}, {out_dir / 'report.md'}, plot → {out_dir / 'compare.png'}{grid}"
    )


@app.command()
def view(
    model: Annotated[Path, typer.Argument(help="ONNX file to open in netron.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8080,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL instead of opening it.")] = False,
) -> None:
    """Open a model in netron (until Ctrl-C)."""
    import netron

    from sparsecut.viewer import serve_model

    url = serve_model(model, port, browse=not no_browser)
    console.print(f"netron serves {model} at {url} (Ctrl-C to stop)")
    netron.wait()


# --------------------------------------------------------------------------------------------------- plumbing
R = TypeVar("R", bound=Report)


def _require(*paths: Path | None) -> None:
    """Inputs exist and are files, before anything is planned or written."""
    for path in paths:
        if path is None:
            continue
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir() and path.suffix in (".onnx", ".pt", ".pth", ".pt2", ".safetensors", ".plan"):
            raise InputError(f"{path}: is a directory, not a model file")


def _finish(plan: OutputPlan, report: R, staged_json: Path | None) -> R:
    """The report as it names the files once in place; its JSON staged; then everything moved into place."""
    report = report.map_strings(plan.relocate)
    if staged_json is not None:
        write_json(report, staged_json)
    plan.commit()
    return report


def _announce_json(path: Path | None) -> None:
    if path is not None:
        console.print(f"report → {path}")


VERBOSE_FLAGS = ("--verbose", "-v")
INTERRUPTED = 130


def main(argv: list[str] | None = None, *, restore_sigint: bool = True) -> int:
    """Runs one command; returns the exit code: 0 ok, 2 a bad input or a failure it caused (one line
    `error: <file or option>: <problem>`), 130 Ctrl-C, 1 a bug in sparsecut ("internal error").

    Once a command moves its outputs into place, Ctrl-C is ignored (outputs.py); `restore_sigint` gives the
    caller its handler back afterwards (the console script keeps it ignored until the process exits)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in args)  # accepted anywhere, also after the subcommand
    if verbose:
        args = ["--verbose", *(a for a in args if a not in VERBOSE_FLAGS)]
    _fit_to_output()
    session = _Session()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        code = app(args=args, obj=session, prog_name="sparsecut", standalone_mode=False)
    except UsageError as exc:
        return _fail(_usage_message(exc), verbose)
    except SparsecutError as exc:
        return _fail(str(exc), verbose)
    except KeyboardInterrupt:  # outside the command (typer turns one inside it into exit code 130)
        code = INTERRUPTED
    except OSError as exc:  # a file the library did not expect to fail: name it
        where = exc.filename if exc.filename is not None else "i/o"
        return _fail(f"{where}: {exc.strerror or exc}", verbose)
    except Exception as exc:
        if verbose:
            raise
        error_console.print(
            f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    finally:
        if restore_sigint:
            signal.signal(signal.SIGINT, sigint)
    if code == INTERRUPTED:
        error_console.print("error: interrupted; nothing written", markup=False, highlight=False)
        return INTERRUPTED
    return code if isinstance(code, int) else 0


def _fail(message: str, verbose: bool) -> int:
    if verbose:
        error_console.print_exception()
    error_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return 2


def _usage_message(exc: UsageError) -> str:
    """One line naming the option: `--align: 0 is not in the range x>=1`."""
    text = " ".join(exc.format_message().split())
    if isinstance(exc, NoSuchOption):
        return f"{exc.option_name}: no such option" + (
            f" (did you mean {', '.join(exc.possibilities)}?)" if exc.possibilities else ""
        )
    param = getattr(exc, "param", None)
    if param is not None:
        name = (param.opts or [param.name or "?"])[0]
        name = name if name.startswith("-") else name.upper()
        if isinstance(exc, MissingParameter):
            return f"{name}: missing"
        return f"{name}: {' '.join(exc.message.split())}"
    return text


def _fit_to_output() -> None:
    """Piped into a file or another program, rich would cut tables at 80 columns: give them room instead
    (`COLUMNS` still wins, as rich reads it itself)."""
    for c in (console, error_console):
        if not c.is_terminal and "COLUMNS" not in os.environ:
            c.width = 1000


if __name__ == "__main__":
    sys.exit(main())
