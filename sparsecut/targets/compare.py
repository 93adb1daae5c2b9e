"""Compare variants of a model on one device: measured interleaved (round-robin), so that machine noise — a
neighbour process, thermal drift — hits every variant alike. Prints params, MACs, p50 and speedup vs the first."""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx_ir as ir

from sparsecut.cost import count_costs
from sparsecut.errors import TargetError
from sparsecut.report import CompareReport, LatencyReport, Variant
from sparsecut.targets.base import BuildOptions, ProfileOptions, get_target
from sparsecut.targets.environment import cpu_name, host_environment
from sparsecut.targets.timing import measure, summarize

__all__ = ["compare_models", "plot_comparison"]

log = logging.getLogger(__name__)


def compare_models(
    models: Sequence[Path],
    *,
    target: str = "onnxruntime",
    options: ProfileOptions | None = None,
    rounds: int = 10,
    plot: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompareReport:
    """Time every model `rounds` times in turn, `options.iterations // rounds` runs each time."""
    options = options or ProfileOptions()
    models = [Path(m) for m in models]
    if len(models) < 1:
        raise TargetError("compare needs at least one model")
    for m in models:
        if not m.exists():
            raise TargetError(f"{m}: no such file")
    costs = [count_costs(_load(m)) for m in models]
    if target == "onnxruntime":
        latencies = _interleaved_onnxruntime(models, options, rounds, progress)
        device = cpu_name() if options.provider == "cpu" else options.provider
    else:  # engines are built one by one and timed in turn (a GPU runs one engine at a time anyway)
        backend = get_target(target)
        latencies = []
        with tempfile.TemporaryDirectory(prefix="sparsecut-compare-") as tmp:
            for i, m in enumerate(models):
                artifact, _ = backend.build(m, Path(tmp) / f"{i}.plan", BuildOptions())
                latencies.append(backend.profile(artifact, options))
        device = latencies[0].device
    first = latencies[0].p50_ms
    variants = [
        Variant(
            model=str(m),
            params=c.params,
            macs=c.macs,
            latency=lat,
            speedup=first / lat.p50_ms if lat.p50_ms > 0 else float("inf"),
            macs_ratio=c.macs / costs[0].macs if costs[0].macs else 1.0,
        )
        for m, c, lat in zip(models, costs, latencies, strict=True)
    ]
    report = CompareReport(
        target=target, device=device, rounds=rounds, variants=variants, plot=str(plot) if plot else None
    )
    if plot is not None:
        plot_comparison(report, plot)
    return report


def _load(path: Path) -> ir.Model:
    try:
        return ir.load(path)
    except Exception as exc:
        raise TargetError(f"{path}: not a readable ONNX model ({exc})") from exc


def _interleaved_onnxruntime(
    models: list[Path], options: ProfileOptions, rounds: int, progress: Callable[[int, int], None] | None
) -> list[LatencyReport]:
    from sparsecut.targets.onnxruntime import _ort_version, _precision_of, _session, random_inputs

    sessions, bindings = [], []
    for m in models:
        session = _session(m, options.provider, options.threads, options.optimization)
        binding = session.io_binding()
        for name, array in random_inputs(session, options.batch, options.seed, m).items():
            binding.bind_cpu_input(name, array)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cpu")
        sessions.append(session)
        bindings.append(binding)
    per_round = max(1, options.iterations // max(1, rounds))
    samples: list[list[int]] = [[] for _ in models]
    runs = [functools.partial(s.run_with_iobinding, b) for s, b in zip(sessions, bindings, strict=True)]
    for run_once in runs:
        measure(run_once, warmup=options.warmup, iterations=0)
    for r in range(rounds):
        for i, run_once in enumerate(runs):
            samples[i] += measure(run_once, warmup=0, iterations=per_round)
        if progress is not None:
            progress(r + 1, rounds)
    reports = []
    for m, s in zip(models, samples, strict=True):
        stats = summarize(s, options.batch)
        reports.append(
            LatencyReport(
                model=str(m),
                target="onnxruntime",
                device=cpu_name() if options.provider == "cpu" else options.provider,
                batch=options.batch,
                precision=_precision_of(m),
                threads=options.threads,
                warmup=options.warmup,
                **dataclasses.asdict(stats),
                environment={**host_environment(), "onnxruntime": _ort_version(), "interleaved_rounds": str(rounds)},
            )
        )
    return reports


def plot_comparison(report: CompareReport, path: Path) -> None:
    """MACs ratio vs latency ratio per variant: points below the diagonal ran slower than their MACs promise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecut.modelfile import check_output_path

    check_output_path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    xs = [v.macs_ratio for v in report.variants]
    ys = [1 / v.speedup if v.speedup else 1.0 for v in report.variants]
    ax.plot([0, 1.05], [0, 1.05], "--", color="gray", label="latency ∝ MACs")
    ax.scatter(xs, ys, s=40, zorder=3)
    for v, x, y in zip(report.variants, xs, ys, strict=True):
        ax.annotate(Path(v.model).name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("MACs / MACs of the first")
    ax.set_ylabel("p50 latency / p50 of the first")
    ax.set_title(f"{report.target} on {report.device}"[:70], fontsize=9)
    ax.set_xlim(0, 1.1)
    ax.set_ylim(0, max(1.1, *ys) * 1.05)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        fig.savefig(staged)
        staged.replace(path)
    plt.close(fig)
