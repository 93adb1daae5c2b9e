"""`sparsecut compare`: variants timed interleaved against a baseline (on every named backend, in the same
rounds): params, MACs, p50, speedup with its 95 % interval, MACs-vs-latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import announce_json, app, finish, progress_bar, require_inputs
from sparsecut.cli.options import (
    FP32,
    ONE,
    BaselineOption,
    BatchOption,
    BudgetOption,
    DeviceOption,
    HintOption,
    IterationsOption,
    JsonOption,
    PrecisionOption,
    RoundsOption,
    SparsityOption,
    TargetOption,
    ThreadsOption,
    backend_options,
)
from sparsecut.cli.render import render_compare
from sparsecut.outputs import OutputPlan


@app.command()
def compare(
    models: Annotated[list[Path], typer.Argument(help="ONNX files (or built artifacts) to compare, two or more.")],
    baseline: BaselineOption = None,
    target: TargetOption = "onnxruntime",
    batch: BatchOption = ONE,
    iterations: IterationsOption = 200,
    rounds: RoundsOption = 20,
    budget: BudgetOption = None,
    threads: ThreadsOption = None,
    precision: PrecisionOption = FP32,
    sparsity: SparsityOption = False,
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

    assert target is not None
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the plot is a PNG file; name it *.png")
    require_inputs(*models)
    backends = backend_options(device=device, hint=hint)
    options = ProfileOptions(batch=batch.opt, iterations=iterations, threads=threads or None, per_layer=False,
                             backends=backends)  # fmt: skip
    with OutputPlan(models) as plan:
        staged_plot = plan.file(plot, "--plot") if plot else None
        staged_json = plan.file(json_path, "--json") if json_path else None
        with progress_bar() as bar:
            task = bar.add_task("timing, interleaved", total=rounds)
            report = compare_models(
                models, target=target, options=options,
                build=BuildOptions(precision=precision, sparsity=sparsity, backends=backends),
                rounds=rounds, budget=budget, baseline=baseline, allow_different_inputs=allow_different_inputs,
                plot=staged_plot, progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        report = finish(plan, report, staged_json)
    render_compare(report)
    announce_json(json_path)
