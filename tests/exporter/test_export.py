"""Export end to end: verified, stamped, dynamic batch, atomic; refused with one clear line when it must be."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from sparsecut.errors import ExportError, OutputPathError, VerificationError
from sparsecut.exporter import ExportOptions, export_checkpoint, parse_input_shape
from sparsecut.exporter import export as export_module_
from sparsecut.modelfile import sha256_of
from sparsecut.models import build_model
from tests.conftest import run_onnx, torch_outputs


def test_metadata_and_dynamic_batch(tmp_path, checkpoint_factory):
    checkpoint = checkpoint_factory("resnet-tiny")
    out = tmp_path / "m.onnx"
    report = export_checkpoint(checkpoint, out, arch="resnet-tiny")
    assert [c.batch_size for c in report.checks] == [1, 2]
    assert all(c.passed and c.max_rel_error < 1e-4 for c in report.checks)
    model = ir.load(out)
    meta = model.metadata_props
    assert meta["pkg.sparsecut.checkpoint_sha256"] == sha256_of(checkpoint) == report.checkpoint_sha256
    assert float(meta["pkg.sparsecut.export.max_abs_error"]) == pytest.approx(report.max_abs_error, rel=1e-5)
    assert meta["pkg.sparsecut.version.torch"] == torch.__version__
    assert model.opset_imports[""] >= 18
    # the batch axis is symbolic: batch 5 runs although the trace used batch 2
    assert run_onnx(out, np.zeros((5, 3, 32, 32), np.float32))[0].shape == (5, 10)
    # initializers keep the PyTorch parameter names
    assert "blocks.0.conv1.weight" in model.graph.initializers


def test_factory_model(tmp_path):
    state = tmp_path / "s.pt"
    from tests.exporter.factories import tiny_net

    torch.save(tiny_net().state_dict(), state)
    report = export_checkpoint(
        state,
        tmp_path / "f.onnx",
        model_factory="tests.exporter.factories:tiny_net",
        options=ExportOptions(input_shape=(1, 3, 8, 8)),
    )
    assert report.architecture == "tests.exporter.factories:tiny_net"
    assert report.parameters == sum(p.numel() for p in tiny_net().parameters())


def test_refuses_when_onnx_differs_and_writes_nothing(tmp_path):
    from tests.exporter.factories import noisy_net

    state = tmp_path / "noisy.pt"
    torch.save(noisy_net().state_dict(), state)
    out = tmp_path / "noisy.onnx"
    with pytest.raises(
        VerificationError, match=r"noisy\.onnx: ONNX differs from PyTorch on batch \d: .* nothing written"
    ):
        export_checkpoint(
            state,
            out,
            model_factory="tests.exporter.factories:noisy_net",
            options=ExportOptions(input_shape=(1, 3, 8, 8)),
        )
    assert list(tmp_path.iterdir()) == [state]


def test_falls_back_to_torchscript_and_says_so(tmp_path, checkpoint_factory, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this")

    monkeypatch.setattr(export_module_, "_quiet_export", broken)
    report = export_checkpoint(checkpoint_factory("resnet-tiny"), tmp_path / "ts.onnx", arch="resnet-tiny")
    assert report.exporter == "torchscript"
    assert report.exporter_note == "dynamo exporter failed: RuntimeError: dynamo cannot trace this"
    assert all(c.passed for c in report.checks)


def test_external_data_above_threshold(tmp_path, checkpoint_factory, monkeypatch):
    monkeypatch.setattr("sparsecut.modelfile.EXTERNAL_DATA_THRESHOLD_BYTES", 1000)
    out = tmp_path / "big.onnx"
    report = export_checkpoint(checkpoint_factory("resnet-tiny"), out, arch="resnet-tiny")
    assert report.external_data
    assert (tmp_path / "big.onnx.data").stat().st_size > 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert run_onnx(out, np.zeros((1, 3, 32, 32), np.float32))[0].shape == (1, 10)


def test_output_equal_to_input_is_refused(checkpoint_factory):
    checkpoint = checkpoint_factory("resnet-tiny")
    before = checkpoint.read_bytes()
    with pytest.raises(OutputPathError, match="is the input; sparsecut never overwrites its input"):
        export_checkpoint(checkpoint, checkpoint, arch="resnet-tiny")
    assert checkpoint.read_bytes() == before


def test_output_in_missing_folder(tmp_path, checkpoint_factory):
    with pytest.raises(OutputPathError, match=r"folder .*no/such does not exist"):
        export_checkpoint(checkpoint_factory("resnet-tiny"), tmp_path / "no/such/m.onnx", arch="resnet-tiny")


def test_wrong_arch_lists_keys(tmp_path, checkpoint_factory):
    with pytest.raises(
        Exception, match=r"does not fit architecture vit-tiny: \d+ missing keys \(.*\); \d+ unexpected keys"
    ):
        export_checkpoint(checkpoint_factory("resnet-tiny"), tmp_path / "m.onnx", arch="vit-tiny")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_pkg.nets:build", r"cannot import no_such_pkg\.nets \(ModuleNotFoundError"),
        ("tests.exporter.factories:missing", r"has no callable 'missing'"),
        ("tests.exporter.factories:not_a_module", r"returned str, not a torch\.nn\.Module"),
        ("justaname", r"expected MODULE:FACTORY"),
    ],
)
def test_bad_factory(tmp_path, checkpoint_factory, spec, message):
    with pytest.raises(ExportError, match=message):
        export_checkpoint(checkpoint_factory("resnet-tiny"), tmp_path / "m.onnx", model_factory=spec)


@pytest.mark.parametrize("text", ["1,3,x", "1,3,-2,2", "", "a"])
def test_bad_input_shape_text(text):
    with pytest.raises(ExportError, match="bad --input-shape"):
        parse_input_shape(text)


def test_input_shape_that_does_not_fit(tmp_path, checkpoint_factory):
    with pytest.raises(ExportError, match=r"does not run on an input of shape \(1, 4, 32, 32\)"):
        export_checkpoint(
            checkpoint_factory("resnet-tiny"),
            tmp_path / "m.onnx",
            arch="resnet-tiny",
            options=ExportOptions(input_shape=(1, 4, 32, 32)),
        )


def test_old_opset_refused(tmp_path, checkpoint_factory):
    with pytest.raises(ExportError, match="sparsecut exports opsets 18 to"):
        export_checkpoint(
            checkpoint_factory("resnet-tiny"), tmp_path / "m.onnx", arch="resnet-tiny", options=ExportOptions(opset=13)
        )


def test_reference_model_is_not_mutated_by_export(tmp_path):
    model = build_model("resnet-tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_module_.export_module(model, tmp_path / "live.onnx", ExportOptions(input_shape=(1, 3, 32, 32)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "arch", ["resnet-tiny", "se-resnet-tiny", "resnext-tiny", "mobilenetv2-tiny", "densenet-tiny", "vit-tiny"]
)
def test_exported_graph_is_clean(tmp_path, checkpoint_factory, arch):
    """The exported file computes nothing at run time that could be computed at export time, keeps BatchNorm
    explicit and every parameter under its state_dict key — and still equals PyTorch (checked on the file)."""
    from sparsecut.exporter.clean import LAYOUT_KEY, constant_computable_nodes

    checkpoint = checkpoint_factory(arch)
    out = tmp_path / "m.onnx"
    report = export_checkpoint(checkpoint, out, arch=arch)
    model = ir.load(out)
    assert [f"{n.op_type} {n.name}" for n in constant_computable_nodes(model)] == []
    assert report.nodes == len(model.graph) < report.nodes_exported
    assert all(c.passed for c in report.checks)
    reference = build_model(arch)
    parameters = {k: v for k, v in reference.state_dict().items() if v.is_floating_point() and "running" not in k}
    for name, tensor in parameters.items():
        assert name in model.graph.initializers, name
        stored = model.graph.initializers[name].const_value
        assert stored.size == tensor.numel()
        layout = stored.metadata_props.get(LAYOUT_KEY)
        assert tuple(stored.shape) == (tuple(tensor.shape) if layout is None else tuple(reversed(tensor.shape)))
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert sum(n.op_type == "BatchNormalization" for n in model.graph) == batchnorms
    x = np.random.default_rng(0).standard_normal((2, *report.input_shape[1:])).astype(np.float32)
    pruned = build_model(arch)
    from sparsecut.exporter.checkpoint import load_checkpoint
    from sparsecut.exporter.masks import fold_mask_keys

    pruned.load_state_dict(fold_mask_keys(load_checkpoint(checkpoint).state_dict)[0])
    np.testing.assert_allclose(run_onnx(out, x)[0], torch_outputs(pruned.eval(), x), rtol=1e-4, atol=1e-4)


def test_stack_traces_are_dropped_unless_kept(tmp_path, checkpoint_factory):
    """The dynamo exporter records each node's Python stack trace, with the exporting machine's file paths: a
    model people ship does not carry them (the module paths, which name layers, stay)."""
    from sparsecut.layer_names import STACK_TRACE, module_names
    from sparsecut.passes import OptimizeOptions, optimize_model

    checkpoint = checkpoint_factory("resnet-tiny")
    dropped, kept = tmp_path / "m.onnx", tmp_path / "k.onnx"
    export_checkpoint(checkpoint, dropped, arch="resnet-tiny")
    export_checkpoint(checkpoint, kept, arch="resnet-tiny", options=ExportOptions(keep_stack_traces=True))
    traced = [n for n in ir.load(kept).graph if STACK_TRACE in n.metadata_props]
    assert traced and str(tmp_path.anchor) in traced[0].metadata_props[STACK_TRACE]  # absolute paths, as said
    assert not [n for n in ir.load(dropped).graph if STACK_TRACE in n.metadata_props]
    assert module_names(ir.load(dropped))["node_conv2d_1"] == "blocks.0.conv1"
    optimize_model(kept, tmp_path / "lean.onnx")  # a model exported elsewhere, with its traces: dropped on write
    assert not [n for n in ir.load(tmp_path / "lean.onnx").graph if STACK_TRACE in n.metadata_props]
    optimize_model(kept, tmp_path / "lean-kept.onnx", OptimizeOptions(keep_stack_traces=True))
    assert [n for n in ir.load(tmp_path / "lean-kept.onnx").graph if STACK_TRACE in n.metadata_props]
