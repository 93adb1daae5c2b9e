"""The result types every sparsecut step returns, and their JSON form.

A report is a frozen dataclass of plain values (and nested reports). `to_dict` / `from_dict` round-trip
through JSON exactly; the CLI renders the same objects as rich tables.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "BuildReport",
    "ChannelGroupReport",
    "CompareReport",
    "CountDecision",
    "DecoderCompareReport",
    "DecoderRatio",
    "DecoderVariant",
    "EnforcedLayer",
    "ExportReport",
    "LatencyReport",
    "LayerCost",
    "LayerDiff",
    "LayerDiffReport",
    "LayerDrift",
    "LayerTime",
    "MeasuredDecision",
    "MeasuredVariant",
    "ModelCost",
    "OptimizeReport",
    "OutputCheck",
    "OutputDrift",
    "PassReport",
    "PrecisionReport",
    "Report",
    "RunOff",
    "RunReport",
    "SparsityLayer",
    "Speedup",
    "TwoFourRestore",
    "Variant",
    "decibels",
    "write_json",
]

SCHEMA_VERSION = 1

R = TypeVar("R", bound="Report")


@dataclasses.dataclass(frozen=True)
class Report:
    """Base of all reports: JSON conversion driven by the dataclass fields and their type hints."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "schema": SCHEMA_VERSION, **_plain(self)}

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        data = {k: v for k, v in data.items() if k not in ("kind", "schema")}
        return typing.cast(R, _build(cls, data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def map_strings(self: R, change: Callable[[str], str]) -> R:
        """The same report with `change` applied to every string in it (paths moved from staging into place)."""
        return type(self).from_dict(_map_strings(self.to_dict(), change))


def _map_strings(obj: Any, change: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return change(obj)
    if isinstance(obj, list):
        return [_map_strings(v, change) for v in obj]
    if isinstance(obj, dict):
        return {k: _map_strings(v, change) for k, v in obj.items()}
    return obj


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _build(hint: Any, value: Any) -> Any:
    """Rebuild `value` (plain JSON) into the type `hint` names."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _build(options[0], value) if len(options) == 1 else value
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1]
        built = [_build(item, v) for v in value]
        return tuple(built) if origin is tuple else built
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _build(item, v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        names = {f.name for f in dataclasses.fields(hint)}
        factory: Any = hint
        return factory(**{k: _build(hints[k], v) for k, v in value.items() if k in names})
    return value


def write_json(report: Report, path: Path) -> None:
    """Write a report as JSON, atomically (a reader never sees half a file)."""
    from sparsecut.modelfile import atomic_write_text

    atomic_write_text(path, report.to_json() + "\n")


@dataclasses.dataclass(frozen=True)
class OutputCheck(Report):
    """One comparison of a reference against a candidate on one seeded input batch."""

    batch_size: int
    max_abs_error: float
    max_rel_error: float  # max |a - b| / max |reference|
    passed: bool
    label: str = ""  # what was fed, where it is not a seeded random batch (a decoder's generation: its lengths, seed)


@dataclasses.dataclass(frozen=True)
class ExportReport(Report):
    """What `sparsecut export` did: from which checkpoint, how, and how closely ONNX matches PyTorch."""

    checkpoint: str
    checkpoint_sha256: str
    output: str
    architecture: str
    exporter: str  # "dynamo" or "torchscript"
    exporter_note: str | None
    opset: int
    input_shape: list[int]
    parameters: int
    zero_parameters: int
    folded_masks: list[str]
    resized_layers: list[str]
    checks: list[OutputCheck]
    rtol: float
    atol: float
    external_data: bool
    export_seconds: float
    verify_seconds: float
    versions: dict[str, str]
    nodes_exported: int = 0  # as torch.onnx wrote the graph
    nodes: int = 0  # after cleaning: what the file holds

    @property
    def max_abs_error(self) -> float:
        return max(c.max_abs_error for c in self.checks)

    @property
    def max_rel_error(self) -> float:
        return max(c.max_rel_error for c in self.checks)


@dataclasses.dataclass(frozen=True)
class LayerCost(Report):
    """Multiply-accumulates and weights of one node (per sample: symbolic batch counts as 1)."""

    node: str
    op_type: str
    macs: int
    params: int


@dataclasses.dataclass(frozen=True)
class ModelCost(Report):
    macs: int
    params: int
    layers: list[LayerCost]


@dataclasses.dataclass(frozen=True)
class ChannelGroupReport(Report):
    """One coupled channel group: where it lives, channels before → after, and why dead channels were kept."""

    group: int
    location: str
    tensors: int
    channels_before: int
    channels_after: int
    dead: int
    kept_dead: dict[str, int]  # reason → how many dead channels it kept
    kept_for_alignment: int


@dataclasses.dataclass(frozen=True)
class HeadReport(Report):
    """One multi-head attention block: its heads, how many contribute nothing or a constant (dead), how many go,
    and why dead heads stay."""

    location: str
    heads: int
    kv_heads: int
    head_dim: int
    dead: int
    removable: int
    kept: dict[str, int]  # reason → dead heads it kept
    qk_dim_after: int = 0  # head dims of q/k and of v that stay (in every kept head)
    v_dim_after: int = 0
    cache: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # KV cache input/output → K/V heads kept


@dataclasses.dataclass(frozen=True)
class TwoFourRestore(Report):
    """Weights that were 2:4 and whose input channels lost members: could a channel order restore 2:4?"""

    weights: list[str]  # every 2:4 weight reading the same channels (one order serves them all)
    channels_before: int
    channels_after: int
    restored: bool
    reordered: bool  # False when the kept channels already form valid groups of 4 in place
    reason: str | None  # why not restored
    seconds: float


@dataclasses.dataclass(frozen=True)
class PassReport(Report):
    name: str
    modified: bool
    seconds: float
    summary: str
    groups: list[ChannelGroupReport] = dataclasses.field(default_factory=list)
    # op type (no rule registered) → nodes that stopped channels
    barriers: dict[str, int] = dataclasses.field(default_factory=dict)
    # "op: the condition its rule declined on" → nodes that stopped channels
    declined: dict[str, int] = dataclasses.field(default_factory=dict)
    sparsity: list[SparsityLayer] = dataclasses.field(default_factory=list)
    two_four: list[TwoFourRestore] = dataclasses.field(default_factory=list)  # remove-dead-channels: 2:4 kept?
    rule_errors: list[str] = dataclasses.field(default_factory=list)  # rules that failed: barriers, with why
    heads: list[HeadReport] = dataclasses.field(default_factory=list)  # remove-dead-channels: attention blocks


@dataclasses.dataclass(frozen=True)
class EnforcedLayer(Report):
    """What enforce-2to4 did to one weight."""

    node: str
    weight: str
    pruned: bool
    magnitude_kept: float  # Σ|w| after / Σ|w| before
    skipped_because: str | None
    magnitude_kept_without_permutation: float = 1.0  # what pruning in the original channel order would keep
    permutation: str = "not searched"  # "reordered", "no better order found", or why the channels stay in place


def decibels(value: float | None) -> str:
    """An SQNR as the tables show it: one decimal, "exact" for a bit-exact tensor (None)."""
    return "exact" if value is None else f"{value:.1f}"


@dataclasses.dataclass(frozen=True)
class OutputDrift(Report):
    """One output of a converted graph against the fp32 graph, on the held-out samples."""

    COLUMNS = ("output", "max abs", "mean abs", "cosine", "SQNR dB", "top-1 agreement")

    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float  # of the flattened outputs
    sqnr_db: float | None  # 10·log10(Σ a² / Σ (a − b)²); None: bit-exact
    top1_agreement: float | None  # class scores (N×K): share of samples whose argmax survived

    def cells(self) -> tuple[str, ...]:
        """Its row under COLUMNS (terminal and report.md alike)."""
        top1 = "-" if self.top1_agreement is None else f"{100 * self.top1_agreement:.1f} %"
        return (self.name, f"{self.max_abs_error:.3g}", f"{self.mean_abs_error:.3g}", f"{self.cosine:.5f}",
                decibels(self.sqnr_db), top1)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LayerDrift(Report):
    """One quantized layer's output against its fp32 twin, on the held-out samples."""

    COLUMNS = ("node", "module", "op", "input SQNR dB", "output SQNR dB", "lost dB")

    node: str
    op: str
    module: str  # the PyTorch module it came from, where the graph tells
    sqnr_db: float | None  # of the value the next layers read; None: bit-exact
    input_sqnr_db: float | None  # of the input it reads (the worst, for two activations)
    loss_db: float  # input SQNR − output SQNR: what this layer's rounding added (an exact one counts as 300 dB)

    def cells(self) -> tuple[str, ...]:
        """Its row under COLUMNS (terminal and report.md alike)."""
        return (self.node, self.module or "-", self.op, decibels(self.input_sqnr_db), decibels(self.sqnr_db),
                f"{self.loss_db:.1f}")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PrecisionReport(Report):
    """A precision conversion (exempt from the equivalence gate by design) and the drift it caused."""

    precision: str
    calibration: str
    samples: int  # calibrating
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None  # share of samples whose argmax survived (classifiers)
    notes: list[str] = dataclasses.field(default_factory=list)
    format: str = ""  # int8: the format written (sparsecut/quantization.py)
    held_out: int = 0  # samples the drift is measured on, never calibrated on
    method: str = ""  # int8: the calibrator (minmax, entropy, percentile)
    outputs: list[OutputDrift] = dataclasses.field(default_factory=list)
    layers: list[LayerDrift] = dataclasses.field(default_factory=list)  # int8: worst loss first
    kept_fp32: list[str] = dataclasses.field(default_factory=list)  # int8: nodes left in fp32 (asked or fallen back)
    fallback: list[str] = dataclasses.field(default_factory=list)  # of those, put back by --max-drift, in order
    bound: str = ""  # --max-drift, as stated, and whether it holds


@dataclasses.dataclass(frozen=True)
class Speedup(Report):
    """p50 of a reference / p50 of a candidate, timed interleaved, with its bootstrap interval over the rounds."""

    value: float
    low: float
    high: float
    confidence: float = 0.95

    @property
    def within_noise(self) -> bool:
        return self.low <= 1.0 <= self.high

    def describe(self) -> str:
        """`1.93× (95 % interval 1.88–1.97)`, and `, within noise` when the interval holds 1."""
        text = f"{self.value:.2f}× ({100 * self.confidence:.0f} % interval {self.low:.2f}–{self.high:.2f})"
        return text + (", within noise" if self.within_noise else "")


@dataclasses.dataclass(frozen=True)
class CountDecision(Report):
    """How many channels one channel space keeps, chosen by measured latency."""

    location: str
    original: int
    live: int  # the fewest the analysis allows
    chosen: int
    predicted_ms: dict[str, float]  # candidate count → predicted time of the layers touching the space
    noise_ms: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # candidate count → its noise (95 % half-width)
    # the counts timed where the layers live (the whole model's profile): count → ms, and its noise
    in_context_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    in_context_noise_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    proposed: int | None = None  # the one-layer table's choice, when the context chose otherwise


@dataclasses.dataclass(frozen=True)
class MeasuredVariant(Report):
    name: str  # "input", "align N", "measured"; the precision round: "fp32", "fp16", "int8 FORMAT"
    model: str
    p50_ms: float
    speedup: Speedup  # p50 of the input / p50 of this one
    drift: str = ""  # the precision round: accuracy on the held-out samples, in words
    same_as: str = ""  # the earlier candidate whose graph this one is (the two timed once, sharing the timing)


@dataclasses.dataclass(frozen=True)
class RunOff(Report):
    """The two fastest lean candidates (distinct graphs) timed against each other again after the comparison of
    all: a slow spell of the machine can turn one comparison (timm ResNeXt-26ts on a shared 2-core CPU: align 1
    once timed 13 % slower than align 8, in the comparison after 5 % faster). The second window confirms the first
    (or differs within noise or by less than 2 %: the first stands), or a third decides: the one faster in two of
    three is written."""

    finalists: list[str]  # the fastest in the comparison of all first
    ratios: list[float]  # per window, p50 of the second finalist / p50 of the first (window 1: the comparison of all)
    winner: str

    def describe(self) -> str:
        """`align 1 vs align 8 per window: 1.04×, 0.97×, 1.02×: align 1 faster in two of three`."""
        shown = ", ".join(f"{r:.2f}×" for r in self.ratios)
        if len(self.ratios) == 3:
            outcome = f"{self.winner} faster in two of three"
        elif self.ratios[-1] >= 1.0:
            outcome = f"{self.winner} faster in both"
        else:
            outcome = f"{self.winner} kept (the second window within noise or 2 %)"
        return f"{self.finalists[0]} vs {self.finalists[1]} per window: {shown}: {outcome}"


@dataclasses.dataclass(frozen=True)
class MeasuredDecision(Report):
    """`optimize --target`: channel counts chosen on the target, then the candidates timed end to end."""

    target: str
    context: dict[str, str]  # device, backend, version, threads, batch: what the numbers hold for
    groups: list[CountDecision]
    variants: list[MeasuredVariant]
    written: str  # the variant written
    pays: bool  # the written variant beats the input beyond noise
    verdict: str
    table: str | None
    table_hits: int
    table_misses: int
    measuring_seconds: float
    budget_exhausted: bool
    # --precision int8: the lean graph in each int8 format the target offers and in fp32, timed interleaved
    formats: list[MeasuredVariant] = dataclasses.field(default_factory=list)
    int8_pays: bool | None = None  # the written int8 format beats fp32 beyond noise (None: no int8 asked)
    precision_written: str = ""  # the precision round's choice: "fp32", "fp16", "int8 FORMAT"
    refused: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # precision → why --max-drift refused it (untimed)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # the measured counts, by space key
    counts_align: int = 0  # the alignment of every space `counts` does not name (optimize's --align: the same graph)
    proposed_counts: dict[str, int] = dataclasses.field(default_factory=dict)  # the one-layer table's, by space key
    run_off: RunOff | None = None  # the two fastest timed again (None: one lean graph, or a target that builds)


@dataclasses.dataclass(frozen=True)
class StaircaseStep(Report):
    count: int  # channels kept
    ms: float  # the layers touching the group, in the whole model on the target
    noise_ms: float  # half-width of its 95 % interval


@dataclasses.dataclass(frozen=True)
class GroupAdvice(Report):
    """One coupled channel group's latency staircase in context."""

    location: str
    module: str  # the module a pruner knows it by (its writer's weight, less ".weight")
    original: int
    live: int  # channels not dead (the original count in a dense model)
    staircase: list[StaircaseStep]  # largest count first; the first is the full width
    round_to: int  # the channel step the target rewards here (Torch-Pruning's round_to)


@dataclasses.dataclass(frozen=True)
class LatencyPlan(Report):
    """The fewest channels removed to reach `ratio` × the full-width latency, by the staircases' sums."""

    ratio: float
    predicted_ms: float
    dense_ms: float
    counts: dict[str, int]  # module → channels to keep
    removed: int
    pruning_ratio_dict: dict[str, float]  # module → fraction of its channels to remove (Torch-Pruning's)


@dataclasses.dataclass(frozen=True)
class AdviceReport(Report):
    """`sparsecut advise`: per group, the counts the target rewards; a plan for a latency goal."""

    model: str
    target: str
    context: dict[str, str]
    dense_ms: float  # the full-width model's layers, summed from the same profiles
    dense_noise_ms: float
    groups: list[GroupAdvice]
    skipped: dict[str, str]  # group → why it was not probed
    plan: LatencyPlan | None
    torch_pruning: dict[str, object]  # arguments for Torch-Pruning's pruner: round_to (and the plan's ratios)


@dataclasses.dataclass(frozen=True)
class OptimizeReport(Report):
    """What `sparsecut optimize` (or `inspect`, with `output=None`) found and did."""

    input: str
    output: str | None
    passes: list[PassReport]
    before: ModelCost
    after: ModelCost
    checks: list[OutputCheck]
    verified: bool
    rtol: float
    atol: float
    seconds: float
    precision: PrecisionReport | None = None
    enforced: list[EnforcedLayer] = dataclasses.field(default_factory=list)  # --enforce-2to4: changes the model
    lost_two_four: list[str] = dataclasses.field(default_factory=list)  # weights 2:4 in the input, not in the output
    decision: MeasuredDecision | None = None  # --target: how the channel counts were chosen
    notes: list[str] = dataclasses.field(default_factory=list)  # how the input was read, where that needs saying


@dataclasses.dataclass(frozen=True)
class LayerTime(Report):
    """One kernel of a profiled run beside the MACs of the graph node(s) it ran."""

    name: str
    op_type: str
    ms: float  # mean per inference
    time_pct: float
    macs: int
    macs_pct: float
    gmacs_per_s: float  # achieved: macs / time
    nodes: list[str] = dataclasses.field(default_factory=list)  # the graph nodes whose work it did (fused: all)
    module: str = ""  # the module path the user knows it by (exporter metadata or its weight's name), if known
    # a kernel of the backend's own (a layout reorder): the source graph's tensors it writes or reads, outputs first,
    # where the backend says (onnxruntime: from the graph the profiled session ran)
    tensors: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LatencyReport(Report):
    """Latency of one model on one device, measured — never estimated."""

    model: str
    target: str
    device: str
    batch: int
    precision: str
    threads: int | None
    warmup: int
    iterations: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    throughput: float  # samples per second: batch · iterations / total time
    environment: dict[str, str]
    layers: list[LayerTime] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LayerDiff(Report):
    """One layer before → after pruning: its time and MACs on both sides, and why its time fell less."""

    node: str
    module: str
    op_before: str
    op_after: str
    ms_before: float
    ms_after: float
    macs_before: int
    macs_after: int
    mac_ratio: float  # after / before
    time_ratio: float  # after / before
    flags: list[str]  # why its time fell much less than its MACs (empty: it did not)


@dataclasses.dataclass(frozen=True)
class LayerDiffReport(Report):
    """`profile after.onnx --baseline before.onnx`: the layers of both, paired by node name."""

    before: str
    after: str
    target: str
    device: str
    block: int  # the channel block the alignment reason is judged by
    p50_before_ms: float
    p50_after_ms: float
    layers_before_ms: float  # sum of the per-layer times (beside the end-to-end p50: what the view covers)
    layers_after_ms: float
    paired: int
    layers: list[LayerDiff]
    # the paired layers whose MACs pruning cut, their time summed; the rest of the per-layer time is what pruning
    # left (layers it did not cut, pooling, elementwise, layout and precision conversions)
    shrunk: int = 0
    shrunk_before_ms: float = 0.0
    shrunk_after_ms: float = 0.0
    # Amdahl's bound from the measured rest: the per-layer speedup over the baseline were the shrunk layers free
    # (None: nothing else took time)
    ceiling: float | None = None

    def split(self) -> str:
        """The shrunk layers against the rest, before → after, and the bound, in words."""
        rest_before = self.layers_before_ms - self.shrunk_before_ms
        rest_after = self.layers_after_ms - self.shrunk_after_ms
        share = 100 * rest_after / self.layers_after_ms if self.layers_after_ms else 0.0
        ratio = self.shrunk_before_ms / self.shrunk_after_ms if self.shrunk_after_ms else 0.0
        bound = f"at most {self.ceiling:.2f}×" if self.ceiling is not None else "no bound"
        return (
            f"the {self.shrunk} layers pruning shrank: {self.shrunk_before_ms:.3f} → {self.shrunk_after_ms:.3f} ms "
            f"({ratio:.2f}×); the rest (layers it left, pooling, elementwise, layout and precision conversions): "
            f"{rest_before:.3f} → {rest_after:.3f} ms, {share:.0f} % of the lean model's — were the shrunk layers "
            f"free, {bound} over the baseline (per-layer sums of one profile each: no interval)"
        )


@dataclasses.dataclass(frozen=True)
class BuildReport(Report):
    target: str
    source: str
    artifact: str
    precision: str
    sparsity: bool
    seconds: float
    environment: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)
    sparse_layers: list[str] = dataclasses.field(default_factory=list)  # TensorRT: layers run with sparse kernels
    expected_sparse: list[str] = dataclasses.field(default_factory=list)  # weights that were 2:4 before the build


@dataclasses.dataclass(frozen=True)
class Variant(Report):
    """One model of a comparison."""

    model: str
    params: int
    macs: int
    latency: LatencyReport
    speedup: Speedup  # p50 of the baseline / p50 of this one
    macs_ratio: float  # MACs of this one / MACs of the baseline
    rounds_ms: list[list[float]] = dataclasses.field(default_factory=list)  # the samples, round by round
    label: str = ""  # its role where the caller gave one: "exported", "baseline", "lean"
    target: str = ""  # the backend it ran on (several in one comparison: `--target onnxruntime,openvino`)
    backend_speedup: Speedup | None = None  # several backends: p50 of it on the first backend / on this one


@dataclasses.dataclass(frozen=True)
class CompareReport(Report):
    target: str
    device: str
    rounds: int
    variants: list[Variant]
    baseline: int = 0  # index of the variant every ratio is taken against
    plot: str | None = None

    def variant(self, label: str, target: str | None = None) -> Variant:
        return next(v for v in self.variants if v.label == label and target in (None, v.target))

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(v.target or self.target for v in self.variants))


@dataclasses.dataclass(frozen=True)
class DecoderVariant(Report):
    """One KV-cache decoder timed by `compare` (targets/decoding.py): prefill and decode p50s, ratios vs the
    baseline with their intervals."""

    label: str
    model: str
    params: int
    weight_bytes: int
    kv_bytes_per_token: int  # the cache one token adds, all layers, K and V
    kv_heads: list[int]  # per layer
    prefill_ms: dict[str, float]  # prompt length → p50 ms (time to first token)
    decode_ms: dict[str, float]  # context length → p50 ms per token
    prefill_speedup: dict[str, Speedup] = dataclasses.field(default_factory=dict)  # vs the baseline
    decode_speedup: dict[str, Speedup] = dataclasses.field(default_factory=dict)
    decode_layers: list[LayerTime] = dataclasses.field(default_factory=list)  # a decode step, per node, largest first
    decode_by_op: dict[str, float] = dataclasses.field(default_factory=dict)  # a decode step, ms per op type (all)
    # peak memory its session added while loading and warming at the longest prompt and context: the process's peak
    # RSS (reset before it loads) over its RSS before; where the peak cannot be reset, the RSS after warm-up instead
    memory_mb: float | None = None

    def tokens_per_s(self, context: int) -> float:
        return 1000.0 / self.decode_ms[str(context)]


@dataclasses.dataclass(frozen=True)
class DecoderRatio(Report):
    """One more ratio from the same interleaved rounds: `candidate` against `reference` (not the baseline) —
    the pruning speedup at int4, the int4 speedup of the lean model."""

    name: str
    reference: str
    candidate: str
    decode: dict[str, Speedup]  # per context length
    prefill: dict[str, Speedup]  # per prompt length


@dataclasses.dataclass(frozen=True)
class DecoderCompareReport(Report):
    """`compare` of KV-cache decoders: prefill (time to first token) and decode (per token), interleaved."""

    target: str
    device: str
    rounds: int
    steps: int
    variants: list[DecoderVariant]
    baseline: int = 0
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    layers: int = 0  # the costliest nodes of a decode step to show (each variant's list holds them all)
    ratios: list[DecoderRatio] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RunReport(Report):
    """`sparsecut run`: export → optimize → build → compare, in one report.

    Three variants are timed together: the exported file, the dense baseline (every pass but channel removal)
    and lean. `pruning` = baseline / lean is what channel removal bought; `cleanup` = exported / baseline is what
    graph cleanup (and a precision change, if asked) bought; `total` = exported / lean = cleanup × pruning.
    With a precision other than fp32, baseline and lean are also timed in fp32 (the 2×2 of pruning × precision):
    `quantization` = lean fp32 / lean, `pruning_fp32` = baseline fp32 / lean fp32."""

    export: ExportReport
    optimize: OptimizeReport
    baseline: OptimizeReport
    builds: list[BuildReport]
    compare: CompareReport
    pruning: Speedup
    cleanup: Speedup
    total: Speedup
    quantization: Speedup | None = None
    pruning_fp32: Speedup | None = None
    # with a precision other than fp32: per precision (it and fp32), baseline → lean profiled layer by layer on the
    # first backend — the layers pruning shrank and the rest, which bounds what pruning can give at that precision
    layers: dict[str, LayerDiffReport] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SparsityLayer(Report):
    """2:4 status of one weight along its reduction axis."""

    node: str
    weight: str
    op_type: str
    reduction: int  # length of the reduction axis (C/g for a conv, K for a Gemm/MatMul)
    outputs: int
    is_2to4: bool
    violating_share: float  # groups of 4 with fewer than 2 zeros
    padded: bool  # reduction length not a multiple of 4: the last group is padded with zeros conceptually
    too_small: bool  # TensorRT mostly picks sparse kernels from ~256 channels on


@dataclasses.dataclass(frozen=True)
class SweepRow(Report):
    """One variant of one input, timed in one cell: against the dense baseline on that device."""

    mode: str  # "dense", "align N", "measured"
    p50_ms: float
    speedup: Speedup  # dense p50 / this p50, interleaved on the cell's device
    params: int
    macs: int
    drift: str = ""  # quantized: accuracy against fp32 in words (SQNR, top-1)


@dataclasses.dataclass(frozen=True)
class SweepCell(Report):
    """One input × precision timed on one device: its dense baseline and each channel mode, interleaved."""

    input: str
    precision: str
    device: str  # TARGET@CLASS
    status: str  # "ok" or "failed"
    reason: str = ""  # failed: why
    node: str = ""  # the machine that timed it
    started: float = 0.0  # wall clock (time.time) when its timing began and ended
    ended: float = 0.0
    attempts: int = 1
    rows: list[SweepRow] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.input} | {self.precision} | {self.device}"


@dataclasses.dataclass(frozen=True)
class SweepReport(Report):
    """`sparsecut sweep`: every cell, as it finished."""

    grid: str  # the grid's digest
    devices: list[str]
    executor: str  # "local", or "ray ADDRESS" with its nodes
    cells: list[SweepCell]
    seconds: float
