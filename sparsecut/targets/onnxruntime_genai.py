"""The onnxruntime-genai target: a KV-cache decoder as the folder onnxruntime-genai generates from, timed through
its own generator — the runtime LLM users ship on CPUs.

- build: `<name>.genai/` holds the model (`model.onnx`, its weights in `model.onnx.data` when large),
  `genai_config.json` and the tokenizer files, carried from the folder the model came from (the genai builder's,
  which `sparsecut export DIR` writes) or from `--tokenizer DIR`. The config stays as it was: onnxruntime-genai
  sizes each layer's cache from the model's own past inputs (checked with 0.18: a lean graph of 3 K/V heads in
  every layer, whose config says 4, generates the masked model's tokens), so per-layer head counts need no entry.
- profile: one decode step (`generate_next_token`) after a prompt of 128 tokens, the generator restarted when its
  length runs out; `compare --target onnxruntime-genai` times prefill and decode apart (decoding.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparsecut.errors import TargetError
from sparsecut.feeds import input_specs
from sparsecut.modelfile import load_model, reads_external_data, save_model
from sparsecut.report import LayerTime
from sparsecut.targets.base import (
    Artifact,
    BackendOptions,
    BuildOptions,
    Built,
    InputSpec,
    ProfileOptions,
    Runner,
    Target,
)
from sparsecut.targets.environment import cpu_name

__all__ = ["GenaiOptions", "OnnxRuntimeGenaiTarget", "genai_config", "genai_module", "greedy_generator"]

CONFIG = "genai_config.json"
_CARRIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
            "merges.txt", "generation_config.json", "chat_template.jinja")  # fmt: skip
PROFILE_PROMPT = 128


@dataclasses.dataclass(frozen=True)
class GenaiOptions(BackendOptions):
    tokenizer: Path | None = None  # the folder with genai_config.json and the tokenizer (default: the model's own)


def genai_module() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise TargetError(
            "--target onnxruntime-genai needs onnxruntime-genai (pip install 'sparsecut[genai]', or "
            "'onnxruntime-genai>=0.18')"
        ) from None
    return og


def greedy_generator(og: Any, model: Any, length: int) -> Any:
    """An onnxruntime-genai generator that runs exactly to `length` tokens, greedily (no early end of text)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    return og.Generator(model, params)


class OnnxRuntimeGenaiTarget(Target[GenaiOptions]):
    name = "onnxruntime-genai"
    options_type = GenaiOptions
    artifact_suffix = ".genai"
    no_sparse_kernels = "onnxruntime-genai runs no 2:4 sparse kernels"
    measures_layers = False

    def _build_impl(self, source: Path, staged: Path, options: BuildOptions) -> Built:
        og = genai_module()
        folder = self.own(options).tokenizer or source.parent
        config = folder / CONFIG
        if not config.is_file() and not (folder / "config.json").is_file():
            raise TargetError(
                f"{source}: no {CONFIG} (or Hugging Face config.json) in {folder}; name the exporter's folder with "
                "--tokenizer DIR (sparsecut export DIR makes one)"
            )
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
            raise TargetError(f"--tokenizer {folder}: no tokenizer.json or tokenizer.model there")
        staged.mkdir()
        model = load_model(source)
        save_model(model, staged / "model.onnx", external_data=reads_external_data(model) or None)
        written = not config.is_file()
        settings = json.loads(config.read_text()) if config.is_file() else genai_config(folder / "config.json", model)
        settings.setdefault("model", {}).setdefault("decoder", {})["filename"] = "model.onnx"
        (staged / CONFIG).write_text(json.dumps(settings, indent=4))
        carried = [name for name in _CARRIED if (folder / name).is_file()]
        for name in carried:
            shutil.copyfile(folder / name, staged / name)
        computes = self.precision(Artifact(staged, self.name, source))
        origin = f"{CONFIG} written from {folder / 'config.json'}" if written else f"{CONFIG} from {folder}"
        return Built(
            environment={"onnxruntime-genai": og.__version__},
            notes=[f"{origin}; {', '.join(carried)} from {folder}",
                   f"the graph computes in {computes} (onnxruntime-genai runs it as written: no conversion here)"],
        )  # fmt: skip

    def build_files(self, output: Path, options: BuildOptions) -> dict[Path, str]:
        if Path(output).exists():
            raise TargetError(f"{output}: --output exists; the genai folder is written new")
        return super().build_files(output, options)

    def _load_impl(self, path: Path) -> Artifact:
        if not (path / CONFIG).is_file():
            raise TargetError(f"{path}: not an onnxruntime-genai folder (no {CONFIG}); build one first")
        return Artifact(path, self.name, path / "model.onnx")

    def needs_build(self, path: Path) -> bool:
        return not Path(path).is_dir()

    @contextlib.contextmanager
    def runner(self, artifact: Artifact, options: ProfileOptions) -> Iterator[Runner]:
        og = genai_module()
        model = og.Model(str(artifact.path))
        vocab = json.loads((artifact.path / CONFIG).read_text())["model"].get("vocab_size", 32)
        prompt = np.random.default_rng(options.seed).integers(0, vocab, (1, PROFILE_PROMPT)).astype(np.int32)
        length = PROFILE_PROMPT + 64
        state: dict[str, Any] = {}

        def restart() -> None:
            state["generator"] = generator = greedy_generator(og, model, length)
            generator.append_tokens(prompt)

        def run_once() -> None:
            if state["generator"].is_done():
                restart()  # (one step in 64 also pays for a prefill: the median does not see it)
            state["generator"].generate_next_token()

        restart()
        yield run_once

    def layer_times(self, artifact: Artifact, options: ProfileOptions) -> list[LayerTime]:
        return []  # the generator's sessions are its own: no per-layer profile through it

    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise TargetError(f"{artifact.path}: onnxruntime-genai runs token ids through its generator, not feeds")

    def inputs(self, artifact: Artifact) -> list[InputSpec]:
        return input_specs(artifact.path / "model.onnx" if artifact.path.is_dir() else artifact.path)

    def device(self, options: ProfileOptions) -> str:
        return cpu_name()

    def backend_version(self) -> str:
        return str(genai_module().__version__)

    def environment(self, options: ProfileOptions) -> dict[str, str]:
        return {"onnxruntime-genai": self.backend_version()}

    def precision(self, artifact: Artifact) -> str:
        model = artifact.path / "model.onnx" if artifact.path.is_dir() else artifact.path
        import onnx

        proto = onnx.load(str(model), load_external_data=False)
        return "int4" if any(node.op_type == "MatMulNBits" for node in proto.graph.node) else "fp32"

    def int8_formats(self, options: BuildOptions) -> tuple[str, ...]:
        return ()


def genai_config(hf_config: Path, model: Any) -> dict[str, Any]:
    """A genai_config.json for a decoder another exporter wrote (optimum-onnx's: input_ids, attention_mask,
    position_ids, past_key_values.N.* → logits, present.N.*), from the Hugging Face config beside it and the graph's
    own input names. The per-layer K/V heads are the graph's: onnxruntime-genai reads them from its inputs."""
    try:
        hf = json.loads(hf_config.read_text())
    except (OSError, ValueError) as exc:
        raise TargetError(f"{hf_config}: not a readable JSON config ({exc})") from None
    names = {str(v.name) for v in model.graph.inputs}
    inputs = {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key",
              "past_value_names": "past_key_values.%d.value"}  # fmt: skip
    for optional in ("attention_mask", "position_ids"):
        if optional in names:
            inputs[optional] = optional
    heads = hf.get("num_attention_heads", 1)
    eos = hf.get("eos_token_id", 0)
    eos = eos[0] if isinstance(eos, list) else eos
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx",
        "head_size": hf.get("head_dim") or hf.get("hidden_size", 0) // heads,
        "hidden_size": hf.get("hidden_size"),
        "inputs": inputs,
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "num_attention_heads": heads,
        "num_hidden_layers": hf.get("num_hidden_layers"),
        "num_key_value_heads": hf.get("num_key_value_heads", heads),
    }
    context = hf.get("max_position_embeddings", 2048)
    return {
        "model": {"bos_token_id": hf.get("bos_token_id", eos), "context_length": context, "decoder": decoder,
                  "eos_token_id": eos, "pad_token_id": hf.get("pad_token_id") or eos,
                  "type": hf.get("model_type", "llama"), "vocab_size": hf.get("vocab_size")},
        "search": {"do_sample": False, "max_length": context, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "top_k": 50, "top_p": 1.0,
                   "temperature": 1.0},
    }  # fmt: skip
