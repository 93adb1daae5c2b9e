"""`sparsecut compare`: variants timed interleaved against a baseline (on every named backend, in the same
rounds): params, MACs, p50, speedup with its 95 % interval, MACs-vs-latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import UsageError  # typer ships click inside

from sparsecut.cli.app import announce_json, app, console, finish, progress_bar, require_inputs
from sparsecut.cli.options import (
    FP32,
    ONE,
    BaselineOption,
    BatchOption,
    BudgetOption,
    ContextOption,
    DeviceOption,
    HintOption,
    IterationsOption,
    JsonOption,
    PrecisionOption,
    PromptOption,
    RoundsOption,
    SparsityOption,
    StepsOption,
    TargetOption,
    ThreadsOption,
    backend_options,
    token_lengths,
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
    plot: Annotated[
        Path | None, typer.Option(help="PNG plot of MACs vs latency (decoders: tokens/s vs weight bytes).")
    ] = None,
    device: DeviceOption = "CPU",
    hint: HintOption = "latency",
    prompt: PromptOption = "128,512",
    context: ContextOption = "128,1024",
    steps: StepsOption = 8,
    layers: Annotated[
        int, typer.Option(min=0, help="KV-cache decoders: show the N nodes a decode step spends most time in.")
    ] = 0,
    json_path: JsonOption = None,
) -> None:
    """Measure variants interleaved; params, MACs, latency and speedup vs a baseline, with its interval. Several
    targets (`--target onnxruntime,openvino`): every variant on every backend in the same rounds. KV-cache
    decoders are timed as generators run them: prefill (time to first token) and decode (ms per token, tokens/s),
    each step fed the last step's cache."""
    from sparsecut.targets import BuildOptions, ProfileOptions, compare_models

    assert target is not None
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the plot is a PNG file; name it *.png")
    require_inputs(*models)
    if _decoders(models):
        _compare_decoders(models, target, baseline, rounds, threads, prompt, context, steps, layers, json_path, plot)
        return
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


def _decoders(models: list[Path]) -> bool:
    """Whether every model is a KV-cache decoder (checked on its inputs, without reading the weights): an ONNX
    file, or an onnxruntime-genai folder."""
    from sparsecut.decoder import is_kv_decoder

    def graph(m: Path) -> Path | None:
        return m / "model.onnx" if (m / "genai_config.json").is_file() else m if m.suffix == ".onnx" else None

    files = [graph(m) for m in models]
    return all(f is not None and is_kv_decoder(f) for f in files)


def _compare_decoders(
    models: list[Path],
    target: str,
    baseline: Path | None,
    rounds: int,
    threads: int | None,
    prompt: str,
    context: str,
    steps: int,
    layers: int,
    json_path: Path | None,
    plot: Path | None,
) -> None:
    from sparsecut.cli.render import render_decoder_compare
    from sparsecut.targets.decoding import DecodeOptions, compare_decoders, plot_decoders

    if target not in ("onnxruntime", "onnxruntime-genai"):
        raise UsageError(
            f"--target {target}: KV-cache decoders are timed on onnxruntime (sparsecut's generation loop) or "
            "onnxruntime-genai (its generator)"
        )
    folders = [m for m in models if m.is_dir()]
    if (target == "onnxruntime-genai") != (len(folders) == len(models)):
        raise UsageError(
            f"--target {target}: onnxruntime-genai times its folders (sparsecut build --target onnxruntime-genai), "
            "onnxruntime ONNX files"
        )
    options = DecodeOptions(prompts=token_lengths(prompt, "--prompt"), contexts=token_lengths(context, "--context"),
                            steps=steps, rounds=rounds, threads=threads or None, layers=layers)  # fmt: skip
    index = next((i for i, m in enumerate(models) if baseline is not None and m.resolve() == baseline.resolve()), 0)
    with OutputPlan(models) as plan:
        staged_json = plan.file(json_path, "--json") if json_path else None
        staged_plot = plan.file(plot, "--plot") if plot else None
        with progress_bar() as bar:
            task = bar.add_task("timing prefill and decode, interleaved", total=rounds)
            report = compare_decoders(
                models, options, index, lambda done, total: bar.update(task, completed=done), target=target
            )
        if staged_plot is not None:
            plot_decoders(report, staged_plot)
        report = finish(plan, report, staged_json)
    render_decoder_compare(report)
    if plot is not None:
        console.print(f"plot → {plot}")
    announce_json(json_path)
