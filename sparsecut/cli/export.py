"""`sparsecut export` and `sparsecut models`: a pruned checkpoint to verified ONNX; the reference architectures,
recipes and example pruned checkpoints."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sparsecut.cli.app import announce_json, app, console, finish, models_app, require_inputs
from sparsecut.cli.options import (
    AmountOption,
    ArchOption,
    AtolOption,
    CheckpointArgument,
    DecoderExporterOption,
    ExporterPythonOption,
    InputShapeOption,
    JsonOption,
    KeepStackTracesOption,
    ModelFactoryOption,
    OpsetOption,
    OutputOption,
    RecipeOption,
    RtolOption,
    TrustCheckpointOption,
)
from sparsecut.cli.render import render_export
from sparsecut.errors import OutputPathError
from sparsecut.opsets import MIN_OPSET
from sparsecut.outputs import OutputPlan


@app.command()
def export(
    checkpoint: CheckpointArgument,
    output: OutputOption,
    arch: ArchOption = None,
    model: ModelFactoryOption = None,
    input_shape: InputShapeOption = None,
    opset: OpsetOption = MIN_OPSET,
    rtol: RtolOption = 1e-4,
    atol: AtolOption = 1e-5,
    trust_checkpoint: TrustCheckpointOption = False,
    keep_stack_traces: KeepStackTracesOption = False,
    exporter: DecoderExporterOption = "genai",
    python: ExporterPythonOption = None,
    json_path: JsonOption = None,
) -> None:
    """Export a pruned checkpoint to ONNX, verified against PyTorch in onnxruntime. A Hugging Face decoder folder
    (save_pretrained) becomes a KV-cache decoder folder (-o is a folder), verified against transformers' own
    greedy generation."""
    from sparsecut.exporter import ExportOptions, export_checkpoint, parse_input_shape
    from sparsecut.exporter.decoders import DecoderExportOptions, export_decoder_folder, is_decoder_folder

    if is_decoder_folder(checkpoint):
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise OutputPathError(f"{output}: --output for a decoder folder must be a new or empty folder")
        decoder_options = DecoderExportOptions(exporter=exporter, python=python, rtol=rtol, atol=atol)
        with OutputPlan([checkpoint]) as plan:
            staged = plan.folder(output, "--output", ["model.onnx", "model.onnx.data", "genai_config.json"])
            staged_json = plan.file(json_path, "--json") if json_path else None
            with console.status(f"exporting {checkpoint} with {exporter} …"):
                report = export_decoder_folder(checkpoint, staged, decoder_options)
            report = finish(plan, report, staged_json)
        render_export(report)
        announce_json(json_path)
        return

    options = ExportOptions(
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        opset=opset,
        rtol=rtol,
        atol=atol,
        trust_checkpoint=trust_checkpoint,
        keep_stack_traces=keep_stack_traces,
    )
    require_inputs(checkpoint)
    with OutputPlan([checkpoint]) as plan:
        staged = plan.file(output, "--output", model=True)
        staged_json = plan.file(json_path, "--json") if json_path else None
        with console.status(f"exporting {checkpoint} …"):
            report = export_checkpoint(checkpoint, staged, arch=arch, model_factory=model, options=options)
        report = finish(plan, report, staged_json)
    render_export(report)
    announce_json(json_path)


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
    output: OutputOption,
    recipe: RecipeOption = "l1-filter",
    amount: AmountOption = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the reference weights.")] = 0,
) -> None:
    """Make an example pruned checkpoint (a state_dict, with prune masks where the recipe leaves them)."""
    from sparsecut.models import make_pruned_model, save_state_dict

    with OutputPlan() as plan:
        staged = plan.file(output, "--output")
        save_state_dict(make_pruned_model(arch, recipe, amount, seed), staged)
        plan.commit()
    console.print(f"wrote {output}: {arch} pruned by {recipe} (amount {amount})")
