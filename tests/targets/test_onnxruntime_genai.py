"""The onnxruntime-genai target: a lean decoder built into the folder onnxruntime-genai generates from, which
generates the masked model's tokens (the runtime sizes each layer's cache from the model's own past inputs: a
test that would notice if a later version stopped doing so), and timed through its generator."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from sparsecut.cli import main
from sparsecut.passes import OptimizeOptions, optimize_model
from tests.passes.decoders import LAYERS, VOCAB, Decoder, genai_folder, mask_like_llm_pruning

og = pytest.importorskip(
    "onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'sparsecut[genai]')"
)


def _generate(folder, prompt: np.ndarray, count: int) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    length = prompt.shape[1] + count
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt.astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return list(generator.get_sequence(0))[prompt.shape[1] :]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("genai")
    model = Decoder()
    mask_like_llm_pruning(model)
    masked = genai_folder(model, root / "masked")
    optimize_model(masked / "model.onnx", root / "lean.onnx", OptimizeOptions(align=1))
    return root, masked


def test_the_built_folder_generates_the_masked_models_tokens(folders, capsys):
    root, masked = folders
    code = main(["build", str(root / "lean.onnx"), "-o", str(root / "lean.genai"), "--target", "onnxruntime-genai",
                 "--tokenizer", str(masked)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    built = root / "lean.genai"
    assert sorted(p.name for p in built.iterdir()) == ["genai_config.json", "model.onnx", "tokenizer.json",
                                                       "tokenizer_config.json"]  # fmt: skip
    assert json.loads((built / "genai_config.json").read_text()) == json.loads(
        (masked / "genai_config.json").read_text()
    )
    heads = {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in onnx.load(str(built / "model.onnx")).graph.input
             if v.name.startswith("past_key_values")}  # fmt: skip
    assert heads == {name: 1 for name in heads} and len(heads) == 2 * LAYERS  # the config still says 2
    prompt = np.random.default_rng(0).integers(3, VOCAB, (1, 12))
    assert _generate(built, prompt, 24) == _generate(masked, prompt, 24)


def test_compare_times_the_folders_through_the_generator(folders, capsys, tmp_path):
    root, masked = folders
    if not (root / "lean.genai").exists():
        main(["build", str(root / "lean.onnx"), "-o", str(root / "lean.genai"), "--target", "onnxruntime-genai",
              "--tokenizer", str(masked)])  # fmt: skip
    code = main(["compare", str(masked), str(root / "lean.genai"), "--target", "onnxruntime-genai", "--prompt", "8",
                 "--context", "8", "--steps", "2", "--rounds", "3", "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"] == "onnxruntime-genai" and report["environment"]["onnxruntime-genai"] == og.__version__
    assert [v["kv_heads"] for v in report["variants"]] == [[2] * LAYERS, [1] * LAYERS]


def test_a_tokenizer_folder_without_a_tokenizer_is_refused_and_nothing_written(folders, capsys, tmp_path):
    root, masked = folders
    empty = tmp_path / "config-only"
    empty.mkdir()
    (empty / "genai_config.json").write_text((masked / "genai_config.json").read_text())
    code = main(["build", str(root / "lean.onnx"), "-o", str(tmp_path / "out.genai"), "--target", "onnxruntime-genai",
                 "--tokenizer", str(empty)])  # fmt: skip
    assert code != 0
    assert capsys.readouterr().err.strip() == f"error: --tokenizer {empty}: no tokenizer.json or tokenizer.model there"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config-only"]


def test_without_the_package_the_target_says_how_to_install_it(monkeypatch):
    from sparsecut.errors import TargetError
    from sparsecut.targets.onnxruntime_genai import genai_module

    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)
    with pytest.raises(TargetError) as raised:
        genai_module()
    assert str(raised.value) == (
        "--target onnxruntime-genai needs onnxruntime-genai (pip install 'sparsecut[genai]', or 'onnxruntime-genai>=0.18')"
    )


def test_an_optimum_style_export_gets_a_genai_config_written_from_its_config_json(tmp_path, capsys):
    """A decoder exported with optimum's interface (position_ids, plain ops) and a Hugging Face config.json beside
    it, no genai_config.json: build writes one (the graph's inputs, the config's sizes); the masked and the lean
    folders generate the same tokens in onnxruntime-genai."""
    from tests.passes.decoders import HEAD_DIM, HIDDEN, export_decoder

    model = Decoder()
    mask_like_llm_pruning(model)
    folder = tmp_path / "optimum"
    folder.mkdir()
    export_decoder(model, folder / "model.onnx", dynamo=False)
    genai_folder(model, tmp_path / "builder")  # (for its tokenizer files)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text((tmp_path / "builder" / name).read_text())
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "head_dim": HEAD_DIM,
        "num_attention_heads": model.heads, "num_key_value_heads": model.kv_heads, "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB, "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2}))  # fmt: skip
    optimize_model(folder / "model.onnx", tmp_path / "lean.onnx", OptimizeOptions(align=1))
    for source, out, extra in ((folder / "model.onnx", "masked.genai", []),
                               (tmp_path / "lean.onnx", "lean.genai", ["--tokenizer", str(folder)])):  # fmt: skip
        code = main(["build", str(source), "-o", str(tmp_path / out), "--target", "onnxruntime-genai", *extra])
        assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "lean.genai" / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["position_ids"] == "position_ids"
    assert config["model"]["decoder"]["num_key_value_heads"] == model.kv_heads  # the graph has 1: it is read there
    prompt = np.random.default_rng(1).integers(3, VOCAB, (1, 10))
    assert _generate(tmp_path / "lean.genai", prompt, 16) == _generate(tmp_path / "masked.genai", prompt, 16)
