"""Every benchmark script still starts: its imports (of the package and of its sibling scripts) resolve and it
answers --help. The benchmarks run for minutes and need benchmark-only packages, so CI runs none of them; a
rename in one script had left two others unable to start (backends.py and precision.py imported a helper
alignment.py no longer had)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if "def main(" in p.read_text())

# each script run as `python SCRIPT --help` would run it, in one process (torch imported once, not 14 times)
_ALL_HELP = """
import contextlib, io, json, os, runpy, sys
found, path = {}, list(sys.path)
for script in sys.argv[1:]:
    sys.path[:] = [os.path.dirname(script), *path]  # as `python SCRIPT` has it (some scripts drop their folder)
    sys.argv, out = [script, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        found[script] = "ran without exiting"
    except SystemExit as done:
        found[script] = out.getvalue() if done.code in (0, None) else f"exit {done.code}"
    except BaseException as exc:
        found[script] = f"{type(exc).__name__}: {exc}"
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    paths = [str(BENCHMARKS / s) for s in SCRIPTS]
    done = subprocess.run([sys.executable, "-c", _ALL_HELP, *paths], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {Path(k).name: v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def test_there_are_benchmark_scripts() -> None:
    assert {"alignment.py", "backends.py", "precision.py", "zoo.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_starts(helps: dict[str, str], script: str) -> None:
    assert helps[script].startswith("usage:"), helps[script]
