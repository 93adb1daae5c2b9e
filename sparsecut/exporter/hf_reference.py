"""transformers' own greedy generation from a Hugging Face folder: what `sparsecut export DIR` checks the exported
decoder against. Run by path in the exporter's Python (the one with torch and transformers; sparsecut need not be
installed there), never imported by sparsecut:

    python hf_reference.py FOLDER OUT.npz --prompt 16 --tokens 32 --seed 0

Writes the seeded prompt [1, P], the generated tokens [1, T] and every step's last-position logits [1, T, V], and
prints one JSON line of versions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# a folder named like a package (a benchmarks/transformers.py beside a copy of this file) must not shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import transformers
    from transformers import AutoModelForCausalLM

    # safetensors only: the caller refused folders whose weights would be unpickled
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32, use_safetensors=True).eval()
    prompt = np.random.default_rng(args.seed).integers(0, model.config.vocab_size, (1, args.prompt))
    with torch.no_grad():
        done = model.generate(
            torch.from_numpy(prompt),
            attention_mask=torch.ones(1, args.prompt, dtype=torch.int64),
            max_new_tokens=args.tokens,
            min_new_tokens=args.tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    logits = torch.stack(done.logits, dim=1).float().numpy()
    np.savez(args.out, prompt=prompt, tokens=done.sequences[:, args.prompt :].numpy(), logits=logits)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
