"""`sparsecut sweep`: every input × precision × channel mode timed on every device named, each cell on its own
machine — here, or on a Ray cluster (`--ray`); one table (sweep/). `sparsecut ray-node`: the `ray start` line that
makes this machine a device node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import app, console, progress_bar
from sparsecut.cli.options import ArchOption, IterationsOption, OutputOption, RayOption, RoundsOption
from sparsecut.errors import InputError


@app.command()
def sweep(
    output: OutputOption,
    grid_file: Annotated[
        Path | None, typer.Argument(help="A sweep file (TOML: inputs, precisions, modes, devices).")
    ] = None,
    input_files: Annotated[
        list[Path] | None, typer.Option("--input", help="An ONNX file or a checkpoint (with --arch).")
    ] = None,
    arch: ArchOption = None,
    precisions: Annotated[str, typer.Option(help="Comma-separated: fp32, fp16, int8.")] = "fp32",
    modes: Annotated[str, typer.Option(help="Comma-separated channel modes: 'align N', 'measured'.")] = "align 8",
    devices: Annotated[
        str, typer.Option(help="Comma-separated TARGET@CLASS (CLASS: local, or a Ray node's).")
    ] = "onnxruntime@local",
    rounds: RoundsOption = 10,
    iterations: IterationsOption = 50,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the sweep in --output: only the cells not there.")
    ] = False,
    ray: RayOption = None,
) -> None:
    """Every input × precision × channel mode timed on every device named, each cell interleaved with its dense
    baseline on its own machine; one table (Markdown, JSON, plot), cells streamed to results.jsonl."""
    from sparsecut.precision import Precision
    from sparsecut.sweep import Device, Grid, SweepInput, load_grid, run_sweep
    from sparsecut.sweep.output import table, write_outputs

    if grid_file is not None and input_files:
        raise UsageError("--input: give inputs in the sweep file or on the command line, not both")
    if grid_file is not None:
        grid = load_grid(grid_file)
    else:
        grid = Grid(
            inputs=tuple(SweepInput(p, arch if p.suffix != ".onnx" else None) for p in input_files or []),
            precisions=tuple(Precision.parse(p.strip()) for p in precisions.split(",") if p.strip()),
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            devices=tuple(Device.parse(d.strip(), "--devices") for d in devices.split(",") if d.strip()),
            rounds=rounds,
            iterations=iterations,
        )
    executor = None
    if ray is not None:
        from sparsecut.sweep.onray import RayExecutor

        executor = RayExecutor(ray)
    try:
        with progress_bar() as bar:
            task = bar.add_task("sweep", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=escape(what), completed=done, total=total)

            report = run_sweep(grid, output, executor, resume=resume, progress=progress)
    finally:
        if executor is not None:
            executor.close()
    files = write_outputs(report, output)
    columns, rows = table(report)
    shown = Table(title=f"sweep ({report.executor}): p50, speedup vs dense on each device (95 % interval)",
                  title_justify="left")  # fmt: skip
    for column in columns:
        shown.add_column(escape(column), justify="left" if column in columns[:3] else "right")
    for row in rows:
        shown.add_row(*(escape(c) for c in row))
    console.print(shown)
    failed = [c for c in report.cells if c.status != "ok"]
    for cell in failed:
        console.print(f"[yellow]{escape(cell.key)}: failed: {escape(cell.reason)}[/yellow]")
    console.print(f"{len(report.cells) - len(failed)} of {len(report.cells)} cells timed in {report.seconds:.0f} s → "
                  + ", ".join(str(f) for f in [output / "results.jsonl", *files]))  # fmt: skip
    if failed and len(failed) == len(report.cells):
        raise InputError(f"{output}: no cell could be timed ({failed[0].key}: {failed[0].reason})")


@app.command("ray-node")
def ray_node(
    name: Annotated[str | None, typer.Option(help="The device class (default: derived from this machine).")] = None,
    head: Annotated[bool, typer.Option("--head", help="Print the line that starts a cluster's head.")] = False,
    address: Annotated[str, typer.Option(help="The head's address, for a worker's line.")] = "HEAD:6379",
) -> None:
    """The device class of this machine and the `ray start` line that joins it to a cluster as a device node:
    a custom resource `sparsecut_device_<CLASS>: 1`, so that it times one sweep cell at a time."""
    from sparsecut.sweep.onray import device_class, device_resource

    chosen = name or device_class()
    resources = json.dumps({device_resource(chosen): 1})
    console.print(f"device class: {chosen}", markup=False)
    start = "ray start --head" if head else f"ray start --address {address}"
    console.print(f"{start} --resources '{resources}'", markup=False)
