"""A Hugging Face decoder folder (`save_pretrained`, masked by structured pruning) to a verified KV-cache ONNX
decoder, through one of the two exporters LLM users deploy with:

- `genai` (default): onnxruntime-genai's model builder (`-p fp32 -e cpu`): GroupQueryAttention, rotary and
  SkipSimplifiedLayerNormalization, with `genai_config.json` and the tokenizer files beside the model — the folder
  onnxruntime-genai generates from. Needs `onnxruntime-genai` (0.18), `transformers` 5 and `onnx-ir`.
- `optimum`: optimum-onnx's `text-generation-with-past` export (plain ops). Needs `optimum-onnx` (0.1), which pins
  `transformers` 4.57.

The two want different transformers, so neither is a dependency of sparsecut: the exporter runs in the Python
given by `--python` (a venv of its own) or this one, as a subprocess. The result is verified the way the decoder
gate verifies (`sparsecut.decoder`): transformers' own greedy generation from the folder (run in that Python,
`hf_reference.py`) against the exported graph's in onnxruntime — every step's logits within tolerance, the tokens
identical. Weights are read from safetensors only: a folder of pickled `.bin` weights is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from sparsecut.checking import checking_session, compare_outputs
from sparsecut.decoder import DecoderInterface, generate
from sparsecut.errors import CheckpointError, ExportError, VerificationError
from sparsecut.modelfile import load_model
from sparsecut.report import ExportReport, OutputCheck

__all__ = ["DECODER_EXPORTERS", "DecoderExportOptions", "export_decoder_folder", "is_decoder_folder"]

DECODER_EXPORTERS = ("genai", "optimum")
_NEEDS = {
    "genai": ("onnxruntime_genai.models.builder", "onnxruntime-genai", "'onnxruntime-genai>=0.18' 'transformers>=5' onnx-ir"),
    "optimum": ("optimum.exporters.onnx", "optimum-onnx", "optimum-onnx 'transformers==4.57.*'"),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DecoderExportOptions:
    exporter: str = "genai"
    python: str | None = None  # the interpreter that has the exporter (default: this one)
    rtol: float = 1e-4
    atol: float = 1e-5
    prompt: int = 16  # tokens of the verification prompt
    tokens: int = 32  # tokens generated
    seed: int = 0


def is_decoder_folder(path: Path) -> bool:
    """A Hugging Face model folder (what `save_pretrained` writes): a directory with config.json."""
    return path.is_dir() and (path / "config.json").is_file()


def export_decoder_folder(
    folder: Path, out: Path, options: DecoderExportOptions = DecoderExportOptions()
) -> ExportReport:
    """Export `folder` into the (staged, existing, empty) folder `out` and verify it; the report names the model."""
    if options.exporter not in DECODER_EXPORTERS:
        raise ExportError(f"--exporter {options.exporter}: one of {', '.join(DECODER_EXPORTERS)}")
    architecture = _check_folder(folder)
    python = options.python or sys.executable
    version = _exporter_version(python, options.exporter)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsecut-export-") as tmp:
        if options.exporter == "genai":
            command = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out), "-p",
                       "fp32", "-e", "cpu", "-c", str(Path(tmp) / "cache")]  # fmt: skip
        else:
            command = [python, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(folder),
                       "--task", "text-generation-with-past", str(out)]  # fmt: skip
        _run(command, f"{folder}: the {options.exporter} exporter failed")
        model_path = out / "model.onnx"
        if not model_path.is_file():
            raise ExportError(f"{folder}: the {options.exporter} exporter wrote no model.onnx")
        exported = time.perf_counter()
        reference = Path(tmp) / "reference.npz"
        script = Path(__file__).with_name("hf_reference.py")
        printed = _run([python, str(script), str(folder), str(reference), "--prompt", str(options.prompt),
                        "--tokens", str(options.tokens), "--seed", str(options.seed)],
                       f"{folder}: transformers could not generate from it")  # fmt: skip
        check = _verify(model_path, reference, options)
        versions = json.loads(printed.strip().splitlines()[-1])
    verified = time.perf_counter()
    if not check.passed:
        raise VerificationError(
            f"{folder}: the {options.exporter} export differs from transformers ({check.label}; max abs "
            f"{check.max_abs_error:.3g}, rel {check.max_rel_error:.3g} > rtol {options.rtol:g})"
        )
    proto = onnx.load(str(model_path), load_external_data=False)
    weights = load_model(model_path)
    arrays = [v.const_value.numpy() for v in weights.graph.initializers.values() if v.const_value is not None]
    return ExportReport(
        checkpoint=str(folder),
        checkpoint_sha256=_folder_digest(folder),
        output=str(model_path),
        architecture=architecture,
        exporter=f"{_NEEDS[options.exporter][1]} {version}",
        exporter_note=f"run by {python}",
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
        input_shape=[],
        parameters=int(sum(a.size for a in arrays if a.dtype.kind == "f")),
        zero_parameters=int(sum((a == 0).sum() for a in arrays if a.dtype.kind == "f" and a.ndim == 2)),
        folded_masks=[],
        resized_layers=[],
        checks=[check],
        rtol=options.rtol,
        atol=options.atol,
        external_data=any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer),
        export_seconds=exported - start,
        verify_seconds=verified - exported,
        versions={**versions, _NEEDS[options.exporter][1]: version},
        nodes=len(proto.graph.node),
    )


def _check_folder(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'}: not a readable JSON config ({exc})") from None
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in architectures):
        raise CheckpointError(f"{folder}: not a causal language model (architectures {architectures or 'missing'})")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        if pickled:
            raise CheckpointError(
                f"{folder}: its weights are pickled ({pickled[0]}); sparsecut never unpickles a checkpoint by "
                "default: save them as safetensors (save_pretrained(..., safe_serialization=True))"
            )
        raise CheckpointError(f"{folder}: no *.safetensors weights")
    return str(architectures[0])


def _exporter_version(python: str, exporter: str) -> str:
    module, package, install = _NEEDS[exporter]
    probe = f"import importlib.metadata as m, {module}; print(m.version('{package}'))"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as exc:
        raise ExportError(f"--python {python}: cannot run it ({exc.strerror})") from None
    if done.returncode:
        raise ExportError(
            f"--exporter {exporter}: {package}'s exporter does not import in {python} (pip install {install} there, "
            "or point --python at a venv that has it)"
        )
    return done.stdout.strip()


def _run(command: list[str], failure: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ExportError(f"{failure}: {lines[-1][:300] if lines else f'exit code {done.returncode}'}")
    return done.stdout


def _verify(model_path: Path, reference: Path, options: DecoderExportOptions) -> OutputCheck:
    ref = np.load(reference)
    interface = DecoderInterface.of(load_model(model_path), model_path)
    if interface is None:
        raise ExportError(f"{model_path}: the exporter wrote no KV-cache decoder (no past_key_values inputs)")
    with checking_session(model_path) as session:
        done = generate(session, interface, ref["prompt"], ref["tokens"].shape[1])
    got = [step[:, -1] for step in done.logits]
    want = [ref["logits"][:, i] for i in range(ref["logits"].shape[1])]
    check = compare_outputs(want, got, options.rtol, options.atol, batch=1)
    same = bool(np.array_equal(done.tokens, ref["tokens"]))
    label = (
        f"greedy generation against transformers, batch 1: prefill {ref['prompt'].shape[1]} tokens (seed "
        f"{options.seed}), {ref['tokens'].shape[1] - 1} decode steps; tokens {'identical' if same else 'DIFFER'}"
    )
    return dataclasses.replace(check, passed=check.passed and same, label=label)


def _folder_digest(folder: Path) -> str:
    """sha256 over the folder's config and weight files, in name order."""
    digest = hashlib.sha256()
    for path in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
