"""Every checkpoint form loads (or is refused) as documented, without unpickling unless trusted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils import prune

from sparsecut.errors import CheckpointError
from sparsecut.exporter import ExportOptions, export_checkpoint, load_checkpoint
from sparsecut.modelfile import sha256_of
from sparsecut.models import make_pruned_model
from tests.conftest import run_onnx, torch_outputs

ARCH = "resnet-tiny"
X = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


def _folded_model():
    model = make_pruned_model(ARCH, "l1-filter", 0.5)
    for module in model.modules():
        for hook in [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]:
            prune.remove(module, hook._tensor_name)
    return model


def _assert_exports_like(checkpoint: Path, tmp_path: Path, reference: torch.nn.Module, **kwargs) -> None:
    out = tmp_path / "model.onnx"
    report = export_checkpoint(checkpoint, out, **kwargs)
    assert report.exporter == "dynamo"
    np.testing.assert_allclose(run_onnx(out, X)[0], torch_outputs(reference, X), rtol=1e-4, atol=1e-5)


def test_plain_state_dict_with_masks(tmp_path, checkpoint_factory):
    _assert_exports_like(checkpoint_factory(ARCH), tmp_path, _folded_model(), arch=ARCH)


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_state_dict_nested_as_training_scripts_save_it(tmp_path, key):
    model = _folded_model()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 90, key: model.state_dict(), "optimizer": {"lr": torch.tensor(0.1)}}, path)
    _assert_exports_like(path, tmp_path, model, arch=ARCH)


def test_dataparallel_prefix_is_stripped(tmp_path):
    model = _folded_model()
    path = tmp_path / "ckpt.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    assert set(load_checkpoint(path).state_dict) == set(model.state_dict())


def test_safetensors(tmp_path):
    model = _folded_model()
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    _assert_exports_like(path, tmp_path, model, arch=ARCH)


def test_torch_export_program(tmp_path):
    model = _folded_model()
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    path = tmp_path / "prog.pt2"
    torch.export.save(program, str(path))
    out = tmp_path / "prog.onnx"
    report = export_checkpoint(path, out)
    assert report.architecture == "torch.export program"
    assert report.input_shape == [2, 3, 32, 32]
    np.testing.assert_allclose(run_onnx(out, X)[0], torch_outputs(model, X), rtol=1e-4, atol=1e-5)


def test_pickled_module_needs_trust(tmp_path):
    model = make_pruned_model(ARCH, "l1-filter", 0.5)  # prune hooks still attached
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match=r"whole\.pt: holds Python objects .* pass --trust-checkpoint"):
        load_checkpoint(path)
    out = tmp_path / "whole.onnx"
    report = export_checkpoint(path, out, options=ExportOptions(input_shape=(1, 3, 32, 32), trust_checkpoint=True))
    assert report.architecture == "pickled ResNet"
    assert len(report.folded_masks) == len([n for n, _ in model.named_buffers() if n.endswith("_mask")])
    np.testing.assert_allclose(run_onnx(out, X)[0], torch_outputs(_folded_model(), X), rtol=1e-4, atol=1e-5)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_checkpoint(tmp_path, checkpoint_factory):
    data = checkpoint_factory(ARCH).read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(100)}, str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors file"):
        load_checkpoint(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x05not really a pickle at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: "):
        load_checkpoint(path)


def test_dict_without_state_dict_names_its_keys(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "weights_here": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pt: no state_dict found .* top-level keys: epoch, weights_here"):
        load_checkpoint(path)


def test_sha256_matches_file(tmp_path, checkpoint_factory):
    import hashlib

    path = checkpoint_factory(ARCH)
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_ultralytics_checkpoint_exports_as_its_exporter_prepares_it(tmp_path, monkeypatch):
    """A YOLO training checkpoint (the model pickled under `ema`/`model`, with its image size in `train_args`) is
    read only when trusted, fused, its head in export mode (the decoded [B, 4 + classes, anchors] output) and its
    C2f through forward_split — the Split that remove-dead-channels reads — and verified against PyTorch."""
    pytest.importorskip("ultralytics", reason="ultralytics is a benchmark-only dependency (pip install ultralytics)")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml").model.eval()
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": model, "ema": None, "train_args": {"imgsz": 96}}, checkpoint)
    with pytest.raises(CheckpointError, match="only unpickling can restore"):
        load_checkpoint(checkpoint)
    report = export_checkpoint(checkpoint, tmp_path / "yolo.onnx", options=ExportOptions(trust_checkpoint=True))
    assert report.architecture == "Ultralytics DetectionModel (export mode)" and report.input_shape == [1, 3, 96, 96]
    graph = onnx.load(tmp_path / "yolo.onnx").graph
    assert "Split" in {n.op_type for n in graph.node} and "BatchNormalization" not in {n.op_type for n in graph.node}
    (output,) = graph.output
    assert [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim][1:] == [84, 189]  # 12²+6²+3²
