"""The command reference of docs/cli.md, made from the click commands themselves.

Every command and subcommand gets its usage line, the first paragraph of its help, and a table of its
options (flags, what they take, default, help). tests/test_docs.py checks that the page holds exactly this,
so the reference cannot drift from `--help`. To refresh the page after changing a command:

    python -m cai_kit.cli.reference docs/cli.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

START = "<!-- cli-reference: made by `python -m cai_kit.cli.reference docs/cli.md`; tests/test_docs.py checks it -->"
END = "<!-- cli-reference end -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _takes(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    kind = param.type
    if isinstance(kind, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in kind.choices)
    name = getattr(kind, "name", "text").upper()
    return name + (" ..." if param.multiple or getattr(param, "nargs", 1) == -1 else "")


def _default(param: click.Parameter) -> str:
    if not isinstance(param, click.Option) or param.is_flag or param.default in (None, (), []):
        return ""
    default = param.default() if callable(param.default) else param.default
    if default is getattr(click.core, "UNSET", object()) or default in (None, (), []):  # click 8.2+: unset
        return ""
    if isinstance(default, (list, tuple)):
        default = ",".join(str(item) for item in default)
    return f"`{default}`" if str(default) != "" else ""


def _command(path: str, command: click.Command) -> list[str]:
    context = click.Context(command, info_name=path)
    usage = " ".join(command.collect_usage_pieces(context))
    about = (command.help or "").split("\n\n")[0]
    lines = [f"### `{path}`", "", _cell(about), "", "```", f"{path} {usage}".rstrip(), "```", ""]
    options = [param for param in command.params if isinstance(param, click.Option) and not param.hidden]
    if options:
        lines += ["| option | takes | default | what it does |", "| --- | --- | --- | --- |"]
        for option in options:
            flags = ", ".join(f"`{flag}`" for flag in [*option.opts, *option.secondary_opts])
            lines.append(f"| {flags} | {_takes(option)} | {_default(option)} | {_cell(option.help or '')} |")
        lines.append("")
    return lines


def _walk(path: str, command: click.Command) -> list[str]:
    if isinstance(command, click.Group):
        lines = []
        for name in sorted(command.commands):
            lines += _walk(f"{path} {name}", command.commands[name])
        return lines
    return _command(path, command)


def reference_markdown() -> str:
    """Every `cai` command's usage, help and options, as Markdown."""
    from cai_kit.cli import main

    lines: list[str] = []
    for name in sorted(main.commands):
        lines += _walk(f"cai {name}", main.commands[name])
    return "\n".join(lines)


def page_section(text: str) -> str:
    """The part of a page between the START and END markers."""
    start = text.index(START) + len(START) + 1
    return text[start : text.index(END)]


def write_into(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    start = text.index(START) + len(START) + 1
    page.write_text(text[:start] + reference_markdown() + "\n" + text[text.index(END) :], encoding="utf-8")


if __name__ == "__main__":
    write_into(Path(sys.argv[1]))
