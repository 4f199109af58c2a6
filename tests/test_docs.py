"""What the README and docs/ name is real: every file of the repository they point at exists, every
``ray-distill`` command line they show names a command and options the CLI has, every ``make`` target
exists. (Every job file validates: tests/test_config.py; the documented submit lines run as written:
tests/test_submit.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from ray_distill.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path into one of the repository's own folders; placeholders (<name>, {x}, *) are not file names
REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:jobs|scripts|docs|benchmarks|cluster|ray_distill|tests|\.ci)/[\w./-]*[\w/])")


def _code(text: str) -> list[str]:
    """The inline code spans and the lines of the code blocks of a Markdown text (continuations joined)."""
    found = []
    for i, part in enumerate(text.split("```")):
        if i % 2:
            found += [ln.strip() for ln in part.replace("\\\n", " ").splitlines()[1:]]
        else:
            found += re.findall(r"`([^`\n]+)`", part)
    return found


def _command_lines(program: str) -> list[tuple[str, str]]:
    lines = []
    for doc in DOCS:
        for code in _code(doc.read_text()):
            code = re.sub(r"\s+#\s.*$", "", code)
            for piece in re.split(r"\s*(?:&&|\|\||;|\|)\s*", code):
                piece = re.sub(r"^(\w+=\S+\s+)+", "", piece.strip())  # NAME=value prefixes
                if piece.startswith(program + " ") or piece == program:
                    lines.append((doc.name, piece))
    return lines


def test_every_file_the_docs_name_exists():
    missing = sorted({(doc.name, path) for doc in DOCS for path in REPO_PATH.findall(doc.read_text())
                      if not (ROOT / path.rstrip(".")).exists()})
    assert not missing, missing


def test_the_file_check_can_fail(tmp_path):
    text = "see `jobs/quickstart.yaml` and jobs/no_such_job.yaml, or jobs/<name>.yaml"
    assert [p for p in REPO_PATH.findall(text) if not (ROOT / p).exists()] == ["jobs/no_such_job.yaml"]


def _options(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def test_every_ray_distill_line_names_a_command_and_options_the_cli_has():
    group = typer.main.get_command(app)
    lines = _command_lines("ray-distill")
    assert len(lines) >= 30, lines  # the README's CLI section alone shows more
    wrong = []
    for doc, line in lines:
        words = shlex.split(line)[1:]
        commands = [w for w in words if w in group.commands]
        allowed = _options(group) | {"--help"}
        for name in commands[:2]:  # `submit [COMMAND]`: the submitted command's options too
            allowed |= _options(group.commands[name])
        placeholder = bool(words) and words[0].isupper()  # `ray-distill COMMAND JOB [key=value ...]`
        if not commands and not placeholder and set(words) - allowed:
            wrong.append((doc, line, "no command"))
        for word in words:
            option = word.split("=", 1)[0]
            if option.startswith("-") and option not in allowed:
                wrong.append((doc, line, option))
    assert not wrong, wrong


def test_every_make_target_the_docs_run_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = {(doc, line.split()[1]) for doc, line in _command_lines("make") if len(line.split()) > 1}
    named = {(doc, t) for doc, t in named if "=" not in t}
    assert {t for _, t in named} >= {"quickstart", "test"}
    assert not {(doc, t) for doc, t in named if t not in targets}, named
