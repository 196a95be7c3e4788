"""Load a YAML config with line numbers, and validate it against a pydantic schema.

Constitutions and recipes share this so every config error reads the same way:
`file:line: key.path: message`, all of them at once, never a traceback.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from cai_kit.core.errors import UsageError

Model = TypeVar("Model", bound=BaseModel)
KeyPath = tuple[str | int, ...]


def _line_map(
    node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], duplicates: list[tuple[KeyPath, int]]
) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key_path = (*path, str(key_node.value))
            if str(key_node.value) in seen:  # safe_load would silently keep the last one
                duplicates.append((key_path, key_node.start_mark.line + 1))
            seen.add(str(key_node.value))
            _line_map(value_node, key_path, lines, duplicates)
            lines[key_path] = key_node.start_mark.line + 1  # point at the key, not its value
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), lines, duplicates)


def read_yaml(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file safely; return the data and a map from key path to line number."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a YAML file")
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}:1: not a UTF-8 text file") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "1"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}:{line}: invalid YAML: {problem}") from None
    lines: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []
    if node is not None:
        _line_map(node, (), lines, duplicates)
    if duplicates:
        raise UsageError([f"{path}:{line}: {format_key_path(key)}: duplicate key" for key, line in duplicates])
    return data, lines


def line_of(lines: dict[KeyPath, int], key_path: KeyPath) -> int:
    """Line of the deepest part of key_path that the file has (a missing key points at its parent)."""
    for end in range(len(key_path), -1, -1):
        if key_path[:end] in lines:
            return lines[key_path[:end]]
    return 1


def format_key_path(key_path: KeyPath) -> str:
    text = ""
    for part in key_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _suggestion(error: ErrorDetails, schema: type[BaseModel]) -> str:
    """For an unknown key, name the closest allowed key ("did you mean ...")."""
    if error["type"] != "extra_forbidden":
        return ""
    model: Any = schema
    for part in error["loc"][:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(error["loc"][-1]), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def validation_problems(
    path: str | Path, err: ValidationError, lines: dict[KeyPath, int], schema: type[BaseModel]
) -> list[str]:
    problems = []
    for error in err.errors():
        key_path = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        message = message.removeprefix("Value error, ")
        problems.append(
            f"{path}:{line_of(lines, key_path)}: {format_key_path(key_path)}: {message}{_suggestion(error, schema)}"
        )
    return problems


def load_config(path: str | Path, schema: type[Model]) -> tuple[Model, dict[KeyPath, int]]:
    """Read and validate a YAML file against `schema`; raise UsageError listing every problem."""
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}:1: (top level): expected a mapping of keys, got {type(data).__name__}")
    try:
        return schema.model_validate(data), lines
    except ValidationError as err:
        raise UsageError(validation_problems(path, err, lines, schema)) from None
