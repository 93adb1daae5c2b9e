"""`sparsecut view`: open a model in netron — a thin wrapper, nothing re-implemented."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from sparsecut.errors import GraphError

__all__ = ["serve_model", "stop_serving"]


def serve_model(model: Path, port: int = 8080, browse: bool = False) -> str:
    """Serve `model` with netron on 127.0.0.1:`port` in the background; returns the URL."""
    import netron

    model = Path(model)
    if not model.is_file():
        raise GraphError(f"{model}: no such file")
    with contextlib.redirect_stdout(io.StringIO()):  # netron announces itself on stdout; libraries do not print
        address = netron.start(str(model), ("127.0.0.1", port), browse=browse)
    host, bound = address if isinstance(address, tuple) else ("127.0.0.1", port)
    return f"http://{host}:{bound}"


def stop_serving(url: str) -> None:
    import netron

    host, _, port = url.removeprefix("http://").partition(":")
    with contextlib.redirect_stdout(io.StringIO()):
        netron.stop((host, int(port)))
