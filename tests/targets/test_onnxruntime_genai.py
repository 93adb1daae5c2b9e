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
