"""Key-path changes to a recipe: `--set key.path=value` on the command line, `round_overrides` in the file.

Both walk the recipe's schema before they write, so a misspelt key is an error that names it (and the
closest key), never a new key that nothing reads.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cai_kit.core.config_file import format_key_path
from cai_kit.core.suggest import did_you_mean

Parts = list[str | int]


def parse_key(key: str) -> Parts:
    """`generate.0.weight` -> ["generate", 0, "weight"]."""
    return [int(part) if part.isdigit() else part for part in key.strip().split(".")]


def path_problem(schema: type[BaseModel], data: dict[str, Any], parts: Parts) -> str:
    """Walk `schema` (and `data`, for list lengths) along `parts`; explain the first step that does not exist."""
    node_schema: Any = schema
    node: Any = data
    for depth, part in enumerate(parts):
        here = format_key_path(tuple(parts[: depth + 1]))
        if isinstance(node_schema, type) and issubclass(node_schema, BaseModel):
            if not isinstance(part, str) or part not in node_schema.model_fields:
                return f"unknown key {here}{did_you_mean(part, node_schema.model_fields)}"
            node_schema = _unwrap(node_schema.model_fields[part].annotation)
        elif typing.get_origin(node_schema) is list:
            items = node if isinstance(node, list) else []
            if not isinstance(part, int) or part >= len(items):
                whole = format_key_path(tuple(parts[:depth]))
                return (f"{here}: the recipe has {len(items)} item(s) there; "
                        f"use an index below that or set {whole}=[...]")
            node_schema = _unwrap(typing.get_args(node_schema)[0])
        else:
            return ""  # inside a free-form mapping (trl, eval, engine_options): its owner checks the keys
        node = node.get(part) if isinstance(node, dict) else node[part] if isinstance(node, list) else None  # type: ignore[index]
    return ""


def blame_overrides(problems: list[str], path: str | Path, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Problems at a key path that a `--set` wrote start `--set key=value: ` instead of `file:line: `: the file
    never held that value, and the line its map gives (a parent key's, or line 1) points at something unrelated."""
    written = [(format_key_path(tuple(parse_key(o.partition("=")[0]))), o) for o in overrides if "=" in o]
    at_line = re.compile(rf"{re.escape(str(path))}:\d+: ")
    blamed = []
    for problem in problems:
        found = at_line.match(problem)
        rest = problem[found.end() :] if found else ""
        key = rest.split(": ", 1)[0]
        # The last --set of a key is the one that took effect; one on a parent (`sft.lora={...}`) wrote it too.
        owner = next((o for text, o in reversed(written) if key == text or key.startswith((f"{text}.", f"{text}["))),
                     None)
        blamed.append(f"--set {owner}: {rest}" if owner else problem)
    return blamed


def set_path(data: dict[str, Any], parts: Parts, value: Any) -> None:
    """Write `value` at `parts`, making the mappings (or lists) on the way where they are missing."""
    node: Any = data
    for part, after in zip(parts, parts[1:], strict=False):
        if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
            node[part] = [] if isinstance(after, int) else {}
        node = node[part]
    node[parts[-1]] = value


def round_data(data: dict[str, Any], overrides: dict[int, dict[str, Any]], index: int) -> dict[str, Any]:
    """A copy of `data` with every `round_overrides` entry up to round `index` applied, earliest first."""
    data = copy.deepcopy(data)
    for entry in sorted(key for key in overrides if key <= index):
        for key, value in overrides[entry].items():
            set_path(data, parse_key(str(key)), copy.deepcopy(value))
    return data


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X, so the walk sees the model or list inside."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation
