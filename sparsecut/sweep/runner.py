"""Running a sweep: the grid checked against the devices there are, the graph work done once per distinct graph
(content-addressed: an input's bytes, the precision, the channel mode), then every timing cell on its device, one
at a time per device class — results appended to `results.jsonl` as each cell ends, so that `--resume` runs only
the cells not there yet. The executor decides where work runs: this process (`LocalExecutor`), or a Ray cluster
(onray.py). Graph work is finished before any timing starts: no graph is built on a machine while it times.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from sparsecut.errors import InputError, SparsecutError
from sparsecut.modelfile import sha256_of
from sparsecut.report import SweepCell, SweepReport
from sparsecut.sweep.grid import LOCAL, Grid, SweepInput
from sparsecut.sweep.work import GraphInfo, graph_job, resolved_precision, source_job, timing_job

__all__ = ["RESULTS", "Executor", "LocalExecutor", "Progress", "run_sweep"]

RESULTS = "results.jsonl"
HEADER = "SweepHeader"
Progress = Callable[[str, int, int], None]


class Executor(Protocol):
    """Where a sweep's work runs. `submit` returns a handle; a handle may be passed as an argument of later work
    (it stands for its result); `done` yields each timing handle with its cell or the exception it raised."""

    name: str

    def classes(self) -> dict[str, str]:
        """The device classes there are, each with where it lives (for the error that names what is missing)."""
        ...

    def submit(self, fn: Callable[..., Any], *args: Any, returns: int = 1) -> Any:
        """`returns` > 1: `fn` returns a tuple, and a handle per item comes back."""
        ...

    def submit_timing(self, device: str, fn: Callable[..., SweepCell], *args: Any) -> Any: ...

    def wait(self, handles: list[Any]) -> list[Any | BaseException]:
        """The results of graph work, in order (an exception where it failed)."""
        ...

    def done(self, handles: list[Any]) -> Iterator[tuple[Any, SweepCell | BaseException]]: ...


class LocalExecutor:
    """This machine, in this process, one thing at a time: the device class `local`."""

    name = "local"

    def classes(self) -> dict[str, str]:
        return {LOCAL: "this machine"}

    def submit(self, fn: Callable[..., Any], *args: Any, returns: int = 1) -> Any:
        failed = next((a for a in args if isinstance(a, _Failed)), None)
        if failed is None:
            try:
                return fn(*args)
            except Exception as exc:  # one input or cell failing never stops the rest
                failed = _Failed(exc)
        return (failed,) * returns if returns > 1 else failed

    def submit_timing(self, device: str, fn: Callable[..., SweepCell], *args: Any) -> Any:
        return lambda: self.submit(fn, *args)  # run when `done` reaches it: cells stream one by one

    def wait(self, handles: list[Any]) -> list[Any | BaseException]:
        return [h.error if isinstance(h, _Failed) else h for h in handles]

    def done(self, handles: list[Any]) -> Iterator[tuple[Any, SweepCell | BaseException]]:
        for handle in handles:
            result = handle()
            yield handle, result.error if isinstance(result, _Failed) else result


@dataclasses.dataclass
class _Failed:
    error: BaseException


@dataclasses.dataclass(frozen=True)
class _Cell:
    input: SweepInput
    precision: str  # resolved for the cell's target
    device: str  # TARGET@CLASS
    target: str
    device_class: str

    @property
    def key(self) -> str:
        return f"{self.input.label} | {self.precision} | {self.device}"


def run_sweep(
    grid: Grid,
    out: Path,
    executor: Executor | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> SweepReport:
    """Run every cell of `grid` not already in `out/results.jsonl` (with `resume`), appending each as it ends."""
    executor = executor or LocalExecutor()
    start = time.perf_counter()
    available = executor.classes()
    missing = [c for c in grid.classes if c not in available]
    if missing:
        where = ", ".join(f"{c} ({w})" for c, w in sorted(available.items())) or "none"
        raise InputError(f"sweep: no node has device class {missing[0]!r} (there are: {where})")
    results = out / RESULTS
    digest = grid.digest()
    earlier = _resumed(results, digest) if resume else {}
    if not resume and out.exists():
        raise InputError(f"{out}: exists; a sweep writes a new folder (or continues its own with --resume)")
    out.mkdir(parents=True, exist_ok=True)
    if not results.exists():
        _append(results, {"kind": HEADER, "grid": digest, "devices": [str(d) for d in grid.devices]})
    cells = [
        _Cell(item, str(resolved_precision(p, d.target)), str(d), d.target, d.device)
        for item in grid.inputs
        for p in grid.precisions
        for d in grid.devices
    ]
    todo = [c for c in cells if c.key not in earlier]
    finished = [earlier[c.key] for c in cells if c.key in earlier]
    aligns = [m for m in grid.modes if m != "measured"]
    calibration = grid.calibration.read_bytes() if grid.calibration is not None else None
    # graph work, each distinct graph once: the source per input, then per precision and mode
    contents = {item: sha256_of(item.path)[:16] for item in {c.input for c in todo}}  # (read once per input)

    def address(item: SweepInput, precision: str, mode: str) -> str:
        """A graph's content address: its input's bytes and architecture, its precision and channel mode."""
        return f"{contents[item]}/{item.arch or ''}/{precision}/{mode}"

    sources, graphs = {}, {}
    for item in {c.input for c in todo}:
        sources[item] = executor.submit(source_job, item, item.path.read_bytes())
    wanted = {(c.input, c.precision, mode) for c in todo for mode in ("dense", *aligns)}
    for item, precision, mode in sorted(wanted, key=lambda k: (k[0].label, k[1], k[2])):
        key = address(item, precision, mode)
        if key not in graphs:  # (bytes, info): the bytes stay where they are built until a cell needs them
            graphs[key] = executor.submit(graph_job, sources[item], precision, mode, calibration, returns=2)
    if progress is not None:
        progress("building graphs", 0, len(graphs))
    infos = dict(zip(graphs, executor.wait([info for _, info in graphs.values()]), strict=True))
    if progress is not None:
        progress("building graphs", len(graphs), len(graphs))
    handles = {}
    for cell in todo:
        keys = {mode: address(cell.input, cell.precision, mode) for mode in ("dense", *aligns)}
        failure = next((infos[k] for k in keys.values() if isinstance(infos[k], BaseException)), None)
        if failure is not None:
            finished.append(_failed(cell, failure))
            _append(results, finished[-1].to_dict())
            continue
        shown: dict[str, GraphInfo] = {mode: typing.cast(GraphInfo, infos[key]) for mode, key in keys.items()}
        source = sources[cell.input] if "measured" in grid.modes else None
        handles[executor.submit_timing(cell.device_class, timing_job, cell.target, cell.device_class,
                                       cell.input.label, cell.precision, aligns, shown, source, grid.rounds,
                                       grid.iterations, grid.batch, calibration, graphs[keys["dense"]][0],
                                       *(graphs[keys[m]][0] for m in aligns))] = cell  # fmt: skip
    for i, (handle, result) in enumerate(executor.done(list(handles))):
        cell = handles[handle]
        outcome = result if isinstance(result, SweepCell) else _failed(cell, result)
        finished.append(outcome)
        _append(results, outcome.to_dict())
        if progress is not None:
            progress(f"timing cells ({outcome.key}: {outcome.status})", i + 1, len(handles))
    order = {c.key: i for i, c in enumerate(cells)}
    finished.sort(key=lambda c: order.get(c.key, len(order)))
    return SweepReport(digest, [str(d) for d in grid.devices], executor.name, finished,
                       time.perf_counter() - start)  # fmt: skip


def _failed(cell: _Cell, error: BaseException) -> SweepCell:
    return SweepCell(cell.input.label, cell.precision, cell.device, "failed", reason=_reason(error))


def _reason(error: BaseException) -> str:
    """One line: the user's error as sparsecut words it, else the exception's type and first line."""
    cause = getattr(error, "cause", None) or error  # (Ray wraps a task's exception: its cause is the original)
    if isinstance(cause, SparsecutError):
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:300]}" if text else type(cause).__name__


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _resumed(results: Path, digest: str) -> dict[str, SweepCell]:
    """The cells a sweep of the same grid finished before (failed ones run again)."""
    if not results.is_file():
        raise InputError(f"{results}: no such file; --resume continues a sweep in its own folder")
    lines = results.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("kind") != HEADER:
        raise InputError(f"{results}: not a sparsecut sweep's results")
    if header.get("grid") != digest:
        raise InputError(f"{results}: written by another grid (or its inputs changed); --resume continues the same")
    found = {}
    for line in lines[1:]:
        try:
            cell = SweepCell.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, KeyError):
            continue  # a line cut short by an interruption
        if cell.status == "ok":
            found[cell.key] = cell
    return found
