"""How far a converted graph (int8, fp16) drifts from its fp32 source: per output and per quantized layer, measured
on samples held out from calibration.

Per output: max and mean |a − b|, cosine similarity of the flattened outputs, SQNR = 10·log10(Σ a² / Σ (a − b)²)
in dB, and top-1 agreement where the output is a class score (N×K).

Per layer (Polygraphy's "mark all"): every quantized layer's output is made a graph output in both graphs and
compared with its fp32 twin. In the Q/DQ graph the value compared is the one the next layers read — after the
output's QuantizeLinear → DequantizeLinear where there is one (onnxruntime drops a ReLU that a uint8 Q clamps
anyway; its DQ output is the ReLU's value). A layer's own loss is the SQNR of the input it reads minus the SQNR of
its output: the error its weights' and its output's rounding added, which is what keeping it in fp32 would save.

`DriftBound` is `--max-drift`: `30dB` (every output's SQNR at least 30 dB) or `1%` (top-1 agreement lost on at
most 1 % of the held-out samples).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparsecut.checking import checking_session
from sparsecut.cost import LAYER_OPS
from sparsecut.errors import InputError
from sparsecut.layer_names import module_names
from sparsecut.modelfile import load_model
from sparsecut.report import LayerDrift, OutputDrift, decibels

__all__ = ["DriftBound", "decoder_drift", "measure_drift", "parse_drift_bound", "sqnr_db"]

Feed = dict[str, np.ndarray]
EXACT_DB = 300.0  # a bit-exact tensor's SQNR where a difference is taken (float64 rounding lies far below)


@dataclasses.dataclass(frozen=True)
class DriftBound:
    """`--max-drift`: one of the two bounds."""

    min_sqnr_db: float | None = None
    max_top1_loss: float | None = None  # share of held-out samples whose argmax may change

    def describe(self) -> str:
        if self.min_sqnr_db is not None:
            return f"SQNR ≥ {self.min_sqnr_db:g} dB on every output"
        assert self.max_top1_loss is not None
        return f"top-1 agreement ≥ {100 * (1 - self.max_top1_loss):g} %"

    def holds(self, outputs: Sequence[OutputDrift]) -> bool:
        if self.min_sqnr_db is not None:
            return all(o.sqnr_db is None or o.sqnr_db >= self.min_sqnr_db for o in outputs)
        assert self.max_top1_loss is not None
        agreements = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
        if not agreements:
            raise InputError(
                "--max-drift: a top-1 bound needs class scores (an N×K output); the model has none — give an SQNR "
                "bound such as 30dB"
            )
        return all(1 - a <= self.max_top1_loss + 1e-12 for a in agreements)

    def shortfall(self, outputs: Sequence[OutputDrift]) -> str:
        """Where the outputs stand against the bound, in words."""
        if self.min_sqnr_db is not None:
            worst = min(outputs, key=lambda o: math.inf if o.sqnr_db is None else o.sqnr_db)
            return f"the worst output ({worst.name}) has SQNR {_db(worst.sqnr_db)}"
        agreements = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
        return f"top-1 agreement {100 * min(agreements):.1f} %" if agreements else "no class scores"


def parse_drift_bound(text: str) -> DriftBound:
    """`30dB` → SQNR ≥ 30 dB; `1%` → at most 1 % of top-1 decisions changed."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(dB|db|%)\s*", text)
    if match is None:
        raise InputError(f"--max-drift: {text!r} is neither an SQNR bound (30dB) nor a top-1 bound (1%)")
    value = float(match.group(1))
    if match.group(2) == "%":
        if value >= 100:
            raise InputError(f"--max-drift: {text!r}: a top-1 bound is below 100 %")
        return DriftBound(max_top1_loss=value / 100)
    return DriftBound(min_sqnr_db=value)


def sqnr_db(signal_energy: float, noise_energy: float) -> float | None:
    if noise_energy == 0:
        return None
    if signal_energy == 0:
        return -math.inf
    return 10 * math.log10(signal_energy / noise_energy)


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{decibels(value)} dB"


def decoder_drift(reference: Path, candidate: Path, seed: int, count: int = 32) -> tuple[list[OutputDrift], list[str]]:
    """A converted KV-cache decoder against its source: both fed the source's greedy tokens (a 16-token seeded
    prompt, `count` tokens), each step's logits compared (SQNR, cosine, top-1 agreement per step); and the
    converted graph's own greedy continuation, how long it stays the source's."""
    from sparsecut.decoder import DecoderInterface, generate

    interface = DecoderInterface.of(load_model(reference), reference)
    assert interface is not None
    prompt = np.random.default_rng(seed).integers(0, interface.vocab, (1, 16))
    with checking_session(reference) as ref, checking_session(candidate) as got:
        source = generate(ref, interface, prompt, count)
        forced = generate(got, interface, prompt, count, forced=source.tokens)
        free = generate(got, interface, prompt, count)
    a = np.concatenate([step[:, -1] for step in source.logits]).astype(np.float64)
    b = np.concatenate([step[:, -1] for step in forced.logits]).astype(np.float64)
    energy, cross, candidate_energy = (
        float(a.ravel() @ a.ravel()),
        float(a.ravel() @ b.ravel()),
        float(b.ravel() @ b.ravel()),
    )
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    drift = OutputDrift(
        name="logits",
        max_abs_error=float(np.abs(a - b).max()),
        mean_abs_error=float(np.abs(a - b).mean()),
        cosine=cross / math.sqrt(energy * candidate_energy)
        if energy > 0 and candidate_energy > 0
        else float(energy == candidate_energy),
        sqnr_db=sqnr_db(energy, float(((a - b) ** 2).sum())),
        top1_agreement=agree,
    )
    differ = np.flatnonzero(free.tokens[0] != source.tokens[0])
    same = int(differ[0]) if len(differ) else count
    return [drift], [
        f"drift on generation: prompt 16 tokens (seed {seed}), {count} tokens; top-1 agreement per step with the "
        f"source's tokens fed to both: {100 * agree:.1f} %; its own greedy continuation: {same} of {count} tokens "
        "identical before the first difference"
    ]


def measure_drift(
    reference: Path, candidate: Path, samples: Sequence[Feed], layers: bool = False
) -> tuple[list[OutputDrift], list[LayerDrift]]:
    """Every output of `candidate` against `reference` on `samples`; with `layers`, every quantized layer too
    (worst loss first)."""
    ref_model, got_model = load_model(Path(reference)), load_model(Path(candidate))
    outputs = [v.name for v in got_model.graph.outputs if v.name]
    pairs: dict[str, tuple[str, str]] = {}  # key → (reference tensor, candidate tensor)
    for name in outputs:
        pairs[f"output {name}"] = (name, name)
    watched: list[tuple[ir.Node, str, list[str]]] = []
    if layers:
        watched = _quantized_layers(got_model, ref_model, pairs)
        _mark_outputs(ref_model, {r for r, _ in pairs.values()})
        _mark_outputs(got_model, {g for _, g in pairs.values()})
    sums = {key: np.zeros(5) for key in pairs}  # Σa², Σ(a−b)², Σab, Σb², max|a−b|
    total_abs = {key: 0.0 for key in pairs}
    sizes = {key: 0 for key in pairs}
    agree = {name: [0, 0] for name in outputs}
    with checking_session(ref_model) as ref, checking_session(got_model) as got:
        ref_names = [o.name for o in ref.get_outputs()]  # type: ignore[attr-defined]
        got_names = [o.name for o in got.get_outputs()]  # type: ignore[attr-defined]
        for sample in samples:
            a = dict(zip(ref_names, ref.run(None, sample), strict=True))  # type: ignore[attr-defined]
            b = dict(zip(got_names, got.run(None, sample), strict=True))  # type: ignore[attr-defined]
            for key, (r, g) in pairs.items():
                x, y = np.asarray(a[r], np.float64).ravel(), np.asarray(b[g], np.float64).ravel()
                diff = x - y
                s = sums[key]
                s[0] += x @ x
                s[1] += diff @ diff
                s[2] += x @ y
                s[3] += y @ y
                s[4] = max(s[4], float(np.abs(diff).max(initial=0.0)))
                total_abs[key] += float(np.abs(diff).sum())
                sizes[key] += diff.size
            for name in outputs:
                if np.ndim(a[name]) == 2 and np.shape(a[name])[1] > 1:
                    agree[name][0] += int(np.sum(np.argmax(a[name], axis=1) == np.argmax(b[name], axis=1)))
                    agree[name][1] += np.shape(a[name])[0]
    output_drift = []
    for name in outputs:
        s = sums[f"output {name}"]
        cosine = float(s[2] / math.sqrt(s[0] * s[3])) if s[0] > 0 and s[3] > 0 else float(s[0] == s[3])
        hits, total = agree[name]
        output_drift.append(
            OutputDrift(
                name=name,
                max_abs_error=float(s[4]),
                mean_abs_error=total_abs[f"output {name}"] / max(sizes[f"output {name}"], 1),
                cosine=cosine,
                sqnr_db=sqnr_db(s[0], s[1]),
                top1_agreement=hits / total if total else None,
            )
        )
    modules = module_names(ref_model)
    layer_drift = []
    for node, key, inputs in watched:
        out = sqnr_db(sums[key][0], sums[key][1])
        ins = [sqnr_db(sums[k][0], sums[k][1]) for k in inputs]
        worst_in = min(ins, key=lambda v: math.inf if v is None else v) if ins else None
        loss = (EXACT_DB if worst_in is None else worst_in) - (EXACT_DB if out is None else out)
        layer_drift.append(
            LayerDrift(
                node=node.name or "",
                op=node.op_type,
                module=modules.get(node.name or "", ""),
                sqnr_db=out,
                input_sqnr_db=worst_in,
                loss_db=loss,
            )
        )
    layer_drift.sort(key=lambda d: -d.loss_db)
    return output_drift, layer_drift


def _seen(value: ir.Value) -> ir.Value:
    """What the next layers read of `value`: its DequantizeLinear's output when it goes through Q → DQ."""
    for use in value.uses():
        quantize = use.node
        if quantize.op_type == "QuantizeLinear" and quantize.outputs[0].uses():
            dequantize = next(iter(quantize.outputs[0].uses())).node
            if dequantize.op_type == "DequantizeLinear":
                return dequantize.outputs[0]
    return value


def _source(value: ir.Value) -> ir.Value:
    """The fp32 tensor behind a DequantizeLinear(QuantizeLinear(x)) pair."""
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        quantize = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        if quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.inputs[0] is not None:
            return quantize.inputs[0]
    return value


def _quantized_layers(
    got: ir.Model, ref: ir.Model, pairs: dict[str, tuple[str, str]]
) -> list[tuple[ir.Node, str, list[str]]]:
    """The layers of `got` that read a dequantized input, each with the key of its output's pair and of its
    activation inputs' pairs (added to `pairs`); layers whose tensors `ref` does not have are left out."""
    ref_names = {v.name for node in ref.graph for v in node.outputs if v.name} | {
        v.name for v in ref.graph.inputs if v.name
    }
    watched = []
    for node in got.graph:
        if node.op_type not in LAYER_OPS:
            continue
        dequantized = [v for v in node.inputs if v is not None and _source(v) is not v]
        output = _seen(node.outputs[0])
        # the fp32 name: the node's output's, or — where the quantizer renamed it to put Q/DQ on a graph output
        # (`linear` → `linear_QuantizeLinear_Input`) — the dequantized value's
        twin = next((v.name for v in (node.outputs[0], output) if v.name in ref_names), None)
        if not dequantized or twin is None:
            continue
        key = f"layer {twin}"
        pairs[key] = (twin, output.name or "")
        inputs = []
        for value in dequantized:
            source = _source(value)
            if source.const_value is not None or source.is_initializer() or source.name not in ref_names:
                continue  # a weight
            input_key = f"layer {source.name}"
            pairs.setdefault(input_key, (source.name or "", value.name or ""))
            inputs.append(input_key)
        if inputs:  # a layer whose activations are not quantized has no loss of its own to measure
            watched.append((node, key, inputs))
    return watched


def _mark_outputs(model: ir.Model, names: set[str]) -> None:
    """Make the named tensors graph outputs too (Polygraphy's "mark all")."""
    present = {v.name for v in model.graph.outputs}
    values = {v.name: v for v in model.graph.inputs} | {v.name: v for node in model.graph for v in node.outputs}
    for name in sorted(names - present):
        value = values[name]
        if value.dtype is None:
            value.dtype = ir.DataType.FLOAT
        model.graph.outputs.append(value)
