"""`python -m sparsecut` and the `sparsecut` command: the CLI, with Ctrl-C during start-up (the imports take a
second) answered like Ctrl-C anywhere else — one line, exit code 130, nothing written."""

import os
import signal
import sys
from typing import NoReturn


def run() -> int:
    try:
        from sparsecut.cli import main
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        _exit_interrupted()
    code = main(restore_sigint=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the answer is given: a late Ctrl-C must not turn it into a crash
    if code == 130:
        _exit_interrupted()
    return code


def _exit_interrupted() -> NoReturn:
    """Exit 130 now. After a handled and reported interrupt the interpreter sometimes ends by killing itself with
    SIGINT (exit −2, seen here about once in ten under load) — CPython does so when the KeyboardInterrupt passed
    through code run by `PyRun_String`, as pybind11 extensions do, the likely cause. Everything is cleaned up by
    now, so leave with the code promised."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    sys.exit(run())
