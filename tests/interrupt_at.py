"""Run the `sparsecut` console entry point with Ctrl-C (a real SIGINT to this process) arriving exactly when
`MODULE:ATTRIBUTE` is called: `python tests/interrupt_at.py sparsecut.passes.pipeline:save_model optimize …`.
An attribute path through an imported module (`sparsecut.outputs:os.replace`) patches that module's view of it
alone. Used by test_interrupt.py: the moment is chosen, not timed."""

import importlib
import os
import signal
import sys
import types


def main() -> int:
    target, *argv = sys.argv[1:]
    module_name, _, path = target.partition(":")
    module = importlib.import_module(module_name)
    *through, attribute = path.split(".")
    owner: object = module
    if through:
        owner = types.SimpleNamespace(**vars(getattr(module, through[0])))
        setattr(module, through[0], owner)
    original = getattr(owner, attribute)
    fired = []

    def interrupted(*args: object, **kwargs: object) -> object:
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    setattr(owner, attribute, interrupted)
    sys.argv = ["sparsecut", *argv]
    from sparsecut.__main__ import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
