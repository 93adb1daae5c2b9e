"""The target base class: what every target shares is done once, in `Target.build`/`load`/`profile`, so each
target gets it — the files a build writes, staged and moved in together (the surgery's graph too), and nothing
left behind when a build fails."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsecut.errors import OutputPathError, TargetError
from sparsecut.precision import Precision
from sparsecut.targets import TARGETS, BuildOptions, Target, get_target
from tests.passes.graphs import GraphBuilder


@pytest.fixture
def relu_model(tmp_path):
    g = GraphBuilder(shape=(4, 6, 6))
    h = g.op("Relu", [g.conv("x", g.weight(8, 4, 3, 3), np.zeros(8), pad=1)])
    path = tmp_path / "m.onnx"
    onnx.save(g.model(h), path)
    return path


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_is_a_target_and_names_the_files_its_build_writes(name):
    module, _, cls = TARGETS[name].partition(":")
    target = getattr(importlib.import_module(module), cls)()  # the class alone: its backend is imported lazily
    assert isinstance(target, Target)
    out = Path("out") / f"m{target.artifact_suffix}"
    plain = target.build_files(out, BuildOptions())
    assert list(plain) == [out, *(out.with_suffix(s) for s in target.artifact_companions)]
    with_surgery = target.build_files(out, BuildOptions(surgery="mod:fn"))
    assert list(with_surgery)[-1] == out.with_name(f"{out.stem}.surgery.onnx")
    assert with_surgery[out.with_name(f"{out.stem}.surgery.onnx")] == "--surgery"


def test_a_failed_build_leaves_no_surgery_graph_behind(tmp_path, relu_model):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TargetError, match="the graph is fp32, not fp16"):
        get_target("onnxruntime").build(
            relu_model, tmp_path / "m.ort.onnx",
            BuildOptions(precision=Precision("fp16"), surgery="tests.targets.surgeries:relu_to_half_leaky"),
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_surgery_graph_named_like_the_input_is_refused(tmp_path, relu_model):
    model = tmp_path / "m.ort.surgery.onnx"
    relu_model.rename(model)
    with pytest.raises(OutputPathError, match="never overwrites its input"):
        get_target("onnxruntime").build(
            model, tmp_path / "m.ort.onnx", BuildOptions(surgery="tests.targets.surgeries:relu_to_half_leaky")
        )
    assert [p.name for p in tmp_path.iterdir()] == [model.name]


@pytest.mark.parametrize("module", ["onnxruntime", "openvino", "tensorrt"])
def test_a_target_file_holds_no_copy_of_the_shared_preamble(module):
    """What every build shares (output checks, surgery, staging, the host environment) is base.py's alone."""
    text = (Path(__file__).parents[2] / "sparsecut" / "targets" / f"{module}.py").read_text()
    for shared in ("check_output_path", "apply_surgery", "TemporaryDirectory(prefix=f\".{output", "host_environment",
                   "BuildReport(", "LatencyReport(", "def build(", "def load(", "def profile("):  # fmt: skip
        assert shared not in text, f"targets/{module}.py: {shared}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_owns_its_options_and_reads_only_its_own(name):
    import dataclasses

    from sparsecut.targets import BuildOptions, ProfileOptions
    from sparsecut.targets.base import BackendOptions
    from sparsecut.targets.onnxruntime import OnnxRuntimeOptions
    from sparsecut.targets.onnxruntime_genai import GenaiOptions
    from sparsecut.targets.openvino import OpenVinoOptions
    from sparsecut.targets.tensorrt import TensorRTOptions

    module, _, cls = TARGETS[name].partition(":")
    target = getattr(importlib.import_module(module), cls)()
    kind = target.options_type
    assert issubclass(kind, BackendOptions) and kind.__module__ == module  # declared in the target's own file
    given = (OnnxRuntimeOptions(provider="cuda"), OpenVinoOptions(device="GPU"), TensorRTOptions(workspace_mb=64),
             GenaiOptions(tokenizer=Path("tok")))  # fmt: skip
    mine = next(o for o in given if isinstance(o, kind))
    assert target.own(BuildOptions(backends=given)) is mine and target.own(ProfileOptions(backends=given)) is mine
    assert target.own(BuildOptions()) == kind()  # none given: its defaults
    shared = {f.name for f in dataclasses.fields(BuildOptions)} | {f.name for f in dataclasses.fields(ProfileOptions)}
    assert not shared & {f.name for f in dataclasses.fields(kind)}  # no backend's setting in the shared options


def test_a_target_that_times_whole_decoders_measures_no_channel_counts(tmp_path, capsys):
    from sparsecut.cli import main

    g = GraphBuilder()
    onnx.save(g.model(g.op("Relu", [g.conv("x", g.weight(8, 4, 1, 1, dead_rows=(1,)))])), str(tmp_path / "m.onnx"))
    code = main(["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--target", "onnxruntime-genai"])
    assert code != 0
    assert capsys.readouterr().err.strip() == (
        "error: --target onnxruntime-genai: channel counts are not measured through it (it times whole decoders); "
        "optimize without --target, or measure on onnxruntime"
    )
    assert not (tmp_path / "o.onnx").exists()
