"""Console-script entry points that take stop signals before they import their command: fmnist-tune's modules
(torch, Optuna) take seconds to import, and a Ctrl-C then would end the command with Python's traceback."""

from __future__ import annotations

import importlib
import sys

from fmnist_seq import interrupts

# The console scripts that pyproject.toml points here, and the module whose main() each one runs.
MODULES = {"fmnist-tune": "fmnist_seq.tune_cli"}


def tune() -> None:
    run("fmnist-tune", MODULES["fmnist-tune"])


def run(name: str, module: str) -> None:
    """Import `module` and run its main(); a stop during the import is the command's usual one line."""
    interrupts.install()  # main() installs them again, to the same effect
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt as exc:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(interrupts.exit_code(exc))
    main()
