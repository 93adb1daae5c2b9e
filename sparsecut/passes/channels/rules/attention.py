"""The attention rule: a multi-head attention block found by `heads.py`, analyzed, constrained and rewritten
as one unit at its anchor (the analysis claims its other nodes). The math is in heads.py's docstring."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.heads import AttentionBlock, Entry
from sparsecut.passes.channels.rules.base import ChannelRule, Decline, Keep, Kind, Plan, channel_input, register
from sparsecut.passes.channels.spaces import ChannelSpaces, ChannelWalk
from sparsecut.passes.nodes import attr_int, shape_element

if TYPE_CHECKING:
    from sparsecut.passes.channels.constraints import Coupling
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = [
    "EQUAL_DIMS",
    "GQA_GROUPS",
    "AttentionPlan",
    "AttentionRule",
    "GroupQueryAttentionRule",
    "RotaryEmbeddingRule",
    "group_query_block",
]

EQUAL_DIMS = "heads keep equal head dims (one reshape splits them)"
GQA_GROUPS = "a query head of a live K/V group (GQA: every group keeps the same number of query heads)"
NEEDS_KV = "its K/V head is read by a query head that stays"


@dataclasses.dataclass(frozen=True, slots=True)
class AttentionPlan(Plan):
    block: AttentionBlock


class AttentionRule(ChannelRule[AttentionPlan]):
    """The pattern rule of one block, run at its anchor (the analysis claims the rest). Not registered by op
    type: the analysis makes one per block `heads.find_attention_blocks` found."""

    op_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, block: AttentionBlock) -> None:
        self.block = block

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> AttentionPlan | Decline:
        why = analyze_block(self.block, spaces)
        return Decline(why) if why else AttentionPlan(Kind.ATTENTION, self.block)

    def constrain(
        self, node: ir.Node, plan: AttentionPlan, coupling: Coupling, removable: np.ndarray, keep: Keep
    ) -> bool:
        """Heads keep equal counts of q/k dims and of v dims, and a head goes only when both its parts go (one
        reshape splits every projection into heads of one size)."""
        block = plan.block
        if grouped(block):
            return constrain_groups(block, _parts(block), coupling, removable, keep)
        if not block.separate:
            return False
        assert block.q_entry is not None
        changed = False
        gone = None
        parts = ((block.exit, block.head_dim), (block.q_entry.value, block.head_dim))
        masks = []
        for value, d in parts:
            span = coupling.span(value)
            masks.append((span.start, removable[span].reshape(block.heads, d)))
        gone = np.all([mask.all(axis=1) for _, mask in masks], axis=0)
        for offset, mask in masks:
            kept = mask.shape[1] - mask.sum(axis=1)
            target = max(1, int(kept[~gone].max())) if (~gone).any() else 0
            for h in np.flatnonzero(~gone):
                missing = target - int(kept[h])
                if missing > 0:
                    restore = np.flatnonzero(mask[h])[-missing:]
                    keep(removable, offset + h * mask.shape[1] + restore, EQUAL_DIMS)
                    changed = True
        return changed

    def touched(self, node: ir.Node, plan: AttentionPlan, rw: ChannelRewrite) -> bool:
        block = plan.block
        return any(rw.changed(v) for v in (block.exit, *(e.value for e in block.entries)))

    def backward(
        self, node: ir.Node, plan: AttentionPlan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]
    ) -> None:
        block_backward(plan.block, walk, needed)

    def rewrite(self, node: ir.Node, plan: AttentionPlan, rw: ChannelRewrite) -> None:
        rewrite_block(plan.block, rw)


def analyze_block(block: AttentionBlock, spaces: ChannelSpaces) -> str | None:
    """Register the exit with its states and couple every head's features across entries and exit. Returns why
    not when an entry's channels are not known (the block's nodes then go their own ways), else None."""
    features = block.heads * block.head_dim
    for entry in block.entries:
        if entry.value not in spaces.axis or spaces.axis[entry.value] != len(entry.value.shape or ()) - 1:
            return f"attention block: the channels of {entry.value.name!r} are not known on its last axis"
    exit_value = block.exit
    spaces.register(exit_value, 2, features)
    v = block.v_entry.value
    source = block.v_features()
    live, const = spaces.live[v][source], spaces.const[v][source]
    if not block.stochastic:
        live = live | (const != 0)  # rows that may not sum to 1 (a NaN guard): a constant V is no longer constant
    spaces.set_state(exit_value, live.copy(), np.where(live, 0.0, const))
    d = block.head_dim
    exit_index = np.arange(features)
    head_of = exit_index // d
    if not block.separate:  # fused qkv: every part of a head goes with the head
        spaces.tie(exit_value, exit_index, exit_value, head_of * d)
        for entry in block.entries:
            spaces.add_map(
                block.anchor, entry.value, _entry_features(block, entry), exit_value, _exit_features(block, entry)
            )
        return None
    assert block.q_entry is not None and block.k_entry is not None
    q, k = block.q_entry.value, block.k_entry.value
    if grouped(block):
        couple_groups(spaces, block, _parts(block))
        return None
    spaces.add_map(block.anchor, v, source, exit_value, exit_index)  # exit (h, i) carries v (kv(h), i)
    k_of_q = block.kv_of(head_of) * d + exit_index % d
    spaces.add_map(block.anchor, q, exit_index, k, k_of_q)  # q (h, d) meets k (kv(h), d) in the scores
    if "v" in block.fixed_dims:
        spaces.tie(exit_value, exit_index, exit_value, head_of * d)
    if "qk" in block.fixed_dims:
        spaces.tie(q, exit_index, q, head_of * d)
    return None


def _entry_features(block: AttentionBlock, entry: Entry) -> np.ndarray:
    """Features of an entry's projection output, paired with `_exit_features` one to one."""
    d = block.head_dim
    if entry.fused:
        return np.arange(3 * block.heads * d)
    if entry.kv:
        h, i = np.divmod(np.arange(block.heads * d), d)
        return block.kv_of(h) * d + i
    return np.arange(block.heads * d)


def _exit_features(block: AttentionBlock, entry: Entry) -> np.ndarray:
    d = block.head_dim
    if entry.fused:
        return np.tile(np.arange(block.heads * d), 3)
    return np.arange(block.heads * d)


def block_backward(block: AttentionBlock, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
    """V feature (h, i) is needed where exit (h, i) is. The scores of a head matter where any of its exit features
    is needed and its V varies between tokens (else the attention weights do not matter). A q/k dim pair (h, d)
    matters where the scores do, k_d varies between tokens (a constant k_d adds q_d·c to a whole row of scores,
    which the Softmax ignores) and q_d is not zero."""
    if block.separate:
        _backward_parts(block, _parts(block), walk, needed)
        return
    exit_needed = needed[block.exit].reshape(block.heads, block.head_dim)
    v_live = walk.live[block.v_entry.value][block.v_features()].reshape(block.heads, block.head_dim)
    scores_matter = exit_needed.any(axis=1) & v_live.any(axis=1)
    for entry in block.entries:
        target = needed[entry.value]
        pairs_entry, pairs_exit = _entry_features(block, entry), _exit_features(block, entry)
        head = pairs_exit // block.head_dim
        is_v = entry is block.v_entry
        if entry.fused:
            part = pairs_entry // (block.heads * block.head_dim)
            wanted = np.where(part == block.v_slot, exit_needed.reshape(-1)[pairs_exit], scores_matter[head])
        elif is_v:
            wanted = exit_needed.reshape(-1)[pairs_exit]
        else:
            wanted = scores_matter[head]
        np.logical_or.at(target, pairs_entry, wanted)


def rewrite_block(block: AttentionBlock, rw: ChannelRewrite) -> None:
    """New head counts and head dims in every labeled tensor's shape and every shape constant of the block."""
    kept_exit = rw.kept(block.exit)
    kept_heads = np.unique(kept_exit // block.head_dim)
    heads = len(kept_heads)
    kv_heads = len(set(block.kv_of(kept_heads).tolist()))
    if grouped(block):  # query heads of live groups may go too: the K/V heads are the kept ones of k
        assert block.k_entry is not None
        kv_heads = len(rw.kept(block.k_entry.value)) // block.head_dim
    repeat = block.heads // block.kv_heads
    dims = {"v": len(kept_exit) // heads}  # new head dims of the parts whose dims may change
    if block.separate:
        assert block.q_entry is not None
        dims["qk"] = len(rw.kept(block.q_entry.value)) // heads
    for part in block.fixed_dims:
        dims.pop(part, None)
    for value, label in block.labels.items():
        if value.shape is None:
            continue
        if label.merged:
            value.shape = None  # [B·H, …]: re-inferred
            continue
        shape = list(value.shape)
        shape[label.axis] = kv_heads if label.kv else heads
        if label.kv and len(shape) == 5 and shape[label.axis + 1] == repeat:  # repeat_kv's [B, H_kv, r, N, D]
            shape[label.axis + 1] = heads // kv_heads
        if label.dim is not None and label.part in dims and shape[label.dim] == block.head_dim:
            shape[label.dim] = dims[label.part]
        value.shape = ir.Shape(shape)
    for node in block.nodes:
        out = block.labels.get(node.outputs[0])
        if node.op_type not in ("Reshape", "Expand") or node is block.exit_node or out is None:
            continue
        if not out.merged:
            _set_count(node, out.axis, kv_heads if out.kv else heads, rw)
        if (
            out.kv
            and node.op_type == "Expand"
            and len(node.outputs[0].shape or ()) == 5
            and heads // kv_heads != repeat
        ):
            _set_count(node, out.axis + 1, heads // kv_heads, rw)  # query heads per group changed
        if out.dim is not None and out.part in dims:
            _set_count(node, out.dim, dims[out.part], rw)
    _set_count(block.exit_node, 2, len(kept_exit), rw)


def _set_count(node: ir.Node, position: int, count: int, rw: ChannelRewrite) -> None:
    shape = node.inputs[1]
    if shape is not None and shape_element(shape, position) is not None:  # a constant, or a constant piece
        rw.set_shape_element(node, position, count)
    # else computed from the block's own shapes: follows by itself


@register
class GroupQueryAttentionRule(AttentionRule):
    """onnxruntime's GroupQueryAttention (com.microsoft), as onnxruntime-genai's model builder writes every decoder
    layer: one node reads the packed projection [B, S, (H + 2·H_kv)·D] (or q, k and v apart), the layer's past
    K/V [B, H_kv, P, D] and the rotary caches, and writes the attention output [B, S, H·D] and the presents. Its
    math is the attention block's (heads.py): a head whose output features are not needed, or whose V is zero,
    contributes nothing; a K/V head stays while a query head reads it, and query heads go in equal numbers per
    live group (`constrain_groups`); head dims stay (rotary, the cache). The rewrite sets `num_heads` /
    `kv_num_heads` and the cache inputs' and outputs' head counts."""

    op_types = ("GroupQueryAttention",)
    domain = "com.microsoft"

    def __init__(self) -> None:
        pass  # one instance serves every node: the block is in each node's plan

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> AttentionPlan | Decline:
        block = group_query_block(node)
        if isinstance(block, Decline):
            return block
        parts = _parts(block)
        d, kv = block.head_dim, block.kv_heads
        sizes = {parts.q: 0, parts.k: 0, parts.v: 0}
        for value, count in ((parts.q, block.heads * d), (parts.k, kv * d), (parts.v, kv * d)):
            sizes[value] += count
        for value, count in sizes.items():
            why = spaces.ensure(value, len(value.shape or ()) - 1) if value in spaces.axis else "channels not known"
            if why:
                return Decline(f"its input {value.name!r}: {why}")
            if spaces.count_of(value) != count:
                return Decline(f"its input {value.name!r} has {spaces.count_of(value)} features, not {count}")
        spaces.register(block.exit, 2, block.heads * d)
        source = _v_of_exit(block, parts)
        live, const = spaces.live[parts.v][source], spaces.const[parts.v][source]
        if not block.stochastic:
            live = live | (const != 0)
        spaces.set_state(block.exit, live.copy(), np.where(live, 0.0, const))
        couple_groups(spaces, block, parts)
        return AttentionPlan(Kind.ATTENTION, block)

    def constrain(
        self, node: ir.Node, plan: AttentionPlan, coupling: Coupling, removable: np.ndarray, keep: Keep
    ) -> bool:
        return constrain_groups(plan.block, _parts(plan.block), coupling, removable, keep)

    def backward(
        self, node: ir.Node, plan: AttentionPlan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]
    ) -> None:
        """As the attention block's (`block_backward`), on the q, k and v features (packed or apart)."""
        _backward_parts(plan.block, _parts(plan.block), walk, needed)

    def rewrite(self, node: ir.Node, plan: AttentionPlan, rw: ChannelRewrite) -> None:
        block = plan.block
        parts, d = _parts(block), block.head_dim
        kept_heads = np.unique(rw.kept(block.exit) // d)
        kv_heads = int(np.isin(rw.kept(parts.k), parts.k_index).sum()) // d
        node.attributes["num_heads"] = ir.AttrInt64("num_heads", len(kept_heads))
        node.attributes["kv_num_heads"] = ir.AttrInt64("kv_num_heads", kv_heads)
        for value in block.cache:
            if value.shape is not None:
                value.shape = ir.Shape([kv_heads if axis == 1 else dim for axis, dim in enumerate(value.shape)])


def _backward_parts(
    block: AttentionBlock, parts: _Parts, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]
) -> None:
    """`block_backward`'s rule where q, k and v features are told apart (separate projections, or the packed input
    of GroupQueryAttention): v (kv(h), i) is needed where exit (h, i) is; a q/k dim pair (h, d) where the head's
    scores matter, k_d varies between tokens and q_d is not zero."""
    d = block.head_dim
    index = np.arange(block.heads * d)
    v_of_exit = _v_of_exit(block, parts)
    k_of_q = parts.k_index[block.kv_of(index // d) * d + index % d]
    exit_needed = needed[block.exit].reshape(block.heads, d)
    scores_matter = exit_needed.any(axis=1) & walk.live[parts.v][v_of_exit].reshape(block.heads, d).any(axis=1)
    q_live, q_const = walk.live[parts.q][parts.q_index], walk.const[parts.q][parts.q_index]
    pair = np.repeat(scores_matter, d) & walk.live[parts.k][k_of_q] & (q_live | (q_const != 0))
    np.logical_or.at(needed[parts.q], parts.q_index, pair)
    np.logical_or.at(needed[parts.k], k_of_q, pair)
    np.logical_or.at(needed[parts.v], v_of_exit, exit_needed.reshape(-1))


def _v_of_exit(block: AttentionBlock, parts: _Parts) -> np.ndarray:
    """Per exit feature (h, i): the v feature it carries, v (kv(h), i)."""
    d = block.head_dim
    index = np.arange(block.heads * d)
    return parts.v_index[block.kv_of(index // d) * d + index % d]


def group_query_block(node: ir.Node) -> AttentionBlock | Decline:
    """The GroupQueryAttention node as an attention block (its one node is entry, anchor and exit), or why not."""
    heads, kv_heads = attr_int(node, "num_heads", 0), attr_int(node, "kv_num_heads", 0)
    inputs = list(node.inputs) + [None] * (12 - len(node.inputs))
    packed = inputs[0]
    if packed is None or packed.shape is None or not isinstance(packed.shape[-1], int):
        return Decline("its input has no static size")
    separate = inputs[1] is not None and inputs[2] is not None
    if (inputs[1] is None) != (inputs[2] is None):
        return Decline("a key without a value input, or a value without a key")
    if any(v is not None for v in inputs[9:]):
        return Decline("position ids, an attention bias or a head sink is given")
    parts = heads if separate else heads + 2 * kv_heads
    if heads < 1 or kv_heads < 1 or heads % kv_heads or packed.shape[-1] % parts:
        return Decline(
            f"num_heads {heads} / kv_num_heads {kv_heads} disagree with its input's {packed.shape[-1]} features"
        )
    d = packed.shape[-1] // parts
    for value in (inputs[1], inputs[2]) if separate else ():
        if value is None or value.shape is None or value.shape[-1] != kv_heads * d:
            return Decline(f"kv_num_heads {kv_heads} disagrees with its key/value inputs")
    outputs = list(node.outputs)
    out = outputs[0].shape
    if out is None or len(out) != 3 or out[2] != heads * d:
        return Decline("its output's shape is not known")
    if len(outputs) > 3 and any(o.uses() or o.is_graph_output() for o in outputs[3:]):
        return Decline("its attention scores are read")
    cache = [v for v in (inputs[3], inputs[4], *outputs[1:3]) if v is not None]
    for value in cache:
        if not (value.is_graph_input() or value.is_graph_output()):
            return Decline(f"the cache {value.name!r} is not the model's input or output")
        if value.shape is None or len(value.shape) != 4 or value.shape[1] != kv_heads:
            return Decline(f"the cache {value.name!r} has no static head count {kv_heads}")
    if separate:
        assert inputs[1] is not None and inputs[2] is not None
        q = Entry(node, packed, kv=False, fused=False)
        k, v = Entry(node, inputs[1], kv=True, fused=False), Entry(node, inputs[2], kv=True, fused=False)
        entries, v_entry, q_entry, k_entry = [q, k, v], v, q, k
    else:
        entry = Entry(node, packed, kv=False, fused=True)
        entries, v_entry, q_entry, k_entry = [entry], entry, None, None
    return AttentionBlock(
        heads=heads,
        kv_heads=kv_heads,
        head_dim=d,
        nodes=[node],
        labels={},
        entries=entries,
        exit_node=node,
        exit=outputs[0],
        v_entry=v_entry,
        v_slot=2,
        stochastic=attr_int(node, "smooth_softmax", 0) == 0,
        anchor=node,
        q_entry=q_entry,
        k_entry=k_entry,
        fixed_dims=frozenset(("qk", "v")),
        cache=tuple(cache),
    )


# ---------------------------------------------------------------------------------------------------- GQA groups
@dataclasses.dataclass(frozen=True)
class _Parts:
    """Where a grouped block's exit, q, k and v features are: per query head h and dim i, exit[h·D + i] and
    q[q_index[h·D + i]]; per K/V head g and dim i, k[k_index[g·D + i]] and v[v_index[g·D + i]]."""

    exit: ir.Value
    q: ir.Value
    q_index: np.ndarray
    k: ir.Value
    k_index: np.ndarray
    v: ir.Value
    v_index: np.ndarray


def grouped(block: AttentionBlock) -> bool:
    """Whole heads (head dims fixed: rotary, a KV cache) of a GQA block whose K/V heads the query heads share:
    a query head may go alone (its output features not needed), in equal numbers per live group."""
    if block.exit_node.op_type == "GroupQueryAttention":
        return True
    return block.separate and block.kv_heads < block.heads and {"qk", "v"} <= block.fixed_dims


def _parts(block: AttentionBlock) -> _Parts:
    d, heads, kv = block.head_dim, block.heads, block.kv_heads
    if block.separate:
        assert block.q_entry is not None and block.k_entry is not None
        return _Parts(block.exit, block.q_entry.value, np.arange(heads * d), block.k_entry.value,
                      np.arange(kv * d), block.v_entry.value, np.arange(kv * d))  # fmt: skip
    packed = block.v_entry.value  # [q | k | v]
    return _Parts(block.exit, packed, np.arange(heads * d), packed, heads * d + np.arange(kv * d), packed,
                  (heads + kv) * d + np.arange(kv * d))  # fmt: skip


def couple_groups(spaces: ChannelSpaces, block: AttentionBlock, parts: _Parts) -> None:
    """A query head's output features and its q features go together, whole; a K/V head's k and v features go
    together, whole (a layer's two caches keep the same heads). Which K/V heads may go, and how many query heads
    per group, is `constrain_groups`' (no index map joins a query head to its group: it may go alone)."""
    d = block.head_dim
    exit_index = np.arange(block.heads * d)
    spaces.tie(parts.exit, exit_index, parts.exit, exit_index // d * d)
    spaces.tie(parts.exit, exit_index, parts.q, parts.q_index)
    kv_index = np.arange(block.kv_heads * d)
    spaces.tie(parts.k, parts.k_index, parts.k, parts.k_index[kv_index // d * d])
    spaces.tie(parts.k, parts.k_index, parts.v, parts.v_index)


def constrain_groups(
    block: AttentionBlock, parts: _Parts, coupling: Coupling, removable: np.ndarray, keep: Keep
) -> bool:
    """A K/V head that a staying query head reads stays; every live group keeps the same number of query heads
    (the dead ones of the groups with fewer stay, `GQA_GROUPS`)."""
    d = block.head_dim
    exit_start, k_start = coupling.span(parts.exit).start, coupling.span(parts.k).start
    q_gone = removable[exit_start + np.arange(block.heads) * d]
    kv_gone = removable[k_start + parts.k_index[np.arange(block.kv_heads) * d]].copy()
    group = block.kv_of(np.arange(block.heads))
    changed = False
    for g in np.flatnonzero(kv_gone):
        if not q_gone[group == g].all():
            keep(removable, k_start + parts.k_index[g * d : (g + 1) * d], NEEDS_KV)
            keep(removable, coupling.span(parts.v).start + parts.v_index[g * d : (g + 1) * d], NEEDS_KV)
            kv_gone[g] = False
            changed = True
    live = np.flatnonzero(~kv_gone)
    if not len(live):
        return changed
    counts: dict[int, int] = {int(g): int((~q_gone[group == g]).sum()) for g in live}
    target = max(counts.values())
    for kv, count in counts.items():
        if count < target:
            restore = np.flatnonzero((group == kv) & q_gone)[: target - count]
            for h in restore:
                keep(removable, exit_start + h * d + np.arange(d), GQA_GROUPS)
                keep(removable, coupling.span(parts.q).start + parts.q_index[h * d : (h + 1) * d], GQA_GROUPS)
            changed = True
    return changed


@register
class RotaryEmbeddingRule(ChannelRule[Plan]):
    """onnxruntime's RotaryEmbedding (com.microsoft) on q or k laid out [B, S, H·D] (`num_heads` set), as
    onnxruntime-genai's builder writes it before an attention op that does not rotate itself: each head's dims
    rotate among themselves (d with d + D/2, or with d + 1 interleaved), by position. So a head goes whole or not
    at all; a head that is zero stays zero; a constant one is no longer constant (the rotation depends on the
    position). The rewrite sets `num_heads` to the heads kept."""

    op_types = ("RotaryEmbedding",)
    domain = "com.microsoft"

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x = node.inputs[0] if node.inputs else None
        heads = attr_int(node, "num_heads", 0)
        if x is None or x.shape is None or len(x.shape) != 3 or heads < 1:
            return Decline("not [batch, sequence, heads · head dim] with num_heads set")
        if attr_int(node, "is_packed_batching", 0):
            return Decline("packed batching")
        checked = channel_input(node, spaces, 2)
        if isinstance(checked, Decline):
            return checked
        count = spaces.count_of(x)
        if count % heads:
            return Decline(f"num_heads {heads} does not divide its {count} features")
        d = count // heads
        rotated = attr_int(node, "rotary_embedding_dim", 0)
        if rotated and rotated != d:
            return Decline(f"rotates {rotated} of each head's {d} dims")  # (the rest pass: not read here)
        y = node.outputs[0]
        spaces.register(y, 2, count, like=x)
        per_head = (spaces.live[x] | (spaces.const[x] != 0)).reshape(heads, d).any(axis=1)
        spaces.set_state(y, np.repeat(per_head, d), np.zeros(count))
        index = np.arange(count)
        spaces.tie(x, index, x, index // d * d)  # whole heads
        return ROTARY

    def backward(self, node: ir.Node, plan: Plan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
        """A needed output dim needs its whole head of input (dims rotate in pairs within the head)."""
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x not in needed or y not in needed:
            return
        heads = attr_int(node, "num_heads", 1)
        head_needed = needed[y].reshape(heads, -1).any(axis=1)
        needed[x] |= np.repeat(head_needed, len(needed[x]) // heads)

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        x = node.inputs[0]
        assert x is not None
        heads = attr_int(node, "num_heads", 1)
        d = rw.count(x) // heads
        node.attributes["num_heads"] = ir.AttrInt64("num_heads", len(rw.kept(x)) // d)


ROTARY = Plan(Kind.ROTARY)
