"""The shell commands README.md and docs/*.md show, and whether what they name exists: make targets and
variables, flags of our console scripts, of the repository's Python scripts and of dvc, paths, git commits and
refs, and the DVC remote that `dvc pull` needs.

Which text is a command:
- each line of a fenced block tagged bash, sh, shell or console, a trailing `\\` joining the next line; in an
  untagged block, only lines that start with a command word (COMMAND_WORDS: the rest is output or a diagram);
- an inline code span that starts with a command word (`make repro`, `fmnist-tune --model gru`).
What is skipped: comments (`#` to the end of the line), placeholders (`<repo-url>`, `<name>`, `...`), and the
arguments of programs that are neither ours nor dvc's, apart from the paths and commits they name.
Paths are checked when they start at a top folder of the repository (as the cited-path check reads them) or at
`.venv/` (`make setup` creates it: checked against the venv running the tests); a file that an earlier command
of the same block writes with `>` counts as present.
What a clone cannot have is a failure: a commit outside HEAD's history, an experiment (experiments stay in the
clone that ran them), and `dvc pull`/`push`/`fetch` in a fenced block while `.dvc/config` names no remote,
unless an earlier line of the block adds one. A fenced block whose commands run elsewhere (another machine, a
team's clone with a remote) follows a line `<!-- commands: elsewhere -->`: its names are checked, not that state.
Inline spans are checked for names, not for the remote: prose often names a command it does not ask to run.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from itertools import takewhile
from pathlib import Path
from typing import Callable, Iterator

from conftest import ROOT

SHELL_TAGS = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"make", "dvc", "git", "python", "python3", "source", "node", "npm", "torchrun"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w-]*)")
ELSEWHERE = "<!-- commands: elsewhere -->"
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*>")  # <repo-url>, <name>, <this repo>; never a redirection (`< file`)
HOLE = "__placeholder__"
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
# An abbreviated or full commit: hex with both digits and letters (so neither a number nor a word like "defaced").
HEX_REF = re.compile(r"(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}")
NEEDS_REMOTE = {("pull",), ("push",), ("fetch",), ("exp", "push"), ("exp", "pull")}


@dataclass(frozen=True)
class Command:
    """One simple command (no `&&`, `|` or `;` inside), where it is written, and what its block did before it."""

    file: str
    line: int
    words: tuple[str, ...]  # the program first; environment assignments and redirections removed
    fenced: bool
    elsewhere: bool = False
    written: frozenset[str] = frozenset()  # files earlier commands of its block redirect output to
    remote_added: bool = False  # an earlier command of its block ran `dvc remote add`

    @property
    def program(self) -> str:
        name = self.words[0]
        return name.removeprefix(".venv/bin/")

    def where(self) -> str:
        return f"{self.file}:{self.line}: `{' '.join(self.words).replace(HOLE, '<...>')}`"


# Reading the Markdown.

def simple_commands(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """Each simple command of a shell line as (words, files its `>` redirections write)."""
    lexer = shlex.shlex(PLACEHOLDER.sub(HOLE, text), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: prose, not a command
        return
    words: list[str] = []
    written: list[str] = []
    redirect = None
    for token in tokens + [";"]:
        if token in SEPARATORS:
            while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # NAME=value before the program
                words.pop(0)
            if words:
                yield words, written
            words, written = [], []
        elif set(token) <= set("<>&"):
            redirect = token
        elif redirect is not None and ">" in redirect:
            written.append(token)  # `> file` writes it; `< file` reads it, a path like any other
            redirect = None
        else:
            words.append(token)
            redirect = None


def starts_with_command_word(line: str) -> bool:
    words = [w for w in line.split() if not re.fullmatch(r"[A-Za-z_]\w*=\S*", w)]
    return bool(words) and (words[0] in COMMAND_WORDS or words[0].startswith(("fmnist-", ".venv/bin/")))


def fenced_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, a shell line with its continuations joined, elsewhere) of each shell line in fenced blocks.
    Block boundaries are reported as (0, "", False), so that what a block did before a line stays in its block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, tag = opening.groups()
        elsewhere = i > 0 and lines[i - 1].strip() == ELSEWHERE
        i += 1
        yield 0, "", False
        while i < len(lines) and not lines[i].strip().startswith(fence):
            number, line = i + 1, lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            line = re.sub(r"^\$\s+", "", line)  # a prompt
            shell = tag in SHELL_TAGS or (not tag and starts_with_command_word(line))
            if line and not line.startswith("#") and shell:
                yield number, line, elsewhere
            i += 1
        i += 1


def outside_fences(text: str) -> str:
    """The text with fenced blocks blanked line for line, so that offsets still give line numbers."""
    out, fence = [], None
    for line in text.split("\n"):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            out.append("")
        elif fence is not None:
            out.append("")
            if line.strip().startswith(fence):
                fence = None
        else:
            out.append(line)
    return "\n".join(out)


def commands_in(text: str, file: str) -> list[Command]:
    commands = []
    written: set[str] = set()
    remote_added = False
    for number, line, elsewhere in fenced_lines(text):
        if not number:  # a new block
            written, remote_added = set(), False
            continue
        for words, outputs in simple_commands(line):
            command = Command(file, number, tuple(words), True, elsewhere, frozenset(written), remote_added)
            commands.append(command)
            written.update(outputs)
            remote_added = remote_added or words[:3] in (["dvc", "remote", "add"], [".venv/bin/dvc", "remote", "add"])
    prose = outside_fences(text)
    for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        code = " ".join(span.group(1).split())
        if starts_with_command_word(code):
            number = prose.count("\n", 0, span.start()) + 1
            commands += [Command(file, number, tuple(words), False) for words, _ in simple_commands(code)]
    return commands


# What exists: make targets, flags, scripts, commits, a DVC remote.

@cache
def makefile() -> tuple[frozenset[str], frozenset[str]]:
    """The Makefile's targets and variables."""
    text = (ROOT / "Makefile").read_text()
    targets = {t for names in re.findall(r"^([\w.-]+(?:[ \t]+[\w.-]+)*)[ \t]*:(?!=)", text, re.M)
               for t in names.split() if not t.startswith(".")}
    variables = set(re.findall(r"^([A-Za-z_]\w*)[ \t]*[?:+]?=", text, re.M))
    return frozenset(targets), frozenset(variables)


def options_in_help(text: str) -> frozenset[str]:
    """The option strings argparse's help lists: on the lines that start with a dash, before the help text."""
    options = set()
    for line in text.splitlines():
        if line.lstrip().startswith("-"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            options.update(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", invocation))
    return frozenset(options)


@cache
def console_scripts() -> dict[str, str]:
    """pyproject.toml's console scripts: name -> module."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    modules = {name: target.split(":")[0] for name, target in scripts.items()}
    # fmnist_seq.commands starts a command before importing it: the command's own module has its parser()
    return {name: getattr(import_module(module), "MODULES", {}).get(name, module) for name, module in modules.items()}


@cache
def console_options(name: str) -> frozenset[str]:
    return options_in_help(import_module(console_scripts()[name]).parser().format_help())


@cache
def script_options(path: str) -> frozenset[str] | None:
    """The option strings a script's add_argument calls declare, read from its source (running `--help` would
    import torch: seconds per script); None when it declares none this way."""
    options = {"-h", "--help"}
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            options.update(arg.value for arg in node.args if isinstance(arg, ast.Constant)
                           and isinstance(arg.value, str) and arg.value.startswith("-"))
    return frozenset(options) if len(options) > 2 else None


DVC_HELP = """
import contextlib, io, json, sys
from dvc.cli import main
helps = {}
for words in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*words, "--help"])
        except SystemExit:
            pass
    helps[" ".join(words)] = out.getvalue()
print(json.dumps(helps))
"""


def dvc_helps(prefixes: set[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """`dvc <words> --help` for each prefix, all in one process (one per prefix would cost seconds)."""
    result = subprocess.run([sys.executable, "-c", DVC_HELP, json.dumps(sorted(prefixes))],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return {tuple(key.split()): text for key, text in json.loads(result.stdout).items()}


@cache
def git_ok(*args: str) -> bool:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True).returncode == 0


def in_history(rev: str) -> bool:
    """A commit a clone of this branch has: one in HEAD's history (a local branch or experiment is not cloned)."""
    return git_ok("merge-base", "--is-ancestor", rev, "HEAD")


def venv_lacks(path: str) -> bool:
    """Whether `.venv/<inside>` is missing from the venv running the tests (made by the same `make setup`);
    False outside a venv, where there is nothing to compare with."""
    return sys.prefix != sys.base_prefix and not (Path(sys.prefix) / path.split("/", 1)[1]).exists()


@cache
def dvc_remote_configured() -> bool:
    """A remote in the committed .dvc/config, the one a clone gets (config.local stays on its machine)."""
    config = ROOT / ".dvc" / "config"
    return config.is_file() and re.search(r"^\s*\[\s*'?remote\s", config.read_text(), re.M) is not None


# The checks.

@dataclass
class Checker:
    exists: Callable[[str], bool]  # a repository path: tracked, or written by a stage (tests/test_docs.py)
    top_folders: tuple[str, ...]
    dvc_help: dict[tuple[str, ...], str] = field(default_factory=dict)

    def problems(self, commands: list[Command]) -> list[str]:
        self.dvc_help = dvc_helps({p for c in commands if c.program == "dvc" for p in self.dvc_prefixes(c)})
        return [f"{c.where()}: {problem}" for c in commands for problem in self.command_problems(c)]

    def command_problems(self, c: Command) -> Iterator[str]:
        program = c.program
        if program == "make":
            yield from self.make_problems(c)
        elif program in console_scripts():
            yield from self.flag_problems(c.words[1:], console_options(program), program)
        elif program in ("python", "python3", "torchrun"):
            yield from self.script_problems(c)
        elif program == "dvc":
            yield from self.dvc_problems(c)
        if c.words[0].startswith(".venv/") and venv_lacks(c.words[0]):
            yield f"{c.words[0]}: the venv has no such program"
        script = self.script(c) if program in ("python", "python3", "torchrun") else None
        for word in c.words[1:]:
            if word != script:  # the script check said it
                yield from self.path_problems(word, c)
            yield from self.ref_problems(word)

    def make_problems(self, c: Command) -> Iterator[str]:
        targets, variables = makefile()
        for word in c.words[1:]:
            if "=" in word and not word.startswith("-"):
                if word.split("=")[0] not in variables:
                    yield f"the Makefile has no variable {word.split('=')[0]}"
            elif not word.startswith("-") and HOLE not in word and word not in targets:
                yield f"the Makefile has no target {word!r}"

    def flag_problems(self, words: tuple[str, ...] | list[str], options: frozenset[str] | None,
                      program: str) -> Iterator[str]:
        if options is None:
            return
        for word in words:
            if word == "--":
                return
            flag = word.split("=")[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in options and flag[:2] not in options:
                yield f"{program} has no option {flag}"

    @staticmethod
    def script(c: Command) -> str | None:
        """The script a python or torchrun command runs (None for `python -m module` or none at all)."""
        words = c.words[1:]
        if "-m" in words:
            return None
        return next((w for w in words if w.endswith(".py")), None)

    def script_problems(self, c: Command) -> Iterator[str]:
        path = self.script(c)
        if path is None or path in c.written:  # none, or written by an earlier command of the block
            return
        if not (ROOT / path).is_file():
            yield f"no script {path}"
        else:
            yield from self.flag_problems(c.words[c.words.index(path) + 1:], script_options(path), path)

    def dvc_prefixes(self, c: Command) -> list[tuple[str, ...]]:
        names = list(takewhile(lambda w: re.fullmatch(r"[a-z][a-z-]*", w) is not None, c.words[1:3]))
        return [tuple(names[:n]) for n in range(1, len(names) + 1)]

    def dvc_subcommand(self, c: Command) -> tuple[str, ...]:
        """The longest prefix that dvc knows as a command: `exp run`, `push` (`repro prepare` is repro's target)."""
        prefixes = self.dvc_prefixes(c)
        if not prefixes:
            return ()
        group = re.search(r"\{([\w,-]+)\}", self.dvc_help.get(prefixes[0], "").split("\n\n")[0])
        if len(prefixes) == 2 and group and prefixes[1][1] in group.group(1).split(","):
            return prefixes[1]
        return prefixes[0]

    def dvc_problems(self, c: Command) -> Iterator[str]:
        if len(c.words) == 1:  # `dvc` named in prose
            return
        sub = self.dvc_subcommand(c)
        help_text = self.dvc_help.get(sub, "")
        if not sub or not help_text.startswith("usage:"):
            yield f"dvc has no command {' '.join(c.words[1:2])!r}"
            return
        yield from self.flag_problems(c.words[1 + len(sub):], options_in_help(help_text), "dvc " + " ".join(sub))
        aliases = {"experiments": "exp"}
        sub = tuple(aliases.get(w, w) for w in sub)
        if sub == ("exp", "diff"):
            # The arguments that are neither options nor numbers (an option's value, such as --precision 3).
            for rev in (w for w in c.words[3:] if not w.startswith("-") and not w.isdigit() and HOLE not in w
                        and w != "..."):
                if not in_history(rev):
                    yield (f"{rev} is not a commit in HEAD's history (a clone has no experiment refs: name a commit, "
                           "or a placeholder)")
        runs_here = c.fenced and not c.elsewhere
        if sub in NEEDS_REMOTE and runs_here and not c.remote_added and not dvc_remote_configured():
            yield ("needs a DVC remote, and .dvc/config names none: say the files come from `make repro`, or add "
                   "the remote first (`dvc remote add -d ...`)")

    def path_problems(self, word: str, c: Command) -> Iterator[str]:
        if HOLE in word or "..." in word or "://" in word:
            return
        word = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
        if HEX_REF.fullmatch(word.split(":")[0]) and ":" in word:
            return  # commit:path names another tree: a ref check
        path = word.split(":")[0]  # DVC's file:key (metrics.json:gru.test_accuracy)
        glob = re.split(r"[*?\[{]", path)
        if len(glob) > 1:  # a pattern: check the folder it reads
            path = glob[0].rsplit("/", 1)[0] if "/" in glob[0] else ""
        first = path.split("/")[0]
        if not path or path in c.written:
            return
        if first == ".venv" and "/" in path:
            if venv_lacks(path):
                yield f"{path}: not in the venv `make setup` creates"
        elif first in self.top_folders and not self.exists(path):
            yield f"{path}: no such path in the repository or the pipeline's outputs"

    def ref_problems(self, word: str) -> Iterator[str]:
        rev, _, inside = word.partition(":")
        if HEX_REF.fullmatch(rev):
            if not in_history(rev):
                yield f"{rev} is not a commit in HEAD's history"
            elif inside and not git_ok("cat-file", "-e", f"{rev}:{inside}"):
                yield f"{rev} has no {inside}"
        elif word.startswith("refs/") and not git_ok("rev-parse", "--verify", "--quiet", word):
            yield f"{word}: no such ref"
