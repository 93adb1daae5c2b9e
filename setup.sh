#!/usr/bin/env bash
# Create .venv (once) and install sparsecut with its test tools into it. Safe to run again: it re-installs only
# when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
# torch 2.13.0 is the CPU wheel these machines keep on disk; a bare `torch` would pull a multi-GB CUDA build.
# It must be pinned in the same pip call as everything else, or pip swaps in another torch for a dependency.
TORCH_SPEC=${SPARSECUT_TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.sparsecut-install-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import sparsecut" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC" -e ".[dev]"
    echo "$want" > "$stamp"
fi
