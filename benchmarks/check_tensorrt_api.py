"""Does sparsecut's TensorRT target use only API that TensorRT 11's Python bindings have? A check without a GPU.

TensorRT's libraries cannot be installed on machines without NVIDIA's index, but the bindings wheel
(`tensorrt-cu12-bindings`) downloads from the registry: its `tensorrt.so` cannot load (it needs libnvinfer), yet
pybind11 registers every class, enum value, method and property under its name as a C string in it. This script
reads sparsecut/targets/tensorrt.py, collects

- every attribute chain rooted at the module (`trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED`, …) and
- every method/property used on TensorRT objects (`builder.build_serialized_network`, `engine.num_io_tensors`, …),

and looks each name up among the wheel's strings: registered as a whole string, or as the tail of a longer one
(the linker shares `num_errors` with `get_num_errors`). It also checks the TensorRT 11 facts the target relies on:
STRONGLY_TYPED and SPARSE_WEIGHTS registered, no `FP16`/`INT8` builder flag registered and no int8 calibrator
class, and every use of `BuilderFlag.FP16/INT8` in the target guarded by `legacy_precision` (TensorRT 10 only).

    .venv/bin/python benchmarks/check_tensorrt_api.py [--wheel tensorrt_cu12_bindings-….whl]

Without --wheel, `pip download --no-deps tensorrt-cu12-bindings` fetches the newest. Exit 1 when a name is missing.
Not a CI dependency: it needs the registry.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGET = Path(__file__).resolve().parent.parent / "sparsecut" / "targets" / "tensorrt.py"
# the names tensorrt.py binds TensorRT objects to (builder = trt.Builder(...), engine = runtime.deserialize…)
OBJECTS = {"builder", "network", "parser", "config", "profile", "runtime", "engine", "inspector", "context"}
PYTHON_SIDE = {"__version__", "nptype", "__init__"}  # defined in the wheel's __init__.py / by Python itself
REGISTERED = ("STRONGLY_TYPED", "SPARSE_WEIGHTS")  # TensorRT 11 keeps them
GONE = ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8Calibrator", "int8_calibrator")


def wheel_strings(wheel: Path) -> tuple[set[str], set[str]]:
    """(identifier strings of tensorrt.so, the wheel's Python source text) — the names it can offer."""
    with zipfile.ZipFile(wheel) as archive:
        so = next(n for n in archive.namelist() if n.endswith("/tensorrt.so"))
        data = archive.read(so)
        python = {archive.read(n).decode() for n in archive.namelist() if n.endswith(".py")}
    strings = {s.decode() for s in data.split(b"\0") if s and s.replace(b"_", b"").isalnum() and s.isascii()}
    return strings, python


def used_names(source: Path) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:
    """(name, where) of every TensorRT name the target uses, and the unguarded legacy flag uses (name, line)."""
    tree = ast.parse(source.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names: dict[tuple[str, str], None] = {}
    unguarded = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or isinstance(parents.get(node), ast.Attribute):
            continue  # only whole chains
        if base.id == "trt":
            for i, part in enumerate(chain):
                names["trt." + ".".join(chain[: i + 1]), part] = None
            if chain[:1] == ["BuilderFlag"] and chain[1:] in (["FP16"], ["INT8"]) and not _guarded(node, parents):
                unguarded.append((".".join(chain), node.lineno))
        elif base.id in OBJECTS:
            names[f"{base.id}.{chain[0]}", chain[0]] = None
    return list(names), unguarded


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "legacy_precision" in ast.unparse(node.test):
            return True
    return False


def found(name: str, strings: set[str], python: set[str]) -> str:
    if name in strings:
        return "registered"
    if any(s.endswith(name) for s in strings):
        return "registered (tail)"
    defined = re.compile(rf"^(def {re.escape(name)}\(|{re.escape(name)} =)", re.MULTILINE)
    if name in PYTHON_SIDE or any(defined.search(text) for text in python):
        return "Python side"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="tensorrt-cu12-bindings wheel (default: pip download it)")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                            "tensorrt-cu12-bindings"], check=True)  # fmt: skip
            wheel = next(Path(tmp).glob("*.whl"))
        strings, python = wheel_strings(wheel)
    uses, unguarded = used_names(TARGET)
    table = Table(title=f"{TARGET.name} against {wheel.name}", title_justify="left")
    for column in ("used as", "name", "in the bindings"):
        table.add_column(column)
    missing = []
    legacy = {"trt.BuilderFlag.FP16", "trt.BuilderFlag.INT8"}
    for where, name in sorted(uses):
        if where in legacy:
            continue  # checked below: they must be absent in TensorRT 11 and guarded
        verdict = found(name, strings, python)
        missing += [] if verdict else [where]
        table.add_row(where, name, verdict or "[red]MISSING[/red]")
    console.print(table)
    facts = Table(title="TensorRT 11 facts the target relies on", title_justify="left")
    facts.add_column("fact")
    facts.add_column("holds")
    checks = [(f"{name} registered", name in strings) for name in REGISTERED]
    checks += [(f"no builder flag {name} (no whole string {name!r})", name not in strings) for name in ("FP16", "INT8")]
    checks += [(f"no {name}", not any(name in s for s in strings)) for name in GONE]
    checks += [(f"BuilderFlag.FP16/INT8 only under legacy_precision (unguarded: {unguarded or 'none'})", not unguarded)]
    for fact, holds in checks:
        facts.add_row(fact, "yes" if holds else "[red]NO[/red]")
    console.print(facts)
    failed = missing or not all(holds for _, holds in checks)
    console.print(f"{len(uses) - len(legacy & {w for w, _ in uses})} names checked; missing: {missing or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
