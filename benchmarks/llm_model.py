"""A masked Llama-architecture decoder, the way structured LLM pruning (LLM-Pruner, FLAP, Minitron width pruning)
leaves it: random init from a small config (no download), then per layer one K/V group with all its query heads
zeroed (q/k/v rows, o_proj columns), in layer 0 also one query head of a live group (its q rows and o_proj
columns), a different share of MLP neurons per layer (gate/up rows, down columns), and hidden channels dead
everywhere (embedding columns, every residual writer's rows: o_proj and down_proj; the RMSNorm gains there do
not matter). Saved with `save_pretrained` and a word-level `tokenizers` tokenizer beside it.

Runs in a venv with torch and transformers (either exporter's: optimum-onnx pins transformers 4.57, the genai
model builder wants 5); `benchmarks/llm.py` calls it there:

    python benchmarks/llm_model.py OUT_DIR [--size tiny|100m|1b] [--seed 0]
    python benchmarks/llm_model.py OUT_DIR --reference REF.npz [--prompt 16] [--tokens 32]
    python benchmarks/llm_model.py OUT_DIR --size 100m --uniform

Prints one JSON line: what was masked, per layer (and its count of zero weights). With `--reference`, instead:
transformers' own greedy generation from the saved folder (a seeded prompt, batch 1, no cache tricks), its tokens
and every step's last-position logits into REF.npz — what the exported graphs are checked against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# benchmarks/transformers.py would shadow `import transformers`: this folder leaves the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZES = {  # hidden, layers, heads, kv heads, head dim, MLP, vocab
    "tiny": (256, 4, 8, 4, 32, 688, 512),
    "100m": (768, 12, 12, 4, 64, 2048, 32000),
    "1b": (2048, 16, 32, 8, 64, 8192, 128256),  # Llama-3.2-1B's shapes
}
MLP_SHARES = (0.1, 0.3, 0.5, 0.2)  # of the MLP neurons dead, by layer (cycled)
HIDDEN_SHARE = 24 / 256


def random_llama(
    vocab: int, hidden: int, mlp: int, layers: int, heads: int, kv_heads: int, head_dim: int, seed: int
) -> torch.nn.Module:
    """A seeded random-init Llama of these sizes (untied embeddings, context 2048), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def make_uniform(out: Path, size: str, seed: int) -> dict:
    """A physically smaller decoder of about the lean one's bytes, uniform across layers: one K/V group fewer (with
    its query heads), the hidden size less the masked channels, the MLP at the mean width the masking leaves — the
    model a width-pruning method that keeps layers equal would ship. Random init: only its speed is compared."""
    hidden, layers, heads, kv_heads, head_dim, mlp, vocab = SIZES[size]
    group = heads // kv_heads
    kept = [mlp - round(MLP_SHARES[i % len(MLP_SHARES)] * mlp) for i in range(layers)]
    heads_left = heads - group
    live = hidden - round(HIDDEN_SHARE * hidden)
    hidden_left = -(-live // heads_left) * heads_left  # (transformers 5 wants it a multiple of the heads)
    model = random_llama(
        vocab, hidden_left, round(sum(kept) / layers), layers, heads_left, kv_heads - 1, head_dim, seed
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    _save_tokenizer(out, vocab)
    return {"size": size, "uniform": True, "params": sum(p.numel() for p in model.parameters())}


def make_masked(out: Path, size: str, seed: int) -> dict:
    hidden, layers, heads, kv_heads, head_dim, mlp, vocab = SIZES[size]
    model = random_llama(vocab, hidden, mlp, layers, heads, kv_heads, head_dim, seed)
    rng = np.random.default_rng(seed)
    group = heads // kv_heads
    hidden_dead = np.sort(rng.choice(hidden, round(HIDDEN_SHARE * hidden), replace=False))
    masked: dict = {"size": size, "hidden_dead": hidden_dead.tolist(), "layers": []}
    with torch.no_grad():
        model.model.embed_tokens.weight[:, hidden_dead] = 0
        for index, layer in enumerate(model.model.layers):
            attn, mlp_block = layer.self_attn, layer.mlp
            dead_group = int(rng.integers(kv_heads))
            q_heads = list(range(dead_group * group, (dead_group + 1) * group))
            extra = []
            if index == 0:  # one query head of a live group: its q rows and o_proj columns
                live = [h for h in range(heads) if h not in q_heads]
                extra = [int(rng.choice(live))]
            for h in q_heads + extra:
                attn.q_proj.weight[h * head_dim : (h + 1) * head_dim] = 0
                attn.o_proj.weight[:, h * head_dim : (h + 1) * head_dim] = 0
            rows = slice(dead_group * head_dim, (dead_group + 1) * head_dim)
            attn.k_proj.weight[rows] = 0
            attn.v_proj.weight[rows] = 0
            share = MLP_SHARES[index % len(MLP_SHARES)]
            neurons = np.sort(rng.choice(mlp, round(share * mlp), replace=False))
            mlp_block.gate_proj.weight[neurons] = 0
            mlp_block.up_proj.weight[neurons] = 0
            mlp_block.down_proj.weight[:, neurons] = 0
            attn.o_proj.weight[hidden_dead] = 0
            mlp_block.down_proj.weight[hidden_dead] = 0
            masked["layers"].append(
                {"kv_group": dead_group, "query_heads": q_heads + extra, "mlp_neurons": len(neurons)}
            )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    _save_tokenizer(out, vocab)
    masked["params"] = sum(p.numel() for p in model.parameters())
    masked["zero_weights"] = int(sum((p == 0).sum() for p in model.parameters() if p.dim() == 2))
    return masked


def reference(folder: Path, out: Path, prompt_length: int, tokens: int, seed: int) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = np.random.default_rng(seed).integers(0, model.config.vocab_size, (1, prompt_length))
    with torch.no_grad():
        done = model.generate(
            torch.from_numpy(prompt), attention_mask=torch.ones(1, prompt_length, dtype=torch.int64),
            max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    logits = torch.stack(done.logits, dim=1).numpy()  # [1, tokens, vocab]: each step's last position
    np.savez(out, prompt=prompt, tokens=done.sequences[:, prompt_length:].numpy(), logits=logits)


def _save_tokenizer(out: Path, vocab: int) -> None:
    """A word-level tokenizer over `vocab` made-up words (w0 … wN), saved as Hugging Face reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--uniform", action="store_true", help="a uniform physically smaller model of the lean bytes")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    if args.reference is not None:
        reference(args.out, args.reference, args.prompt, args.tokens, args.seed)
        return
    if args.uniform:
        print(json.dumps(make_uniform(args.out, args.size, args.seed)))
        return
    print(json.dumps(make_masked(args.out, args.size, args.seed)))


if __name__ == "__main__":
    main()
