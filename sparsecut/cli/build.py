"""`sparsecut build`: an ONNX file → what a target runs (onnxruntime's optimized model, OpenVINO IR, a TensorRT
engine), dead channels left in the graph removed first with counts measured there, the precision put into the
graph where the target needs it there."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import announce_json, app, console, finish, require_inputs
from sparsecut.cli.int8 import Int8Settings, int8_options
from sparsecut.cli.options import (
    FP32,
    ONE,
    BatchOption,
    DeviceOption,
    HintOption,
    Int8FormatOption,
    JsonOption,
    LutOption,
    MeasureOption,
    OutputOption,
    PrecisionOption,
    ProviderOption,
    SparsityOption,
    TargetOption,
    TokenizerOption,
    TuneBudgetOption,
    backend_options,
)
from sparsecut.cli.render import render_build, render_precision
from sparsecut.outputs import OutputPlan


@app.command()
@int8_options
def build(
    model: Annotated[Path, typer.Argument(help="ONNX file to build.")],
    output: OutputOption,
    target: TargetOption = "onnxruntime",
    precision: PrecisionOption = FP32,
    sparsity: SparsityOption = False,
    batch: BatchOption = ONE,
    workspace: Annotated[int | None, typer.Option(min=1, help="TensorRT workspace limit, MiB.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache file (read and updated).")] = None,
    provider: ProviderOption = "cpu",
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    int8_format: Int8FormatOption = "",
    surgery: Annotated[str | None, typer.Option(help="MODULE:FUNCTION on a gs.Graph, applied before build.")] = None,
    measure: MeasureOption = True,
    lut: LutOption = None,
    tune_budget: TuneBudgetOption = 30.0,
    tokenizer: TokenizerOption = None,
    json_path: JsonOption = None,
    int8: Int8Settings | None = None,
) -> None:
    """Build an engine for a target (onnxruntime on CPU by default, TensorRT on NVIDIA GPUs). Dead channels still
    in the graph are removed first, with channel counts measured on the target (`--no-measure`: built as given; a
    graph `optimize` wrote keeps the dead channels it kept for the kernels)."""
    from sparsecut.targets import BuildOptions, get_target
    from sparsecut.workflow import build_for_target, build_outputs

    assert int8 is not None and target is not None
    calibration, data_config = int8.calibration.source, int8.data_config
    if int8_format and (precision is None or precision.kind != "int8"):
        raise UsageError("--int8-format: only used with --precision int8")
    if precision is None and (calibration is not None or int8.keep_fp32 or int8.max_drift is not None or data_config):
        raise UsageError(
            "--precision best: build takes the precision the graph has (TensorRT picks per layer); to quantize, "
            "build with --precision int8 and the calibration options"
        )
    require_inputs(model, calibration, data_config, tokenizer)
    if target == "onnxruntime-genai":
        measure = False  # a decoder's channels are removed by optimize (gated by generation), before the build
    options = BuildOptions(
        precision=precision.in_format(int8_format) if precision is not None else None,
        sparsity=sparsity,
        batch=batch.range,
        backends=backend_options(
            provider=provider,
            device=device,
            hint=hint,
            workspace=workspace,
            timing_cache=timing_cache,
            tokenizer=tokenizer,
        ),
        surgery=surgery,
    )
    planned = build_outputs(get_target(target), output, options, measure=measure, inputs=[model, calibration])
    with OutputPlan([model, calibration, data_config]) as plan:
        staged = {f.kind: plan.file(f.path, f.option, model=f.model, optional=f.optional) for f in planned}
        if timing_cache is not None and timing_cache.is_file():  # read and updated: staged from the current one
            shutil.copyfile(timing_cache, staged["timing-cache"])
        staged_json = plan.file(json_path, "--json") if json_path else None
        tuning = None
        if measure:
            from sparsecut.targets.tuning import tuning_for

            tuning = tuning_for(target, batch=batch.opt, backends=options.backends, table=lut, budget=tune_budget,
                                build=BuildOptions(sparsity=sparsity, backends=options.backends))  # fmt: skip
        with console.status(f"building {model} for {target} …"):
            converting = int8.request(options.precision)
            staged_cache = staged.get("timing-cache")  # the target reads and updates the staged copy
            options = dataclasses.replace(options, backends=backend_options(
                provider=provider, device=device, hint=hint, workspace=workspace, timing_cache=staged_cache,
                tokenizer=tokenizer))  # fmt: skip
            report, converted = build_for_target(model, staged["artifact"], target, options, converting, tuning, staged)
        report = finish(plan, report, staged_json)
    if converted is not None:
        console.print(f"the graph was converted to {converted.precision} first:")
        render_precision(converted)
    render_build(report)
    announce_json(json_path)
