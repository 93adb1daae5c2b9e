"""The command-line application: the Typer app every command module registers on, the consoles, and what every
command shares — inputs checked first, outputs planned and moved into place with the report, progress bars, and
`main`, which turns every error a user can cause into one line and exit code 2 (the traceback only with
`--verbose`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from typer._click.exceptions import MissingParameter, NoSuchOption, UsageError  # typer ships click inside

from sparsecut.errors import InputError, SparsecutError
from sparsecut.outputs import OutputPlan
from sparsecut.report import Report, write_json

__all__ = [
    "announce_json",
    "app",
    "console",
    "error_console",
    "finish",
    "main",
    "models_app",
    "progress_bar",
    "require_inputs",
]

console = Console()
error_console = Console(stderr=True)

app = typer.Typer(
    name="sparsecut",
    help="Turn pruned PyTorch checkpoints into lean, verified ONNX and measure their real latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List the reference architectures and pruning recipes, or make a pruned example.")
app.add_typer(models_app, name="models")


@dataclasses.dataclass
class _Session:
    verbose: bool = False


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress and show tracebacks.")] = False,
) -> None:
    if isinstance(ctx.obj, _Session):
        ctx.obj.verbose = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def progress_bar() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    )


R = TypeVar("R", bound=Report)


def require_inputs(*paths: Path | None) -> None:
    """Inputs exist and are files, before anything is planned or written."""
    for path in paths:
        if path is None:
            continue
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir() and path.suffix in (".onnx", ".pt", ".pth", ".pt2", ".safetensors", ".plan"):
            raise InputError(f"{path}: is a directory, not a model file")


def finish(plan: OutputPlan, report: R, staged_json: Path | None) -> R:
    """The report as it names the files once in place; its JSON staged; then everything moved into place."""
    report = report.map_strings(plan.relocate)
    if staged_json is not None:
        write_json(report, staged_json)
    plan.commit()
    return report


def announce_json(path: Path | None) -> None:
    if path is not None:
        console.print(f"report → {path}")


VERBOSE_FLAGS = ("--verbose", "-v")
INTERRUPTED = 130


def main(argv: list[str] | None = None, *, restore_sigint: bool = True) -> int:
    """Runs one command; returns the exit code: 0 ok, 2 a bad input or a failure it caused (one line
    `error: <file or option>: <problem>`), 130 Ctrl-C, 1 a bug in sparsecut ("internal error").

    Once a command moves its outputs into place, Ctrl-C is ignored (outputs.py); `restore_sigint` gives the
    caller its handler back afterwards (the console script keeps it ignored until the process exits)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in args)  # accepted anywhere, also after the subcommand
    if verbose:
        args = ["--verbose", *(a for a in args if a not in VERBOSE_FLAGS)]
    _fit_to_output()
    session = _Session()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        code = app(args=args, obj=session, prog_name="sparsecut", standalone_mode=False)
    except UsageError as exc:
        return _fail(_usage_message(exc), verbose)
    except SparsecutError as exc:
        return _fail(str(exc), verbose)
    except KeyboardInterrupt:  # outside the command (typer turns one inside it into exit code 130)
        code = INTERRUPTED
    except OSError as exc:  # a file the library did not expect to fail: name it
        where = exc.filename if exc.filename is not None else "i/o"
        return _fail(f"{where}: {exc.strerror or exc}", verbose)
    except Exception as exc:
        if verbose:
            raise
        error_console.print(
            f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    finally:
        if restore_sigint:
            signal.signal(signal.SIGINT, sigint)
    if code == INTERRUPTED:
        error_console.print("error: interrupted; nothing written", markup=False, highlight=False)
        return INTERRUPTED
    return code if isinstance(code, int) else 0


def _fail(message: str, verbose: bool) -> int:
    if verbose:
        error_console.print_exception()
    error_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return 2


def _usage_message(exc: UsageError) -> str:
    """One line naming the option: `--align: 0 is not in the range x>=1`."""
    text = " ".join(exc.format_message().split())
    if isinstance(exc, NoSuchOption):
        return f"{exc.option_name}: no such option" + (
            f" (did you mean {', '.join(exc.possibilities)}?)" if exc.possibilities else ""
        )
    param = getattr(exc, "param", None)
    if param is not None:
        name = (param.opts or [param.name or "?"])[0]
        name = name if name.startswith("-") else name.upper()
        if isinstance(exc, MissingParameter):
            return f"{name}: missing"
        return f"{name}: {' '.join(exc.message.split())}"
    return text


def _fit_to_output() -> None:
    """Piped into a file or another program, rich would cut tables at 80 columns: give them room instead
    (`COLUMNS` still wins, as rich reads it itself)."""
    for c in (console, error_console):
        if not c.is_terminal and "COLUMNS" not in os.environ:
            c.width = 1000
