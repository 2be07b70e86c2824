"""dvc.yaml stays true by construction: each stage's code deps are exactly the files its script imports."""

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PACKAGE = "fmnist_seq"


def imported_files(path: Path) -> set[Path]:
    """Files of this repository that `path` imports directly: package modules and the stage bootstrap."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from fmnist_seq import x` imports the module x; `from fmnist_seq.x import y` imports x.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "_bootstrap":  # stages/_bootstrap.py, imported by each stage script
                found.add(ROOT / "stages" / "_bootstrap.py")
            if name.split(".")[0] != PACKAGE:
                continue
            found.add(ROOT / "src" / PACKAGE / "__init__.py")  # runs on any import of the package
            module = ROOT / "src" / Path(*name.split(".")).with_suffix(".py")
            if module.is_file():
                found.add(module)
    return found


def import_closure(script: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path))
    return {path.relative_to(ROOT).as_posix() for path in seen}


def stage_script(cmd: str) -> Path:
    (script,) = [word for word in cmd.split() if word.startswith("stages/") and word.endswith(".py")]
    return ROOT / script


@pytest.mark.parametrize("stage", sorted(DVC_YAML["stages"]))
def test_code_deps_are_exactly_the_imports(stage):
    spec = DVC_YAML["stages"][stage]
    code_deps = {dep for dep in spec["deps"] if dep.endswith(".py")}
    imports = import_closure(stage_script(spec["cmd"]))
    assert not imports - code_deps, f"{stage} imports files dvc.yaml does not list as deps: {sorted(imports - code_deps)}"
    assert not code_deps - imports, f"{stage} lists deps it does not import: {sorted(code_deps - imports)}"


def test_the_walker_follows_imports_through_the_package(tmp_path):
    """The check above is only as good as the walk: a module reached through another one is found."""
    closure = import_closure(ROOT / "stages" / "export.py")
    assert "src/fmnist_seq/parity.py" in closure  # imported by onnx_export.py, not by the stage itself
    assert "src/fmnist_seq/runtime.py" in closure and "src/fmnist_seq/training.py" not in closure
