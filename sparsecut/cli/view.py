"""`sparsecut view`: a model in netron, served on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsecut.cli.app import app, console


@app.command()
def view(
    model: Annotated[Path, typer.Argument(help="ONNX file to open in netron.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8080,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL instead of opening it.")] = False,
) -> None:
    """Open a model in netron (until Ctrl-C)."""
    import netron

    from sparsecut.viewer import serve_model

    url = serve_model(model, port, browse=not no_browser)
    console.print(f"netron serves {model} at {url} (Ctrl-C to stop)")
    netron.wait()
