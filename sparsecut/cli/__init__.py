"""The `sparsecut` command line: each command a module that parses its options (declared once, in
`options.py`), calls the library and renders the report (`render.py`); `app.py` holds what they share and `main`.

Every error a user can cause is a `SparsecutError`; it becomes one line on stderr and exit code 2 (the
traceback only with `--verbose`).
"""

# imported for their commands, in the order `sparsecut --help` lists them: the user's loop
from sparsecut.cli import export, optimize, advise, build, profile, compare, run, sweep, view  # noqa: F401, I001
from sparsecut.cli.app import app, main

__all__ = ["app", "main"]
