"""Prune masks are folded: the exported weights equal `orig · mask` exactly, under the original names."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sparsecut.exporter import export_checkpoint
from sparsecut.exporter.masks import fold_mask_keys, remove_prune_reparametrizations


def test_fold_mask_keys_multiplies_and_renames():
    state = {
        "conv.weight_orig": torch.tensor([1.0, 2.0, 3.0]),
        "conv.weight_mask": torch.tensor([1.0, 0.0, 1.0]),
        "conv.bias": torch.tensor([0.5]),
        "lonely_orig": torch.tensor([7.0]),  # no mask beside it: left for the key check to report
    }
    folded, names = fold_mask_keys(state)
    assert names == ["conv.weight"]
    assert set(folded) == {"conv.weight", "conv.bias", "lonely_orig"}
    assert folded["conv.weight"].tolist() == [1.0, 0.0, 3.0]


@pytest.mark.parametrize("recipe", ["l1-filter", "2:4"])
def test_exported_weights_equal_orig_times_mask(tmp_path, checkpoint_factory, recipe):
    checkpoint = checkpoint_factory("resnet-tiny", recipe)
    state = torch.load(checkpoint, weights_only=True)
    out = tmp_path / "m.onnx"
    report = export_checkpoint(checkpoint, out, arch="resnet-tiny")
    expected_names = sorted(k[: -len("_orig")] for k in state if k.endswith("_orig"))
    assert sorted(report.folded_masks) == expected_names
    initializers = ir.load(out).graph.initializers
    for name in expected_names:
        expected = (state[f"{name}_orig"] * state[f"{name}_mask"]).numpy()
        assert np.array_equal(initializers[name].const_value.numpy(), expected), name
    zeros = sum(int((state[f"{n}_mask"] == 0).sum()) for n in expected_names)
    assert report.zero_parameters >= zeros


def test_unstructured_and_repeated_pruning_on_live_module():
    layer = nn.Linear(8, 4)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    prune.random_unstructured(layer, "weight", amount=0.25)  # a PruningContainer: masks multiply
    expected = (layer.weight_orig * layer.weight_mask).detach().clone()
    assert remove_prune_reparametrizations(layer) == ["weight"]
    assert torch.equal(layer.weight.detach(), expected)
    assert not hasattr(layer, "weight_mask")
