"""remove-dead-channels on exported reference models: outputs equal the masked PyTorch model, parameter counts
equal the same channels removed physically by Torch-Pruning, and both torch.onnx exporters' graphs are handled."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from sparsecut.cost import count_costs
from sparsecut.exporter import ExportOptions, export_module
from sparsecut.exporter.masks import remove_prune_reparametrizations
from sparsecut.models import ARCHITECTURES, make_pruned_model
from sparsecut.models.recipes import _channel_groups
from sparsecut.passes import CleanupPass, FoldBatchNormPass, OptimizeOptions, optimize_model
from tests.conftest import run_onnx, torch_outputs

TINY = ["resnet-tiny", "resnet-bottleneck-tiny", "se-resnet-tiny", "mobilenetv2-tiny", "densenet-tiny", "vit-tiny"]


def _export(model: nn.Module, arch: str, path) -> None:
    export_module(model, path, ExportOptions(input_shape=ARCHITECTURES[arch].input_shape))


@pytest.mark.parametrize("recipe", ["l1-filter", "slimming"])
@pytest.mark.parametrize("arch", [*TINY, "resnext-tiny"])
def test_lean_graph_computes_what_the_masked_model_computes(tmp_path, arch, recipe):
    model = make_pruned_model(arch, recipe, 0.5)
    remove_prune_reparametrizations(model)
    _export(model, arch, tmp_path / "m.onnx")
    report = optimize_model(tmp_path / "m.onnx", tmp_path / "lean.onnx", OptimizeOptions(align=1))
    assert [e for p in report.passes for e in p.rule_errors] == []
    if (arch, recipe) != ("vit-tiny", "slimming"):  # the ViT has no BatchNorm for slimming to zero
        assert report.after.params < report.before.params
    x = np.random.default_rng(3).standard_normal((2, *ARCHITECTURES[arch].input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(run_onnx(tmp_path / "lean.onnx", x)[0], torch_outputs(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", TINY)
def test_params_equal_torch_pruning_on_the_same_channels(tmp_path, arch):
    tp = pytest.importorskip("torch_pruning", reason="Torch-Pruning is the reference for physical pruning")
    masked = make_pruned_model(arch, "l1-filter", 0.5)
    dead = [(g.layer.weight_mask.flatten(1).amax(1) == 0).nonzero().flatten().tolist() for g in _channel_groups(masked)]
    remove_prune_reparametrizations(masked)
    _export(masked, arch, tmp_path / "masked.onnx")
    report = optimize_model(tmp_path / "masked.onnx", tmp_path / "lean.onnx", OptimizeOptions(align=1))

    physical = make_pruned_model(arch, "l1-filter", 0.5)  # same seed, same masks
    remove_prune_reparametrizations(physical)
    example = torch.randn(*ARCHITECTURES[arch].input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(physical, example_inputs=example)
    for group, idxs in zip(_channel_groups(physical), dead, strict=True):
        prune_fn = tp.prune_conv_out_channels if isinstance(group.layer, nn.Conv2d) else tp.prune_linear_out_channels
        graph.get_pruning_group(group.layer, prune_fn, idxs=idxs).prune()
    _export(physical, arch, tmp_path / "physical.onnx")
    reference = ir.load(tmp_path / "physical.onnx")
    FoldBatchNormPass()(reference)  # compare like with like: our lean graph has BatchNorm folded too
    CleanupPass()(reference)
    assert report.after.params == count_costs(reference).params
    assert report.after.macs == count_costs(reference).macs


@pytest.mark.parametrize("arch", ["resnet-tiny", "mobilenetv2-tiny", "densenet-tiny"])
def test_torchscript_exporter_graph(tmp_path, arch):
    """The legacy exporter folds BatchNorm into convs and names weights onnx::Conv_*; the pass reads it as is."""
    model = make_pruned_model(arch, "l1-filter", 0.5)
    remove_prune_reparametrizations(model)
    path = tmp_path / "ts.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(*ARCHITECTURES[arch].input_shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    report = optimize_model(path, tmp_path / "lean.onnx", OptimizeOptions(align=1))
    assert [e for p in report.passes for e in p.rule_errors] == []
    assert report.verified and report.after.macs < 0.8 * report.before.macs
    x = np.random.default_rng(0).standard_normal((2, *ARCHITECTURES[arch].input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(run_onnx(tmp_path / "lean.onnx", x)[0], torch_outputs(model, x), rtol=1e-4, atol=1e-5)
