"""pyproject.toml's ranges admit only versions the code runs on, and the exact pins of requirements.txt."""

import inspect
import re
import tomllib
import warnings

import optuna
import sqlalchemy.dialects.postgresql
from packaging.requirements import Requirement
from packaging.version import Version
from torch.nn.parallel import DistributedDataParallel

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements() -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(text).name.lower(): Requirement(text) for text in listed}


def floor(name: str) -> Version:
    (lower,) = [Version(spec.version) for spec in requirements()[name].specifier if spec.operator == ">="]
    return lower


def test_torch_floor_has_what_multi_worker_training_passes():
    """make_step wraps the model in DistributedDataParallel(..., forward_sync_buffers=False): a keyword that
    torch 2.13 introduced (older releases raise TypeError at the first multi-worker step)."""
    assert "forward_sync_buffers=" in (ROOT / "src" / "fmnist_seq" / "training.py").read_text()
    assert "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    assert floor("torch") >= Version("2.13")
    # each torchvision release is built for one torch minor release: 0.28 <-> 2.13, 0.29 <-> 2.14
    assert floor("torchvision").minor == floor("torch").minor + 15


def test_the_pins_lie_within_the_ranges():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (pin,) = requirement.specifier
            pins[requirement.name.lower()] = pin.version
    ranges = requirements()
    assert set(pins) <= set(ranges)
    for name, version in pins.items():
        assert ranges[name].specifier.contains(version), f"{name}=={version} is outside pyproject's {ranges[name]}"


def test_optuna_floor_samples_with_a_constant_liar_quietly():
    """make_sampler passes TPESampler(constant_liar=True): Optuna 4.x marks the argument experimental and warns in
    every trial process, on the stderr where fmnist-tune prints only its own lines; 5.0 made it a plain default."""
    assert "constant_liar=True" in (ROOT / "src" / "fmnist_seq" / "study.py").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optuna.samplers.TPESampler(constant_liar=True)
    assert floor("optuna") >= Version("5.0")


def test_the_postgres_extra_brings_what_a_postgresql_url_connects_with():
    """`--storage postgresql://...` goes through SQLAlchemy, whose default driver for that scheme is psycopg 3
    from 2.1 on (2.0 takes psycopg2, which the extra does not install)."""
    assert sqlalchemy.dialects.postgresql.dialect.driver == "psycopg"
    assert floor("sqlalchemy") >= Version("2.1") and "sqlalchemy" in {Requirement(r).name.lower() for r in
                                                                       PYPROJECT["project"]["optional-dependencies"]["postgres"]}


def test_every_lower_bound_says_why():
    """Each requirement in pyproject.toml has a comment on its line (or the lines above it) giving its floor's
    reason: a feature the code uses, or the tested release line."""
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r'\s*"[A-Za-z][^"]*>=[^"]*",?', line) or line.startswith("requires = "):
            above = lines[number - 1].strip() if number else ""
            assert "#" in line or above.startswith("#"), f"pyproject.toml:{number + 1}: no reason for {line.strip()}"
