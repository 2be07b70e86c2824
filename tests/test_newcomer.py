"""The README's first command as a newcomer types it: `make repro` from a shell with no venv on PATH."""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN, run

pytestmark = pytest.mark.e2e

STAGES = ("download", "prepare", "train_rnn", "train_gru", "calibrate", "evaluate", "export")


def newcomer_env() -> dict[str, str]:
    """The test's environment without any virtual environment: PATH stripped of it, VIRTUAL_ENV unset."""
    venv_dirs = {str(VENV_BIN), os.environ.get("VIRTUAL_ENV", "") + "/bin"}
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and p not in venv_dirs)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**env, "PATH": path, "DVC_NO_ANALYTICS": "1"}


def can_import(python: str | None, module: str, env: dict[str, str]) -> bool:
    if python is None:
        return False
    return subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True).returncode == 0


@pytest.fixture
def newcomer_project(project: Path) -> Path:
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy2(ROOT / name, project / name)
    return project


def test_make_repro_works_without_an_active_venv(newcomer_project, tmp_path):
    env = newcomer_env()
    assert str(VENV_BIN) not in env["PATH"].split(os.pathsep)
    # The venv exists already (this suite runs in it): point the Makefile at it, with a stamp newer than the
    # pins so that setup has nothing to do; everything else is exactly `make repro`.
    stamp = tmp_path / "installed"
    stamp.touch()
    result = run(["make", "repro", f"VENV={VENV_BIN.parent}", f"STAMP={stamp}"], cwd=newcomer_project, env=env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout, result.stdout[-3000:]
    assert (newcomer_project / "models/onnx/gru.onnx").is_file()
    assert "up to date" in run([str(VENV_BIN / "dvc"), "status"], cwd=newcomer_project, env=env).stdout


def test_a_stage_under_the_wrong_python_says_what_to_do(tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # a Python without the project's packages
    python = bare / "bin" / "python"
    result = subprocess.run([str(python), str(ROOT / "stages" / "download.py"), "--out", str(tmp_path / "raw")],
                            capture_output=True, text=True, env=newcomer_env(), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "lacks torch" in lines[0] and "make repro" in lines[0] and "source .venv/bin/activate" in lines[0]
    assert not (tmp_path / "raw").exists()


def test_venv_dvc_without_activation_fails_with_the_hint(newcomer_project):
    """`.venv/bin/dvc repro` without activating: the stages' `python3` is the system one."""
    env = newcomer_env()
    system_python = shutil.which("python3", path=env["PATH"])
    if can_import(system_python, "torch", env):
        pytest.skip(f"the system Python ({system_python}) has torch: it would run the stages")
    result = run([str(VENV_BIN / "dvc"), "repro", "download"], cwd=newcomer_project, env=env, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "make repro" in output and "source .venv/bin/activate" in output and "Traceback" not in output
    assert sys.executable not in output  # it names the Python that ran, not this suite's
