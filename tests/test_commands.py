"""The console scripts' entry points: a stop during the seconds of importing a command is its one line."""

import signal
import sys

import pytest

from fmnist_seq import commands


def test_a_stop_while_the_command_imports_is_one_line(tmp_path, monkeypatch, capsys, own_stop_handling):
    (tmp_path / "slow_command.py").write_text(  # a Ctrl-C that lands while the module imports torch
        "import signal\nsignal.raise_signal(signal.SIGINT)\ndef main():\n    raise AssertionError('not run')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it, whatever started pytest
    with pytest.raises(SystemExit) as exited:
        commands.run("fmnist-slow", "slow_command")
    assert exited.value.code == 130
    assert capsys.readouterr().err == "fmnist-slow: interrupted\n"


def test_the_command_runs_once_imported(tmp_path, monkeypatch, capsys, own_stop_handling):
    (tmp_path / "quick_command.py").write_text("import sys\ndef main():\n    print('ran', sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["fmnist-quick", "--flag"])
    commands.run("fmnist-quick", "quick_command")
    assert capsys.readouterr().out == "ran ['--flag']\n"

