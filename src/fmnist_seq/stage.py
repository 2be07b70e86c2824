"""What every stage script shares: one clear error line, and no half-written outputs on failure or interrupt."""

from __future__ import annotations

import _thread
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, Iterable

from fmnist_seq.errors import Interrupted, PipelineError


def remove_outputs(paths: Iterable[str | Path]) -> None:
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _unraisable(info) -> None:
    # A stop raised inside a destructor (tqdm's __del__, a tensor's) cannot leave it: Python would print a
    # traceback and the stage would train on until the launcher's SIGKILL. Deliver the signal again instead,
    # from another thread a moment later: a handler run from here would raise inside this hook, and be lost too.
    if isinstance(info.exc_value, KeyboardInterrupt):
        name = info.exc_value.signal_name if isinstance(info.exc_value, Interrupted) else "SIGINT"
        again = threading.Timer(0.01, _thread.interrupt_main, (signal.Signals[name],))
        again.daemon = True
        again.start()
    else:
        sys.__unraisablehook__(info)


def run_stage(name: str, main: Callable[[], None], outputs: Iterable[str | Path],
              on_interrupt: Callable[[], str] | None = None, quiet_interrupt: bool = False) -> None:
    """Run `main`; on any failure remove `outputs` so no later run mistakes them for good ones.

    SIGTERM (a scheduler, `kill`, `dvc queue kill`) is handled like Ctrl-C: the outputs are removed and the
    stage exits with 128 + the signal's number. `on_interrupt` adds what was kept to that one line;
    `quiet_interrupt` says nothing (a training worker, whose launcher speaks for it).
    """
    outputs = list(outputs)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.unraisablehook = _unraisable
    try:
        main()
    except PipelineError as exc:
        remove_outputs(outputs)
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        remove_outputs(outputs)
        signal_name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        if not quiet_interrupt:
            kept = f"; {on_interrupt()}" if on_interrupt is not None else ""
            print(f"{name}: interrupted by {signal_name}{kept}; its outputs were removed", file=sys.stderr)
        sys.exit(128 + signal.Signals[signal_name].value)
    except Exception:
        remove_outputs(outputs)
        traceback.print_exc()
        print(f"{name}: unexpected error (above); its outputs were removed", file=sys.stderr)
        sys.exit(1)
