"""A state_dict smaller than its architecture (pruned physically) loads by resizing layers, and exports exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecut.errors import CheckpointError
from sparsecut.exporter import export_checkpoint
from sparsecut.exporter.resize import fit_to_state_dict
from sparsecut.models import ARCHITECTURES, build_model, make_pruned_model, save_state_dict
from tests.conftest import run_onnx, torch_outputs

pytest.importorskip("torch_pruning", reason="the shrunk checkpoints are made with Torch-Pruning (dev extra)")

TINY = [
    "resnet-tiny",
    "resnet-bottleneck-tiny",
    "se-resnet-tiny",
    "resnext-tiny",
    "mobilenetv2-tiny",
    "densenet-tiny",
    "vit-tiny",
]


@pytest.mark.parametrize("arch", TINY)
def test_physically_pruned_checkpoint_exports_equal_to_the_shrunk_model(tmp_path, arch):
    shrunk = make_pruned_model(arch, "torch-pruning", 0.5)
    dense_params = sum(p.numel() for p in build_model(arch).parameters())
    assert sum(p.numel() for p in shrunk.parameters()) < dense_params
    checkpoint = tmp_path / "shrunk.pt"
    save_state_dict(shrunk, checkpoint)
    out = tmp_path / "shrunk.onnx"
    report = export_checkpoint(checkpoint, out, arch=arch)
    assert report.resized_layers, "Torch-Pruning shrank nothing?"
    # the ONNX holds every float tensor of the state_dict (BatchNorm statistics included) as an initializer
    assert report.parameters == sum(t.numel() for t in shrunk.state_dict().values() if t.is_floating_point())
    x = np.random.default_rng(1).standard_normal((3, *ARCHITECTURES[arch].input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(run_onnx(out, x)[0], torch_outputs(shrunk, x), rtol=1e-4, atol=1e-5)


def test_depthwise_stays_depthwise_and_grouped_keeps_groups():
    shrunk = make_pruned_model("mobilenetv2-tiny", "torch-pruning", 0.5)
    model = build_model("mobilenetv2-tiny")
    fit_to_state_dict(model, shrunk.state_dict(), source=__import__("pathlib").Path("x.pt"), arch="mobilenetv2-tiny")
    for fitted, reference in zip(model.modules(), shrunk.modules(), strict=True):
        if isinstance(fitted, torch.nn.Conv2d):
            assert (fitted.in_channels, fitted.out_channels, fitted.groups) == (
                reference.in_channels,
                reference.out_channels,
                reference.groups,
            )


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = build_model("resnet-tiny").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    with pytest.raises(
        CheckpointError,
        match=r"does not fit architecture resnet-tiny: 1 missing keys \(fc\.bias\); 1 unexpected keys \(extra\.weight\)",
    ):
        fit_to_state_dict(build_model("resnet-tiny"), state, tmp_path / "c.pt", "resnet-tiny")


def test_different_rank_is_refused(tmp_path):
    state = build_model("resnet-tiny").state_dict()
    state["fc.weight"] = torch.zeros(10, 64, 1)
    with pytest.raises(
        CheckpointError, match=r"fc\.weight has shape \(10, 64, 1\) but architecture resnet-tiny expects \(10, 64\)"
    ):
        fit_to_state_dict(build_model("resnet-tiny"), state, tmp_path / "c.pt", "resnet-tiny")
