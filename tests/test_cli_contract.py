"""The CLI's contract on bad input, for every command: exit code 2, exactly one line `error: …` that names the file
or option, no traceback, no "internal error" — and the folder exactly as it was: no new entry (hidden files and
empty folders included), every file byte-identical, links and FIFOs untouched.

Each case runs in a fresh copy of one case folder, from inside it, so messages name the files as typed."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from sparsecut.cli import main
from sparsecut.exporter import export_checkpoint


# ------------------------------------------------------------------------------------------------ the case folder
def _tiny(path: Path, size: int) -> None:
    """Conv → Relu on `input` [N, 3, size, size]: the same interface as the exported model but for its size."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, size, size])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.fixture(scope="module")
def template(tmp_path_factory, checkpoint_factory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    rng = np.random.default_rng(0)
    checkpoint = checkpoint_factory("resnet-tiny")
    shutil.copyfile(checkpoint, folder / "ck.pt")
    export_checkpoint(folder / "ck.pt", folder / "model.onnx", arch="resnet-tiny")
    _tiny(folder / "small8.onnx", 8)
    model = ir.load(folder / "model.onnx")
    ir.save(model, folder / "ext.onnx", external_data="ext.onnx.data")
    ir.save(model, folder / "trunc.onnx", external_data="trunc.onnx.data")
    data = (folder / "trunc.onnx.data").read_bytes()
    (folder / "trunc.onnx.data").write_bytes(data[: len(data) // 2])
    ir.save(model, folder / "shared.onnx", external_data="lean.onnx.data")  # its weights where lean.onnx's would go
    (folder / "random.onnx").write_bytes(rng.bytes(4000))
    (folder / "cut.onnx").write_bytes((folder / "model.onnx").read_bytes()[:300])
    constant = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    no_inputs = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(no_inputs, opset_imports=[helper.make_opsetid("", 18)]), folder / "noinput.onnx")
    huge = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 100000, 100000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 100000, 100000])],
    )
    onnx.save(helper.make_model(huge, opset_imports=[helper.make_opsetid("", 18)]), folder / "huge.onnx")
    old = onnx.load(folder / "small8.onnx")
    old.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 1, 1]))
    old.ir_version = 3
    onnx.save(old, folder / "ir3.onnx")
    good = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.savez(folder / "data.npz", input=good)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    np.savez(folder / "nan.npz", input=nan)
    np.savez(folder / "allnan.npz", input=np.full_like(good, np.nan))
    np.savez(folder / "empty.npz", input=good[:0])
    (folder / "unknown.toml").write_text('inputs = ["model.onnx"]\nspeed = 1\n')
    (folder / "nodevice.toml").write_text('inputs = ["model.onnx"]\ndevices = ["onnxruntime@epyc"]\n')
    np.savez(folder / "shape.npz", input=good[:, :, :8, :8])
    np.savez(folder / "dtype.npz", input=good.astype(np.float64))
    np.savez(folder / "named.npz", image=good, other=good)
    (folder / "notnpz.npz").write_bytes(rng.bytes(500))
    np.savez(folder / "objects.npz", input=np.array([{"a": 1}], dtype=object))
    (folder / "plain.pt").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    custom = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("MyOp", ["r"], ["y"], domain="my.ops")],
        "custom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    ops = [helper.make_opsetid("", 18), helper.make_opsetid("my.ops", 1)]
    onnx.save(helper.make_model(custom, opset_imports=ops), folder / "custom.onnx")
    (folder / "garbage.pt").write_bytes(rng.bytes(3000))
    (folder / "truncated.pt").write_bytes(checkpoint.read_bytes()[:1000])
    torch.save(torch.nn.Linear(2, 2), folder / "pickled.pt")
    (folder / "garbage.pt2").write_bytes(rng.bytes(3000))
    (folder / "garbage.safetensors").write_bytes(rng.bytes(300))
    (folder / "notes.txt").write_text("a user's file\n")
    from PIL import Image

    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for name, images in {"img-sizes": [pixels[:32, :32], pixels], "img-grey": [pixels[:32, :32, 0], pixels[:32, :32]],
                         "img-text": [pixels[:32, :32], pixels[:32, :32]]}.items():  # fmt: skip
        (folder / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / name / f"{i}.png")
    (folder / "img-text" / "labels.txt").write_text("cat\ndog\n")
    (folder / "config.json").write_text('{"input_size": [3, 32], "mean": [0.5, 0.5, 0.5]}')
    (folder / "subdir").mkdir()
    (folder / "emptydir").mkdir()
    (folder / ".hidden").write_text("hidden\n")
    os.symlink("model.onnx", folder / "link.json")
    os.symlink("model.onnx", folder / "link.onnx")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: its kind, and its bytes' sha256 or its link target."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            mode = path.lstat().st_mode
            rel = str(path.relative_to(folder))
            if stat.S_ISLNK(mode):
                entries[rel] = "link → " + os.readlink(path)
            elif stat.S_ISDIR(mode):
                entries[rel] = "dir"
            elif stat.S_ISFIFO(mode):
                entries[rel] = "fifo"
            else:
                entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@pytest.fixture
def case(template, tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "case"
    shutil.copytree(template, folder, symlinks=True)
    os.mkfifo(folder / "fifo")
    monkeypatch.chdir(folder)
    return folder


def assert_contract(argv: list[str], fragment: str, folder: Path, capsys) -> None:
    before = snapshot(folder)
    dev_null = os.stat("/dev/null")
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("error: "), lines
    assert "internal error" not in err and "Traceback" not in err
    assert fragment in lines[0], (fragment, lines[0])
    assert snapshot(folder) == before, f"{argv} changed the folder"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_ino == dev_null.st_ino


# ------------------------------------------------------------------------------------------------ the cases
EXPORT = ["export", "ck.pt", "--arch", "resnet-tiny"]
CASES: dict[str, tuple[list[str], str]] = {
    # export: inputs
    "export missing checkpoint": (
        ["export", "nope.pt", "--arch", "resnet-tiny", "-o", "o.onnx"],
        "nope.pt: no such file",
    ),
    "export random bytes .pt": (
        ["export", "garbage.pt", "--arch", "resnet-tiny", "-o", "o.onnx"],
        "garbage.pt: not a PyTorch checkpoint",
    ),
    "export truncated .pt": (
        ["export", "truncated.pt", "--arch", "resnet-tiny", "-o", "o.onnx"],
        "truncated.pt: truncated or not a PyTorch checkpoint",
    ),
    "export onnx as checkpoint": (
        ["export", "model.onnx", "--arch", "resnet-tiny", "-o", "o.onnx"],
        "model.onnx: not a PyTorch checkpoint",
    ),
    "export pickled module": (["export", "pickled.pt", "-o", "o.onnx"], "torch.nn.modules.linear.Linear"),
    "export plain pickle": (
        ["export", "plain.pt", "--arch", "resnet-tiny", "-o", "o.onnx"],
        "plain.pt: is a plain pickle, not torch.save's format, that only unpickling can read, and unpickling runs "
        "code from the file; if you trust its source, pass --trust-checkpoint",
    ),
    "export garbage .pt2": (
        ["export", "garbage.pt2", "-o", "o.onnx"],
        "garbage.pt2: not a readable torch.export program",
    ),
    "export garbage safetensors": (
        ["export", "garbage.safetensors", "--arch", "resnet-tiny", "-o", "o.onnx"],
        "garbage.safetensors: not a readable safetensors file",
    ),
    "export unknown arch": (["export", "ck.pt", "--arch", "nope", "-o", "o.onnx"], "unknown architecture 'nope'"),
    "export wrong arch": (
        ["export", "ck.pt", "--arch", "vit-tiny", "-o", "o.onnx"],
        "does not fit architecture vit-tiny",
    ),
    "export arch and model": ([*EXPORT, "--model", "a.b:c", "-o", "o.onnx"], "either --arch or --model"),
    "export factory import": (["export", "ck.pt", "--model", "nosuchmod:f", "-o", "o.onnx"], "cannot import nosuchmod"),
    "export input shape": ([*EXPORT, "--input-shape", "1,3,a", "-o", "o.onnx"], "--input-shape '1,3,a'"),
    # export: options
    "export opset 99": ([*EXPORT, "--opset", "99", "-o", "o.onnx"], "--opset"),
    "export opset 17": ([*EXPORT, "--opset", "17", "-o", "o.onnx"], "--opset"),
    "export rtol -1": ([*EXPORT, "--rtol", "-1", "-o", "o.onnx"], "--rtol"),
    "export rtol nan": ([*EXPORT, "--rtol", "nan", "-o", "o.onnx"], "--rtol"),
    "export atol inf": ([*EXPORT, "--atol", "inf", "-o", "o.onnx"], "--atol"),
    "export no output": (EXPORT, "--output: missing"),
    "export unknown option": ([*EXPORT, "-o", "o.onnx", "--fast"], "--fast: no such option"),
    # export: outputs
    "export -o missing folder": ([*EXPORT, "-o", "nodir/m.onnx"], "folder nodir does not exist"),
    "export -o input": ([*EXPORT, "-o", "ck.pt"], "ck.pt: is the input"),
    "export -o directory": ([*EXPORT, "-o", "subdir"], "subdir: is a directory"),
    "export -o fifo": ([*EXPORT, "-o", "fifo"], "fifo: is not a regular file"),
    "export -o /dev/null": ([*EXPORT, "-o", "/dev/null"], "/dev/null: is not a regular file"),
    "export -o symlink": ([*EXPORT, "-o", "link.onnx"], "link.onnx: is a symbolic link"),
    "export --json input": ([*EXPORT, "-o", "o.onnx", "--json", "ck.pt"], "ck.pt: is the input"),
    "export --json symlink": ([*EXPORT, "-o", "o.onnx", "--json", "link.json"], "link.json: is a symbolic link"),
    "export --json = -o": (
        [*EXPORT, "-o", "o.onnx", "--json", "o.onnx"],
        "--json would write the same file as --output",
    ),
    "export --json missing folder": (
        [*EXPORT, "-o", "o.onnx", "--json", "nodir/r.json"],
        "folder nodir does not exist",
    ),
    "export --json directory": ([*EXPORT, "-o", "o.onnx", "--json", "subdir"], "subdir: is a directory"),
    # optimize: inputs
    "optimize missing": (["optimize", "nope.onnx", "-o", "o.onnx"], "nope.onnx: no such file"),
    "optimize random bytes": (["optimize", "random.onnx", "-o", "o.onnx"], "random.onnx: not a readable ONNX model"),
    "optimize cut file": (["optimize", "cut.onnx", "-o", "o.onnx"], "cut.onnx: not a readable ONNX model"),
    "optimize truncated data": (
        ["optimize", "trunc.onnx", "-o", "o.onnx"],
        "trunc.onnx: external data file 'trunc.onnx.data' is truncated",
    ),
    "optimize no inputs": (["optimize", "noinput.onnx", "-o", "o.onnx"], "noinput.onnx: the model has no inputs"),
    "optimize huge input": (["optimize", "huge.onnx", "-o", "o.onnx"], "more than sparsecut allocates"),
    "optimize custom op": (
        ["optimize", "custom.onnx", "-o", "o.onnx"],
        "custom.onnx: onnxruntime cannot run it (Load model from custom.onnx failed:Fatal error: my.ops:MyOp(-1) is "
        "not a registered function/op), so the equivalence gate has nothing to compare the result with",
    ),
    "optimize directory": (["optimize", "subdir", "-o", "o.onnx"], "subdir: is a directory"),
    # optimize: data
    "optimize data NaN": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "nan.npz"],
        "nan.npz: array 'input' holds NaN",
    ),
    "optimize data all NaN": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "allnan.npz"],
        "allnan.npz: array 'input' holds NaN",
    ),
    "optimize data empty": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "empty.npz"],
        "empty.npz: array 'input' holds no samples",
    ),
    "optimize data shape": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "shape.npz"],
        "shape.npz: array 'input' has shape 2×3×8×8; the model expects N×3×32×32",
    ),
    "optimize data dtype": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "dtype.npz"],
        "dtype.npz: array 'input' is float64",
    ),
    "optimize data names": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "named.npz"],
        "named.npz: no array for input(s) input",
    ),
    "optimize data not npz": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "notnpz.npz"],
        "notnpz.npz: not a readable .npz/.npy file",
    ),
    "optimize data pickled objects": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "objects.npz"],
        "objects.npz: holds Python objects (a pickled object array), and loading them would run code from the file",
    ),
    "optimize data missing": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--data", "nope.npz"],
        "nope.npz: no such file",
    ),
    "optimize int4 calibration": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int4", "--calibration", "data.npz"],
        "--calibration: not used with --precision int4",
    ),
    "optimize calibration NaN": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--calibration", "allnan.npz"],
        "allnan.npz: array 'input' holds NaN",
    ),
    "optimize calibration missing": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--calibration", "nope.npz"],
        "nope.npz: no such file",
    ),
    "optimize calibration empty folder": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--calibration", "emptydir"],
        "emptydir: calibration folder holds no .npy, .npz or image files",
    ),
    "optimize calibration mixed sizes": (
        [
            "optimize",
            "model.onnx",
            "-o",
            "o.onnx",
            "--precision",
            "int8",
            "--calibration",
            "img-sizes",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.5,0.5,0.5",
        ],
        "pixels, the model takes 32×32: pass --image-size (and --resize) to resize",
    ),
    "optimize calibration not an image": (
        [
            "optimize",
            "model.onnx",
            "-o",
            "o.onnx",
            "--precision",
            "int8",
            "--calibration",
            "img-text",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.5,0.5,0.5",
        ],
        "labels.txt: not an image (.jpg,",
    ),
    "optimize calibration wrong channels": (
        [
            "optimize",
            "model.onnx",
            "-o",
            "o.onnx",
            "--precision",
            "int8",
            "--calibration",
            "img-grey",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.5,0.5,0.5",
        ],
        "0.png: 1 channel(s) (mode L), the model takes 3",
    ),
    "optimize calibration images unnormalized": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--calibration", "img-grey"],
        "--calibration: images need their normalization stated",
    ),
    "optimize calibration too few": (
        [
            "optimize",
            "model.onnx",
            "-o",
            "o.onnx",
            "--precision",
            "int8",
            "--calibration",
            "data.npz",
            "--calibration-samples",
            "5",
        ],
        "--calibration-samples: 5 asked, but data.npz holds 2 sample(s) and 1 are held out to judge accuracy",
    ),
    "optimize data config bad": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--data-config", "config.json"],
        "config.json: 'input_size' must be a list of 3 numbers (--data-config)",
    ),
    "optimize mean count": (
        [
            "optimize",
            "model.onnx",
            "-o",
            "o.onnx",
            "--precision",
            "int8",
            "--calibration",
            "img-sizes",
            "--mean",
            "0.5,0.5",
            "--std",
            "0.5,0.5,0.5",
            "--image-size",
            "32",
        ],
        "--mean: 2 value(s) for a model input of 3 channel(s)",
    ),
    "optimize keep-fp32 nothing": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--keep-fp32", "no.such.layer"],
        "--keep-fp32: no node or module named 'no.such.layer' in",
    ),
    "optimize max-drift unreachable": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int8", "--max-drift", "300dB"],
        "--max-drift: SQNR ≥ 300 dB on every output holds only with every layer in fp32",
    ),
    "optimize max-drift top-1 without classes": (
        ["optimize", "small8.onnx", "-o", "o.onnx", "--precision", "int8", "--max-drift", "1%"],
        "--max-drift: a top-1 bound needs class scores (an N×K output)",
    ),
    "build best with calibration": (
        ["build", "model.onnx", "-o", "o.ort.onnx", "--precision", "best", "--calibration", "data.npz"],
        "--precision best: build takes the precision the graph has",
    ),
    "optimize best without target": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--precision", "best"],
        "--precision best: needs --target",
    ),
    # optimize: options
    "optimize align 0": (["optimize", "model.onnx", "-o", "o.onnx", "--align", "0"], "--align"),
    "optimize align -3": (["optimize", "model.onnx", "-o", "o.onnx", "--align", "-3"], "--align"),
    "optimize rtol -1": (["optimize", "model.onnx", "-o", "o.onnx", "--rtol", "-1"], "--rtol"),
    "optimize rtol nan": (["optimize", "model.onnx", "-o", "o.onnx", "--rtol", "nan"], "--rtol"),
    "optimize min channels": (["optimize", "model.onnx", "-o", "o.onnx", "--min-channels", "-5"], "--min-channels"),
    "optimize permutation budget": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--permutation-budget", "-1"],
        "--permutation-budget",
    ),
    "optimize calibration without int8": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--calibration", "data.npz"],
        "--calibration: only used with --precision int8",
    ),
    "optimize precision int4": (["optimize", "model.onnx", "-o", "o.onnx", "--precision", "int4"], "--precision"),
    "optimize unknown pass": (["optimize", "model.onnx", "-o", "o.onnx", "--passes", "nope"], "unknown pass 'nope'"),
    # optimize: outputs
    "optimize -o input": (["optimize", "model.onnx", "-o", "model.onnx"], "model.onnx: is the input"),
    "optimize -o input's data": (
        ["optimize", "ext.onnx", "-o", "ext.onnx.data"],
        "external data of the input ext.onnx",
    ),
    "optimize sidecar onto input's data": (
        ["optimize", "shared.onnx", "-o", "lean.onnx"],
        "lean.onnx.data: is external data of the input shared.onnx",
    ),
    "optimize --json input": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--json", "model.onnx"],
        "model.onnx: is the input",
    ),
    "optimize --json = -o": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--json", "o.onnx"],
        "--json would write the same file as --output",
    ),
    "optimize --json missing folder": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--json", "nodir/r.json"],
        "folder nodir does not exist",
    ),
    "optimize --json directory": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--json", "subdir"],
        "subdir: is a directory",
    ),
    "optimize --json symlink": (
        ["optimize", "model.onnx", "-o", "o.onnx", "--json", "link.json"],
        "link.json: is a symbolic link",
    ),
    "optimize -o fifo": (["optimize", "model.onnx", "-o", "fifo"], "fifo: is not a regular file"),
    # inspect
    "inspect random bytes": (["inspect", "random.onnx"], "random.onnx: not a readable ONNX model"),
    "inspect truncated data": (
        ["inspect", "trunc.onnx"],
        "trunc.onnx: external data file 'trunc.onnx.data' is truncated",
    ),
    "inspect --json input": (["inspect", "model.onnx", "--json", "model.onnx"], "model.onnx: is the input"),
    "inspect align 0": (["inspect", "model.onnx", "--align", "0"], "--align"),
    # profile
    "profile iterations 0": (["profile", "model.onnx", "--iterations", "0"], "--iterations"),
    "profile duration -1": (["profile", "model.onnx", "--duration", "-1"], "--duration"),
    "profile warmup -5": (["profile", "model.onnx", "--warmup", "-5"], "--warmup"),
    "profile threads -1": (["profile", "model.onnx", "--threads", "-1"], "--threads"),
    "profile top -1": (["profile", "model.onnx", "--top", "-1"], "--top"),
    "profile batch 0": (["profile", "model.onnx", "--batch", "0"], "--batch"),
    "profile unknown target": (["profile", "model.onnx", "--target", "nope"], "--target"),
    "profile random bytes": (["profile", "random.onnx"], "random.onnx: not a readable ONNX model"),
    "profile no inputs": (["profile", "noinput.onnx"], "noinput.onnx: the model has no inputs"),
    "profile huge input": (["profile", "huge.onnx"], "more than sparsecut allocates"),
    "profile --json input": (
        ["profile", "model.onnx", "--json", "model.onnx", "--iterations", "2"],
        "model.onnx: is the input",
    ),
    # build
    "build random bytes": (["build", "random.onnx", "-o", "o.ort.onnx"], "random.onnx: not a readable ONNX model"),
    "build cut file": (["build", "cut.onnx", "-o", "o.ort.onnx"], "cut.onnx: not a readable ONNX model"),
    "build -o input": (["build", "model.onnx", "-o", "model.onnx"], "model.onnx: is the input"),
    "build --json input": (
        ["build", "model.onnx", "-o", "o.ort.onnx", "--json", "model.onnx"],
        "model.onnx: is the input",
    ),
    "build calibration without int8": (
        ["build", "model.onnx", "-o", "o.ort.onnx", "--calibration", "data.npz"],
        "--calibration: only used with --precision int8",
    ),
    "build batch range": (["build", "model.onnx", "-o", "o.ort.onnx", "--batch", "0,1,1"], "--batch"),
    "build workspace 0": (["build", "model.onnx", "-o", "o.ort.onnx", "--workspace", "0"], "--workspace"),
    "build unknown provider": (["build", "model.onnx", "-o", "o.ort.onnx", "--provider", "tpu"], "--provider"),
    # compare
    "compare one file": (["compare", "model.onnx"], "compare needs at least two models"),
    "compare different inputs": (
        ["compare", "model.onnx", "small8.onnx", "--iterations", "3", "--rounds", "3"],
        "small8.onnx: its inputs (input: float32[N, 3, 8, 8]) differ from those of model.onnx",
    ),
    "compare baseline not among": (
        ["compare", "model.onnx", "ext.onnx", "--baseline", "small8.onnx"],
        "--baseline small8.onnx: not among the models",
    ),
    "compare rounds 2": (["compare", "model.onnx", "ext.onnx", "--rounds", "2"], "--rounds"),
    "compare iterations 0": (["compare", "model.onnx", "ext.onnx", "--iterations", "0"], "--iterations"),
    "compare budget 0": (["compare", "model.onnx", "ext.onnx", "--budget", "0"], "--budget"),
    "compare plot onto model": (
        ["compare", "model.onnx", "ext.onnx", "--plot", "model.onnx"],
        "--plot model.onnx: the plot is a PNG file",
    ),
    "compare plot not png": (
        ["compare", "model.onnx", "ext.onnx", "--plot", "plot.txt"],
        "--plot plot.txt: the plot is a PNG file",
    ),
    "compare --json input": (["compare", "model.onnx", "ext.onnx", "--json", "ext.onnx"], "ext.onnx: is the input"),
    "compare missing": (["compare", "model.onnx", "nope.onnx"], "nope.onnx: no such file"),
    # run
    "run missing checkpoint": (["run", "nope.pt", "--arch", "resnet-tiny", "-o", "out"], "nope.pt: no such file"),
    "run -o the missing checkpoint": (
        ["run", "nope.pt", "--arch", "resnet-tiny", "-o", "nope.pt"],
        "nope.pt: no such file",
    ),
    "run garbage checkpoint": (
        ["run", "garbage.pt", "--arch", "resnet-tiny", "-o", "out"],
        "garbage.pt: not a PyTorch checkpoint",
    ),
    "run wrong arch": (["run", "ck.pt", "--arch", "vit-tiny", "-o", "out"], "does not fit architecture vit-tiny"),
    "run -o existing file": (
        ["run", "ck.pt", "--arch", "resnet-tiny", "-o", "notes.txt"],
        "notes.txt: --output must be a folder",
    ),
    "run -o input": (["run", "ck.pt", "--arch", "resnet-tiny", "-o", "ck.pt"], "ck.pt: --output must be a folder"),
    "run rounds 2": (["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--rounds", "2"], "--rounds"),
    "run int8 format without int8": (
        ["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--int8-format", "s8s8"],
        "--int8-format: only used with --precision int8",
    ),
    "run unknown int8 format": (
        ["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--precision", "int8", "--int8-format", "u4"],
        "--int8-format: unknown format 'u4'",
    ),
    "run budget -1": (["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--budget", "-1"], "--budget"),
    "run align 0": (["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--align", "0"], "--align"),
    "run unknown target": (["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--target", "tpu"], "--target"),
    # models make, view
    "models make -o directory": (["models", "make", "resnet-tiny", "-o", "subdir"], "subdir: is a directory"),
    "models make amount 2": (["models", "make", "resnet-tiny", "-o", "x.pt", "--amount", "2"], "--amount"),
    "view port 0": (["view", "model.onnx", "--port", "0"], "--port"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_contract(case, capsys, name):
    argv, fragment = CASES[name]
    assert_contract(argv, fragment, case, capsys)


def test_the_harness_covers_every_command():
    commands = {argv[0] for argv, _ in CASES.values()}
    assert commands >= {"export", "optimize", "inspect", "profile", "build", "compare", "run", "models", "view"}
    assert len(CASES) >= 60


def test_verbose_after_the_subcommand_is_accepted(case, capsys):
    code = main(["optimize", "nope.onnx", "-o", "o.onnx", "--verbose"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "error: nope.onnx: no such file" in err


# ------------------------------------------------------------------------------------------------ fuzz
FILES = [
    "ck.pt", "model.onnx", "small8.onnx", "ext.onnx", "ext.onnx.data", "trunc.onnx", "random.onnx", "cut.onnx",
    "noinput.onnx", "huge.onnx", "ir3.onnx", "data.npz", "nan.npz", "empty.npz", "shape.npz", "garbage.pt",
    "pickled.pt", "garbage.pt2", "notes.txt", "subdir", "emptydir", ".hidden", "link.json", "link.onnx", "fifo",
    "nope.onnx", "nodir/x.onnx", "new.onnx", "new.json",
]  # fmt: skip
VALUES = ["0", "-1", "1", "3", "nan", "inf", "-3", "99", "1e9", "abc", "", "int4", "fp16", "1,1,1"]
OPTIONS = {
    "optimize": ["-o", "--json", "--data", "--align", "--rtol", "--atol", "--precision", "--calibration",
                 "--min-channels", "--permutation-budget", "--passes", "--enforce-2to4", "--no-verify"],
    "inspect": ["--json", "--align"],
    "profile": ["--json", "--iterations", "--warmup", "--duration", "--threads", "--top", "--batch", "--target",
                "--no-per-layer"],
    "compare": ["--json", "--plot", "--rounds", "--iterations", "--baseline", "--budget", "--batch"],
    "build": ["-o", "--json", "--precision", "--batch", "--workspace", "--calibration", "--provider"],
}  # fmt: skip
FLAGS = {"--enforce-2to4", "--no-verify", "--no-per-layer"}
OUTPUT_OPTIONS = {"-o", "--json", "--plot"}


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [command, *draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=2 if command == "compare" else 1))]
    for option in draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=4, unique=True)):
        argv.append(option)
        if option not in FLAGS:
            argv.append(
                draw(
                    st.sampled_from(
                        FILES if option in OUTPUT_OPTIONS | {"--data", "--calibration", "--baseline"} else VALUES
                    )
                )
            )
    if command == "profile" and "--iterations" not in argv:
        argv += ["--iterations", "3", "--warmup", "0"]
    if command == "compare":
        argv += ["--iterations", "3", "--rounds", "3"] if "--iterations" not in argv and "--rounds" not in argv else []
    return argv


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(argv=command_lines())
def test_fuzzed_command_lines_keep_the_contract(case, capsys, argv):
    """Random options, values and paths from the case folder: either the command works — and then every file it
    was not told to write is byte-identical — or it fails with one line and leaves the folder exactly as it was."""
    outputs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS}
    before = snapshot(case)
    code = main(argv)
    err = capsys.readouterr().err
    event(f"exit {code}")
    assert "internal error" not in err and "Traceback" not in err, (argv, err)
    if code == 0:
        after = snapshot(case)
        written = {k for k in after if any(k == o or k.startswith(f"{o}.") for o in outputs)}
        assert {k: v for k, v in after.items() if k not in written} == {
            k: v for k, v in before.items() if k not in written
        }, argv
        for name in written:  # a written output is a fresh regular file, never a link's target or a device
            assert before.get(name, "absent") not in ("dir", "fifo") and not before.get(name, "").startswith("link")
        for name in written - set(before):  # clean up for the next example of this case folder
            (case / name).unlink()
    else:
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert snapshot(case) == before, argv


# ------------------------------------------------------------------------------------------------ --target
TARGET_CASES: dict[str, tuple[list[str], str]] = {
    "optimize unknown target": (["optimize", "model.onnx", "-o", "o.onnx", "--target", "tpu"], "--target"),
    "optimize tune budget 0": (["optimize", "model.onnx", "-o", "o.onnx", "--target", "onnxruntime", "--tune-budget", "0"], "--tune-budget"),
    "optimize target batch 0": (["optimize", "model.onnx", "-o", "o.onnx", "--target", "onnxruntime", "--batch", "0"], "--batch"),
    "optimize target no inputs": (["optimize", "noinput.onnx", "-o", "o.onnx", "--target", "onnxruntime"], "noinput.onnx: the model has no inputs"),
    "optimize target huge": (["optimize", "huge.onnx", "-o", "o.onnx", "--target", "onnxruntime"], "more than sparsecut allocates"),
    "optimize target without removal": (["optimize", "model.onnx", "-o", "o.onnx", "--target", "onnxruntime", "--passes", "fold-constants,cleanup"], "--target decides channel counts: the pipeline needs remove-dead-channels"),
    "run tune budget -1": (["run", "ck.pt", "--arch", "resnet-tiny", "-o", "out", "--tune-budget", "-1"], "--tune-budget"),
    "sweep unknown key": (["sweep", "unknown.toml", "-o", "out"], "unknown.toml: unknown key 'speed' (known: inputs, precisions, modes, devices, rounds, iterations, batch, calibration)"),
    "sweep no such device": (["sweep", "nodevice.toml", "-o", "out"], "sweep: no node has device class 'epyc' (there are: local (this machine))"),
    "sweep no output": (["sweep", "nodevice.toml"], "--output: missing"),
    "sweep output exists": (["sweep", "--input", "model.onnx", "-o", "subdir"], "subdir: exists; a sweep writes a new folder"),
    "sweep resume nothing": (["sweep", "--input", "model.onnx", "-o", "nodir", "--resume"], "nodir/results.jsonl: no such file; --resume continues a sweep in its own folder"),
    "sweep bad mode": (["sweep", "--input", "model.onnx", "-o", "o", "--modes", "align x"], "sweep: mode 'align x'"),
    "optimize ray without device": (["optimize", "model.onnx", "-o", "o.onnx", "--target", "onnxruntime", "--ray", "auto"], "--ray: give --target, --ray ADDRESS and --ray-device CLASS together"),
    "optimize ray unreachable": (["optimize", "model.onnx", "-o", "o.onnx", "--target", "onnxruntime", "--ray", "127.0.0.1:1", "--ray-device", "x"], "--ray 127.0.0.1:1: no Ray cluster reachable there"),
    "advise missing": (["advise", "nope.onnx"], "nope.onnx: no such file"),
    "advise random bytes": (["advise", "random.onnx"], "random.onnx: not a readable ONNX model"),
    "advise ratio 1.5": (["advise", "model.onnx", "--latency-ratio", "1.5"], "--latency-ratio 1.5: a fraction of the full-width latency, between 0 and 1"),
    "advise no groups": (["advise", "small8.onnx"], "small8.onnx: no coupled channel group a pruner could shrink"),
    "advise unreachable": (["advise", "model.onnx", "--latency-ratio", "0.001"], "--latency-ratio 0.001: below what removing every dead channel reaches on this target (best reachable: "),
    "advise genai": (["advise", "model.onnx", "--target", "onnxruntime-genai"], "--target onnxruntime-genai: channel counts are not measured through it"),
    "advise --json input": (["advise", "model.onnx", "--json", "model.onnx"], "model.onnx: is the input"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TARGET_CASES))
def test_bad_target_input_contract(case, capsys, name):
    argv, fragment = TARGET_CASES[name]
    assert_contract(argv, fragment, case, capsys)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_target_tensorrt_without_tensorrt_says_how_to_install(case, capsys):
    assert_contract(
        ["optimize", "model.onnx", "-o", "o.onnx", "--target", "tensorrt"], "pip install 'sparsecut[tensorrt]'", case,
        capsys,
    )  # fmt: skip


def test_a_model_with_every_tensor_external_or_ir3_inputs_is_read(case, capsys):
    """Two forms users have that sparsecut used to refuse: every tensor external (`size_threshold=0`: shape
    constants too, which onnxruntime will not read from the data file while it builds the graph — the gate runs
    a copy with them inline) and IR 3's initializers listed among the graph inputs (read as the constants they
    hold, as onnx's tools do, and said so). Both are optimized, gated, and the inputs untouched."""
    model = onnx.load(case / "model.onnx")
    onnx.save(model, case / "allext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="allext.onnx.data", size_threshold=0)  # fmt: skip
    before = snapshot(case)
    assert main(["optimize", "allext.onnx", "-o", "leanext.onnx"]) == 0
    assert main(["optimize", "ir3.onnx", "-o", "lean3.onnx"]) == 0
    printed = capsys.readouterr().out
    assert (
        "note: 1 initializer(s) of ir3.onnx were also graph inputs (IR 3: w); read as the constants they hold"
        in printed
    )
    after = snapshot(case)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"leanext.onnx", "leanext.onnx.data", "lean3.onnx"}
    lean3 = onnx.load(case / "lean3.onnx")
    assert [i.name for i in lean3.graph.input] == ["input"]
    assert lean3.ir_version == 4  # IR 3 wants every initializer among the inputs: the checker refused the file
    onnx.checker.check_model(lean3, full_check=True)
