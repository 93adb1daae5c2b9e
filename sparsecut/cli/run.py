"""`sparsecut run` and `sparsecut demo`: checkpoint → export → dense baseline and lean → build → the variants timed
interleaved, every file and one report in one folder; the demo does it on a reference model it prunes itself."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import app, console, progress_bar, require_inputs
from sparsecut.cli.int8 import Int8Settings, int8_options
from sparsecut.cli.options import (
    FP32,
    AlignOption,
    AmountOption,
    ArchOption,
    BudgetOption,
    CheckpointArgument,
    ContextOption,
    DecoderExporterOption,
    DeviceOption,
    ExporterPythonOption,
    HintOption,
    InputShapeOption,
    Int8FormatOption,
    IterationsOption,
    LutOption,
    MeasureOption,
    ModelFactoryOption,
    OutputOption,
    PrecisionOption,
    PromptOption,
    RecipeOption,
    RoundsOption,
    SparsityOption,
    StepsOption,
    TargetOption,
    ThreadsOption,
    TrustCheckpointOption,
    TuneBudgetOption,
    backend_options,
    token_lengths,
)
from sparsecut.cli.render import render_run
from sparsecut.outputs import OutputPlan

if TYPE_CHECKING:
    from sparsecut.precision import Precision
    from sparsecut.workflow import RunOptions  # the workflow brings torch: imported when a command runs


@app.command()
@int8_options
def run(
    checkpoint: CheckpointArgument,
    out_dir: OutputOption,
    arch: ArchOption = None,
    model: ModelFactoryOption = None,
    input_shape: InputShapeOption = None,
    target: TargetOption = "onnxruntime",
    precision: PrecisionOption = FP32,
    int8_format: Int8FormatOption = "",
    sparsity: SparsityOption = False,
    align: AlignOption = 8,
    iterations: IterationsOption = 300,
    rounds: RoundsOption = 30,
    budget: BudgetOption = None,
    threads: ThreadsOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    measure: MeasureOption = True,
    lut: LutOption = None,
    tune_budget: TuneBudgetOption = 30.0,
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    exporter: DecoderExporterOption = "genai",
    python: ExporterPythonOption = None,
    prompt: PromptOption = "128,512",
    context: ContextOption = "128,1024",
    steps: StepsOption = 8,
    int8: Int8Settings | None = None,
) -> None:
    """Export → optimize → build → time exported, dense baseline and lean interleaved, in one go, one report. A
    Hugging Face decoder folder: export (--exporter, --python) → lean (gated by generation) → exported vs lean timed
    as generators run them (prefill, decode), on onnxruntime or onnxruntime-genai."""
    from sparsecut.exporter import ExportOptions, parse_input_shape
    from sparsecut.exporter.decoders import is_decoder_folder
    from sparsecut.passes import OptimizeOptions
    from sparsecut.targets import ProfileOptions
    from sparsecut.workflow import RunOptions

    assert int8 is not None and target is not None
    int4 = precision if precision is not None and precision.kind == "int4" else None
    if is_decoder_folder(checkpoint):
        if precision is not None and precision.kind not in ("fp32", "int4"):
            raise UsageError(f"--precision {precision}: a decoder folder runs in fp32, with int4 beside it (the 2×2)")
        _run_decoder(checkpoint, out_dir, target, exporter, python, rounds, threads, prompt, context, steps, int4,
                     align)  # fmt: skip
        return
    if int4 is not None:
        raise UsageError("--precision int4: weight-only int4 is for decoders (a Hugging Face folder)")
    if int8_format and (precision is None or precision.kind != "int8"):
        raise UsageError("--int8-format: only used with --precision int8")
    if int8_format and precision is not None:
        precision = precision.in_format(int8_format)
    options = RunOptions(
        target=target,
        sparsity=sparsity,
        export=ExportOptions(
            input_shape=parse_input_shape(input_shape) if input_shape else None, trust_checkpoint=trust_checkpoint
        ),
        optimize=OptimizeOptions(align=align, precision=int8.request(precision)),
        profile=ProfileOptions(
            iterations=iterations,
            warmup=5,
            threads=threads or None,
            per_layer=False,
            backends=backend_options(device=device, hint=hint),
        ),
        rounds=rounds,
        budget=budget,
        measured=measure,
        table=lut,
        tune_budget=tune_budget,
    )
    require_inputs(checkpoint, int8.calibration.source)
    _run(checkpoint, out_dir, "--output", arch, model, options)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the demo's files.")] = Path("sparsecut-demo"),
    arch: ArchOption = "resnet18",
    recipe: RecipeOption = "l1-filter",
    amount: AmountOption = 0.5,
    budget: BudgetOption = None,
    precision: PrecisionOption = FP32,
) -> None:
    """The main job end to end on a reference model: prune, export, remove dead channels, measure like for like."""
    from sparsecut.models import make_pruned_model, save_state_dict
    from sparsecut.passes import OptimizeOptions
    from sparsecut.passes.precision import PrecisionRequest
    from sparsecut.workflow import RunOptions

    assert arch is not None
    with tempfile.TemporaryDirectory(prefix="sparsecut-demo-") as tmp:
        checkpoint = Path(tmp) / f"{arch}-{recipe}.pt"
        with console.status(f"pruning {arch} with {recipe} …"):
            save_state_dict(make_pruned_model(arch, recipe, amount), checkpoint)
        console.print(f"pruned {arch} with {recipe} (amount {amount}) → timing exported, dense baseline and lean")
        asked = OptimizeOptions(precision=PrecisionRequest(precision))
        _run(checkpoint, out_dir, "--out-dir", arch, None, RunOptions(budget=budget, optimize=asked))


def _run(
    checkpoint: Path, out_dir: Path, option: str, arch: str | None, model: str | None, options: RunOptions
) -> None:
    from sparsecut.targets import get_target
    from sparsecut.workflow import STEPS, run_files, run_workflow

    with OutputPlan([checkpoint]) as plan:
        staged = plan.folder(
            out_dir, option, run_files([get_target(name) for name in options.target.split(",")], options.precision)
        )
        with progress_bar() as bar:
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
    render_run(report, out_dir)


def _run_decoder(
    folder: Path,
    out_dir: Path,
    target: str,
    exporter: str,
    python: str | None,
    rounds: int,
    threads: int | None,
    prompt: str,
    context: str,
    steps: int,
    int4: Precision | None,
    align: int,
) -> None:
    from sparsecut.cli.render import render_decoder_compare, render_export, render_optimize, render_precision
    from sparsecut.decoder_run import DECODER_RUN_FILES, DECODER_STEPS, run_decoder
    from sparsecut.exporter.decoders import DecoderExportOptions
    from sparsecut.targets.decoding import DecodeOptions

    if target not in ("onnxruntime", "onnxruntime-genai"):
        raise UsageError(f"--target {target}: a decoder folder runs on onnxruntime or onnxruntime-genai")
    decode = DecodeOptions(prompts=token_lengths(prompt, "--prompt"), contexts=token_lengths(context, "--context"),
                           steps=steps, rounds=rounds, threads=threads or None)  # fmt: skip
    with OutputPlan([folder]) as plan:
        staged = plan.folder(out_dir, "--output", DECODER_RUN_FILES)
        with progress_bar() as bar:
            task = bar.add_task("starting", total=len(DECODER_STEPS))
            timing = bar.add_task("timing prefill and decode, interleaved", total=rounds, visible=False)
            report = run_decoder(
                folder, staged, DecoderExportOptions(exporter=exporter, python=python), decode, target, int4, align,
                step=lambda name: bar.update(task, description=name, completed=DECODER_STEPS.index(name)),
                progress=lambda done, total: bar.update(timing, visible=True, completed=done, total=total),
                relocate=plan.relocate,
            )  # fmt: skip
            bar.update(task, description="done", completed=len(DECODER_STEPS))
        plan.commit()
    render_export(report.export)
    render_optimize(report.optimize)
    render_decoder_compare(report.compare)
    for drift in report.int4:
        render_precision(drift)
    console.print(f"report → {out_dir / 'report.json'}, {out_dir / 'report.md'}")
