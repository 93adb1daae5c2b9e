"""`sparsecut advise`: before pruning, which channel counts the target rewards — per coupled group, the latency
staircase in the whole model, the step (`round_to`) the device rewards, and with `--latency-ratio` the fewest
channels to remove for that latency (passes/advise.py). Writes nothing but its report (`--json`: what a pruner
reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsecut.cli.app import announce_json, app, finish, progress_bar, require_inputs
from sparsecut.cli.options import (
    ONE,
    BatchOption,
    DeviceOption,
    JsonOption,
    ProviderOption,
    TargetOption,
    ThreadsOption,
    backend_options,
)
from sparsecut.cli.render import render_advice
from sparsecut.outputs import OutputPlan


@app.command()
def advise(
    model: Annotated[Path, typer.Argument(help="ONNX file, dense or pruned (masked).")],
    target: TargetOption = "onnxruntime",
    latency_ratio: Annotated[
        float | None,
        typer.Option(help="Plan the fewest channels removed for this fraction of the full-width latency (0.6)."),
    ] = None,
    batch: BatchOption = ONE,
    threads: ThreadsOption = None,
    provider: ProviderOption = "cpu",
    device: DeviceOption = "CPU",
    json_path: JsonOption = None,
) -> None:
    """Per coupled channel group, the latency staircase in the whole model on the target (count → ms), the channel
    step it rewards, and with --latency-ratio the fewest channels to remove for that latency — for a pruner."""
    from sparsecut.passes.advise import advise_model
    from sparsecut.targets.tuning import tuning_for

    require_inputs(model)
    with OutputPlan([model]) as plan:
        staged_json = plan.file(json_path, "--json") if json_path else None
        with progress_bar() as bar:
            task = bar.add_task("building probes", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            tuning = tuning_for(target or "onnxruntime", batch=batch.opt, threads=threads or None,
                                backends=backend_options(provider=provider, device=device),
                                progress=progress)  # fmt: skip
            assert tuning.profile is not None
            report = advise_model(model, tuning.profile, tuning.target, tuning.timer.context(), latency_ratio,
                                  progress=progress)  # fmt: skip
        report = finish(plan, report, staged_json)
    render_advice(report)
    announce_json(json_path)
