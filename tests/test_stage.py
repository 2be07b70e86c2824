"""run_stage: one line and no outputs left behind, whatever stops the stage."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from fmnist_seq.errors import ParamsError
    from fmnist_seq.stage import run_stage

    out, how = Path(sys.argv[1]), sys.argv[2]
    sig = signal.Signals[sys.argv[3]] if len(sys.argv) > 3 else signal.SIGTERM
    wait = float(sys.argv[4]) if len(sys.argv) > 4 else 30  # for the stop, the longest: it ends the loop

    class Bar:  # like tqdm's progress bar: its destructor runs whenever the collector gets to it
        def __del__(self):
            signal.raise_signal(sig)  # the signal's handler runs inside this destructor
            sum(range(1000))

    def main():
        out.write_text("half-written")
        if how == "error":
            raise ParamsError("params.yaml: train_gru.lr: -1 is not > 0")
        if how == "destructor":
            Bar()  # gone at once
        else:
            signal.raise_signal(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # the stop must reach this loop, not be lost in the destructor
            pass
        Path(str(out) + ".finished").touch()

    def kept():
        signal.raise_signal(signal.SIGTERM)  # a second stop while the stage cleans up: it must not cut that short
        return "epochs 1-2 are saved"

    run_stage("demo", main, [out], on_interrupt=kept if how == "twice" else None)
""")


def stage(tmp_path: Path, how: str, sig: signal.Signals = signal.SIGTERM, sigint_ignored: bool = False
          ) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out.txt"
    # Started as a terminal starts a command (SIGINT at its default), or as a shell's background job (ignored)
    sigint = signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
    # An ignored signal is discarded when it is sent: with SIGINT ignored, no stop can come after raise_signal
    wait = "0" if sigint_ignored else "30"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(out), how, sig.name, wait], capture_output=True,
                            text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    return result, out


def test_an_error_is_one_line_and_removes_the_outputs(tmp_path):
    result, out = stage(tmp_path, "error")
    assert result.returncode == 1
    assert result.stderr.strip() == "demo: error: params.yaml: train_gru.lr: -1 is not > 0"
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
@pytest.mark.parametrize("how", ["signal", "destructor"])
def test_a_stop_that_lands_in_a_destructor_still_stops_the_stage(tmp_path, how, sig):
    """The elastic launcher's SIGTERM met tqdm's __del__ in a worker: a traceback, and the worker trained on."""
    result, out = stage(tmp_path, how, sig)
    assert result.returncode == 128 + sig, result.stderr
    assert result.stderr.strip() == f"demo: interrupted by {sig.name}; its outputs were removed"
    assert not out.exists() and not Path(str(out) + ".finished").exists()


def test_a_second_stop_does_not_cut_the_clean_up_short(tmp_path):
    result, out = stage(tmp_path, "twice", signal.SIGINT)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "demo: interrupted by SIGINT; epochs 1-2 are saved; its outputs were removed"
    assert not out.exists()


def test_a_sigint_inherited_ignored_stays_ignored(tmp_path):
    """nohup, `cmd &` in a script: Ctrl-C is not for this process, and the stage runs to its end."""
    result, out = stage(tmp_path, "signal", signal.SIGINT, sigint_ignored=True)
    assert result.returncode == 0, result.stderr
    assert Path(str(out) + ".finished").exists()


def test_a_ctrl_c_while_a_stage_still_imports_is_one_line(tmp_path):
    """Before run_stage takes over, a stage script spends seconds importing torch; a Ctrl-C lands there."""
    script = Path(__file__).resolve().parents[1] / "stages" / "demo.py"  # never written: the name is argv[0]
    code = (f"import sys; sys.argv[0] = {str(script)!r}; sys.path.insert(0, {str(script.parent)!r}); "
            "import _bootstrap; import signal; signal.raise_signal(signal.SIGINT)")  # as if inside `import torch`
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.stderr.strip() == f"{script.as_posix()}: interrupted while starting; it wrote nothing"
    assert result.returncode == -signal.SIGINT  # the caller still sees a Ctrl-C
    # Any other error keeps its traceback: it is a bug to read
    result = subprocess.run([sys.executable, "-c", code.replace("signal.raise_signal(signal.SIGINT)", "1 / 0")],
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr and result.returncode == 1
