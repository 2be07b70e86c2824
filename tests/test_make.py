"""The Makefile as a new user types it: `make test` installs what its tests need, `make web` serves the page."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN


@pytest.fixture
def checkout(tmp_path) -> Path:
    """The Makefile and the examples' npm manifests, with a venv whose install stamp is current."""
    for name in ("Makefile", "requirements.txt", "pyproject.toml", "examples/node/package.json",
                 "examples/node/package-lock.json", "examples/web/package.json", "examples/web/package-lock.json",
                 "examples/web/serve.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "installed").touch()
    return tmp_path


def make_dry_run(checkout: Path, target: str, with_npm: bool) -> str:
    """`make -n target` (commands printed, not run), with or without an `npm` on PATH."""
    bin_dir = checkout / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("make", "sh", "python3"):
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).symlink_to(shutil.which(tool))
    npm = bin_dir / "npm"
    npm.unlink(missing_ok=True)
    if with_npm:
        npm.write_text("#!/bin/sh\nexit 0\n")
        npm.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(checkout)}
    result = subprocess.run(["make", "-n", target, f"VENV={VENV_BIN.parent}", f"STAMP={checkout / 'installed'}"],
                            cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_test_installs_the_npm_packages_its_tests_need_where_npm_is(checkout):
    commands = make_dry_run(checkout, "test", with_npm=True)
    assert "cd examples/node && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci" in commands
    assert "cd examples/web && npm ci" in commands
    assert commands.rstrip().endswith("python -m pytest")


def test_make_test_installs_them_once(checkout):
    for example in ("node", "web"):
        stamp = checkout / "examples" / example / "node_modules" / ".installed"
        stamp.parent.mkdir(parents=True)
        stamp.touch()
    assert "npm ci" not in make_dry_run(checkout, "test", with_npm=True)
    os.utime(checkout / "examples" / "web" / "package-lock.json")  # a changed lock file: installed again
    later = checkout / "examples" / "web" / "node_modules" / ".installed"
    os.utime(later, (later.stat().st_atime - 10, later.stat().st_mtime - 10))
    commands = make_dry_run(checkout, "test", with_npm=True)
    assert "cd examples/web && npm ci" in commands and "examples/node &&" not in commands


def test_make_test_without_npm_runs_the_suite(checkout):
    commands = make_dry_run(checkout, "test", with_npm=False)
    assert "npm" not in commands and commands.rstrip().endswith("python -m pytest")


def test_make_web_serves_only_the_page_and_the_models(checkout):
    commands = make_dry_run(checkout, "web", with_npm=True)
    assert "examples/web/serve.py --root . --port 8000" in commands
    assert "http.server" not in commands
