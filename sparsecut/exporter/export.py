"""Checkpoint → verified ONNX: load safely, fold masks, fit shrunk layers, export with torch.onnx (dynamo), check
the ONNX against PyTorch in onnxruntime, stamp the result into the model's metadata, and write atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import nn

import sparsecut
from sparsecut.checking import checking_session, compare_outputs
from sparsecut.errors import CheckpointError, ExportError, VerificationError
from sparsecut.exporter.checkpoint import Checkpoint, load_checkpoint
from sparsecut.exporter.clean import clean_exported_graph
from sparsecut.exporter.masks import fold_mask_keys, remove_prune_reparametrizations
from sparsecut.exporter.resize import fit_to_state_dict
from sparsecut.exporter.ultralytics import export_ready, is_ultralytics
from sparsecut.layer_names import drop_stack_traces
from sparsecut.logs import quieted
from sparsecut.modelfile import check_output_path, edit_model_file, save_model
from sparsecut.opsets import MAX_OPSET, MIN_OPSET
from sparsecut.report import ExportReport, OutputCheck

__all__ = ["ExportOptions", "export_checkpoint", "export_module", "load_factory", "parse_input_shape"]

log = logging.getLogger(__name__)

METADATA_PREFIX = "pkg.sparsecut."


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    input_shape: tuple[int, ...] | None = None  # None: the architecture's default
    opset: int = 18
    rtol: float = 1e-4  # pass when max|onnx − torch| ≤ atol + rtol · max|torch|
    atol: float = 1e-5
    trust_checkpoint: bool = False
    seed: int = 0
    keep_stack_traces: bool = (
        False  # the dynamo exporter's per-node Python stack traces (the exporting machine's paths)
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """ "1,3,224,224" → (1, 3, 224, 224); every dimension a positive integer."""
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ExportError(f"bad --input-shape {text!r}: expected positive integers like 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ExportError(f"bad --input-shape {text!r}: expected positive integers like 1,3,224,224")
    return dims


def load_factory(spec: str) -> nn.Module:
    """`package.module:factory` → the module that `factory()` returns."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ExportError(f"bad --model {spec!r}: expected MODULE:FACTORY, e.g. mypkg.nets:build_resnet")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ExportError(f"--model {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ExportError(f"--model {spec!r}: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ExportError(f"--model {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    *,
    arch: str | None = None,
    model_factory: str | None = None,
    options: ExportOptions = ExportOptions(),
) -> ExportReport:
    """Export a pruned checkpoint to verified ONNX at `output`. Nothing is written unless verification passes."""
    checkpoint, output = Path(checkpoint), Path(output)
    check_output_path(output, checkpoint)
    if not MIN_OPSET <= options.opset <= MAX_OPSET:
        raise ExportError(f"--opset {options.opset}: sparsecut exports opsets {MIN_OPSET} to {MAX_OPSET}")
    if arch is not None and model_factory is not None:
        raise ExportError("give either --arch or --model, not both")
    loaded = load_checkpoint(checkpoint, trust=options.trust_checkpoint)

    folded: list[str] = []
    resized: list[str] = []
    if loaded.program is not None:
        return _export(loaded.program, loaded, output, options, "torch.export program", folded, resized)
    if loaded.module is not None:
        model = loaded.module
        folded = remove_prune_reparametrizations(model)
        description = f"pickled {type(model).__name__}"
        if is_ultralytics(model):
            model, description = export_ready(model), f"Ultralytics {type(model).__name__} (export mode)"
    else:
        assert loaded.state_dict is not None
        model, description = _architecture(arch, model_factory, checkpoint)
        state_dict, folded = fold_mask_keys(loaded.state_dict)
        resized = fit_to_state_dict(model, state_dict, checkpoint, description)
    return _export(model.eval(), loaded, output, options, description, folded, resized)


def export_module(model: nn.Module, output: Path, options: ExportOptions) -> ExportReport:
    """Export a live module (masks are folded) — the Python entry point for models not saved to a file."""
    output = Path(output)
    check_output_path(output)
    folded = remove_prune_reparametrizations(model)
    loaded = Checkpoint(path=Path("<in-memory module>"), sha256="")
    return _export(model.eval(), loaded, output, options, type(model).__name__, folded, [])


def _architecture(arch: str | None, model_factory: str | None, checkpoint: Path) -> tuple[nn.Module, str]:
    if model_factory is not None:
        return load_factory(model_factory), model_factory
    if arch is None:
        raise CheckpointError(
            f"{checkpoint}: a state_dict needs an architecture: pass --arch NAME or --model MODULE:FACTORY"
        )
    from sparsecut.models import build_model

    return build_model(arch), arch


def _input_shape(options: ExportOptions, description: str, loaded: Checkpoint) -> tuple[int, ...]:
    if options.input_shape is not None:
        return options.input_shape
    if loaded.input_shape is not None:
        return loaded.input_shape
    from sparsecut.models import ARCHITECTURES

    if description in ARCHITECTURES:
        return ARCHITECTURES[description].input_shape
    raise ExportError(f"{loaded.path}: no default input shape for {description}; pass --input-shape, e.g. 1,3,224,224")


def _export(
    model: nn.Module | torch.export.ExportedProgram,
    loaded: Checkpoint,
    output: Path,
    options: ExportOptions,
    description: str,
    folded: list[str],
    resized: list[str],
) -> ExportReport:
    if isinstance(model, torch.export.ExportedProgram):
        example_args = tuple(model.example_inputs[0]) if model.example_inputs else ()
        if len(example_args) != 1:
            raise ExportError(f"{loaded.path}: sparsecut exports programs with exactly one tensor input")
        shape = options.input_shape or tuple(example_args[0].shape)
        runnable: Any = model.module()
    else:
        shape = _input_shape(options, description, loaded)
        runnable = model
        _dry_run(model, shape, loaded.path, bool(resized))

    start = time.perf_counter()
    onnx_model, exporter, note = _to_onnx(model, shape, options.opset, loaded.path)
    nodes_exported, nodes_clean = clean_exported_graph(onnx_model)
    if not options.keep_stack_traces:
        drop_stack_traces(onnx_model)
    export_seconds = time.perf_counter() - start

    parameters, zeros = _count_parameters(onnx_model)
    checks: list[OutputCheck] = []

    def verify_then_stamp(staged: Path) -> None:
        """The check runs on the file as written; its result goes into that file's metadata."""
        checks.extend(_verify_against_torch(runnable, staged, shape, options, dynamic=exporter != "program-static"))
        if not all(c.passed for c in checks):
            worst = max(checks, key=lambda c: c.max_rel_error)
            raise VerificationError(
                f"{output}: ONNX differs from PyTorch on batch {worst.batch_size}: max abs error "
                f"{worst.max_abs_error:.3g}, relative {worst.max_rel_error:.3g} > rtol {options.rtol:g}; nothing "
                "written (raise --rtol only if you accept that drift)"
            )
        stamp = _metadata(loaded, description, exporter, checks, options)
        edit_model_file(staged, lambda proto: _set_metadata(proto, stamp))

    start = time.perf_counter()
    external = save_model(onnx_model, output, check=verify_then_stamp)
    verify_seconds = time.perf_counter() - start
    log.info("exported %s to %s", loaded.path, output)
    return ExportReport(
        checkpoint=str(loaded.path),
        checkpoint_sha256=loaded.sha256,
        output=str(output),
        architecture=description,
        exporter=exporter,
        exporter_note=note,
        opset=_opset(onnx_model),
        input_shape=list(shape),
        parameters=parameters,
        zero_parameters=zeros,
        folded_masks=folded,
        resized_layers=resized,
        checks=checks,
        rtol=options.rtol,
        atol=options.atol,
        external_data=external,
        nodes_exported=nodes_exported,
        nodes=nodes_clean,
        export_seconds=export_seconds,
        verify_seconds=verify_seconds,
        versions=_versions(),
    )


def _dry_run(model: nn.Module, shape: tuple[int, ...], source: Path, was_resized: bool) -> None:
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except Exception as exc:
        what = "the resized model" if was_resized else "the model"
        raise ExportError(
            f"{source}: {what} does not run on an input of shape {tuple(shape)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); check --input-shape / --arch"
        ) from exc


def _to_onnx(
    model: nn.Module | torch.export.ExportedProgram, shape: tuple[int, ...], opset: int, source: Path
) -> tuple[ir.Model, str, str | None]:
    """torch.onnx's dynamo exporter first; the TorchScript exporter only when dynamo fails (and we say so)."""
    if isinstance(model, torch.export.ExportedProgram):
        program = _quiet_export(model, None, opset, dynamic=False)
        return program.model, "program-static", "exported from the program's own (static) shapes"
    # A batch-1 example with a dynamic batch dim fails ("Invalid ranges [2:1]"): trace with batch 2.
    example = torch.randn(2, *shape[1:])
    try:
        program = _quiet_export(model, example, opset, dynamic=True)
        return program.model, "dynamo", None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        log.warning("dynamo export of %s failed (%s); falling back to the TorchScript exporter", source, reason)
    try:
        return _torchscript_export(model, example, opset), "torchscript", f"dynamo exporter failed: {reason}"
    except Exception as exc:
        raise ExportError(
            f"{source}: torch.onnx could not export the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc


def _quiet_export(model: Any, example: torch.Tensor | None, opset: int, dynamic: bool) -> Any:
    kwargs: dict[str, Any] = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    args = (example,) if example is not None else ()
    with warnings.catch_warnings(), _silence_stdout():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            model,
            args,
            dynamo=True,
            optimize=False,  # keep names equal to state_dict keys and BatchNorm explicit
            opset_version=opset,
            input_names=["input"],
            verbose=False,
            **kwargs,
        )


def _torchscript_export(model: nn.Module, example: torch.Tensor, opset: int) -> ir.Model:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # torch.onnx writes to file-like objects too
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    return ir.from_proto(onnx.load_from_string(buffer.getvalue()))


@contextlib.contextmanager
def _silence_stdout() -> Iterator[None]:
    """torch.onnx prints progress to stdout and warns about torchvision ops it cannot register (we do not ship
    torchvision); library code must not print."""
    with quieted("torch.onnx._internal.exporter._registration"), contextlib.redirect_stdout(io.StringIO()):
        yield


def _flatten_outputs(obj: Any) -> list[np.ndarray]:
    if isinstance(obj, torch.Tensor):
        return [obj.detach().cpu().numpy()]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in _flatten_outputs(v)]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in _flatten_outputs(v)]
    return []


def _verify_against_torch(
    runnable: Any, model: Path, shape: tuple[int, ...], options: ExportOptions, dynamic: bool
) -> list[OutputCheck]:
    """Seeded random inputs at batch 1 and 2 (and the given batch), PyTorch vs onnxruntime."""
    batches = sorted({1, 2, shape[0]}) if dynamic else [shape[0]]
    generator = torch.Generator().manual_seed(options.seed)
    checks = []
    with checking_session(model) as session:
        input_name = session.get_inputs()[0].name  # type: ignore[attr-defined]
        for batch in batches:
            x = torch.randn((batch, *shape[1:]), generator=generator)
            with torch.no_grad():
                expected = _flatten_outputs(runnable(x))
            got = session.run(None, {input_name: x.numpy()})  # type: ignore[attr-defined]
            checks.append(compare_outputs(expected, got, options.rtol, options.atol, batch))
    return checks


def _count_parameters(model: ir.Model) -> tuple[int, int]:
    total = zeros = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            continue
        if len(tensor.shape) == 0:  # a scalar constant (a Clip bound, an epsilon), not a parameter
            continue
        array = tensor.numpy()
        total += array.size
        zeros += int(array.size - np.count_nonzero(array))
    return total, zeros


def _opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", 0))


def _versions() -> dict[str, str]:
    import onnxruntime

    return {
        "sparsecut": sparsecut.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _metadata(
    loaded: Checkpoint, description: str, exporter: str, checks: list[OutputCheck], options: ExportOptions
) -> dict[str, str]:
    stamp = {
        "checkpoint": loaded.path.name,
        "checkpoint_sha256": loaded.sha256,
        "architecture": description,
        "exporter": exporter,
        "export.max_abs_error": f"{max(c.max_abs_error for c in checks):.6g}",
        "export.max_rel_error": f"{max(c.max_rel_error for c in checks):.6g}",
        "export.rtol": f"{options.rtol:g}",
        "export.atol": f"{options.atol:g}",
        "export.batches": ",".join(str(c.batch_size) for c in checks),
        **{f"version.{k}": v for k, v in _versions().items()},
    }
    return {METADATA_PREFIX + key: value for key, value in stamp.items()}


def _set_metadata(proto: onnx.ModelProto, entries: dict[str, str]) -> None:
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **entries})
