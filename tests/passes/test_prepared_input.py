"""A prepared input (loaded and folded once) builds byte for byte the file a build from the input file writes, for
every channel count asked, in any order: the candidates a measured decision times are the graphs it writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from sparsecut.errors import GraphError
from sparsecut.exporter import ExportOptions, export_module
from sparsecut.exporter.masks import remove_prune_reparametrizations
from sparsecut.logs import quieted
from sparsecut.modelfile import save_model
from sparsecut.models import ARCHITECTURES, make_pruned_model
from sparsecut.passes import OptimizeOptions, optimize_model
from sparsecut.passes.advise import _groups
from sparsecut.passes.channels import DeadChannelAnalysis
from sparsecut.passes.in_context import before_removal
from sparsecut.passes.pipeline import PreparedInput
from sparsecut.passes.precision import PrecisionRequest
from sparsecut.passes.registry import DEFAULT_PASSES
from sparsecut.precision import Precision


def _exported(tmp_path: Path, arch: str, exporter: str) -> Path:
    model = make_pruned_model(arch, "l1-filter", 0.5)
    remove_prune_reparametrizations(model)
    path = tmp_path / f"{arch}-{exporter}.onnx"
    shape = ARCHITECTURES[arch].input_shape
    if exporter == "dynamo":
        export_module(model, path, ExportOptions(input_shape=shape))
    else:
        torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("arch", ["resnet-tiny", "vit-tiny"])
def test_a_prepared_build_is_the_build_from_the_file(tmp_path, arch, exporter):
    source = _exported(tmp_path, arch, exporter)
    options = OptimizeOptions(verify=False)
    model = before_removal(source, DEFAULT_PASSES, options, "test")
    analysis = DeadChannelAnalysis(model, align=1)
    full = tuple((analysis.space_key(s), space.count) for s, space in enumerate(analysis.walk.spaces))[:2]
    assert full, "the model has channel spaces"
    variants = [
        dataclasses.replace(options, align=1),
        dataclasses.replace(options, align=8),
        dataclasses.replace(options, align=16),
        dataclasses.replace(options, align=1, counts=tuple(sorted(full))),  # two spaces kept whole
        dataclasses.replace(options, align=1),  # again, after the others: nothing was written into the shared weights
    ]
    prepared = PreparedInput(source, DEFAULT_PASSES, options)
    sizes = set()
    with quieted("sparsecut.passes.pipeline"):
        for i, variant in enumerate(variants):
            (tmp_path / f"{i}").mkdir()
            built = tmp_path / f"{i}" / "prepared.onnx"
            optimize_model(source, built, variant, prepared)
            reference = tmp_path / f"{i}" / "file.onnx"
            optimize_model(source, reference, variant)
            assert built.read_bytes() == reference.read_bytes(), f"variant {i}"
            sizes.add(built.stat().st_size)
    assert len(sizes) >= 2  # the variants are different graphs
    assert (tmp_path / "0" / "prepared.onnx").read_bytes() == (tmp_path / "4" / "prepared.onnx").read_bytes()


def test_a_prepared_input_serves_only_its_own_builds_without_the_gate(tmp_path):
    source = _exported(tmp_path, "resnet-tiny", "dynamo")
    prepared = PreparedInput(source, DEFAULT_PASSES, OptimizeOptions(verify=False))
    with pytest.raises(ValueError, match="builds without the gate"):
        optimize_model(source, tmp_path / "gated.onnx", OptimizeOptions(), prepared)
    other = tmp_path / "other.onnx"
    other.write_bytes(source.read_bytes())
    with pytest.raises(ValueError, match="prepared for"):
        optimize_model(other, tmp_path / "other-lean.onnx", OptimizeOptions(verify=False), prepared)
    assert not (tmp_path / "gated.onnx").exists() and not (tmp_path / "other-lean.onnx").exists()


def test_a_prepared_quantized_input_is_not_quantized_twice(tmp_path):
    source = _exported(tmp_path, "resnet-tiny", "dynamo")
    int8 = OptimizeOptions(verify=False, precision=PrecisionRequest(Precision.parse("int8")))
    with quieted("sparsecut.passes.pipeline"):
        optimize_model(source, tmp_path / "int8.onnx", int8)
    prepared = PreparedInput(tmp_path / "int8.onnx", DEFAULT_PASSES, int8)
    with pytest.raises(GraphError, match="already quantized"):
        optimize_model(tmp_path / "int8.onnx", tmp_path / "twice.onnx", int8, prepared)
    assert not (tmp_path / "twice.onnx").exists()


def test_a_prepared_input_with_other_weights_is_the_build_of_a_file_holding_them(tmp_path):
    """The advisor's probes: weights zeroed on a copy of the prepared graph build what a file with those weights
    builds; the prepared input itself keeps its own. (The weights replace those after the passes before removal:
    the advisor's input is a graph already folded, as here.)"""
    options = OptimizeOptions(verify=False, align=1)
    model = before_removal(_exported(tmp_path, "resnet-tiny", "dynamo"), DEFAULT_PASSES, options, "test")
    group = next(g for g in _groups(DeadChannelAnalysis(model, align=1))[0] if len(g.writers) == 1)
    weight, axis, bias = group.writers[0]
    source = tmp_path / "folded.onnx"
    save_model(model, source)
    prepared = PreparedInput(source, DEFAULT_PASSES, options)
    proto = onnx.load(str(source))
    zeroed = {}
    for tensor in proto.graph.initializer:
        if tensor.name in (weight, bias):
            array = numpy_helper.to_array(tensor).copy()
            np.moveaxis(array, axis if tensor.name == weight else 0, 0)[: group.count // 2] = 0
            zeroed[tensor.name] = array
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    masked = tmp_path / "masked.onnx"
    onnx.save(proto, str(masked))
    with quieted("sparsecut.passes.pipeline"):
        optimize_model(source, tmp_path / "probe.onnx", options, prepared.with_weights(zeroed))
        optimize_model(masked, tmp_path / "from-file.onnx", options)
        optimize_model(source, tmp_path / "again.onnx", options, prepared)
        optimize_model(source, tmp_path / "plain.onnx", options)
    assert (tmp_path / "probe.onnx").read_bytes() == (tmp_path / "from-file.onnx").read_bytes()
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()
    assert (tmp_path / "probe.onnx").stat().st_size < (tmp_path / "plain.onnx").stat().st_size  # channels gone
    with pytest.raises(ValueError, match="no initializer 'nope'"):
        prepared.with_weights({"nope": zeroed[weight]})
