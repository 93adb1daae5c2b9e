"""Timing a KV-cache decoder the way LLM users quote it, on onnxruntime: prefill (time to first token) at given
prompt lengths, and decode (ms per token, tokens/s) at given context lengths — variants interleaved round by
round, each ratio against the baseline with its 95 % interval (noise.py).

One forward pass with fixed inputs is neither: a prefill runs the prompt with an empty past (compute-bound), a
decode step runs one token against a cache of C earlier ones (bound by the bytes of weights and cache read per
token). Each step here is what a generator does: the presents of one step, kept as onnxruntime's own buffers
(IOBinding), are bound as the next step's pasts — no copy through numpy — and the next token is the greedy one.
A lean decoder with fewer K/V heads runs the same loop on its own smaller caches (`decoder.py`).

Per round and variant: each prefill length timed once; for each context length, a cache of that length is built
by an untimed prefill, then `steps` decode steps are timed, one sample each. Before the rounds each variant is
loaded and warmed at the longest prompt and context, one after another: its memory is the peak resident memory of
the process while it loads and warms, over the resident memory before (weights, onnxruntime's arena, the caches,
and what loading holds for a moment; Linux's peak counter, reset per variant through /proc/self/clear_refs — where
that cannot be reset, the resident memory after warm-up instead). Worker threads spin during a run and stop when it
returns (onnxruntime.py's sessions, `session.force_spinning_stop`): left spinning, variants timed in turn would slow
each other; never spinning, every operator would wait for a worker to wake.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparsecut.decoder import DecoderInterface, step_inputs
from sparsecut.errors import InputError
from sparsecut.modelfile import load_model
from sparsecut.report import DecoderCompareReport, DecoderRatio, DecoderVariant, LayerTime
from sparsecut.targets.noise import speedup
from sparsecut.targets.timing import percentile

__all__ = [
    "DecodeOptions",
    "DecoderGraph",
    "DecoderSession",
    "GenaiSession",
    "compare_decoders",
    "decode_layer_times",
    "plot_decoders",
    "time_by_op",
    "time_round",
]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    layers: int = 0  # > 0: where a decode step's time goes (onnxruntime's profiler), this many nodes kept
    prompts: tuple[int, ...] = (128, 512)  # prefill lengths (tokens)
    contexts: tuple[int, ...] = (128, 1024)  # cache lengths the decode steps run against
    steps: int = 8  # timed decode steps per context and round
    rounds: int = 10
    threads: int | None = None
    seed: int = 0


class DecoderGraph:
    """What a KV-cache decoder's graph says of itself: its interface, parameters and weight bytes, the K/V heads and
    head dim of each cache, and the positions it can take."""

    def __init__(self, path: Path) -> None:
        model = load_model(path)
        interface = DecoderInterface.of(model, path)
        if interface is None:
            raise InputError(f"{path}: not a KV-cache decoder (no input_ids and past_key_values.N.* inputs)")
        self.path, self.interface = path, interface
        tensors = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
        self.params = sum(t.size for t in tensors)
        self.weight_bytes = sum(t.nbytes for t in tensors)
        declared = {str(v.name): v.shape for v in model.graph.inputs}
        self.heads = {}
        for (past, _), (heads, dim) in zip(interface.caches, interface.cache_shapes, strict=True):
            shape = declared[past]
            self.heads[past] = (shape[1] if shape is not None and isinstance(shape[1], int) else heads, dim)
        self.positions = _positions(model)

    def check_lengths(self, options: DecodeOptions) -> None:
        """Every prompt, and every context with its decode steps, fits the positions the model has (a rotary cache's
        rows: what onnxruntime's attention ops index by position); a plain-op graph computes RoPE for any position."""
        limit = self.positions
        if limit is None:
            return
        for length in options.prompts:
            if length > limit:
                raise InputError(f"--prompt {length}: beyond {self.path.name}'s {limit} positions")
        for length in options.contexts:
            if length + options.steps + 1 > limit:
                raise InputError(
                    f"--context {length}: with {options.steps} decode steps, beyond {self.path.name}'s {limit} positions"
                )

    @property
    def kv_heads(self) -> list[int]:
        return [heads for past, (heads, _) in self.heads.items() if past.endswith(".key")]

    @property
    def kv_bytes_per_token(self) -> int:
        return sum(heads * dim * 4 for heads, dim in self.heads.values())


class DecoderSession:
    """A KV-cache decoder in an onnxruntime session, driven step by step with IOBinding. `profile_prefix`: the
    session records onnxruntime's profile there (`decode_layer_times`)."""

    def __init__(self, path: Path, threads: int | None = None, profile_prefix: str | None = None) -> None:
        import onnxruntime as ort

        from sparsecut.targets.onnxruntime import _session

        self.graph = DecoderGraph(path)
        profiling: dict[str, Any] = (
            {} if profile_prefix is None else {"enable_profiling": True, "profile_file_prefix": profile_prefix}
        )
        self.session = _session(path, "cpu", threads or None, "all", **profiling)
        self._ort = ort
        self.outputs = [o.name for o in self.session.get_outputs()]

    @property
    def interface(self) -> DecoderInterface:
        return self.graph.interface

    def empty_cache(self) -> dict[str, Any]:
        return {
            past: self._ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, dim), np.float32))
            for past, (heads, dim) in self.graph.heads.items()
        }

    def time_prefill(self, ids: np.ndarray, clock: Callable[[], int]) -> float:
        start = clock()
        self.step(ids, self.empty_cache(), 0)
        return (clock() - start) / 1e6

    def time_decode(self, ids: np.ndarray, steps: int, clock: Callable[[], int]) -> list[float]:
        """After an untimed prefill of `ids`, `steps` greedy decode steps timed one by one."""
        logits, cache = self.step(ids, self.empty_cache(), 0)
        samples = []
        for position in range(ids.shape[1], ids.shape[1] + steps):
            token = np.asarray(logits.numpy()[:, -1].argmax(-1), np.int64)[:, None]
            start = clock()
            logits, cache = self.step(token, cache, position)
            samples.append((clock() - start) / 1e6)
        return samples

    def step(self, ids: np.ndarray, cache: dict[str, Any], start: int) -> tuple[Any, dict[str, Any]]:
        """One forward pass of `ids` [1, S] after `start` cached tokens: (logits OrtValue, the new cache)."""
        binding = self.session.io_binding()
        for name, array in step_inputs(self.interface, ids, start).items():
            binding.bind_cpu_input(name, array)
        for past, value in cache.items():
            binding.bind_ortvalue_input(past, value)
        for name in self.outputs:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        values = dict(zip(self.outputs, binding.get_outputs(), strict=True))
        return values["logits"], {past: values[present] for past, present in self.interface.caches}


class GenaiSession:
    """A decoder folder in onnxruntime-genai's own generator: a prefill is `append_tokens` of the prompt on a fresh
    generator, a decode step `generate_next_token` (greedy: pick the token, run the model on it)."""

    def __init__(self, folder: Path) -> None:
        from sparsecut.targets.onnxruntime_genai import CONFIG, genai_module

        if not (folder / CONFIG).is_file():
            raise InputError(f"{folder}: not an onnxruntime-genai folder (no {CONFIG}); build one first")
        self.og = genai_module()
        self.graph = DecoderGraph(folder / "model.onnx")
        self.model = self.og.Model(str(folder))

    @property
    def interface(self) -> DecoderInterface:
        return self.graph.interface

    def generator(self, length: int) -> Any:
        from sparsecut.targets.onnxruntime_genai import greedy_generator

        return greedy_generator(self.og, self.model, length)

    def time_prefill(self, ids: np.ndarray, clock: Callable[[], int]) -> float:
        generator = self.generator(ids.shape[1] + 1)
        start = clock()
        generator.append_tokens(ids.astype(np.int32))
        return (clock() - start) / 1e6

    def time_decode(self, ids: np.ndarray, steps: int, clock: Callable[[], int]) -> list[float]:
        generator = self.generator(ids.shape[1] + steps + 1)
        generator.append_tokens(ids.astype(np.int32))
        samples = []
        for _ in range(steps):
            start = clock()
            generator.generate_next_token()
            samples.append((clock() - start) / 1e6)
        return samples


def time_round(
    session: DecoderSession | GenaiSession,
    prompts: Sequence[int],
    contexts: Sequence[int],
    steps: int,
    rng: np.random.Generator,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> tuple[dict[int, float], dict[int, list[float]]]:
    """One round for one variant: ms of each prefill, and the ms of each of `steps` decode steps per context."""
    vocab = session.interface.vocab
    prefill = {length: session.time_prefill(rng.integers(0, vocab, (1, length)), clock) for length in prompts}
    decode = {context: session.time_decode(rng.integers(0, vocab, (1, context)), steps, clock) for context in contexts}
    return prefill, decode


def compare_decoders(
    models: Sequence[Path],
    options: DecodeOptions = DecodeOptions(),
    baseline: int = 0,
    progress: Callable[[int, int], None] | None = None,
    target: str = "onnxruntime",
    labels: Sequence[str] | None = None,
    ratios: Sequence[tuple[str, int, int]] = (),
) -> DecoderCompareReport:
    """Time `models` interleaved (every round runs each in turn); ratios against `models[baseline]`. `target`:
    onnxruntime (ONNX files, this module's loop) or onnxruntime-genai (its folders, its generator). `ratios`:
    (name, reference, candidate) — more ratios from the same rounds, between two variants (the 2×2's)."""
    from sparsecut.targets.environment import cpu_name, host_environment

    rng = np.random.default_rng(options.seed)
    sessions: list[DecoderSession | GenaiSession] = []
    memory: list[float | None] = []
    for m in models:  # one at a time, each warmed at the longest prompt and context: the memory it added
        gc.collect()  # (garbage freed while the session loads would hide part of it)
        _trim_heap()  # (nor may it fill pages freed earlier but still resident)
        peak = _reset_peak()
        before = _resident_mb()
        session = GenaiSession(Path(m)) if target == "onnxruntime-genai" else DecoderSession(Path(m), options.threads)
        session.graph.check_lengths(options)
        time_round(session, [max(options.prompts)], [max(options.contexts)], 2, rng)
        gc.collect()  # (the graph read for its sizes is dropped: the session's memory is what stays)
        after = _resident_mb("VmHWM:" if peak else "VmRSS:")
        sessions.append(session)
        memory.append(after - before if before is not None and after is not None else None)
    vocabs = {s.interface.vocab for s in sessions}
    if len(vocabs) != 1:
        raise InputError(f"{models[0]}: the decoders differ in vocabulary ({sorted(vocabs)}); nothing to compare")
    prefill: list[dict[int, list[list[float]]]] = [{p: [] for p in options.prompts} for _ in sessions]
    decode: list[dict[int, list[list[float]]]] = [{c: [] for c in options.contexts} for _ in sessions]
    for r in range(options.rounds):
        for i, session in enumerate(sessions):
            round_prefill, round_decode = time_round(session, options.prompts, options.contexts, options.steps, rng)
            for p, ms in round_prefill.items():
                prefill[i][p].append([ms])
            for c, samples in round_decode.items():
                decode[i][c].append(samples)
        if progress is not None:
            progress(r + 1, options.rounds)
    layers = [_layers(m, options, target) for m in models]
    variants = []
    for i, session in enumerate(sessions):
        graph = session.graph
        pre = {str(p): _p50(rounds) for p, rounds in prefill[i].items()}
        dec = {str(c): _p50(rounds) for c, rounds in decode[i].items()}
        pre_speed = {str(p): speedup(prefill[baseline][p], prefill[i][p]) for p in options.prompts}
        dec_speed = {str(c): speedup(decode[baseline][c], decode[i][c]) for c in options.contexts}
        variants.append(
            DecoderVariant(
                label=labels[i] if labels else _label(models, i),
                model=str(models[i]),
                params=int(graph.params),
                weight_bytes=int(graph.weight_bytes),
                kv_bytes_per_token=graph.kv_bytes_per_token,
                kv_heads=graph.kv_heads,
                prefill_ms=pre,
                decode_ms=dec,
                prefill_speedup=pre_speed if i != baseline else {},
                decode_speedup=dec_speed if i != baseline else {},
                decode_layers=layers[i],
                decode_by_op=time_by_op(layers[i]),
                memory_mb=memory[i],
            )
        )
    import onnxruntime as ort

    versions = {"onnxruntime": ort.__version__}
    if isinstance(sessions[0], GenaiSession):
        versions["onnxruntime-genai"] = str(sessions[0].og.__version__)
    return DecoderCompareReport(
        target=target,
        device=cpu_name(),
        rounds=options.rounds,
        steps=options.steps,
        variants=variants,
        baseline=baseline,
        environment={**host_environment(), **versions, "threads": str(options.threads or "default")},
        layers=options.layers,
        ratios=[
            DecoderRatio(
                name,
                variants[a].label,
                variants[b].label,
                {str(c): speedup(decode[a][c], decode[b][c]) for c in options.contexts},
                {str(p): speedup(prefill[a][p], prefill[b][p]) for p in options.prompts},
            )
            for name, a, b in ratios
        ],
    )


def _layers(model: Path, options: DecodeOptions, target: str) -> list[LayerTime]:
    """Every node of a decode step at the first context, largest first (onnxruntime's profiler; an onnxruntime-genai
    folder's own model profiled through sparsecut's loop), where `options.layers` asks for them."""
    if not options.layers:
        return []
    graph = Path(model) / "model.onnx" if target == "onnxruntime-genai" else Path(model)
    return decode_layer_times(graph, options.contexts[0], options.steps, options.threads)


def _positions(model: Any) -> int | None:
    """The positions a decoder can take, where its graph bounds them: the rows of the rotary cos cache that
    onnxruntime's GroupQueryAttention / RotaryEmbedding read (the builder sizes it to the context length)."""
    for node in model.graph:
        if node.op_type == "GroupQueryAttention" and len(node.inputs) > 7:
            cos = node.inputs[7]
        elif node.op_type == "RotaryEmbedding" and len(node.inputs) > 2:
            cos = node.inputs[2]
        else:
            continue
        if cos is not None and cos.const_value is not None:
            return int(cos.const_value.shape[0])
    return None


def _resident_mb(field: str = "VmRSS:") -> float | None:
    """This process's resident memory (`VmRSS:`) or its peak since the last reset (`VmHWM:`), from Linux's
    /proc, MB; None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's `malloc_trim`; elsewhere nothing): memory freed
    earlier in this process stays resident, and a session allocating into it would not raise the resident size."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset the process's peak resident memory to its current one (Linux ≥ 4.0); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _label(models: Sequence[Path], i: int) -> str:
    """A variant's name: its file's stem where those differ, else its path."""
    return Path(models[i]).stem if len({Path(m).stem for m in models}) == len(models) else str(models[i])


def _p50(rounds: list[list[float]]) -> float:
    return percentile(sorted(x for r in rounds for x in r), 50)


def plot_decoders(report: DecoderCompareReport, path: Path) -> None:
    """Decode tokens/s against weight bytes, per context length, with the bytes-bound line through the baseline
    (tokens/s ∝ 1 / bytes read per token: where decode is bound by reading the weights, lean lands on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecut.modelfile import check_output_path
    from sparsecut.targets.compare import _save_figure

    check_output_path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    base = report.variants[report.baseline]
    mb = [v.weight_bytes / 1e6 for v in report.variants]
    span = np.linspace(min(mb) * 0.8, max(mb) * 1.1, 50)
    for c in base.decode_ms:
        tps = [v.tokens_per_s(int(c)) for v in report.variants]
        low = [t - (base.tokens_per_s(int(c)) * v.decode_speedup[c].low if v.decode_speedup else t)
               for v, t in zip(report.variants, tps, strict=True)]  # fmt: skip
        high = [(base.tokens_per_s(int(c)) * v.decode_speedup[c].high if v.decode_speedup else t) - t
                for v, t in zip(report.variants, tps, strict=True)]  # fmt: skip
        shown = ax.errorbar(mb, tps, yerr=[low, high], fmt="o", capsize=3, label=f"decode at context {c}")
        bound = base.tokens_per_s(int(c)) * (base.weight_bytes / 1e6) / span
        ax.plot(span, bound, "--", color=shown[0].get_color(), alpha=0.5, label=f"∝ 1 / weight bytes (context {c})")
    for v, x in zip(report.variants, mb, strict=True):
        ax.annotate(v.label, (x, v.tokens_per_s(int(next(iter(v.decode_ms))))), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)  # fmt: skip
    ax.set_xlabel("weights, MB")
    ax.set_ylabel("decode, tokens/s")
    ax.set_title(f"{report.target} on {report.device}"[:70], fontsize=9)
    ax.legend(fontsize=7)
    _save_figure(fig, path)


def decode_layer_times(path: Path, context: int, steps: int = 8, threads: int | None = None) -> list[LayerTime]:
    """Where a decode step's time goes, per node: onnxruntime's profiler over `steps` decode steps after a cache of
    `context` tokens (the prefill that builds it and the first step, which allocates, left out); each node's median
    over the steps, largest first."""
    import json
    import statistics
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sparsecut-decode-profile-") as tmp:
        session = DecoderSession(path, threads, profile_prefix=str(Path(tmp) / "decode"))
        ids = np.random.default_rng(0).integers(0, session.interface.vocab, (1, context))
        session.time_decode(ids, steps + 1, time.perf_counter_ns)
        trace = json.loads(Path(session.session.end_profiling()).read_text())
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    decode_runs = runs[2:]  # the prefill, and the first step (it allocates)
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in decode_runs):
            continue
        node = event["name"][: -len("_kernel_time")]
        times.setdefault(node, []).append(event["dur"] / 1000.0)
        ops[node] = event.get("args", {}).get("op_name", "?")
    per_step = {node: statistics.median(ms) * len(ms) / max(1, len(decode_runs)) for node, ms in times.items()}
    total = sum(per_step.values()) or 1.0
    rows = [LayerTime(node, ops[node], ms, 100 * ms / total, 0, 0.0, 0.0, [node]) for node, ms in per_step.items()]
    return sorted(rows, key=lambda r: r.ms, reverse=True)


def time_by_op(layers: Sequence[LayerTime]) -> dict[str, float]:
    """A decode step's time per op type (ms), largest first."""
    found: dict[str, float] = {}
    for layer in layers:
        found[layer.op_type] = found.get(layer.op_type, 0.0) + layer.ms
    return dict(sorted(found.items(), key=lambda item: -item[1]))
