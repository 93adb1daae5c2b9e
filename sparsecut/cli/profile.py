"""`sparsecut profile`: one model's latency on a target (p50/p90/p99, throughput) and its per-layer time beside
MACs; with --baseline, the same network before pruning, layer by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import announce_json, app, console, finish, require_inputs
from sparsecut.cli.options import (
    ONE,
    BaselineOption,
    BatchOption,
    DeviceOption,
    HintOption,
    IterationsOption,
    JsonOption,
    ProviderOption,
    TargetOption,
    ThreadsOption,
    backend_options,
    positive,
)
from sparsecut.cli.render import render_latency, render_layer_diff
from sparsecut.outputs import OutputPlan


@app.command()
def profile(
    model: Annotated[Path, typer.Argument(help="ONNX file (onnxruntime) or engine (tensorrt) to time.")],
    target: TargetOption = "onnxruntime",
    batch: BatchOption = ONE,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up iterations.")] = 10,
    iterations: IterationsOption = 100,
    duration: Annotated[
        float | None, typer.Option(callback=positive, help="Time for this many seconds instead.")
    ] = None,
    threads: ThreadsOption = None,
    provider: ProviderOption = "cpu",
    per_layer: Annotated[bool, typer.Option("--per-layer/--no-per-layer", help="Per-layer time vs MACs.")] = True,
    top: Annotated[int, typer.Option(min=1, help="Layers shown in the per-layer table.")] = 15,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="TensorRT: time a captured CUDA graph.")] = False,
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    baseline: BaselineOption = None,
    json_path: JsonOption = None,
) -> None:
    """Measure latency (p50/p90/p99, throughput) and per-layer time beside MACs. With --baseline, both models are
    profiled and their layers paired by node name: time and MACs before → after, and why a layer's time fell much
    less than its MACs."""
    from sparsecut.targets import ProfileOptions, get_target

    assert target is not None
    require_inputs(model, baseline)
    if baseline is not None and not per_layer:
        raise UsageError("--baseline: the view before → after is per layer; drop --no-per-layer")
    backend = get_target(target)
    options = ProfileOptions(
        batch=batch.opt,
        warmup=warmup,
        iterations=iterations,
        duration=duration,
        threads=threads or None,
        per_layer=per_layer,
        backends=backend_options(provider=provider, device=device, hint=hint, cuda_graph=cuda_graph),
    )
    with OutputPlan([model, baseline]) as plan:
        staged_json = plan.file(json_path, "--json") if json_path else None
        if baseline is None:
            with console.status(f"timing {model} on {target} …"):
                report = backend.profile(backend.load(model), options)
            report = finish(plan, report, staged_json)
        else:
            from sparsecut.targets.layer_diff import diff_layers

            with console.status(f"timing {baseline} and {model} on {target}, per layer …"):
                before = backend.profile(backend.load(baseline), options)
                after = backend.profile(backend.load(model), options)
            block = backend.channel_block(after.precision)
            diff = finish(plan, diff_layers(before, after, baseline, model, block), staged_json)
    if baseline is None:
        render_latency(report, top)
    else:
        render_latency(after, top)
        render_layer_diff(diff, top)
    announce_json(json_path)
