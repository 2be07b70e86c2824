"""What every stage script shares: one clear error line, and no half-written outputs on failure."""

from __future__ import annotations

import shutil
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable

from fmnist_seq.errors import PipelineError


def remove_outputs(paths: Iterable[str | Path]) -> None:
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_stage(name: str, main: Callable[[], None], outputs: Iterable[str | Path]) -> None:
    """Run `main`; on any failure remove `outputs` so no later run mistakes them for good ones."""
    outputs = list(outputs)
    try:
        main()
    except PipelineError as exc:
        remove_outputs(outputs)
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        remove_outputs(outputs)
        print(f"{name}: interrupted; its outputs were removed", file=sys.stderr)
        sys.exit(130)
    except Exception:
        remove_outputs(outputs)
        traceback.print_exc()
        print(f"{name}: unexpected error (above); its outputs were removed", file=sys.stderr)
        sys.exit(1)
