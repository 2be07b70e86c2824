"""What every stage script shares: one clear error line, and no half-written outputs on failure or interrupt."""

from __future__ import annotations

import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable

from fmnist_seq import interrupts
from fmnist_seq.errors import PipelineError


def remove_outputs(paths: Iterable[str | Path]) -> None:
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_stage(name: str, main: Callable[[], None], outputs: Iterable[str | Path],
              on_interrupt: Callable[[], str] | None = None, quiet_interrupt: bool = False) -> None:
    """Run `main`; on any failure remove `outputs` so no later run mistakes them for good ones.

    SIGTERM (a scheduler, `kill`, `dvc queue kill`) is handled like Ctrl-C (see interrupts.py): the outputs
    are removed and the stage exits with 128 + the signal's number (interrupts.exit_code). `on_interrupt` adds what was kept to that
    one line; `quiet_interrupt` says nothing (a training worker, whose launcher speaks for it).
    """
    outputs = list(outputs)
    interrupts.install()
    try:
        main()
    except PipelineError as exc:
        remove_outputs(outputs)
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        remove_outputs(outputs)  # a second signal is noted, not raised (interrupts.py): nothing cuts this short
        signum = interrupts.signal_number(exc)
        if not quiet_interrupt:
            kept = f"; {on_interrupt()}" if on_interrupt is not None else ""
            print(f"{name}: interrupted by {signal.Signals(signum).name}{kept}; its outputs were removed",
                  file=sys.stderr)
        sys.exit(interrupts.exit_code(exc))
    except Exception:
        remove_outputs(outputs)
        traceback.print_exc()
        print(f"{name}: unexpected error (above); its outputs were removed", file=sys.stderr)
        sys.exit(1)

