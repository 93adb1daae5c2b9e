"""The per-layer latency lookup table behind measured decisions: one layer (its real kernel, stride, dilation,
groups, spatial size, batch, and the precision it will run in — an int8 layer in its format's Q/DQ) at one
channel count, timed once on a device and kept on disk.

Every entry keeps its noise beside its median — the half-width of the median's 95 % interval over the runs —
so that a choice between two counts can tell a saving from the spread of the timings (`Timed.beats`).

A table belongs to one measuring context — device, backend name and version, threads, batch — and is stored
under that key: a file written on another CPU or by another onnxruntime answers nothing here (a different key
misses), and a file that is unreadable or not ours is ignored with a warning, never trusted. A second run on the
same device measures nothing it already knows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["LatencyTable", "LayerSignature", "LayerTimer", "Timed", "default_table_path", "median_interval"]

log = logging.getLogger(__name__)

FORMAT = "sparsecut-latency-table/2"  # /1 kept no noise: its tables are measured afresh


@dataclasses.dataclass(frozen=True)
class Timed:
    """A median time and its noise: the half-width of its 95 % interval (milliseconds)."""

    ms: float
    noise: float = 0.0

    def __add__(self, other: Timed) -> Timed:
        return Timed(self.ms + other.ms, math.hypot(self.noise, other.noise))

    def beats(self, other: Timed) -> bool:
        """Faster than `other` by more than the noise of the two."""
        return self.ms + math.hypot(self.noise, other.noise) < other.ms


def median_interval(samples: Sequence[float]) -> Timed:
    """The median of `samples` and the half-width of its distribution-free 95 % interval (the order statistics
    n/2 ± 0.98·√n: no assumption on the shape of timing noise, which is skewed)."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        raise ValueError("no samples")
    middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    low = ordered[max(0, math.floor(n / 2 - 0.98 * math.sqrt(n)))]
    high = ordered[min(n - 1, math.ceil(n / 2 + 0.98 * math.sqrt(n)))]
    return Timed(middle, (high - low) / 2)


@dataclasses.dataclass(frozen=True)
class LayerSignature:
    """A Conv (or Gemm/MatMul, as a 1×1 "conv" over its rows) as the target sees it."""

    op: str  # Conv | Gemm | MatMul
    c_in: int
    c_out: int
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    groups: int = 1
    spatial: tuple[int, ...] = ()  # input spatial dims (Conv), or the rows of a Gemm/MatMul
    batch: int = 1
    precision: str = "fp32"  # str(Precision): fp32, fp16, "int8 FORMAT" — the layer as it will run

    def key(self) -> str:
        """fp32 keys are the fields without the precision (tables written before it was a field stay valid)."""
        fields = dataclasses.astuple(self)
        return json.dumps(fields[:-1] if self.precision == "fp32" else fields, separators=(",", ":"))

    def with_channels(self, c_in: int | None = None, c_out: int | None = None) -> LayerSignature:
        """The same layer with other channel counts; a depthwise conv keeps one channel per group."""
        new_in = self.c_in if c_in is None else c_in
        new_out = self.c_out if c_out is None else c_out
        groups = self.groups
        if self.groups > 1 and self.groups == self.c_in == self.c_out:
            groups = new_in = new_out = c_in if c_in is not None else new_out
        return dataclasses.replace(self, c_in=new_in, c_out=new_out, groups=groups)


class LayerTimer(Protocol):
    """What a target offers measured decisions: the context its numbers hold in, and one layer's time."""

    def context(self) -> dict[str, str]:
        """device, backend, version, threads, batch: the key a table is stored under."""
        ...

    def time_layer(self, layer: LayerSignature) -> Timed | float:
        """Milliseconds of one run of `layer` alone: the median and its noise (a bare float: no noise known)."""
        ...


class LatencyTable:
    """Milliseconds (median, noise) by layer signature, for one context; `lookup` measures what it does not know."""

    def __init__(self, path: Path | None, context: Mapping[str, str]) -> None:
        self.path = path
        self.context = dict(context)
        self.key = json.dumps(self.context, sort_keys=True)
        self.entries: dict[str, Timed] = {}
        self._others: dict[
            str, dict[str, list[float]]
        ] = {}  # tables of other contexts in the same file, kept as they are
        self.hits = 0
        self.misses = 0
        self.measuring_seconds = 0.0
        if path is not None and path.exists():
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") == "sparsecut-latency-table/1":
                log.warning("%s: written by an older sparsecut, without the noise of its times; measuring afresh", path)
                return
            if data.get("format") != FORMAT or not isinstance(data.get("tables"), dict):
                raise ValueError("not a sparsecut latency table")
            tables = {
                str(k): {str(sig): [float(ms), float(noise)] for sig, (ms, noise) in v.items() if float(ms) > 0}
                for k, v in data["tables"].items()
            }
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s: ignored, not a readable sparsecut latency table (%s); measuring afresh", path, exc)
            return
        self.entries = {sig: Timed(ms, noise) for sig, (ms, noise) in tables.pop(self.key, {}).items()}
        self._others = tables

    def known(self, layer: LayerSignature) -> bool:
        return layer.key() in self.entries

    def lookup(self, layer: LayerSignature, timer: LayerTimer) -> Timed:
        key = layer.key()
        if key in self.entries:
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        start = time.perf_counter()
        measured = timer.time_layer(layer)
        self.measuring_seconds += time.perf_counter() - start
        timed = measured if isinstance(measured, Timed) else Timed(float(measured))
        self.entries[key] = timed
        return timed

    def save(self) -> None:
        """Write the table (atomically); other contexts' tables in the file stay."""
        if self.path is None:
            return
        from sparsecut.modelfile import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tables = {**self._others, self.key: {sig: [t.ms, t.noise] for sig, t in self.entries.items()}}
        atomic_write_text(self.path, json.dumps({"format": FORMAT, "tables": tables}, indent=1) + "\n")


def default_table_path() -> Path:
    """Under the user's cache folder (`XDG_CACHE_HOME`, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsecut" / "latency-table.json"
