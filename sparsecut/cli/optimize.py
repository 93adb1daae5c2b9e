"""`sparsecut optimize` and `sparsecut inspect`: fold constants and BatchNorm, remove dead channels physically,
annotate 2:4 — written only if the equivalence gate passes; with --target, channel counts (and the precision)
chosen by latency measured there. `inspect` reports the same analysis and writes nothing."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import announce_json, app, console, error_console, finish, progress_bar, require_inputs
from sparsecut.cli.int8 import Int8Settings, int8_options
from sparsecut.cli.options import (
    FP32,
    ONE,
    AlignOption,
    AtolOption,
    BatchOption,
    DeviceOption,
    Int8FormatOption,
    JsonOption,
    KeepStackTracesOption,
    LutOption,
    OutputOption,
    PrecisionOption,
    ProviderOption,
    RayOption,
    RtolOption,
    TargetOption,
    ThreadsOption,
    TuneBudgetOption,
    backend_options,
    tolerance,
)
from sparsecut.cli.render import render_optimize
from sparsecut.outputs import OutputPlan
from sparsecut.passes.registry import DEFAULT_PASSES, PASSES

if TYPE_CHECKING:
    from sparsecut.passes import OptimizeOptions
    from sparsecut.report import OptimizeReport


@app.command()
@int8_options
def optimize(
    model: Annotated[Path, typer.Argument(help="ONNX file to optimize.")],
    output: OutputOption,
    passes: Annotated[str, typer.Option(help="Comma-separated pipeline of: " + ", ".join(PASSES))] = (
        ",".join(DEFAULT_PASSES)
    ),
    align: AlignOption = 8,
    data: Annotated[Path | None, typer.Option(help=".npz of real inputs for the equivalence gate.")] = None,
    rtol: RtolOption = 1e-4,
    atol: AtolOption = 1e-5,
    enforce_2to4: Annotated[bool, typer.Option("--enforce-2to4", help="Prune to 2:4 (changes the model).")] = False,
    min_channels: Annotated[int, typer.Option(min=1, help="--enforce-2to4 skips layers with fewer channels.")] = 64,
    permutation_budget: Annotated[
        float,
        typer.Option(
            callback=tolerance, help="--enforce-2to4: seconds per channel group to search a reorder (0: off)."
        ),
    ] = 0.5,
    precision: PrecisionOption = FP32,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the equivalence gate (loudly).")] = False,
    target: TargetOption = None,
    batch: BatchOption = ONE,
    threads: ThreadsOption = None,
    provider: ProviderOption = "cpu",
    lut: LutOption = None,
    tune_budget: TuneBudgetOption = 30.0,
    device: DeviceOption = "CPU",
    int8_format: Int8FormatOption = "",
    keep_stack_traces: KeepStackTracesOption = False,
    json_path: JsonOption = None,
    ray: RayOption = None,
    ray_device: Annotated[
        str | None, typer.Option(help="--ray: the device class of the node to measure on (sparsecut ray-node).")
    ] = None,
    int8: Int8Settings | None = None,
) -> None:
    """Fold BatchNorm and remove dead channels; written only if verified equal to the input graph. With
    --target, channel counts are chosen by latency measured there, and the candidates are timed end to end."""
    from sparsecut.passes import OptimizeOptions, optimize_model

    assert int8 is not None
    calibration, data_config = int8.calibration.source, int8.data_config
    if int8_format and (precision is None or precision.kind != "int8"):
        raise UsageError("--int8-format: only used with --precision int8")
    if precision is None and target is None:
        raise UsageError("--precision best: needs --target (fp32, fp16 and int8 are measured there)")
    options = OptimizeOptions(
        passes=tuple(p.strip() for p in passes.split(",") if p.strip()),
        align=align,
        rtol=rtol,
        atol=atol,
        verify=not no_verify,
        data=data,
        precision=int8.request(precision.in_format(int8_format) if precision is not None else None),
        enforce_2to4=enforce_2to4,
        min_channels=min_channels,
        permutation_budget=permutation_budget,
        keep_stack_traces=keep_stack_traces,
    )
    if (ray is None) != (ray_device is None) or (ray is not None and target is None):
        raise UsageError("--ray: give --target, --ray ADDRESS and --ray-device CLASS together")
    require_inputs(model, data, calibration, data_config)
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
            from sparsecut.passes.measured import optimize_measured
            from sparsecut.targets.tuning import tuning_for

            with progress_bar() as bar:
                task = bar.add_task("timing layers", total=None)

                def progress(what: str, done: int, total: int) -> None:
                    bar.update(task, description=what, completed=done, total=total)

                if ray is not None:  # on a device node of the cluster: its own latency table, its own timings
                    report = _on_ray(ray, ray_device, model, staged, options, target,
                                     dict(batch=batch.opt, threads=threads or None,
                                          backends=backend_options(provider=provider, device=device),
                                          table=lut, budget=tune_budget))  # fmt: skip
                else:
                    tuning = tuning_for(target, batch=batch.opt, threads=threads or None,
                                        backends=backend_options(provider=provider, device=device), table=lut,
                                        budget=tune_budget, progress=progress)  # fmt: skip
                    report = optimize_measured(model, staged, options, tuning)
        report = finish(plan, report, staged_json)
    render_optimize(report)
    announce_json(json_path)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX file to analyse.")],
    align: AlignOption = 8,
    json_path: JsonOption = None,
) -> None:
    """Dead channels per coupled group and MACs, without changing anything."""
    from sparsecut.passes import inspect_model

    require_inputs(model)
    with OutputPlan([model]) as plan:
        staged_json = plan.file(json_path, "--json") if json_path else None
        with console.status(f"analysing {model} …"):
            report = inspect_model(model, align)
        report = finish(plan, report, staged_json)
    render_optimize(report, inspecting=True)
    announce_json(json_path)


def _on_ray(address: str, device: str | None, model: Path, staged: Path, options: OptimizeOptions, target: str,
            tuning: dict[str, object]) -> OptimizeReport:  # fmt: skip
    """optimize --target on a node of device class `device`: the graph goes there, the lean one comes back."""
    from sparsecut.errors import InputError
    from sparsecut.sweep.onray import RayExecutor
    from sparsecut.sweep.work import measured_job

    with RayExecutor(address) as executor:
        if device not in executor.classes():
            where = ", ".join(sorted(executor.classes())) or "none"
            raise InputError(f"--ray-device {device}: no node of that class (there are: {where})")
        handle = executor.submit_timing(str(device), measured_job, model.read_bytes(), staged.name, options,
                                        target, tuning)  # fmt: skip
        ((_, result),) = list(executor.done([handle]))
    if isinstance(result, BaseException):
        raise getattr(result, "cause", None) or result
    data, report = typing.cast("tuple[bytes, OptimizeReport]", result)
    staged.write_bytes(data)
    return report
