"""Every option is declared once (cli/options.py, cli/int8.py): wherever commands share an option name, they
share its help, its type and its check — what `--batch` or `--precision` means never depends on the command
beyond the documented tables."""

from __future__ import annotations

import pytest
import typer.main
from typer.core import TyperOption

from sparsecut.cli import app, main
from sparsecut.cli.options import PRECISIONS, SEVERAL_TARGETS


def _options() -> dict[str, list[tuple[str, TyperOption]]]:
    found: dict[str, list[tuple[str, TyperOption]]] = {}

    def walk(command: object, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        for param in getattr(command, "params", []):
            if isinstance(param, TyperOption):
                found.setdefault(param.opts[0], []).append((path, param))

    walk(typer.main.get_command(app), "")
    return found


def test_an_option_shared_by_commands_is_one_declaration():
    shared = {name: uses for name, uses in _options().items() if len(uses) > 1}
    assert {"--precision", "--batch", "--target", "--align", "--lut", "--tune-budget", "--sparsity",
            "--iterations", "--output", "--json"} <= set(shared)  # fmt: skip
    for name, uses in shared.items():
        helps = {param.help for _, param in uses}
        types = {(param.min, param.max, param.is_flag, param.metavar) for _, param in uses}
        assert len(helps) == 1 and len(types) == 1, f"{name} is declared more than once: {[c for c, _ in uses]}"


def test_the_precision_and_target_tables_name_real_commands():
    commands = {command for uses in _options().values() for command, _ in uses}
    assert set(PRECISIONS) <= commands and set(SEVERAL_TARGETS) <= commands
    precision_users = {command for command, _ in _options()["--precision"]}
    assert precision_users == set(PRECISIONS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "ck.pt", "-o", "out", "--precision", "best"], "--precision: 'best' is not one of fp32, fp16, int8"),
        (["profile", "m.onnx", "--target", "onnxruntime,openvino"], "--target: 'onnxruntime,openvino' is not one of"),
        (["profile", "m.onnx", "--batch", "1,8,32"], "--batch: 1,8,32: give one batch size"),
        (["build", "m.onnx", "-o", "m.plan", "--batch", "8,1,32"], "--batch: '8,1,32': expected N ≥ 1, or MIN,OPT,MAX"),
    ],
)
def test_what_a_command_does_not_take_is_refused_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []
