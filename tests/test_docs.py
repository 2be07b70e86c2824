"""What the documentation says matches the repository: every path it cites exists, and figures quoted from
the committed results are those results.

A path counts as cited when README.md, docs/*.md, dvc.yaml, params.yaml, the Makefile or .ci/run, or a comment
or docstring under src/, stages/, tests/, bench/ or examples/, names it from the repository root (`docs/<page>.md`,
`src/fmnist_seq/<module>.py`, `results/...`). It exists when git tracks it (a file or a folder), when a stage of
dvc.yaml writes it (inside a folder a stage writes whole, any name passes: DVC does not list it), or when it
lies in a folder that npm ci fills from a committed lock file. A path written with a placeholder
(`models/<model>.pt`, `models/onnx/*.onnx`) is checked up to the placeholder.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import tokenize
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

TOP_FOLDERS = ("docs", "src", "stages", "tests", "bench", "examples", "results", "models", "data", ".ci")
# A path starts at a top folder, not inside a word, URL or `commit:path` (those name other trees).
CITED = re.compile(r"(?<![\w./@:%~-])((?:" + "|".join(map(re.escape, TOP_FOLDERS)) + r")/[\w.@+/-]*)")
NPM_FOLDERS = ("examples/node/node_modules", "examples/web/node_modules")  # npm ci, from package-lock.json


def python_prose(text: str) -> str:
    """A Python file's comments and docstrings (string literals in code are data, not citations)."""
    parts = [token.string for token in tokenize.generate_tokens(io.StringIO(text).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def script_prose(text: str) -> str:
    """Comments of JavaScript, HTML and CSS (`//` after a space, so that `http://` stays out)."""
    return "\n".join(re.findall(r"/\*.*?\*/", text, re.S) + re.findall(r"(?:^|\s)//(.*)$", text, re.M)
                     + re.findall(r"<!--.*?-->", text, re.S))


def hash_comments(text: str) -> str:
    return "\n".join(re.findall(r"(?:^|\s)#(.*)$", text, re.M))


@lru_cache(maxsize=1)
def tracked() -> tuple[frozenset[str], frozenset[str]]:
    """Files git tracks, and every folder that holds one."""
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    files = frozenset(name for name in result.stdout.split("\0") if name)
    folders = frozenset(str(parent) for name in files for parent in Path(name).parents if str(parent) != ".")
    return files, folders


@lru_cache(maxsize=1)
def stage_outputs() -> frozenset[str]:
    """Every path a stage of dvc.yaml writes (outs, metrics, plots), as dvc.yaml declares it."""
    outputs = set()
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                outputs.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return frozenset(outputs)


def exists(path: str) -> bool:
    files, folders = tracked()
    path = path.rstrip("/")
    if path in files or path in folders:
        return True
    for output in stage_outputs() | set(NPM_FOLDERS):
        if path == output or path.startswith(output + "/") or output.startswith(path + "/"):
            return True
    return False


def cited_paths(text: str) -> list[str]:
    return [match.rstrip(".,:;") for match in CITED.findall(text)]


def prose_of_the_repository() -> dict[str, str]:
    """Each tracked file that documents the project, as the text whose citations are checked."""
    files, _ = tracked()
    prose = {}
    for name in sorted(files):
        path = ROOT / name
        if not path.is_file():  # tracked but deleted in this working tree
            continue
        top = name.split("/")[0]
        if name == "README.md" or (top == "docs" and name.endswith(".md")) or name == "dvc.yaml":
            prose[name] = path.read_text()
        elif name in ("params.yaml", "Makefile", ".ci/run"):
            prose[name] = hash_comments(path.read_text())
        elif top in ("src", "stages", "tests", "bench", "examples"):
            if name.endswith(".py"):
                prose[name] = python_prose(path.read_text())
            elif name.endswith((".mjs", ".js", ".html", ".css")):
                prose[name] = script_prose(path.read_text())
    return prose


def missing_paths(prose: dict[str, str]) -> list[str]:
    return [f"{name}: {path}" for name, text in prose.items() for path in cited_paths(text) if not exists(path)]


def test_every_cited_path_exists():
    prose = prose_of_the_repository()
    assert {"README.md", "docs/web.md", "dvc.yaml", "src/fmnist_seq/images.py", "examples/web/app.mjs"} <= set(prose)
    assert sum(len(cited_paths(text)) for text in prose.values()) > 100  # the scan sees the citations
    assert missing_paths(prose) == []


def test_the_check_catches_a_made_up_path():
    made_up = {
        "docs/fake.md": "See docs/web_and_artifacts_readme_sections.md and (src/fmnist_seq/nope.py).",
        "src/fake.py": python_prose('"""Reads results/evaluate/nope.json."""\nx = "docs/in_a_string.md"  # bench/gone.py\n'),
        "examples/fake.mjs": script_prose("// see examples/web/gone.mjs\nfetch('http://host/docs/remote.md');"),
    }
    assert missing_paths(made_up) == [
        "docs/fake.md: docs/web_and_artifacts_readme_sections.md", "docs/fake.md: src/fmnist_seq/nope.py",
        "src/fake.py: bench/gone.py", "src/fake.py: results/evaluate/nope.json",
        "examples/fake.mjs: examples/web/gone.mjs"]
    real = "docs/web.md, src/fmnist_seq/images.py, models/onnx/gru.onnx, results/train/<model>/timings.json"
    assert cited_paths(real) == ["docs/web.md", "src/fmnist_seq/images.py", "models/onnx/gru.onnx", "results/train/"]
    assert missing_paths({"ok.md": real}) == []


def test_the_release_example_quotes_the_committed_accuracy():
    committed = json.loads((ROOT / "results/evaluate/metrics.json").read_text())["gru"]["test_accuracy"]
    quoted = re.findall(r"GRU, ([\d.]+)% test accuracy", (ROOT / "docs/artifacts.md").read_text())
    assert quoted and all(float(q) == round(100 * committed, 2) for q in quoted)


def test_the_interpreter_the_docs_name_is_the_one_the_stages_call():
    """A stage command runs `python3 stages/...`: a doc that says `python` sends a user without
    python-is-python3 looking for the wrong program."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    (called,) = {stage["cmd"].split()[0] for stage in stages.values()}
    texts = [(ROOT / "README.md").read_text()] + [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
    named = [m for text in texts for m in re.findall(r"(?:stage\s+commands\s+call|the\s+stages')\s+`(\w+)`", text)]
    assert len(named) >= 3 and set(named) == {called}
