"""Attention heads removed exactly, on real transformer implementations: timm's ViT and Hugging Face's BERT, ViT
and a Llama-style decoder with GQA and RoPE, all from small configs (random init, no download).

Per model, sequence length and what is pruned ("heads", or "heads + head dims"): heads are chosen per block by head importance (the L1 norm of the head's V rows
and output-projection columns — Torch-Pruning's magnitude criterion applied to head groups), 40 % of them (with
GQA: 40 % of the K/V groups, each with all its Q heads), and zeroed (V rows, V bias and output-projection columns); with head dims also 25 % of the q/k dims (q rows and bias zeroed) and of the v dims (v rows and bias), the
same dims in every head, by the same L1 criterion: the masked model. sparsecut exports it and optimizes it
(align 1, lossless, gated). The physical reference removes the same heads in PyTorch by slicing the q/k/v rows
and output-projection columns out of the Linear layers (Hugging Face's attention reshapes with -1 heads;
timm's reads `num_heads` and `attn_dim`, which are set): transformers 5 dropped `prune_heads`, and Torch-Pruning
1.6's `prune_num_heads` yields no group for timm's ViT at a channel ratio of 0 (heads only), so neither tool is
used.

Printed: exact (the gate's max rel error, ≤ 1e-4), heads before → after, parameters and MACs of lean vs
physical (equal where both removed the same heads), lean/masked and lean/physical p50 on onnxruntime CPU with
95 % intervals (interleaved rounds).

transformers, timm and Torch-Pruning are benchmark-only dependencies (`pip install transformers timm
torch-pruning` into the venv with `torch==2.13.0` in the same call); timm and transformers need ../shared/tvshim.py.

    .venv/bin/python benchmarks/transformers.py [--models bert llama ...] [--seqs 128 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import load_tvshim, model_arguments
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import nn

from sparsecut.cost import count_costs
from sparsecut.exporter import ExportOptions, export_module
from sparsecut.modelfile import load_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.targets import ProfileOptions, compare_models

# this file bears the name of the package it benchmarks: its folder must not shadow `import transformers`
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MODELS = ["timm-vit", "bert", "hf-vit", "llama"]
HIDDEN, LAYERS, HEADS = 256, 4, 8
RATIO = 0.4  # of the heads (with GQA: of the K/V groups)
DIM_RATIO = 0.25  # of the head dims, q/k and v each, the same dims in every head ("heads+dims" rows)


class Embedded(nn.Module):
    """A Hugging Face text model fed embeddings [B, N, D] (the exporter feeds float inputs), returning the last
    hidden state."""

    def __init__(self, model: nn.Module, text: bool) -> None:
        super().__init__()
        self.model, self.text = model, text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs_embeds=x) if self.text else self.model(pixel_values=x)
        return out.last_hidden_state


def build(name: str, seq: int) -> tuple[nn.Module, tuple[int, ...], list[tuple[nn.Linear, nn.Linear, int, int]]]:
    """The model, its input shape for about `seq` tokens, and per attention block (V or fused qkv, output
    projection, heads, V row offset)."""
    torch.manual_seed(0)
    if name == "timm-vit":
        import timm

        side = round((seq - 1) ** 0.5) * 16
        model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=LAYERS, img_size=side).eval()
        return model, (1, 3, side, side), _blocks_of(name, model)
    from transformers import AutoConfig, AutoModel

    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * HIDDEN)
    if name == "bert":
        config = AutoConfig.for_model("bert", vocab_size=1000, max_position_embeddings=max(seq, 512), **common)
    elif name == "llama":
        config = AutoConfig.for_model("llama", vocab_size=1000, num_key_value_heads=HEADS // 4, **common)
    else:
        side = round(seq**0.5) * 16
        config = AutoConfig.for_model("vit", image_size=side, patch_size=16, **common)
    config._attn_implementation = "sdpa"
    inner = AutoModel.from_config(config).eval()
    model = Embedded(inner, text=name != "hf-vit").eval()
    shape = (1, seq, HIDDEN) if name != "hf-vit" else (1, 3, config.image_size, config.image_size)
    return model, shape, _blocks_of(name, model)


def choose_heads(blocks: list[tuple[nn.Linear, nn.Linear, int, int]], kv_groups: int = 1) -> list[list[int]]:
    """Per block, the RATIO least important heads (L1 of V rows + output columns); with GQA whole groups."""
    chosen = []
    for v, o, heads, offset in blocks:
        d = o.in_features // heads
        groups = heads // kv_groups
        score = torch.zeros(groups)
        for h in range(heads):
            g = h // kv_groups
            score[g] += o.weight[:, h * d : (h + 1) * d].abs().sum()
            kv = g if kv_groups > 1 else h
            score[g] += v.weight[offset + kv * d : offset + (kv + 1) * d].abs().sum()
        weakest = torch.argsort(score)[: max(1, round(RATIO * groups))].tolist()
        chosen.append(sorted(h for g in weakest for h in range(g * kv_groups, (g + 1) * kv_groups)))
    return chosen


def mask(blocks: list[tuple[nn.Linear, nn.Linear, int, int]], chosen: list[list[int]], kv_groups: int = 1) -> None:
    with torch.no_grad():
        for (v, o, heads, offset), dead in zip(blocks, chosen, strict=True):
            d = o.in_features // heads
            for h in dead:
                o.weight[:, h * d : (h + 1) * d] = 0.0
                if h % kv_groups == 0:  # its K/V head (GQA: once per group)
                    kv = h // kv_groups
                    v.weight[offset + kv * d : offset + (kv + 1) * d] = 0.0
                    if v.bias is not None:
                        v.bias[offset + kv * d : offset + (kv + 1) * d] = 0.0


Dims = tuple[list[int], list[int]]  # (q/k dims, v dims) zeroed in every head of a block


def choose_dims(name: str, model: nn.Module, kv_groups: int) -> list[Dims]:
    """Per block, the DIM_RATIO least important q/k dims (L1 of q and k rows of that dim, over all heads) and v dims
    (L1 of v rows and output columns)."""
    chosen = []
    for q, k, v, o in _projections(name, model):
        d = o.in_features // HEADS
        count = round(DIM_RATIO * d)
        qk = torch.zeros(d)
        vo = torch.zeros(d)
        for i in range(d):
            qk[i] = q.weight[i::d].abs().sum() + k.weight[i::d].abs().sum()
            vo[i] = v.weight[i::d].abs().sum() + o.weight[:, i::d].abs().sum()
        chosen.append((sorted(torch.argsort(qk)[:count].tolist()), sorted(torch.argsort(vo)[:count].tolist())))
    return chosen


def mask_dims(name: str, model: nn.Module, dims: list[Dims]) -> None:
    """Zero q rows (weights and bias) of the chosen q/k dims in every head, and v rows of the chosen v dims."""
    with torch.no_grad():
        for (q, _, v, o), (qk_dims, v_dims) in zip(_projections(name, model), dims, strict=True):
            d = o.in_features // HEADS
            for linear, chosen in ((q, qk_dims), (v, v_dims)):
                rows = [h * d + i for h in range(linear.out_features // d) for i in chosen]
                linear.weight[rows] = 0.0
                if linear.bias is not None:
                    linear.bias[rows] = 0.0


def physical(
    name: str, model: nn.Module, chosen: list[list[int]], kv_groups: int, dims: list[Dims] | None = None
) -> nn.Module | None:
    """The same heads (and head dims) removed in PyTorch: q/k/v rows and output-projection columns sliced out of the
    Linear layers (Hugging Face's attention reshapes with -1 heads; with head dims, its head size attribute is set
    too — it keeps its scale, computed at construction). None where PyTorch cannot hold the result: RoPE's tables
    follow the configured head dim (Llama with head dims)."""
    if dims is not None and name == "llama":
        return None
    pruned = copy.deepcopy(model)
    for index, ((q, k, v, o), dead) in enumerate(zip(_projections(name, pruned), chosen, strict=True)):
        d = o.in_features // HEADS
        qk_dims, v_dims = dims[index] if dims is not None else ([], [])
        keep = [h for h in range(HEADS) if h not in dead]
        keep_kv = sorted({h // kv_groups for h in keep})

        def rows(heads: list[int], drop: list[int], d: int = d) -> torch.Tensor:
            return torch.tensor([h * d + i for h in heads for i in range(d) if i not in drop])

        for linear, index_rows in ((q, rows(keep, qk_dims)), (k, rows(keep_kv, qk_dims)), (v, rows(keep_kv, v_dims))):
            _slice_linear(linear, index_rows, out=True)
        _slice_linear(o, rows(keep, v_dims), out=False)
        if dims is not None:
            assert len(qk_dims) == len(v_dims)
            attn = _attention_module(name, pruned, index)
            setattr(attn, "attention_head_size" if name == "bert" else "head_dim", d - len(v_dims))
    return pruned


def _attention_module(name: str, model: nn.Module, index: int) -> nn.Module:
    inner = model.model
    if name == "bert":
        return inner.encoder.layer[index].attention.self
    layer = inner.layers[index]
    return layer.self_attn if hasattr(layer, "self_attn") else layer.attention


def _slice_linear(linear: nn.Linear, index: torch.Tensor, out: bool) -> None:
    with torch.no_grad():
        weight = linear.weight[index] if out else linear.weight[:, index]
        linear.weight = nn.Parameter(weight.clone())
        if out and linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[index].clone())
    if out:
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def physical_timm(model: nn.Module, chosen: list[list[int]]) -> nn.Module:
    """timm's ViT with the same heads removed: qkv rows (of q, k and v) and proj columns sliced, `num_heads` and
    `attn_dim` set (timm's attention reshapes with both)."""
    pruned = copy.deepcopy(model)
    for block, dead in zip(pruned.blocks, chosen, strict=True):
        attn = block.attn
        d, heads = attn.head_dim, attn.num_heads
        keep = [h for h in range(heads) if h not in dead]
        rows = torch.tensor([s * heads * d + h * d + i for s in range(3) for h in keep for i in range(d)])
        _slice_linear(attn.qkv, rows, out=True)
        _slice_linear(attn.proj, torch.tensor([h * d + i for h in keep for i in range(d)]), out=False)
        attn.num_heads, attn.attn_dim = len(keep), len(keep) * d
    return pruned


def bench(name: str, seq: int, with_dims: bool, folder: Path, rounds: int, iterations: int) -> dict[str, object]:
    model, shape, blocks = build(name, seq)
    kv_groups = 4 if name == "llama" else 1
    chosen = choose_heads(blocks, kv_groups)
    masked = copy.deepcopy(model)
    mask(_blocks_of(name, masked), chosen, kv_groups)
    dims = choose_dims(name, model, kv_groups) if with_dims else None
    if dims is not None:
        mask_dims(name, masked, dims)
    if name == "timm-vit":
        reference: nn.Module | None = physical_timm(model, chosen)
    else:
        reference = physical(name, model, chosen, kv_groups, dims)
    options = ExportOptions(input_shape=shape, rtol=1e-3, atol=1e-4)
    files = {k: folder / f"{name}-{seq}-{with_dims}.{k}.onnx" for k in ("masked", "lean", "physical")}
    export_module(masked, files["masked"], options)
    report = optimize_model(files["masked"], files["lean"], OptimizeOptions(align=1))
    step = next(p for p in report.passes if p.name == "remove-dead-channels")
    paths = [files["masked"], files["lean"]]
    row: dict[str, object] = {
        "model": name,
        "seq": seq,
        "pruned": "heads + head dims" if with_dims else "heads",
        "head_dims_after": [(h.qk_dim_after, h.v_dim_after) for h in step.heads],
        "exact_max_rel_error": max(c.max_rel_error for c in report.checks),
        "heads_before": sum(h.heads for h in step.heads),
        "heads_after": sum(h.heads - h.removable for h in step.heads),
        "heads_dead": sum(h.dead for h in step.heads),
        "blocks_found": len(step.heads),
        "params_lean": report.after.params,
        "macs_lean": report.after.macs,
        "rule_errors": step.rule_errors,
    }
    if reference is not None:
        export_module(reference.eval(), files["physical"], options)
        cost = count_costs(load_model(files["physical"], infer_shapes=True))
        row["params_physical"], row["macs_physical"] = cost.params, cost.macs
        paths.append(files["physical"])
    compared = compare_models(paths, options=ProfileOptions(iterations=iterations, warmup=3, per_layer=False),
                              rounds=rounds)  # fmt: skip
    lean = compared.variants[1].speedup  # masked p50 / lean p50
    row["lean_over_masked"] = {"value": 1 / lean.value, "low": 1 / lean.high, "high": 1 / lean.low}
    if len(paths) == 3:
        ratio = compared.variants[2].speedup  # masked / physical
        row["lean_over_physical"] = {"value": ratio.value / lean.value, "low": ratio.low / lean.high,
                                     "high": ratio.high / lean.low}  # fmt: skip
    row["device"] = compared.device
    return row


def _blocks_of(name: str, model: nn.Module) -> list[tuple[nn.Linear, nn.Linear, int, int]]:
    if name == "timm-vit":
        return [(b.attn.qkv, b.attn.proj, b.attn.num_heads, 2 * model.embed_dim) for b in model.blocks]
    return [(v, o, HEADS, 0) for _, _, v, o in _projections(name, model)]


def _projections(name: str, model: nn.Module) -> list[tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]]:
    """(q, k, v, o) of every Hugging Face attention layer (BERT's naming, or q_proj … o_proj as Llama and ViT in
    transformers 5 name them)."""
    inner = model.model
    layers = inner.encoder.layer if name == "bert" else inner.layers
    found = []
    for layer in layers:
        if name == "bert":
            attn = layer.attention.self
            found.append((attn.query, attn.key, attn.value, layer.attention.output.dense))
        else:
            attn = layer.self_attn if hasattr(layer, "self_attn") else layer.attention
            found.append((attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
    return found


def _interval(r: dict[str, float] | None) -> str:
    return f"{r['value']:.3f} ({r['low']:.3f}–{r['high']:.3f})" if r else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(parser, MODELS, iterations=10)
    parser.add_argument("--seqs", nargs="+", type=int, default=[128, 512])
    args = parser.parse_args()
    load_tvshim(args.tvshim)
    console = Console(width=220)
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsecut-transformers-") as tmp:
        jobs = [(m, s, d) for m in args.models for s in args.seqs for d in (False, True) if not (d and m == "timm-vit")]
        for name, seq, with_dims in track(jobs, description="models", console=console):
            results.append(bench(name, seq, with_dims, Path(tmp), args.rounds, args.iterations))
    table = Table(title=f"attention heads removed (ratio {RATIO}) — onnxruntime on {results[0]['device']}")
    for column in ("model", "seq", "pruned", "exact (max rel)", "blocks", "heads before → after (dead)",
                   "head dim q/k, v after", "params lean / physical",
                   "MACs lean / physical", "lean / masked p50", "lean / physical p50"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        physical_params = r.get("params_physical")
        table.add_row(
            str(r["model"]), str(r["seq"]), str(r["pruned"]), f"{r['exact_max_rel_error']:.1e}", str(r["blocks_found"]),
            f"{r['heads_before']} → {r['heads_after']} ({r['heads_dead']})",
            ", ".join(sorted({f"{a}, {b}" for a, b in r["head_dims_after"]})),  # type: ignore[attr-defined]
            f"{r['params_lean']:,} / {physical_params:,}" if physical_params else f"{r['params_lean']:,} / –",
            f"{r['macs_lean']:,} / {r['macs_physical']:,}" if physical_params else f"{r['macs_lean']:,} / –",
            _interval(r["lean_over_masked"]), _interval(r.get("lean_over_physical")),  # type: ignore[arg-type]
        )  # fmt: skip
    console.print(table)
    console.print("targets: exact ≤ 1e-4; every dead head removed; lean/physical p50 ≤ 1.05")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
