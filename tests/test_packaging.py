"""pyproject.toml's ranges admit only versions the code runs on, and the exact pins of requirements.txt."""

import inspect
import tomllib

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
