"""Imported first by every stage script: run this checkout's code, under a Python that can run it.

- This checkout's `src/` goes first on sys.path, so a stage runs exactly the code files DVC hashed as its
  deps, also in the temporary copies that `dvc exp run --queue` works in (an installed copy could differ).
- A Python without the project's packages (the system `python3` when the venv is not active) stops here with
  one line that says what to do, instead of a ModuleNotFoundError traceback.
- A Ctrl-C while the stage still imports torch (seconds), before run_stage handles stops, is one line too.
"""

import importlib.util
import sys
from pathlib import Path

# Import names of requirements.txt's packages that the stages use (dvc: params.yaml is read with its YAML loader).
REQUIRED = ("torch", "torchvision", "numpy", "PIL", "dvc", "tqdm", "matplotlib", "psutil", "dvclive", "onnx",
            "onnxruntime", "onnxscript")

missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
if missing:
    script = Path(sys.argv[0]).as_posix()
    sys.exit(f"{script}: error: this Python ({sys.executable}) lacks {', '.join(missing)}: stages must run in "
             "the project's virtual environment. Run `make repro`, or `source .venv/bin/activate` first and then "
             "`dvc repro` (likewise for `dvc exp run` and `dvc queue start`).")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _interrupted_while_starting(kind, value, tb) -> None:
    # Only a stop can reach here as KeyboardInterrupt: run_stage catches every later one. Python still ends
    # the process by SIGINT afterwards, so the caller (make, DVC, a shell) sees a Ctrl-C.
    if issubclass(kind, KeyboardInterrupt):
        print(f"{Path(sys.argv[0]).as_posix()}: interrupted while starting; it wrote nothing", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, tb)


sys.excepthook = _interrupted_while_starting
