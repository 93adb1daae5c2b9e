"""`python -m sparsecut` and the `sparsecut` command: the CLI, with Ctrl-C during start-up (the imports take a
second) answered like Ctrl-C anywhere else — one line, exit code 130, nothing written."""

import signal
import sys


def run() -> int:
    try:
        from sparsecut.cli import main
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        return 130
    code = main(restore_sigint=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the answer is given: a late Ctrl-C must not turn it into a crash
    return code


if __name__ == "__main__":
    sys.exit(run())
