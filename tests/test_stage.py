"""run_stage: one line and no outputs left behind, whatever stops the stage."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from fmnist_seq.errors import ParamsError
    from fmnist_seq.stage import run_stage

    out, how = Path(sys.argv[1]), sys.argv[2]

    class Bar:  # like tqdm's progress bar: its destructor runs whenever the collector gets to it
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the signal's handler runs inside this destructor
            sum(range(1000))

    def main():
        out.write_text("half-written")
        if how == "error":
            raise ParamsError("params.yaml: train_gru.lr: -1 is not > 0")
        Bar()  # gone at once
        for i in range(10_000_000):  # the stop must reach this loop, not be lost in the destructor
            pass
        Path(str(out) + ".finished").touch()

    run_stage("demo", main, [out])
""")


def stage(tmp_path: Path, how: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out.txt"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(out), how], capture_output=True, text=True, timeout=60)
    return result, out


def test_an_error_is_one_line_and_removes_the_outputs(tmp_path):
    result, out = stage(tmp_path, "error")
    assert result.returncode == 1
    assert result.stderr.strip() == "demo: error: params.yaml: train_gru.lr: -1 is not > 0"
    assert not out.exists()


def test_a_stop_that_lands_in_a_destructor_still_stops_the_stage(tmp_path):
    """The elastic launcher's SIGTERM met tqdm's __del__ in a worker: a traceback, and the worker trained on."""
    result, out = stage(tmp_path, "destructor")
    assert result.returncode == 128 + 15, result.stderr
    assert result.stderr.strip() == "demo: interrupted by SIGTERM; its outputs were removed"
    assert not out.exists() and not Path(str(out) + ".finished").exists()
