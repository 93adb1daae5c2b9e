"""Compare variants of a model on one device: measured interleaved (round-robin), so that machine noise — a
neighbour process, thermal drift — hits every variant alike. Every ratio is taken against one baseline and comes
with its bootstrap interval over the rounds (`noise.py`); variants whose inputs differ are not compared.

Several backends (`onnxruntime,openvino`) are timed in the same rounds: every variant on every backend, each
ratio against the baseline on the same backend, and each variant's time on a backend against its time on the
first one — which runtime to ship, and whether the pruning pays on it, in one run."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from sparsecut.cost import count_costs
from sparsecut.errors import TargetError
from sparsecut.modelfile import load_model
from sparsecut.report import CompareReport, ModelCost, Variant
from sparsecut.targets.base import Artifact, BuildOptions, ProfileOptions, Target, get_target
from sparsecut.targets.noise import MIN_ROUNDS, speedup
from sparsecut.targets.timing import measure, summarize

__all__ = [
    "check_comparable",
    "compare_artifacts",
    "compare_models",
    "compare_runs",
    "plot_comparison",
    "plot_pruning_by_precision",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def compare_models(
    models: Sequence[Path],
    *,
    target: str | Sequence[str] = "onnxruntime",
    options: ProfileOptions | None = None,
    build: BuildOptions | None = None,
    rounds: int = 10,
    budget: float | None = None,
    baseline: Path | None = None,
    allow_different_inputs: bool = False,
    plot: Path | None = None,
    progress: Progress | None = None,
    max_rounds: int | None = None,
) -> CompareReport:
    """Time ONNX files (or built artifacts) against `baseline` (default: the first), on one target or several
    (`target`: a name, "a,b" or a list). A target that runs something other than ONNX (TensorRT) builds each ONNX
    file first, with `build` — the user's options."""
    models = [Path(m) for m in models]
    if len(models) < 2:
        raise TargetError("compare needs at least two models: a baseline and a variant to measure against it")
    for m in models:
        if not m.is_file():
            raise TargetError(f"{m}: no such file")
    index = _baseline_index(models, baseline)
    names = target.split(",") if isinstance(target, str) else list(target)
    backends = [get_target(name) for name in names]
    with tempfile.TemporaryDirectory(prefix="sparsecut-compare-") as tmp:
        runs: list[tuple[Artifact, Target]] = []
        for backend in backends:
            for i, m in enumerate(models):
                if backend.needs_build(m):
                    output = Path(tmp) / f"{backend.name}-{i}{backend.artifact_suffix}"
                    runs.append((backend.build(m, output, build or BuildOptions())[0], backend))
                else:
                    runs.append((backend.load(m), backend))
        return compare_runs(
            runs,
            options=options,
            rounds=rounds,
            budget=budget,
            baseline=index,
            allow_different_inputs=allow_different_inputs,
            plot=plot,
            progress=progress,
            max_rounds=max_rounds,
        )


def compare_artifacts(
    artifacts: Sequence[Artifact],
    backend: Target,
    *,
    options: ProfileOptions | None = None,
    rounds: int = 10,
    budget: float | None = None,
    baseline: int = 0,
    labels: Sequence[str] | None = None,
    allow_different_inputs: bool = False,
    plot: Path | None = None,
    progress: Progress | None = None,
) -> CompareReport:
    """Time built artifacts of one backend interleaved (see `compare_runs`)."""
    return compare_runs(
        [(artifact, backend) for artifact in artifacts], options=options, rounds=rounds, budget=budget,
        baseline=baseline, labels=labels, allow_different_inputs=allow_different_inputs, plot=plot,
        progress=progress,
    )  # fmt: skip


def compare_runs(
    runs: Sequence[tuple[Artifact, Target]],
    *,
    options: ProfileOptions | None = None,
    rounds: int = 10,
    budget: float | None = None,
    baseline: int = 0,
    labels: Sequence[str] | None = None,
    allow_different_inputs: bool = False,
    plot: Path | None = None,
    progress: Progress | None = None,
    max_rounds: int | None = None,
) -> CompareReport:
    """Time artifacts interleaved, each on its backend: `rounds` rounds of `options.iterations // rounds` runs
    each, or — with a `budget` in seconds — as many rounds as fit (never fewer than `rounds`, never more than
    `max_rounds` where given). Each round starts one variant later than the one before, so that none always runs
    first (after another's cache traffic, or the round's pause).

    `runs` holds the same variants on every backend, backend after backend (`[a@ort, b@ort, a@ov, b@ov]`);
    `baseline` and `labels` index the variants of one backend. Ratios are taken on the same backend."""
    options = options or ProfileOptions()
    if rounds < MIN_ROUNDS:
        raise TargetError(f"--rounds {rounds}: an interval needs at least {MIN_ROUNDS} interleaved rounds")
    backends = list(dict.fromkeys(backend.name for _, backend in runs))
    per_backend = len(runs) // len(backends)
    if not allow_different_inputs:
        for b in range(len(backends)):
            chunk = runs[b * per_backend : (b + 1) * per_backend]
            check_comparable([artifact for artifact, _ in chunk], chunk[0][1])
    costs = [_cost(artifact) for artifact, _ in runs]
    samples = _interleaved(runs, options, rounds, budget, progress, max_rounds)
    variants = []
    for i, ((artifact, backend), cost, rounds_ns) in enumerate(zip(runs, costs, samples, strict=True)):
        first = i // per_backend * per_backend  # this backend's first variant
        reference, base_cost = samples[first + baseline], costs[first + baseline]
        stats = summarize([s for r in rounds_ns for s in r], options.batch)
        latency = backend.latency_report(artifact, options, stats)
        latency = dataclasses.replace(
            latency, environment={**latency.environment, "interleaved_rounds": str(len(rounds_ns))}
        )
        variants.append(
            Variant(
                model=str(artifact.source if artifact.source.suffix == ".onnx" else artifact.path),
                params=cost.params if cost else 0,
                macs=cost.macs if cost else 0,
                latency=latency,
                speedup=speedup(reference, rounds_ns, seed=options.seed),
                macs_ratio=cost.macs / base_cost.macs if cost and base_cost and base_cost.macs else 1.0,
                rounds_ms=[[s / 1e6 for s in r] for r in rounds_ns],
                label=labels[i % per_backend] if labels else "",
                target=backend.name,
                backend_speedup=(
                    speedup(samples[i % per_backend], rounds_ns, seed=options.seed) if len(backends) > 1 else None
                ),
            )
        )
    first_backend = runs[0][1]
    report = CompareReport(
        target=",".join(backends),
        device=first_backend.device(options),
        rounds=len(samples[0]),
        variants=variants,
        baseline=baseline,
        plot=str(plot) if plot else None,
    )
    if plot is not None:
        plot_comparison(report, plot)
    return report


def check_comparable(artifacts: Sequence[Artifact], backend: Target) -> None:
    """Refuse artifacts whose inputs differ in names, dtypes or non-batch shapes: their latencies answer
    different questions."""
    first = backend.inputs(artifacts[0])
    for other in artifacts[1:]:
        theirs = backend.inputs(other)
        if len(theirs) != len(first) or not all(a.same_as(b) for a, b in zip(first, theirs, strict=True)):
            mine = ", ".join(s.describe() for s in first)
            other_text = ", ".join(s.describe() for s in theirs)
            raise TargetError(
                f"{other.path}: its inputs ({other_text}) differ from those of {artifacts[0].path} ({mine}); "
                "latencies of different inputs are not comparable (--allow-different-inputs to time them anyway)"
            )


def _baseline_index(models: list[Path], baseline: Path | None) -> int:
    if baseline is None:
        return 0
    for i, m in enumerate(models):
        if m.resolve() == Path(baseline).resolve():
            return i
    raise TargetError(f"--baseline {baseline}: not among the models compared ({', '.join(map(str, models))})")


def _cost(artifact: Artifact) -> ModelCost | None:
    if artifact.source.suffix != ".onnx":
        return None  # an engine loaded as it is: its graph is not at hand
    model: ir.Model = load_model(artifact.source)
    return count_costs(model)


def _interleaved(
    runs: Sequence[tuple[Artifact, Target]],
    options: ProfileOptions,
    rounds: int,
    budget: float | None,
    progress: Progress | None,
    max_rounds: int | None = None,
) -> list[list[list[int]]]:
    """samples[run][round] in nanoseconds."""
    per_round = max(1, options.iterations // rounds)
    samples: list[list[list[int]]] = [[] for _ in runs]
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(backend.runner(a, options)) for a, backend in runs]
        for run_once in runners:
            measure(run_once, warmup=options.warmup, iterations=0)
        deadline = None if budget is None else time.monotonic() + budget
        done = 0
        cap = max(rounds, max_rounds) if max_rounds is not None else None
        while done < rounds or (deadline is not None and time.monotonic() < deadline and (cap is None or done < cap)):
            for k in range(len(runners)):  # each round starts one variant later: no variant always runs first
                i = (done + k) % len(runners)
                samples[i].append(measure(runners[i], warmup=0, iterations=per_round))
            done += 1
            if progress is not None:
                progress(done, rounds if deadline is None else max(rounds, done + 1))
    return samples


def plot_comparison(report: CompareReport, path: Path) -> None:
    """MACs ratio vs latency ratio per variant, both against the baseline (the reference point at 1, 1): points
    above the diagonal ran slower than their MACs promise. Several backends: one colour each, every ratio against
    the baseline on the same backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecut.modelfile import check_output_path

    check_output_path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    xs = [v.macs_ratio for v in report.variants]
    ys = [1 / v.speedup.value if v.speedup.value else 1.0 for v in report.variants]
    errors = [
        [y - 1 / v.speedup.high for v, y in zip(report.variants, ys, strict=True)],
        [1 / v.speedup.low - y for v, y in zip(report.variants, ys, strict=True)],
    ]
    top = max(1.1, *xs, *ys) * 1.05
    ax.plot([0, top], [0, top], "--", color="gray", label="latency ∝ MACs")
    targets = report.targets
    for target in targets:
        mine = [i for i, v in enumerate(report.variants) if (v.target or report.target) == target]
        ax.errorbar([xs[i] for i in mine], [ys[i] for i in mine], yerr=[[e[i] for i in mine] for e in errors],
                    fmt="o", capsize=3, zorder=3,
                    label=f"{target} (95 % interval)" if len(targets) > 1 else "variants (95 % interval)")  # fmt: skip
    base = report.variants[report.baseline]
    ax.scatter([1.0], [1.0], marker="*", s=220, color="tab:red", zorder=4, label="baseline (reference)")
    placed: list[tuple[float, float]] = []
    for v, x, y in zip(report.variants, xs, ys, strict=True):
        name = v.label or Path(v.model).name
        if len(targets) > 1:
            name = f"{name} · {v.target}"
        crowd = sum(abs(x - px) < 0.03 and abs(y - py) < 0.03 for px, py in placed)  # labels of points on top
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6 - 11 * crowd), fontsize=8)
        placed.append((x, y))
    ax.set_xlabel(f"MACs / MACs of {base.label or Path(base.model).name}")
    ax.set_ylabel(f"p50 latency / p50 of {base.label or Path(base.model).name}")
    ax.set_title(f"{report.target} on {report.device}"[:70], fontsize=9)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", fontsize=8)
    _save_figure(fig, path)


def plot_pruning_by_precision(report: CompareReport, precision: str, path: Path, seed: int = 0) -> None:
    """The 2×2 of `run --precision P`: dense and lean, each in fp32 and in P (labels baseline-fp32, baseline,
    lean-fp32, lean), p50 with the 10–90 % spread of the rounds' medians, on the first backend; the four ratios,
    each with its interval over the same rounds (`noise.speedup`, as the report's), in a box."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sparsecut.modelfile import check_output_path

    check_output_path(path)
    target = report.targets[0]
    cells = {(dense, kind): report.variant(label, target)
             for (dense, kind), label in {("dense", "fp32"): "baseline-fp32", ("dense", precision): "baseline",
                                          ("lean", "fp32"): "lean-fp32", ("lean", precision): "lean"}.items()}  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    width = 0.38
    for offset, kind, colour in ((-width / 2, "fp32", "tab:gray"), (width / 2, precision, "tab:blue")):
        for x, model in enumerate(("dense", "lean")):
            v = cells[(model, kind)]
            medians = [float(np.median(r)) for r in v.rounds_ms] or [v.latency.p50_ms]
            low, high = np.percentile(medians, [10, 90])
            p50 = v.latency.p50_ms
            ax.bar(x + offset, p50, width, color=colour, label=kind if x == 0 else None,
                   yerr=[[max(p50 - low, 0)], [max(high - p50, 0)]], capsize=4)  # fmt: skip
            ax.annotate(f"{p50:.2f} ms", (x + offset, 0), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=8, color="white", fontweight="bold")  # fmt: skip

    def ratio(reference: tuple[str, str], candidate: tuple[str, str]) -> str:
        s = speedup(cells[reference].rounds_ms, cells[candidate].rounds_ms, seed=seed)
        return f"{s.value:.2f}× ({s.low:.2f}–{s.high:.2f})"

    lines = [
        f"pruning at {precision}: {ratio(('dense', precision), ('lean', precision))}",
        f"pruning at fp32: {ratio(('dense', 'fp32'), ('lean', 'fp32'))}",
        f"{precision} on lean: {ratio(('lean', 'fp32'), ('lean', precision))}",
        f"dense fp32 → lean {precision}: {ratio(('dense', 'fp32'), ('lean', precision))}",
    ]
    ax.text(0.98, 0.97, "\n".join([*lines, "(95 % intervals over the rounds)"]), transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "lightgray"})  # fmt: skip
    ax.set_xticks([0, 1], ["dense baseline", "lean"])
    ax.set_ylabel("p50 latency, ms (bars: 10–90 % of the round medians)")
    ax.set_title(f"pruning × precision, {target} on {report.device}"[:70], fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(0.3, 1.0), fontsize=8)
    _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> None:
    """Write a figure as PNG atomically (staged beside `path`, then moved) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        fig.savefig(staged, format="png")
        staged.replace(path)
    plt.close(fig)
