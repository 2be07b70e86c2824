"""interrupts.held: a stop that reaches a process while it starts waits for it to install its handlers."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from fmnist_seq import interrupts
from fmnist_seq.errors import Interrupted

# A launcher and one spawned job, as fmnist-tune starts its jobs. While the job imports its modules (here: until
# the test says it has sent the signal), a Ctrl-C reaches the whole process group.
SCRIPT = textwrap.dedent("""
    import multiprocessing, sys, time
    from pathlib import Path
    from fmnist_seq import interrupts

    folder = Path(sys.argv[1])

    if __name__ == "__mp_main__":  # the job, importing the launcher's module as spawn does
        (folder / "importing").touch()
        while not (folder / "signalled").exists():
            time.sleep(0.01)

    def job():
        try:
            interrupts.install()
            (folder / "installed").touch()
            while True:
                time.sleep(0.01)
        except KeyboardInterrupt:
            sys.exit(130)

    if __name__ == "__main__":
        interrupts.install()
        process = multiprocessing.get_context("spawn").Process(target=job)
        try:
            with interrupts.held():
                process.start()
            process.join()
        except KeyboardInterrupt:
            process.join()
            print(f"launcher stopped; job exit code {process.exitcode}")
""")


def test_a_ctrl_c_while_a_job_imports_stops_it_without_a_traceback(tmp_path: Path):
    script = tmp_path / "launcher.py"
    script.write_text(SCRIPT)
    # As a terminal starts a command: SIGINT at its default, in a process group of its own (the terminal's job)
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not (tmp_path / "importing").exists():
            assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        (tmp_path / "signalled").touch()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in err, err
    assert out.strip() == "launcher stopped; job exit code 130", (out, err)
    assert not (tmp_path / "installed").exists()  # the held Ctrl-C was raised by install() itself


def test_a_stop_exits_with_128_plus_its_signal_everywhere(own_stop_handling):
    """Every entry point's code for a stop (stages, fmnist-tune and its jobs, fmnist-predict): what a shell reports
    for a command that the signal ended, and read back from a job's exit code."""
    assert interrupts.exit_code(Interrupted("SIGTERM")) == 143 and interrupts.exit_code(KeyboardInterrupt()) == 130
    assert interrupts.exit_code() == 130  # no signal received: Python's own KeyboardInterrupt
    interrupts.interrupted(signal.SIGTERM)
    assert interrupts.exit_code() == 143
    assert [interrupts.stop_of_exit_code(c) for c in (130, 143, 1, 0, -9, None)] == \
        [signal.SIGINT, signal.SIGTERM, None, None, None, None]
