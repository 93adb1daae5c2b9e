"""KV-cache decoders as their exporters write them, and driving one the way a generator does.

Both LLM exporters sparsecut reads (optimum-onnx's `text-generation-with-past`, onnxruntime-genai's model builder)
write one graph that takes `input_ids` [B, S], an `attention_mask` over past and new tokens [B, P + S], optionally
`position_ids` [B, S], and per layer `past_key_values.N.key` / `.value` [B, H_kv, P, D]; it returns `logits`
[B, S, V] and per layer `present.N.key` / `.value` [B, H_kv, P + S, D]. A generator runs it once on the prompt
with an empty past (P = 0: the prefill), then once per new token, feeding each step's presents back as the next
step's pasts (decode). A model whose K/V heads were removed takes caches of fewer heads: the same loop drives it,
each model with its own presents.

No random inputs can stand in for this: random pasts are no cache the model could have written, and the sizes
are tied across inputs (mask length = past + new). So the equivalence gate drives both graphs through a prefill
and greedy decode steps (`generate`) and compares every step's logits and the final caches (on the heads both
keep).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparsecut.errors import InputError

__all__ = ["DecoderInterface", "Generation", "generate", "is_kv_decoder", "step_inputs"]

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_KNOWN = ("input_ids", "attention_mask", "position_ids")


@dataclasses.dataclass(frozen=True)
class DecoderInterface:
    """What a KV-cache decoder takes and returns, by name."""

    mask: bool  # takes attention_mask
    positions: bool  # takes position_ids
    caches: tuple[tuple[str, str], ...]  # (past input, present output), layer by layer, key before value
    cache_shapes: tuple[tuple[int, int], ...]  # per past input: (K/V heads, head dim)
    vocab: int

    @classmethod
    def of(cls, model: ir.Model, source: object) -> DecoderInterface | None:
        """The interface of `model` if it is a KV-cache decoder (an `input_ids` input and `past_key_values.*`
        inputs), else None. A decoder sparsecut cannot drive raises InputError, naming the tensor."""
        inputs = {str(v.name): v for v in model.graph.inputs if not v.is_initializer()}
        outputs = {str(v.name): v for v in model.graph.outputs}
        pasts = sorted(
            (name for name in inputs if _PAST.match(name)),
            key=lambda n: (int(_PAST.match(n).group(1)), _PAST.match(n).group(2)),  # type: ignore[union-attr]
        )
        if "input_ids" not in inputs or not pasts:
            return None
        others = sorted(set(inputs) - set(pasts) - set(_KNOWN))
        if others:
            raise InputError(f"{source}: a KV-cache decoder with an input sparsecut cannot feed: {others[0]!r}")
        logits = outputs.get("logits")
        if logits is None or logits.shape is None or len(logits.shape) != 3 or not isinstance(logits.shape[2], int):
            raise InputError(f"{source}: a KV-cache decoder without a 'logits' output of static vocabulary size")
        caches, shapes = [], []
        for past in pasts:
            present = "present." + past.removeprefix("past_key_values.")
            if present not in outputs:
                raise InputError(f"{source}: the past input {past!r} has no matching present output ({present!r})")
            shape = inputs[past].shape
            if shape is None or len(shape) != 4:
                raise InputError(f"{source}: the past input {past!r} is not [batch, heads, length, head dim]")
            heads = shape[1]
            dim = shape[3] if isinstance(shape[3], int) else _head_dim_of_reader(inputs[past])
            if not isinstance(heads, int) or dim is None:
                raise InputError(
                    f"{source}: the past input {past!r} has no static head count and head dim ({shape}); "
                    "pass real inputs (--data FILE.npz)"
                )
            caches.append((past, present))
            shapes.append((heads, dim))
        vocab = logits.shape[2]
        return cls("attention_mask" in inputs, "position_ids" in inputs, tuple(caches), tuple(shapes), vocab)


def is_kv_decoder(path: Path) -> bool:
    """Whether the ONNX file `path` is a KV-cache decoder: it takes past_key_values.N.* (read without the weights)."""
    from sparsecut.feeds import input_specs

    return any(spec.name.startswith("past_key_values.") for spec in input_specs(path))


def _head_dim_of_reader(past: ir.Value) -> int | None:
    """The head dim of a past whose declared shape leaves it symbolic (onnxruntime-genai's builder names it
    `kv_cache_dim`), from the GroupQueryAttention that reads it: its packed input's features over the heads."""
    for use in past.uses():
        node = use.node
        if node.op_type != "GroupQueryAttention" or not node.inputs or node.inputs[0] is None:
            continue
        heads, kv = node.attributes.get_int("num_heads", 0), node.attributes.get_int("kv_num_heads", 0)
        features = _last_size(node.inputs[0])
        separate = len(node.inputs) > 2 and node.inputs[1] is not None
        parts = heads if separate else heads + 2 * kv
        if features is not None and parts and features % parts == 0:
            return features // parts
    return None


def _last_size(value: ir.Value) -> int | None:
    """The static size of a value's last axis: from its shape, or from the weight of the MatMul (or MatMulNBits)
    that computes it (through a RotaryEmbedding, Identity or Cast)."""
    for _ in range(4):  # through ops that keep the size (RotaryEmbedding before the attention)
        if value.shape is not None and isinstance(value.shape[-1], int):
            return value.shape[-1]
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "MatMul" and producer.inputs[1] is not None:
            weight = producer.inputs[1].const_value
            return int(weight.shape[-1]) if weight is not None and isinstance(weight.shape[-1], int) else None
        if producer.op_type == "MatMulNBits":  # int4: its N attribute is the output size
            return producer.attributes.get_int("N", 0) or None
        if producer.op_type not in ("RotaryEmbedding", "Identity", "Cast") or producer.inputs[0] is None:
            return None
        value = producer.inputs[0]
    return None


@dataclasses.dataclass
class Generation:
    """One greedy generation: every step's logits (the prefill's for all prompt positions, then one per decode
    step), the tokens chosen, and the caches after the last step."""

    logits: list[np.ndarray]
    tokens: np.ndarray  # [B, steps]
    caches: dict[str, np.ndarray]  # present output name → its last value


def step_inputs(interface: DecoderInterface, ids: np.ndarray, start: int) -> dict[str, np.ndarray]:
    """The inputs besides the caches of one forward pass of `ids` [B, S] after `start` cached tokens: the ids, an
    attention mask over all `start` + S tokens, their positions — those the decoder takes."""
    total = start + ids.shape[1]
    found = {"input_ids": ids}
    if interface.mask:
        found["attention_mask"] = np.ones((ids.shape[0], total), np.int64)
    if interface.positions:
        found["position_ids"] = np.broadcast_to(np.arange(start, total, dtype=np.int64), ids.shape).copy()
    return found


def generate(
    session: object, interface: DecoderInterface, prompt: np.ndarray, count: int, forced: np.ndarray | None = None
) -> Generation:
    """Generate `count` tokens greedily: a prefill of `prompt` [B, P] with an empty past (which gives the first),
    then `count` − 1 decode steps, each fed the previous step's presents as its pasts. `session`: an onnxruntime
    InferenceSession; its own past inputs' head counts size the empty caches (`interface` may be another graph's
    of the same model, with more heads). `forced` [B, count]: the tokens fed instead of the greedy ones (another
    graph's, so that both are compared in the same context); `tokens` still holds this graph's own choices."""
    batch = prompt.shape[0]
    declared = {i.name: i.shape for i in session.get_inputs()}  # type: ignore[attr-defined]
    pasts = {}
    for (past, _), (heads, dim) in zip(interface.caches, interface.cache_shapes, strict=True):
        shape = declared.get(past) or [None, heads, None, dim]  # this graph's own: a lean one has fewer heads
        heads = shape[1] if isinstance(shape[1], int) else heads
        pasts[past] = np.zeros((batch, heads, 0, dim), np.float32)
    names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
    logits: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    ids, start = prompt.astype(np.int64), 0
    outputs: dict[str, np.ndarray] = {}
    for _ in range(max(1, count)):
        feed = {**step_inputs(interface, ids, start), **pasts}
        outputs = dict(zip(names, session.run(None, feed), strict=True))  # type: ignore[attr-defined]
        logits.append(outputs["logits"])
        ids = outputs["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        tokens.append(ids[:, 0])
        if forced is not None:
            ids = forced[:, len(tokens) - 1 : len(tokens)].astype(np.int64)
        start += feed["input_ids"].shape[1]
        pasts = {past: outputs[present] for past, present in interface.caches}
    caches = {present: outputs[present] for _, present in interface.caches}
    return Generation(logits, np.stack(tokens, axis=1), caches)
