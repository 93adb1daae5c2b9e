"""A Llama-architecture decoder with a KV cache, small enough for unit tests, written the way Hugging Face writes it
(RMSNorm in plain ops, GQA with repeat_kv as Unsqueeze → Expand → Reshape, RoPE's rotate-half, the past
concatenated on the sequence axis, a causal mask built from the attention mask), exported with the interface
optimum-onnx and onnxruntime-genai give a decoder: `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.N.key/value` → `logits`, `present.N.key/value`. And masking as structured LLM pruning leaves it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS = 64, 32, 4, 2, 16, 48, 2  # (GQA wants head dims of 16·k)


class RMSNorm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.q = nn.Linear(HIDDEN, heads * HEAD_DIM, bias=False)
        self.k = nn.Linear(HIDDEN, kv_heads * HEAD_DIM, bias=False)
        self.v = nn.Linear(HIDDEN, kv_heads * HEAD_DIM, bias=False)
        self.o = nn.Linear(heads * HEAD_DIM, HIDDEN, bias=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):  # type: ignore[no-untyped-def]
        b, n, _ = x.shape
        q = self.q(x).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        k = self.k(x).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        v = self.v(x).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        present = (k, v)
        heads, kv_heads = self.heads, self.kv_heads
        t = k.shape[2]
        if kv_heads < heads:  # repeat_kv, as Hugging Face writes it
            repeat = heads // kv_heads
            k = k[:, :, None].expand(b, kv_heads, repeat, t, HEAD_DIM).reshape(b, heads, t, HEAD_DIM)
            v = v[:, :, None].expand(b, kv_heads, repeat, t, HEAD_DIM).reshape(b, heads, t, HEAD_DIM)
        scores = q @ k.transpose(2, 3) / HEAD_DIM**0.5 + mask
        out = torch.softmax(scores, dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, n, -1)), present


class Layer(nn.Module):
    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(HIDDEN), RMSNorm(HIDDEN)
        self.attn = Attention(heads, kv_heads)
        self.gate = nn.Linear(HIDDEN, MLP, bias=False)
        self.up = nn.Linear(HIDDEN, MLP, bias=False)
        self.down = nn.Linear(MLP, HIDDEN, bias=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):  # type: ignore[no-untyped-def]
        attended, present = self.attn(self.norm1(x), cos, sin, mask, past_k, past_v)
        x = x + attended
        h = self.norm2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h)), present


class Decoder(nn.Module):
    """forward(input_ids, attention_mask, position_ids, past_key_values.0.key, past_key_values.0.value, …)."""

    def __init__(self, seed: int = 0, heads: int = HEADS, kv_heads: int = KV_HEADS) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.heads, self.kv_heads = heads, kv_heads
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Layer(heads, kv_heads) for _ in range(LAYERS))
        self.norm = RMSNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        inverse = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        self.register_buffer("inverse", inverse, persistent=False)

    def forward(self, input_ids, attention_mask, position_ids, *pasts):  # type: ignore[no-untyped-def]
        x = self.embed(input_ids)
        angles = position_ids[..., None].float() * self.inverse
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        cos, sin = angles.cos(), angles.sin()
        n = input_ids.shape[1]
        total = attention_mask.shape[1]
        query = (total - n + torch.arange(n))[:, None]
        allowed = (torch.arange(total)[None, :] <= query)[None, None] & (attention_mask[:, None, None, :] > 0)
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        presents = []
        for index, layer in enumerate(self.layers):
            x, (k, v) = layer(x, cos, sin, mask, pasts[2 * index], pasts[2 * index + 1])
            presents += [k, v]
        return (self.head(self.norm(x)), *presents)


def cache_names() -> tuple[list[str], list[str]]:
    pasts = [f"past_key_values.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
    return pasts, [name.replace("past_key_values", "present") for name in pasts]


def mask_like_llm_pruning(model: Decoder, extra_query_head: bool = False) -> dict[str, object]:
    """Layer i loses K/V group i % kv_heads with its query heads (q rows, o columns), a third of its MLP neurons,
    and every layer the hidden channels 3 and 17 (embedding columns, every residual writer's rows). With
    `extra_query_head`, layer 0 also loses one query head of a live group (its q rows and o columns)."""
    group = model.heads // model.kv_heads
    hidden = [3, 17]
    with torch.no_grad():
        model.embed.weight[:, hidden] = 0
        for index, layer in enumerate(model.layers):
            dead = index % model.kv_heads
            heads = list(range(dead * group, (dead + 1) * group))
            if extra_query_head and index == 0:
                heads.append((heads[-1] + 1) % model.heads)
            for h in heads:
                layer.attn.q.weight[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
                layer.attn.o.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            rows = slice(dead * HEAD_DIM, (dead + 1) * HEAD_DIM)
            layer.attn.k.weight[rows] = 0
            layer.attn.v.weight[rows] = 0
            neurons = np.arange(index, MLP, 3)
            layer.gate.weight[neurons] = 0
            layer.up.weight[neurons] = 0
            layer.down.weight[:, neurons] = 0
            layer.attn.o.weight[hidden] = 0
            layer.down.weight[hidden] = 0
    return {"hidden": hidden, "neurons": [len(np.arange(i, MLP, 3)) for i in range(LAYERS)]}


def mask_query_heads(model: Decoder, layer: int, heads: list[int]) -> None:
    """Query heads of live K/V groups: their q rows and output-projection columns zero (their K/V heads live)."""
    attention = model.layers[layer].attn
    with torch.no_grad():
        for h in heads:
            attention.q.weight[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            attention.o.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0


def export_decoder(model: Decoder, path: Path, dynamo: bool) -> Path:
    """The decoder as optimum-onnx's interface has it, exported by either PyTorch exporter."""
    pasts, presents = cache_names()
    batch, n, past = 2, 3, 4
    example = (
        torch.randint(0, VOCAB, (batch, n)),
        torch.ones(batch, past + n, dtype=torch.int64),
        torch.arange(past, past + n)[None].expand(batch, n).contiguous(),
        *(torch.randn(batch, model.kv_heads, past, HEAD_DIM) for _ in pasts),
    )
    names = ["input_ids", "attention_mask", "position_ids", *pasts]
    if dynamo:
        auto = torch.export.Dim.AUTO
        shapes = (
            {0: auto, 1: auto},
            {0: auto, 1: auto},
            {0: auto, 1: auto},
            tuple({0: auto, 2: auto} for _ in pasts),
        )  # (the pasts are one *args)
        torch.onnx.export(
            model.eval(),
            example,
            str(path),
            dynamo=True,
            input_names=names,
            output_names=["logits", *presents],
            dynamic_shapes=shapes,
            optimize=True,
        )
    else:
        axes = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"},
            **{p: {0: "batch", 2: "past"} for p in pasts},
            **{p: {0: "batch", 2: "total"} for p in presents},
        }
        torch.onnx.export(
            model.eval(),
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["logits", *presents],
            dynamic_axes=axes,
        )
    return path


def builder_decoder(model: Decoder, path: Path, separate: bool = False, rotary: bool = False) -> Path:
    """The same decoder in the form onnxruntime-genai's model builder writes (`-p fp32 -e cpu`): the token table
    gathered, SimplifiedLayerNormalization then com.microsoft SkipSimplifiedLayerNormalization carrying the
    residual stream, one packed q|k|v MatMul into GroupQueryAttention (rotary inside, from cos/sin caches, positions
    from the attention mask), past [B, H_kv, P, kv_cache_dim] → present; no position_ids input."""
    from onnx import TensorProto, helper, numpy_helper

    def weight(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def linear(name: str, x: str, *layers: nn.Linear) -> str:
        w = torch.cat([layer.weight for layer in layers]).detach().numpy().T
        nodes.append(helper.make_node("MatMul", [x, weight(f"{name}.weight", w)], [f"{name}.out"], name=name))
        return f"{name}.out"

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    pasts, presents = cache_names()
    angles = np.arange(256)[:, None] * model.inverse.numpy()[None]
    weight("cos_cache", np.cos(angles))
    weight("sin_cache", np.sin(angles))
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axes1"))
    initializers.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
    nodes += [
        helper.make_node("ReduceSum", ["attention_mask", "axes1"], ["mask_sum"], keepdims=0),
        helper.make_node("Sub", ["mask_sum", "one"], ["seqlens"]),
        helper.make_node("Cast", ["seqlens"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "one"], ["total"], axis=0),
        helper.make_node("Cast", ["total"], ["total_seq_len"], to=TensorProto.INT32),
        helper.make_node("Gather", [weight("embed", model.embed.weight.detach().numpy()), "input_ids"], ["x0"]),
        helper.make_node(
            "SimplifiedLayerNormalization",
            ["x0", weight("norm1.0", model.layers[0].norm1.weight.detach().numpy())],
            ["h0"],
            epsilon=1e-5,
            axis=-1,
            stash_type=1,
        ),
    ]
    residual, normed = "x0", "h0"
    qkv: list[str]
    for i, layer in enumerate(model.layers):
        if rotary:  # RotaryEmbedding before an attention that does not rotate (the builder for DirectML)
            q, k, v = (linear(f"{part}.{i}", normed, getattr(layer.attn, part)) for part in ("q", "k", "v"))
            for name, heads in ((q, model.heads), (k, model.kv_heads)):
                nodes.append(helper.make_node("RotaryEmbedding", [name, "position_ids", "cos_cache", "sin_cache"],
                                              [f"{name}.rot"], domain="com.microsoft", num_heads=heads))  # fmt: skip
            qkv = [f"{q}.rot", f"{k}.rot", v]
        elif separate:  # (the builder's `disable_qkv_fusion`, and some EPs)
            qkv = [linear(f"{part}.{i}", normed, getattr(layer.attn, part)) for part in ("q", "k", "v")]
        else:
            qkv = [linear(f"qkv.{i}", normed, layer.attn.q, layer.attn.k, layer.attn.v), "", ""]
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [*qkv, pasts[2 * i], pasts[2 * i + 1], "seqlens_k", "total_seq_len", "cos_cache", "sin_cache"],
                [f"attn.{i}", presents[2 * i], presents[2 * i + 1]],
                domain="com.microsoft",
                num_heads=model.heads,
                kv_num_heads=model.kv_heads,
                do_rotary=0 if rotary else 1,
                scale=HEAD_DIM**-0.5,
                name=f"gqa.{i}",
            )
        )
        o = linear(f"o.{i}", f"attn.{i}", layer.attn.o)
        nodes.append(
            helper.make_node(
                "SkipSimplifiedLayerNormalization",
                [residual, o, weight(f"norm2.{i}", layer.norm2.weight.detach().numpy())],
                [f"h2.{i}", "", "", f"x1.{i}"],
                domain="com.microsoft",
                epsilon=1e-5,
            )
        )
        gate, up = linear(f"gate.{i}", f"h2.{i}", layer.gate), linear(f"up.{i}", f"h2.{i}", layer.up)
        nodes += [
            helper.make_node("Sigmoid", [gate], [f"sig.{i}"]),
            helper.make_node("Mul", [gate, f"sig.{i}"], [f"silu.{i}"]),
            helper.make_node("Mul", [f"silu.{i}", up], [f"mlp.{i}"]),
        ]
        down = linear(f"down.{i}", f"mlp.{i}", layer.down)
        last = i == len(model.layers) - 1
        gain = (model.norm if last else model.layers[i + 1].norm1).weight.detach().numpy()
        normed, residual = f"h.{i + 1}", f"x.{i + 1}"
        nodes.append(
            helper.make_node(
                "SkipSimplifiedLayerNormalization",
                [f"x1.{i}", down, weight(f"norm1.{i + 1}", gain)],
                [normed, "", "", residual],
                domain="com.microsoft",
                epsilon=1e-5,
            )
        )
    linear("head", normed, model.head)
    nodes[-1].output[0] = "logits"
    cache = ["batch_size", model.kv_heads, "past_sequence_length", "kv_cache_dim"]
    present = ["batch_size", model.kv_heads, "total_sequence_length", "kv_cache_dim"]
    graph = helper.make_graph(
        nodes,
        "builder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
            *(
                [helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
                if rotary
                else []
            ),
            *(helper.make_tensor_value_info(p, TensorProto.FLOAT, cache) for p in pasts),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB]),
            *(helper.make_tensor_value_info(p, TensorProto.FLOAT, present) for p in presents),
        ],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(proto, str(path))
    return path


def genai_folder(model: Decoder, folder: Path) -> Path:
    """The decoder as onnxruntime-genai's builder leaves a folder: the builder-form model, genai_config.json and a
    word-level tokenizer (w0 … wN) — what onnxruntime-genai generates from."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    builder_decoder(model, folder / "model.onnx")
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx", "head_size": HEAD_DIM, "hidden_size": HIDDEN,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
        "num_attention_heads": model.heads, "num_hidden_layers": LAYERS, "num_key_value_heads": model.kv_heads,
    }  # fmt: skip
    config = {
        "model": {"bos_token_id": 1, "context_length": 256, "decoder": decoder, "eos_token_id": 2, "pad_token_id": 2,
                  "type": "llama", "vocab_size": VOCAB},
        "search": {"do_sample": False, "max_length": 256, "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": True, "top_k": 50, "top_p": 1.0, "temperature": 1.0},
    }  # fmt: skip
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in list(vocab.items())[:3]],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 256,
         "tokenizer_class": "PreTrainedTokenizerFast"}))  # fmt: skip
    return folder
