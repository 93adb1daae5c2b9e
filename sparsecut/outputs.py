"""Every file a command writes, planned before any work: checked, staged beside its destination, and moved into
place only when every step succeeded — or, on any failure or Ctrl-C, removed without a trace.

A command lists its inputs and its outputs (`file`, `folder`); the plan refuses, before anything runs, an output
that is a directory, a symbolic link, a device or FIFO, that shares a file with an input or an input's external
data, or that two options would both write. The work then writes to the staged paths the plan hands out (each
bears its destination's name, so an ONNX file's external data reference stays right). `commit` moves everything
into place — models last, each model's `.data` before it — with Ctrl-C ignored from then on, so that an
interrupt either leaves the folder exactly as it was or comes too late to matter. Paths of the staging area
that reach a message, a log line or a report are shown as their destinations (`relocate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from sparsecut.errors import OutputPathError, SparsecutError
from sparsecut.modelfile import check_output_path, same_file

__all__ = ["OutputPlan"]

STAGING_PREFIX = ".sparsecut-staging-"


@dataclasses.dataclass
class _Planned:
    option: str
    final: Path
    model: bool
    optional: bool
    staged: Path | None = None


@dataclasses.dataclass
class _Folder:
    option: str
    final: Path
    names: tuple[str, ...]
    staged: Path | None = None


class OutputPlan:
    """`with OutputPlan(inputs) as plan: staged = plan.file(...); work(staged); plan.commit()`.

    Plan every output first, then work: a bad output is refused before any work. Staging folders appear as
    outputs are planned; leaving without `commit` (an exception, Ctrl-C) removes them."""

    def __init__(self, inputs: Iterable[Path | None] = ()) -> None:
        self._inputs = [Path(p) for p in inputs if p is not None]
        self._files: list[_Planned] = []
        self._folders: list[_Folder] = []
        self._staging: dict[Path, Path] = {}  # destination folder → its staging folder
        self._entered = False
        self._committed = False
        self._filter: _Relocating | None = None

    # ------------------------------------------------------------------------------------------------ planning
    def file(self, path: Path, option: str, *, model: bool = False, optional: bool = False) -> Path:
        """Plan one file (a `model` may bring `<name>.data`; an `optional` one may not be written at all);
        returns where the work writes it."""
        self._require_entered()
        path = Path(path)
        self._check(path, option)
        if model:
            self._check(path.with_name(f"{path.name}.data"), option)
        planned = _Planned(option, path, model, optional)
        self._files.append(planned)
        self._stage_file(planned)
        assert planned.staged is not None
        return planned.staged

    def folder(self, path: Path, option: str, names: Iterable[str]) -> Path:
        """Plan a folder and the files it will hold; it appears (or gains those files) only at commit."""
        path = Path(path)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise OutputPathError(f"{path}: {option} must be a folder (it is a file or a link); give a new name")
        for source in self._inputs:
            if same_file(path, source):
                raise OutputPathError(f"{path}: {option} is the input {source}; give a new folder")
        planned = _Folder(option, path, tuple(names))
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise OutputPathError(f"{path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise OutputPathError(f"{path}: folder {parent} is not writable")
        for name in planned.names:
            self._check(path / name, option, folder_may_be_missing=True)
        self._require_entered()
        self._folders.append(planned)
        self._stage_folder(planned)
        assert planned.staged is not None
        return planned.staged

    def _check(self, path: Path, option: str, folder_may_be_missing: bool = False) -> None:
        if not (folder_may_be_missing and not path.parent.exists()):
            check_output_path(path, *self._inputs)
        for other in self._files:
            for mine in (other.final, other.final.with_name(f"{other.final.name}.data")):
                if same_file(path, mine) or path.resolve() == mine.resolve():
                    raise OutputPathError(f"{path}: {option} would write the same file as {other.option}")
        for folder in self._folders:
            if any(path.resolve() == (folder.final / n).resolve() for n in folder.names):
                raise OutputPathError(f"{path}: {option} would write a file of {folder.option} {folder.final}")

    # ------------------------------------------------------------------------------------------------ staging
    def __enter__(self) -> OutputPlan:
        self._entered = True
        self._filter = _Relocating(self)
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._filter)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._filter is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._filter)
        if not self._committed:
            with _no_interrupts():
                self._discard()
        if isinstance(exc, SparsecutError) and exc.args:
            exc.args = (self.relocate(str(exc.args[0])), *exc.args[1:])
        elif isinstance(exc, OSError) and exc.filename is not None:
            exc.filename = self.relocate(str(exc.filename))

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("an output plan is used inside its `with` block")

    def _staging_for(self, destination_folder: Path) -> Path:
        key = destination_folder.resolve()
        if key not in self._staging:
            self._staging[key] = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=destination_folder))
        return self._staging[key]

    def _stage_file(self, planned: _Planned) -> None:
        parent = planned.final.parent if str(planned.final.parent) else Path(".")
        planned.staged = self._staging_for(parent) / planned.final.name

    def _stage_folder(self, folder: _Folder) -> None:
        parent = folder.final.parent if str(folder.final.parent) else Path(".")
        folder.staged = self._staging_for(parent) / folder.final.name
        folder.staged.mkdir()

    def _discard(self) -> None:
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._staging.clear()

    # ------------------------------------------------------------------------------------------------ commit
    def commit(self) -> None:
        """Move everything into place: plain files and folders first, models last (data before model). From here
        on Ctrl-C is ignored: the outputs are complete, and the command finishes."""
        self._require_entered()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # restored by the CLI's main when the command returns
        missing = [p for p in self._files if not p.optional and p.staged is not None and not p.staged.exists()]
        if missing:  # the work did not write something it planned: a bug, not a user error
            raise RuntimeError(f"planned output {missing[0].final} was not written")
        for folder in self._folders:
            self._commit_folder(folder)
        for planned in sorted(self._files, key=lambda p: p.model):
            assert planned.staged is not None
            if not planned.staged.exists():
                continue
            data = planned.staged.with_name(f"{planned.staged.name}.data")
            if planned.model and data.exists():
                os.replace(data, planned.final.with_name(f"{planned.final.name}.data"))
            os.replace(planned.staged, planned.final)
        self._committed = True
        self._discard()

    @staticmethod
    def _commit_folder(folder: _Folder) -> None:
        assert folder.staged is not None
        if not folder.final.exists():
            os.rename(folder.staged, folder.final)
            return
        staged = sorted(folder.staged.iterdir(), key=lambda p: p.suffix == ".onnx")  # models last
        for path in staged:
            os.replace(path, folder.final / path.name)

    # ------------------------------------------------------------------------------------------------ naming
    def relocate(self, text: str) -> str:
        """`text` with every staged path shown as its destination."""
        for planned in self._files:
            if planned.staged is not None:
                text = text.replace(str(planned.staged), str(planned.final))
        for folder in self._folders:
            if folder.staged is not None:
                text = text.replace(str(folder.staged), str(folder.final))
        for destination, staging in self._staging.items():
            text = text.replace(str(staging), str(destination))
        return text


class _Relocating(logging.Filter):
    """Log lines name destinations, never the staging area."""

    def __init__(self, plan: OutputPlan) -> None:
        super().__init__()
        self._plan = plan

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._plan.relocate(record.getMessage()), None
        return True


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Cleaning up must not be cut short by a second Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
