"""Third-party loggers that speak when they should not: silenced for the span of one call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quieted"]


@contextlib.contextmanager
def quieted(name: str = "", level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger `name` (the root logger for "") to `level` while the block runs, then restore it."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
