"""Every command-line option that more than one command takes, declared once, with its check and its one
conversion to what the library takes (the int8 group is in int8.py).

Where commands accept different values of one option, the difference is a table here (`PRECISIONS`,
`SEVERAL_TARGETS`), read by the option's callback from the command it is parsing — never a second declaration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from sparsecut.errors import InputError
from sparsecut.opsets import MAX_OPSET, MIN_OPSET
from sparsecut.precision import FP32, KINDS, Precision
from sparsecut.targets.base import BackendOptions

__all__ = [
    "FP32",
    "ONE",
    "PRECISIONS",
    "SEVERAL_TARGETS",
    "AlignOption",
    "AmountOption",
    "ArchOption",
    "AtolOption",
    "BaselineOption",
    "BatchOption",
    "BatchSizes",
    "BudgetOption",
    "CheckpointArgument",
    "ContextOption",
    "DecoderExporterOption",
    "DeviceOption",
    "ExporterPythonOption",
    "HintOption",
    "InputShapeOption",
    "Int8FormatOption",
    "IterationsOption",
    "JsonOption",
    "KeepStackTracesOption",
    "LutOption",
    "MeasureOption",
    "ModelFactoryOption",
    "OpsetOption",
    "OutputOption",
    "PrecisionOption",
    "PromptOption",
    "ProviderOption",
    "RayOption",
    "RecipeOption",
    "RoundsOption",
    "RtolOption",
    "SparsityOption",
    "StepsOption",
    "TargetOption",
    "ThreadsOption",
    "TokenizerOption",
    "TrustCheckpointOption",
    "TuneBudgetOption",
    "backend_options",
    "one_of",
    "positive",
    "token_lengths",
    "tolerance",
]


def positive(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a positive number of seconds")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def tolerance(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value} is not a finite number ≥ 0")
    return value


# ------------------------------------------------------------------------------------------ target and backend
SEVERAL_TARGETS = ("compare", "run")  # commands that time on several backends in the same rounds


def _targets(ctx: typer.Context, value: str | None) -> str | None:
    """One target name, or — where the command times on several backends — a comma-separated list."""
    from sparsecut.targets import TARGETS

    if value is None:
        return None
    several = ctx.info_name in SEVERAL_TARGETS
    names = [name.strip() for name in value.split(",") if name.strip()] if several else [value]
    for name in names:
        one_of(*TARGETS)(name)
    if not names or len(set(names)) != len(names):
        raise typer.BadParameter(f"{value!r}: name each target once (onnxruntime,openvino)")
    return ",".join(names)


TargetOption = Annotated[
    str | None,
    typer.Option(
        callback=_targets,
        help="onnxruntime, openvino, tensorrt or onnxruntime-genai (compare and run: several, comma-separated).",
    ),
]
DeviceOption = Annotated[
    str, typer.Option(callback=one_of("CPU", "GPU", "NPU", "AUTO"), help="--target openvino: CPU, GPU, NPU or AUTO.")
]
HintOption = Annotated[
    str, typer.Option(callback=one_of("latency", "throughput"), help="--target openvino: performance hint.")
]
ThreadsOption = Annotated[int | None, typer.Option(min=0, help="Intra-op threads (CPU; 0: onnxruntime's default).")]
ProviderOption = Annotated[
    str, typer.Option(callback=one_of("cpu", "cuda", "tensorrt"), help="--target onnxruntime: execution provider.")
]


def token_lengths(text: str, option: str) -> tuple[int, ...]:
    """`128,512` → (128, 512): token counts of --prompt / --context."""
    from typer._click.exceptions import UsageError

    try:
        lengths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"{option} {text}: token counts, comma-separated (128,512)") from None
    if not lengths or min(lengths) < 1:
        raise UsageError(f"{option} {text}: token counts of at least 1")
    return lengths


def backend_options(
    *,
    provider: str = "cpu",
    device: str = "CPU",
    hint: str = "latency",
    workspace: int | None = None,
    timing_cache: Path | None = None,
    cuda_graph: bool = False,
    tokenizer: Path | None = None,
) -> tuple[BackendOptions, ...]:
    """The targets' own settings, from the options that name them (--provider; --device, --hint; --workspace,
    --timing-cache, --cuda-graph; --tokenizer): each target reads only its own."""
    from sparsecut.targets.onnxruntime import OnnxRuntimeOptions
    from sparsecut.targets.onnxruntime_genai import GenaiOptions
    from sparsecut.targets.openvino import OpenVinoOptions
    from sparsecut.targets.tensorrt import TensorRTOptions

    return (
        OnnxRuntimeOptions(provider=provider),
        OpenVinoOptions(device=device, hint=hint),
        TensorRTOptions(workspace_mb=workspace, timing_cache=timing_cache, cuda_graph=cuda_graph),
        GenaiOptions(tokenizer=tokenizer),
    )


SparsityOption = Annotated[bool, typer.Option("--sparsity", help="Enable 2:4 sparse kernels (TensorRT).")]


@dataclasses.dataclass(frozen=True)
class BatchSizes:
    """A batch size, or the range of TensorRT's optimization profile (built for `opt`, timed at `opt`)."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return str(self.opt) if self.min == self.opt == self.max else f"{self.min},{self.opt},{self.max}"

    @property
    def range(self) -> tuple[int, int, int]:
        return self.min, self.opt, self.max


ONE = BatchSizes(1, 1, 1)


def _batch_sizes(text: str | BatchSizes) -> BatchSizes:
    if isinstance(text, BatchSizes):  # the default
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected N, or MIN,OPT,MAX like 1,8,32") from None
    if len(values) == 1:
        if values[0] < 1:
            raise typer.BadParameter("Input should be greater than or equal to 1")  # as for any count option
        values = values * 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise typer.BadParameter(f"{text!r}: expected N ≥ 1, or MIN,OPT,MAX with 1 ≤ MIN ≤ OPT ≤ MAX")
    return BatchSizes(*values)


def _one_batch_unless_built(ctx: typer.Context, value: BatchSizes) -> BatchSizes:
    if ctx.info_name != "build" and value.min != value.max:
        raise typer.BadParameter(f"{value}: give one batch size (a range is build's optimization profile)")
    return value


BatchOption = Annotated[
    BatchSizes,
    typer.Option(
        parser=_batch_sizes,
        callback=_one_batch_unless_built,
        metavar="N",
        help="Batch size (optimize --target: the decisions are measured at it); build: N or MIN,OPT,MAX, the "
        "optimization profile for a dynamic batch axis.",
    ),
]

# ------------------------------------------------------------------------------------------ precision
PRECISIONS = {  # what each command takes (best: the fastest that meets --max-drift, measured on --target)
    "optimize": ("fp32", "fp16", "int8", "int4", "best"),
    "build": ("fp32", "fp16", "int8", "best"),
    "compare": ("fp32", "fp16", "int8", "best"),
    "run": ("fp32", "fp16", "int8", "int4"),
    "demo": ("fp32", "fp16", "int8"),
}


def _parse_precision(text: str | Precision | None) -> Precision | None:
    """`best` is None: the fastest measured on the target (optimize) or what the graph carries (build, compare)."""
    if text is None or isinstance(text, Precision):  # the default
        return text
    if text == "best":
        return None
    kind = text.split(" ", 1)[0]
    if kind not in KINDS or (kind != "int4" and text != kind):  # (int4 takes a block size and a method: int4 b32 hqq)
        raise typer.BadParameter(f"{text!r} is not a precision ({', '.join((*KINDS, 'best'))})")
    try:
        return Precision.parse(text)
    except InputError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--precision ")) from None


def _precision(ctx: typer.Context, value: Precision | None) -> Precision | None:
    one_of(*PRECISIONS[ctx.info_name or ""])("best" if value is None else value.kind)
    return value


PrecisionOption = Annotated[
    Precision | None,
    typer.Option(
        parser=_parse_precision,
        callback=_precision,
        metavar="PRECISION",
        help="fp32, fp16, int8, or best where the command takes it (optimize --target: the fastest within "
        "--max-drift; build, compare: what the graph has).",
    ),
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
        "optimize --target, each of the target's formats is timed and the fastest written; run with measured counts: "
        "the fastest there).",
    ),
]

# ------------------------------------------------------------------------------------------ channels and tuning
AlignOption = Annotated[
    int, typer.Option(min=1, help="Keep channel counts at multiples of N (1: off); inspect: as optimize would.")
]
MeasureOption = Annotated[
    bool,
    typer.Option(
        "--measure/--no-measure",
        help="Remove dead channels with counts chosen by latency measured on the target (build: those still in "
        "the graph; --no-measure: built as given).",
    ),
]
LutOption = Annotated[Path | None, typer.Option(help="Latency table file (default: in the user cache folder).")]
TuneBudgetOption = Annotated[float, typer.Option(callback=positive, help="Seconds of layer measurements at most.")]

# ------------------------------------------------------------------------------------------ timing
BaselineOption = Annotated[
    Path | None,
    typer.Option(help="The dense model: compare takes every ratio against it (default: the first model); profile "
                 "pairs its layers with the model's, before → after, and says why a layer's time fell less."),
]  # fmt: skip
IterationsOption = Annotated[
    int, typer.Option(min=1, help="Timed iterations (compare and run: per variant, spread over the rounds).")
]
RoundsOption = Annotated[
    int, typer.Option(min=3, help="Interleaved round-robin rounds (at least 3: the interval needs them).")
]
BudgetOption = Annotated[
    float | None, typer.Option(callback=positive, help="Seconds of timing (more rounds, tighter interval).")
]

# ------------------------------------------------------------------------------------------ export and checks
CheckpointArgument = Annotated[
    Path,
    typer.Argument(
        help="Pruned checkpoint: .pt/.pth state_dict, .safetensors, or torch.export .pt2; or a Hugging Face decoder "
        "folder (save_pretrained, safetensors)."
    ),
]
PromptOption = Annotated[
    str, typer.Option(help="KV-cache decoders: prefill lengths to time (tokens, comma-separated).")
]
ContextOption = Annotated[
    str, typer.Option(help="KV-cache decoders: cache lengths the decode steps run against (comma-separated).")
]
StepsOption = Annotated[int, typer.Option(min=1, help="KV-cache decoders: decode steps timed per context and round.")]
TokenizerOption = Annotated[
    Path | None,
    typer.Option(
        "--tokenizer",
        help="--target onnxruntime-genai: the folder with genai_config.json and the tokenizer (default: the model's).",
    ),
]
DecoderExporterOption = Annotated[
    str,
    typer.Option(
        "--exporter", help="For a Hugging Face decoder folder: genai (onnxruntime-genai's model builder) or optimum."
    ),
]
ExporterPythonOption = Annotated[
    str | None,
    typer.Option(
        "--python", help="For a Hugging Face decoder folder: the Python that has the exporter (default: this one)."
    ),
]
ArchOption = Annotated[str | None, typer.Option(help="Reference architecture (see `sparsecut models`).")]
RecipeOption = Annotated[str, typer.Option(help="Pruning recipe (see `sparsecut models`).")]
AmountOption = Annotated[
    float, typer.Option(min=0.0, max=0.95, help="Share of channels pruned per group (ignored by 2:4).")
]
ModelFactoryOption = Annotated[str | None, typer.Option("--model", help="MODULE:FACTORY returning the nn.Module.")]
InputShapeOption = Annotated[str | None, typer.Option(help="Input shape, e.g. 1,3,224,224.")]
OpsetOption = Annotated[
    int, typer.Option(min=MIN_OPSET, max=MAX_OPSET, help=f"ONNX opset ({MIN_OPSET} to {MAX_OPSET}).")
]
TrustCheckpointOption = Annotated[
    bool, typer.Option(help="Allow unpickling (runs code from the file): only for checkpoints you trust.")
]
KeepStackTracesOption = Annotated[
    bool, typer.Option("--keep-stack-traces", help="Keep the exporter's per-node Python stack traces.")
]
RtolOption = Annotated[
    float,
    typer.Option(callback=tolerance, help="Relative tolerance of the check (export: against PyTorch; optimize: "
                 "the equivalence gate against the input graph)."),
]  # fmt: skip
AtolOption = Annotated[
    float,
    typer.Option(callback=tolerance, help="Absolute tolerance of the check (export: against PyTorch; optimize: "
                 "the equivalence gate against the input graph)."),
]  # fmt: skip
RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="A Ray cluster's ADDRESS, or auto (sweep: also local, a throwaway one-machine Ray; optimize --target: "
        "measured on its --ray-device node).",
    ),
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")]
OutputOption = Annotated[
    Path, typer.Option("--output", "-o", help="File to write (run, sweep: the folder for every file and the report).")
]
