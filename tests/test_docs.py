"""The README and the docs site: the site builds with --strict, the text speaks of the project only, and every
`cai ...` command it shows names a real subcommand with real options (checked against the click group, never run)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import yaml

from cai_kit.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Words about one machine's run folders or about how the project was developed, not about the project.
FORBIDDEN = re.compile(
    r"session [0-9]|sessions run|runs/e[0-9]|DESIGN\.md|FINDINGS\.md|shipped before|as first measured|as first shipped"
    r"|read only here",
    re.IGNORECASE,
)
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w-]*)")
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "text"}
INLINE_CAI = re.compile(r"`(cai [^`]+)`")
OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "(", ")"}
FLAG = re.compile(r"--?[A-Za-z][\w-]*")


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(entries) -> set[str]:
        found: set[str] = set()
        for entry in entries:
            values = entry.values() if isinstance(entry, dict) else [entry]
            for value in values:
                found |= pages(value) if isinstance(value, list) else {value}
        return found

    on_disk = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert on_disk - pages(config["nav"]) == set()


def test_text_speaks_of_the_project_only():
    hits = [
        f"{_relative(path)}:{number}: {line.strip()}"
        for path in PAGES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not hits, "\n".join(hits)


def _shell_lines(text: str) -> tuple[list[tuple[int, str]], str]:
    """(line number, line) of shell code blocks, backslash continuations joined; and the text outside
    code blocks, with each block's lines blanked so offsets still give line numbers."""
    lines, prose, fence, shell = [], [], None, False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, shell = match.group(1), match.group(2).lower() in SHELL_FENCES
            prose.append("")
            continue
        if fence is not None and match and match.group(1) == fence and not match.group(2):
            fence = None
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        if not shell:
            continue
        start, joined = pending if pending else (number, "")
        joined += line.strip()
        if joined.endswith("\\"):
            pending = (start, joined[:-1] + " ")
        else:
            pending = None
            lines.append((start, joined))
    return lines, "\n".join(prose)


def cai_commands(path: Path) -> list[tuple[int, str]]:
    """Every `cai ...` command of a page: in shell code blocks, and in inline code that starts with `cai `."""
    text = path.read_text(encoding="utf-8")
    lines, prose = _shell_lines(text)
    found = [(number, line) for number, line in lines if re.search(r"(^|[\s;&|(])cai\s", line)]
    for match in INLINE_CAI.finditer(prose):
        found.append((prose.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return found


def _segments(line: str) -> list[list[str]]:
    """The shell line split into simple commands, each from its `cai` token on."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [segment[segment.index("cai"):] for segment in segments if "cai" in segment]


def problems_of(tokens: list[str]) -> list[str]:
    """What is wrong with one `cai ...` command: an unknown subcommand, or options that command lacks."""
    command: click.Command = main
    args, path = tokens[1:], ["cai"]
    while isinstance(command, click.Group) and args and not args[0].startswith(("-", "[")):
        sub = command.commands.get(args[0])
        if sub is None:
            return [f"no command `{' '.join([*path, args[0]])}`"]
        command, path, args = sub, [*path, args[0]], args[1:]
    known = {"--help", "-h"} | ({"--version"} if command is main else set())
    for param in command.params:
        if isinstance(param, click.Option):
            known |= set(param.opts) | set(param.secondary_opts)
    problems = []
    for token in args:
        flag = token.strip("[](){}").split("=", 1)[0]
        if FLAG.fullmatch(flag) and flag not in known:
            problems.append(f"`{' '.join(path)}` has no option {flag}")
    return problems


def test_every_cai_command_exists():
    bad = []
    count = 0
    for path in PAGES:
        for number, line in cai_commands(path):
            where = f"{_relative(path)}:{number}: {line}"
            try:
                segments = _segments(line)
            except ValueError as err:
                bad.append(f"{where}\n    cannot parse: {err}")
                continue
            for tokens in segments:
                count += 1
                bad += [f"{where}\n    {problem}" for problem in problems_of(tokens)]
    assert count > 20, f"found only {count} cai commands: is the extraction broken?"
    assert not bad, "\n".join(bad)


def test_the_checker_catches_bad_commands():
    assert problems_of(["cai", "constitution", "new", "kind", "--force"]) == []
    assert problems_of(["cai", "--version"]) == []
    assert problems_of(["cai", "generate", "-c", "x.yaml", "[--pairs", "MODE]", "--limit=4"]) == []
    assert problems_of(["cai", "constitution", "old"]) == ["no command `cai constitution old`"]
    assert problems_of(["cai", "train", "r.yaml", "--nope"]) == ["`cai train` has no option --nope"]
    assert problems_of(["cai", "eval", "--version"]) == ["`cai eval` has no option --version"]
    assert _segments("pip install -e . && OMP_NUM_THREADS=1 cai generate -c h.yaml > out.txt") == [
        ["cai", "generate", "-c", "h.yaml"]
    ]


def _commands(group: click.Group, path: str = "cai"):
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


def test_no_option_says_its_default_twice():
    """The group turns `show_default` on, so a help text that writes its own "[default: ...]" as well as a
    `default=` shows both (`cai eval --help` printed the suites' default twice)."""
    doubled = []
    count = 0
    for path, command in _commands(main):
        ctx = click.Context(command, info_name=path, show_default=True)
        for param in command.params:
            record = param.get_help_record(ctx)
            count += record is not None
            if record and record[1].count("[default:") > 1:
                doubled.append(f"{path} {record[0]}: {record[1]}")
    assert count > 80, f"found only {count} options: is the walk broken?"
    assert not doubled, "\n".join(doubled)


def test_the_command_reference_is_made_from_the_commands():
    from cai_kit.cli.reference import page_section, reference_markdown

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page_section(text) == reference_markdown() + "\n", "run: python -m cai_kit.cli.reference docs/cli.md"
