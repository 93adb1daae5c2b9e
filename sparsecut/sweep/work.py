"""The sweep's work, as functions of bytes in and plain values out, so that they run the same in this process or
in a Ray task on another machine: an input made ONNX (`source_job`), a graph in one precision and channel mode
(`graph_job`), and a timing cell (`timing_job`) — the dense baseline and every lean variant of one input in one
precision, timed interleaved on one device, the measured counts decided there first."""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import time
from pathlib import Path

import onnx

from sparsecut.calibration import Calibration
from sparsecut.cost import count_costs
from sparsecut.errors import SparsecutError
from sparsecut.modelfile import load_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.passes.registry import DEFAULT_PASSES, baseline_passes
from sparsecut.precision import Precision
from sparsecut.report import OptimizeReport, SweepCell, SweepRow
from sparsecut.sweep.grid import SweepInput

__all__ = ["GraphInfo", "graph_job", "measured_job", "resolved_precision", "source_job", "timing_job"]

TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}  # the gate's, for graphs exported from real models (as the benchmarks)


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    params: int
    macs: int
    drift: str  # quantized: against fp32, in words


def source_job(item: SweepInput, data: bytes) -> bytes:
    """The input as one ONNX file's bytes (weights inside): a checkpoint exported and verified, an ONNX file as is."""
    from sparsecut.exporter import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="sparsecut-sweep-") as tmp:
        original = Path(tmp) / item.path.name
        original.write_bytes(data)
        if not item.checkpoint:
            return onnx.load(str(original)).SerializeToString()
        exported = Path(tmp) / "exported.onnx"
        try:
            export_checkpoint(original, exported, arch=item.arch)
        except SparsecutError as exc:  # named as the user knows the file, not as its copy here
            raise type(exc)(str(exc).replace(str(original), str(item.path))) from None
        return onnx.load(str(exported)).SerializeToString()


def resolved_precision(precision: Precision, target: str) -> Precision:
    """int8 without a format: the format `target` runs best."""
    from sparsecut.targets import BuildOptions, get_target

    if precision.kind == "int8" and precision.format is None:
        return precision.in_format(get_target(target).int8_formats(BuildOptions())[0])
    return precision


def options_for(precision: Precision, mode: str, calibration: Path | None) -> OptimizeOptions:
    """The pipeline of a channel mode: "dense" (every pass but channel removal), "align N"."""
    request = PrecisionRequest(precision, calibration=Calibration(source=calibration))
    options = OptimizeOptions(precision=request, **TOLERANCE)  # type: ignore[arg-type]
    if mode == "dense":
        return dataclasses.replace(options, passes=baseline_passes(DEFAULT_PASSES))
    return dataclasses.replace(options, align=int(mode.removeprefix("align ")))


def graph_job(source: bytes, precision: str, mode: str, calibration: bytes | None = None) -> tuple[bytes, GraphInfo]:
    """`source` through the pipeline of `mode` in `precision`, gated; the graph's bytes and what the table shows."""
    with tempfile.TemporaryDirectory(prefix="sparsecut-sweep-") as tmp:
        src, out = Path(tmp) / "source.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(source)
        data = _calibration_file(Path(tmp), calibration)
        report = optimize_model(src, out, options_for(Precision.parse(precision), mode, data))
        return onnx.load(str(out)).SerializeToString(), _info(out, report)


def timing_job(
    target: str,
    device: str,
    input_label: str,
    precision: str,
    modes: list[str],
    infos: dict[str, GraphInfo],
    source: bytes | None,
    rounds: int,
    iterations: int,
    batch: int,
    calibration: bytes | None,
    dense: bytes,
    *lean_graphs: bytes,
) -> SweepCell:
    """One cell: with `source`, the measured counts decided on `target` here first; then the dense graph and every
    lean one (`lean_graphs`, one per mode of `modes`) timed interleaved (`compare`'s runner and interval), each
    row's speedup against dense. (The graphs are positional: Ray hands a task its arguments' values only there.)"""
    leans = dict(zip(modes, lean_graphs, strict=True))
    from sparsecut.passes.measured import optimize_measured
    from sparsecut.targets import ProfileOptions, compare_models
    from sparsecut.targets.tuning import tuning_for

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sparsecut-cell-") as tmp:
        folder = Path(tmp)
        paths = {"dense": folder / "dense.onnx"}
        paths["dense"].write_bytes(dense)
        infos = dict(infos)
        for mode, data in leans.items():
            paths[mode] = folder / f"{mode.replace(' ', '')}.onnx"
            paths[mode].write_bytes(data)
        if source is not None:
            src = folder / "source.onnx"
            src.write_bytes(source)
            paths["measured"] = folder / "measured.onnx"
            options = options_for(Precision.parse(precision), "align 8", _calibration_file(folder, calibration))
            report = optimize_measured(src, paths["measured"], options, tuning_for(target, batch=batch))
            infos["measured"] = _info(paths["measured"], report)
        compared = compare_models(
            list(paths.values()),
            target=target,
            options=ProfileOptions(batch=batch, iterations=iterations, warmup=5, per_layer=False),
            rounds=rounds,
        )
    rows = [
        SweepRow(mode, v.latency.p50_ms, v.speedup, infos[mode].params, infos[mode].macs, infos[mode].drift)
        for mode, v in zip(paths, compared.variants, strict=True)
    ]
    return SweepCell(input_label, precision, f"{target}@{device}", "ok", node=_node(),
                     started=started, ended=time.time(), rows=rows)  # fmt: skip


def _node() -> str:
    """The machine: its host name, and in a Ray task the node's id."""
    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()} {ray.get_runtime_context().get_node_id()}"
    except ImportError:
        pass
    return socket.gethostname()


def _calibration_file(folder: Path, data: bytes | None) -> Path | None:
    if data is None:
        return None
    path = folder / "calibration.npz"
    path.write_bytes(data)
    return path


def _info(path: Path, report: OptimizeReport) -> GraphInfo:
    from sparsecut.passes.measured import drift_in_words

    cost = count_costs(load_model(path))
    precision = report.precision
    drift = drift_in_words(precision) if precision is not None and precision.precision != "fp32" else ""
    return GraphInfo(cost.params, cost.macs, drift)


def measured_job(
    source: bytes, name: str, options: OptimizeOptions, target: str, tuning: dict[str, object]
) -> tuple[bytes, OptimizeReport]:
    """`optimize --target` where this runs (a device node: its latency table is the node's own): the written
    graph's bytes and the report. `tuning`: `tuning_for`'s keyword arguments."""
    from sparsecut.passes.measured import optimize_measured
    from sparsecut.targets.tuning import tuning_for

    with tempfile.TemporaryDirectory(prefix="sparsecut-measured-") as tmp:
        src, out = Path(tmp) / "source.onnx", Path(tmp) / name
        src.write_bytes(source)
        report = optimize_measured(src, out, options, tuning_for(target, **tuning))  # type: ignore[arg-type]
        return onnx.load(str(out)).SerializeToString(), report
