"""What the documentation says matches the repository: every path it cites exists, figures quoted from the
committed results are those results (the generated blocks are what `make docs` writes), every other figure names
the commit it comes from (so none is hand-copied from a file of the tree), and every shell command
it shows names make targets, flags, scripts, paths and commits that exist (tests/doc_commands.py says which
text counts as a command).

A path counts as cited when README.md, docs/*.md, dvc.yaml, params.yaml, the Makefile or .ci/run, or a comment
or docstring under src/, stages/, tests/, bench/ or examples/, names it from the repository root (`docs/<page>.md`,
`src/fmnist_seq/<module>.py`, `results/...`). It exists when git tracks it (a file or a folder), when a stage of
dvc.yaml writes it (inside a folder a stage writes whole, any name passes: DVC does not list it), or when it
lies in a folder that npm ci fills from a committed lock file. A path written with a placeholder
(`models/<model>.pt`, `models/onnx/*.onnx`) is checked up to the placeholder.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import re
import subprocess
import sys
import tokenize
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from conftest import ROOT
import doc_commands
from doc_commands import Checker, commands_in

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


@lru_cache(maxsize=1)
def generator() -> ModuleType:
    """docs/generate.py, the script behind `make docs` (a script, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def documents() -> dict[str, str]:
    return {path.relative_to(ROOT).as_posix(): path.read_text() for path in generator().documents(ROOT)}


def committed_sources(into: Path) -> Path | None:
    """params.yaml and results/ as the last commit holds them, extracted under `into`; None outside a git checkout.

    CI runs `make repro` before the suite, and a run on another machine rewrites results/ (its timings differ),
    while the documents quote the committed run: those must match the committed results."""
    archive = subprocess.run(["git", "archive", "HEAD", "params.yaml", "results"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        return None
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def test_the_generated_blocks_are_what_make_docs_writes(tmp_path):
    """Each document matches what `make docs` writes from the results in the work tree (a developer who has just
    run the pipeline and `make docs`) or from the committed results (CI, after its own `make repro`)."""
    gen = generator()
    blocks = {(name, block.kind) for name, text in documents().items() for block in gen.Block.all_in(text, name)}
    assert {("README.md", "results"), ("docs/experiments.md", "parameters"), ("README.md", "tests"),
            ("docs/export.md", "export"), ("docs/performance.md", "training-timings")} <= blocks
    committed = committed_sources(tmp_path / "committed")

    def from_commit(kind: str) -> str:  # the test count comes from the work tree's tests either way
        return gen.rendered(kind) if kind == "tests" else gen.rendered(kind, committed)

    stale = []
    for name, text in documents().items():
        problems = gen.stale_blocks(text, name, gen.rendered)
        if problems and committed is not None:
            problems = gen.stale_blocks(text, name, from_commit) and problems
        stale += problems
    assert not stale, "\n".join(stale)


def test_a_stale_table_fails_and_make_docs_rewrites_only_the_block():
    gen = generator()
    batch = gen.load_block(gen.TrainConfig, "train_gru", ROOT / "params.yaml").batch_size
    current = ("# A page\n\n<!-- generated: parameters -->\n" + gen.rendered("parameters")
               + "<!-- end generated -->\nmore\n")
    row = next(line for line in current.splitlines() if line.startswith("| `batch_size`, `epochs`, `patience` |"))
    stale = current.replace(row, row.replace(f"| {batch}, ", "| 4096, ", 1))
    assert stale != current and gen.stale_blocks(current, "page.md", gen.rendered) == []
    (problem,) = gen.stale_blocks(stale, "page.md", gen.rendered)
    assert problem.startswith("page.md:3: generated block 'parameters' is stale (run `make docs`)")
    assert "\n-| `batch_size`, `epochs`, `patience` | " in problem and f"\n+{row}\n" in problem
    assert gen.filled(stale, "page.md", gen.rendered) == current


def test_a_block_of_an_unknown_kind_or_without_its_end_is_an_error():
    gen = generator()
    with pytest.raises(ValueError, match="x.md:2: unknown generated block 'figures'"):
        gen.Block.all_in("text\n<!-- generated: figures -->\n<!-- end generated -->\n", "x.md")
    with pytest.raises(ValueError, match="x.md:1: a generated block without its"):
        gen.Block.all_in("<!-- generated: tests -->\n\n<!-- generated: results -->\n<!-- end generated -->\n", "x.md")


def test_every_command_in_the_docs_names_what_exists():
    commands = [c for name, text in documents().items() for c in commands_in(text, name)]
    assert len(commands) > 100 and {c.file for c in commands} >= {"README.md", "docs/tuning.md", "docs/web.md"}
    problems = Checker(exists, TOP_FOLDERS).problems(commands)
    assert not problems, "\n".join(problems)


MADE_UP_DOC = """Run `make docs` and `make nope`, then `fmnist-tune --model gru --trails 3`;
`dvc exp diff 3fef42c my-exp`.

```bash
source .venv/bin/activate     # fine
fmnist-predict models/onnx/gru.onnx shoe.jpg --top-k 1 --jsn
python bench/seeds.py --model gru --seed 1 && python bench/gone.py
dvc exp run --queue -S train_gru.lr=0.01 --no-such-flag
dvc pull
cat models/onnx/*.onnx results/evaluate/nope.json > out.txt
git show 0123abc:README.md
make web WEB_PORT=8080 WEB_HOST=x
```

```
train_gru: error: output lines and diagrams are not commands
dvc queue logs <name>
```

<!-- commands: elsewhere -->
```bash
dvc pull      # on a teammate's clone, with the team's remote
```

```bash
dvc remote add -d storage /srv/dvc-storage
dvc push
git show 8ca421e:bench/layer_study.py > layer_study.py && python layer_study.py --epochs 4
```
"""


def test_the_command_check_catches_missing_targets_flags_scripts_paths_commits_and_remotes(monkeypatch):
    monkeypatch.setattr(doc_commands, "dvc_remote_configured", lambda: False)  # as in a clone of this repository
    problems = Checker(exists, TOP_FOLDERS).problems(commands_in(MADE_UP_DOC, "docs/fake.md"))
    assert [p.split(": ", 1)[0] + ": " + p.rsplit("`: ", 1)[1] for p in problems] == [
        "docs/fake.md:6: fmnist-predict has no option --jsn",
        "docs/fake.md:7: bench/seeds.py has no option --seed",
        "docs/fake.md:7: no script bench/gone.py",
        "docs/fake.md:8: dvc exp run has no option --no-such-flag",
        "docs/fake.md:9: needs a DVC remote, and .dvc/config names none: say the files come from `make repro`, or "
        "add the remote first (`dvc remote add -d ...`)",
        "docs/fake.md:10: results/evaluate/nope.json: no such path in the repository or the pipeline's outputs",
        "docs/fake.md:11: 0123abc is not a commit in HEAD's history",
        "docs/fake.md:12: the Makefile has no variable WEB_HOST",
        "docs/fake.md:1: the Makefile has no target 'nope'",
        "docs/fake.md:1: fmnist-tune has no option --trails",
        "docs/fake.md:2: my-exp is not a commit in HEAD's history (a clone has no experiment refs: name a commit, "
        "or a placeholder)",
    ]
    assert problems[0].startswith("docs/fake.md:6: `fmnist-predict models/onnx/gru.onnx shoe.jpg --top-k 1 --jsn`")


def test_the_export_table_shows_the_figures_of_the_newer_export_metrics(tmp_path):
    """The parity of probabilities and the int8 validation figures, keys the export stage writes since the
    committed run, appear once a run writes them."""
    gen = generator()
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for name in ("results/export/timings.json", "results/evaluate/metrics.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    metrics = json.loads((ROOT / "results/export/metrics.json").read_text())
    metrics["rnn"]["max_probability_diff"] = 3.1e-07
    metrics["rnn"]["int8"] = {"kept": False, "valid_accuracy": 0.9105, "valid_accuracy_drop": 0.003,
                              "test_accuracy": 0.9041, "test_accuracy_drop": 0.0019, "file_bytes": 3858579}
    (tmp_path / "results/export/metrics.json").write_text(json.dumps(metrics))
    table = gen.export_block(tmp_path)
    assert "| RNN int8 (dropped) |" in table.splitlines()[0]
    # The RNN's two columns come first; how many follow depends on which models the run in results/ exported.
    assert "| max \\|probability diff\\| vs PyTorch | 3.1e-07 | — |" in table
    assert "| int8 file | — | dropped: −0.30 pts on validation (−0.20 pts allowed) |" in table
    assert "| validation accuracy | — | 91.05% (−0.30 pts) |" in table
    assert "| test accuracy | 90.60% | 90.41% (−0.19 pts) |" in table


@pytest.mark.parametrize("teacher, verdict", [(150, "**1.30×** the 200 + 200 s of the RNN and the GRU (within"),
                                              (250, "**1.55×** the 200 + 200 s of the RNN and the GRU (over")])
def test_the_lstm_budget_is_the_ratio_of_the_runs_own_timings(tmp_path, teacher, verdict):
    gen = generator()
    assert "No committed run has trained all four models" in gen.lstm_budget_block(tmp_path)
    for name, seconds in {"rnn": 200, "gru": 200, "teacher": teacher, "lstm": 370}.items():
        (tmp_path / f"results/train/{name}").mkdir(parents=True)
        (tmp_path / f"results/train/{name}/timings.json").write_text(json.dumps({"train_seconds": seconds}))
    assert verdict in gen.lstm_budget_block(tmp_path).replace("\n", " ")
    # Stage teacher_logits' pass over the training images is the teacher's cost too (the lstm's run timed it before).
    (tmp_path / "results/teacher_logits").mkdir(parents=True)
    (tmp_path / "results/teacher_logits/timings.json").write_text(json.dumps({"seconds": 30}))
    assert (f"the teacher (its logits included) and the lstm trained in {teacher + 30} + 370 s"
            in gen.lstm_budget_block(tmp_path).replace("\n", " "))


def test_the_recipes_table_groups_the_runs_of_each_label_and_skips_summary_lines(tmp_path):
    """bench/seeds.py --label ... >> results/bench/lstm_recipes.jsonl appends each seed's line (carrying the label as
    `recipe`) and a summary line: the table has a row per recipe, in the file's order, with its own seeds' mean."""
    gen = generator()
    assert "No screening run" in gen.lstm_recipes_block(tmp_path)
    run = {"model": "lstm", "train_wall_s": 300.0}
    lines = [{**run, "seed": 2027, "valid_accuracy": 0.935, "recipe": "B", "teacher_valid_accuracy": 0.93},
             {**run, "seed": 2028, "valid_accuracy": 0.931, "recipe": "B", "teacher_valid_accuracy": 0.92},
             {"model": "lstm", "seeds": [2027, 2028], "test_accuracy_mean": 0.925},
             {**run, "seed": 2027, "valid_accuracy": 0.94, "recipe": "A"}]
    (tmp_path / "results/bench").mkdir(parents=True)
    (tmp_path / "results/bench/lstm_recipes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = [row for row in gen.lstm_recipes_block(tmp_path).splitlines() if row.startswith("| B") or row.startswith("| A")]
    assert rows == ["| B | 92.50% | 93.50% | 93.10% | **93.30%** (2) | 300 |",
                    "| A | — | 94.00% | — | **94.00%** (1) | 300 |"]


# Hand-written figures. A measured figure in a document is either written by docs/generate.py from the file that
# holds it (a generated block, checked above), or its section names the commit it comes from. A number is a
# figure when it is a decimal or carries a unit of measure; dimensions (28×28), versions (onnxruntime 1.31),
# code and link targets are not prose figures.
FIGURE = re.compile(r"(?<![\w.,/-])(?:\d[\d,]*\.\d+(?![\d.])(?:\s?(?:%|×(?!\d)))?|\d[\d,]*\s?(?:%|×(?!\d)|(?:s|ms|min|minutes|"
                    r"seconds|hours|times|GFLOP/s|MB|GB|pts|points|img/s|images/s)(?![\w/])))")
VERSION = re.compile(r"\b(?:Python|onnxruntime|onnx|torch|torchvision|opset|IR version|IR|Node\.js|optuna|dvc|DVC)"
                     r"\s+\d+(?:\.\d+)*")
HIDDEN = [re.compile(r"<!-- generated: [\w-]+ -->.*?<!-- end generated -->", re.S), re.compile(r"^\s*```.*?^\s*```", re.S | re.M),
          re.compile(r"<!--.*?-->", re.S)]
COMMIT = re.compile(r"(?<![\w/])" + doc_commands.HEX_REF.pattern + r"(?![\w/])")


def hand_written(text: str) -> str:
    """The document's own prose: generated blocks, code blocks, comments and link targets blanked (line numbers
    kept)."""
    for pattern in HIDDEN:
        text = pattern.sub(lambda m: "\n" * m.group().count("\n"), text)
    return "\n".join(re.sub(r"\]\([^)]*\)", "]", line) for line in text.splitlines())


def figures_in(line: str) -> list[str]:
    """The figures of a line of prose; inline code is a value or a command, not a figure."""
    return FIGURE.findall(VERSION.sub("", re.sub(r"`[^`\n]*`", "", line)))


def sections(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) from one heading to the next; the text before the first heading is one too."""
    found, start, lines = [], 1, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#") and lines:
            found.append((start, lines))
            start, lines = number, []
        lines.append(line)
    return found + [(start, lines)]


def unsourced_figures(name: str, text: str, in_history=doc_commands.in_history) -> list[str]:
    """One line per hand-written figure whose source is not named: its section names no commit of HEAD's history,
    or its paragraph names none while citing a results file of the tree (whose figures a generated block quotes)."""
    def commits(lines: list[str]) -> bool:
        return any(in_history(commit) for line in lines for commit in COMMIT.findall(line))

    problems = []
    for start, lines in sections(hand_written(text)):
        named = commits(lines)
        paragraph: list[tuple[int, str]] = []
        for offset, line in enumerate([*lines, ""]):
            if line.strip():
                paragraph.append((start + offset, line))
                continue
            cited = [path for _, l in paragraph for path in cited_paths(l)
                     if path.startswith("results/") and exists(path) and not path.endswith(".png")]
            if commits([l for _, l in paragraph]):
                cited = []  # the paragraph says which commit's file it quotes
            for number, l in paragraph:
                figures = figures_in(l)
                if figures and cited:
                    problems.append(f"{name}:{number}: {', '.join(figures)} beside {cited[0]}: a figure from a file "
                                    "of the tree belongs in a generated block (docs/generate.py)")
                elif figures and not named:
                    problems.append(f"{name}:{number}: {', '.join(figures)}: its section names no commit; generate "
                                    "it from the file that holds it (docs/generate.py), or name the commit it comes from")
            paragraph = []
    return problems


def test_every_hand_written_figure_names_its_source():
    docs = documents()
    assert sum(len(figures_in(line)) for text in docs.values() for line in hand_written(text).splitlines()) > 100
    problems = [p for name, text in docs.items() for p in unsourced_figures(name, text)]
    assert not problems, "\n".join(problems)


MADE_UP_FINDINGS = """# A page

Machines differ about 3× (see below). A 28×28 image, onnxruntime 1.31, `lr=0.002`, [a](results/x_1.5.json).

## Sourced

From commit 0123abc: 91.06% test, 240 s.

| seed | test |
|---|---|
| 2027 | 92.15% |

## From the tree

Seeds, raw lines in results/evaluate/metrics.json and commit 0123abc for the rest:

| 2027 | 92.15% |

The committed run (results/evaluate/metrics.json) scored 92.39%.

<!-- generated: lstm-seeds -->
| 2027 | 92.15% |
<!-- end generated -->

```text
{"gflops": 344.7}
```
"""


def test_the_figure_check_catches_unsourced_and_tree_figures():
    problems = unsourced_figures("docs/fake.md", MADE_UP_FINDINGS, in_history=lambda rev: rev == "0123abc")
    assert [p.split(": ", 1)[0] + ": " + p.split(": ")[1] for p in problems] == [
        "docs/fake.md:3: 3×",  # a section without a commit; the dimension, version, code and link are no figures
        "docs/fake.md:19: 92.39% beside results/evaluate/metrics.json",  # a commit in the section, not the paragraph
    ]
    assert unsourced_figures("docs/fake.md", MADE_UP_FINDINGS, in_history=lambda rev: False)[1:] == [
        f"docs/fake.md:{line}: {figures}: its section names no commit; generate it from the file that holds it "
        "(docs/generate.py), or name the commit it comes from"
        for line, figures in [(7, "91.06%, 240 s"), (11, "92.15%"), (17, "92.15%")]] + [
        "docs/fake.md:19: 92.39% beside results/evaluate/metrics.json: a figure from a file of the tree belongs in a "
        "generated block (docs/generate.py)"]


def test_the_docs_index_names_every_kind_of_generated_block():
    index = (ROOT / "docs" / "README.md").read_text()
    assert [kind for kind in generator().KINDS if f"`{kind}`" not in index] == []


def test_the_results_and_thresholds_blocks_show_intervals_comparisons_and_thresholds(tmp_path):
    gen = generator()
    assert "No committed run has chosen thresholds yet" in gen.thresholds_block(tmp_path)
    (tmp_path / "results/evaluate").mkdir(parents=True)
    metrics = {"lstm": {"test_accuracy": 0.9239, "test_accuracy_low": 0.91853, "test_accuracy_high": 0.92902,
                        "valid_accuracy": 0.9372, "selected_epoch": 13, "parameters": 1988106},
               "comparisons": {"lstm_vs_gru": {"difference": 0.0133, "p_value": 1.23e-5, "only_first_right": 310,
                                               "only_second_right": 177}}}
    (tmp_path / "results/evaluate/metrics.json").write_text(json.dumps(metrics))
    thresholds = {"lstm": {"0.98": {"threshold": 0.9312, "valid_coverage": 0.8, "valid_accuracy": 0.9801,
                                    "test_coverage": 0.79, "test_accuracy": 0.9787},
                           "0.99": {"threshold": None, "valid_coverage": 0.0, "valid_accuracy": None}}}
    (tmp_path / "results/evaluate/thresholds.json").write_text(json.dumps(thresholds))
    results = gen.results_block(tmp_path)
    assert "| LSTM | **92.39%** | 91.85–92.90% | 93.72% |" in results
    assert "lstm vs gru: +1.33 points, p = 1.2e-05" in results.replace("\n", " ")
    table = gen.thresholds_block(tmp_path)
    assert "| LSTM | 98% | 0.931 | 80.00% | 79.00% | 97.87% |" in table
    assert "| LSTM | 99% | not reached on validation | — | — | — |" in table
