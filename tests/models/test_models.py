"""Reference models build and run; each recipe prunes exactly what it says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecut.errors import ExportError
from sparsecut.models import ARCHITECTURES, build_model, make_pruned_model
from sparsecut.models.recipes import _channel_groups

TINY = [name for name, arch in ARCHITECTURES.items() if arch.input_shape[-1] == 32]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_runs_on_its_default_shape(name):
    model = build_model(name)
    with torch.no_grad():
        out = model(torch.randn(*ARCHITECTURES[name].input_shape))
    assert out.shape[0] == 1 and torch.isfinite(out).all()
    assert not model.training


def test_build_is_seeded():
    a, b = build_model("resnet-tiny", seed=3), build_model("resnet-tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", TINY)
def test_l1_filter_zeroes_whole_channels_with_their_batchnorm(name):
    model = make_pruned_model(name, "l1-filter", 0.5)
    for group in _channel_groups(model):
        weight = group.layer.weight.detach()
        dead = weight.flatten(1).abs().sum(1) == 0
        assert int(dead.sum()) == round(0.5 * weight.shape[0])
        for module in group.modules[1:]:
            assert torch.all(module.weight.detach()[dead] == 0)
            if getattr(module, "bias", None) is not None:
                assert torch.all(module.bias.detach()[dead] == 0)
        assert hasattr(group.layer, "weight_mask"), "masks stay on the module, as torch.nn.utils.prune leaves them"


@pytest.mark.parametrize("name", ["resnet-tiny", "mobilenetv2-tiny", "densenet-tiny"])
def test_slimming_makes_constant_channels(name):
    model = make_pruned_model(name, "slimming", 0.25)
    for group in _channel_groups(model):
        if group.norm is None:
            continue
        gamma, beta = group.norm.weight.detach(), group.norm.bias.detach()
        off = gamma == 0
        assert int(off.sum()) == round(0.25 * gamma.numel())
        assert torch.all(beta[off] != 0), "β stays: those channels output a constant, not zero"


@pytest.mark.parametrize("name", TINY)
def test_two_four_masks(name):
    model = make_pruned_model(name, "2:4")
    checked = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and hasattr(module, "weight_mask"):
            w = module.weight.detach()
            w = w.permute(0, 2, 3, 1) if w.dim() == 4 else w
            groups = w.reshape(-1, 4)
            assert torch.all((groups == 0).sum(1) >= 2)
            checked += 1
    assert checked > 0


def test_torch_pruning_shrinks():
    pytest.importorskip("torch_pruning", reason="Torch-Pruning is an optional extra")
    dense = sum(p.numel() for p in build_model("resnet-tiny").parameters())
    shrunk = sum(p.numel() for p in make_pruned_model("resnet-tiny", "torch-pruning", 0.5).parameters())
    assert shrunk < 0.75 * dense


def test_unknown_names():
    with pytest.raises(ExportError, match="unknown architecture 'resnet9000'; known: resnet18, resnet50"):
        build_model("resnet9000")
    with pytest.raises(ExportError, match="unknown recipe 'magic'; known: l1-filter, slimming, 2:4, torch-pruning"):
        make_pruned_model("resnet-tiny", "magic")
