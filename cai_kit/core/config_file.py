"""Load a YAML config with line numbers, and validate it against a pydantic schema.

Constitutions and recipes share this so every config error reads the same way:
`file:line: key.path: message`, all of them at once, never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from cai_kit.core.errors import UsageError, read_utf8
from cai_kit.core.suggest import closest, did_you_mean

Model = TypeVar("Model", bound=BaseModel)
KeyPath = tuple[str | int, ...]


# Values a config may hold once its YAML aliases are expanded. No constitution or recipe comes near it; a
# "billion laughs" file (nine anchors, each a list of nine aliases of the last) is 700 bytes that expand to
# 387 million values, which pydantic would validate one by one.
MAX_VALUES = 100_000


def _line_map(
    node: yaml.Node,
    path: KeyPath,
    lines: dict[KeyPath, int],
    duplicates: list[tuple[KeyPath, int]],
    visited: set[int],
) -> None:
    lines[path] = node.start_mark.line + 1
    if id(node) in visited:  # an alias of a node already mapped: walking it again is exponential in a bomb
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key_path = (*path, str(key_node.value))
            if str(key_node.value) in seen:  # safe_load would silently keep the last one
                duplicates.append((key_path, key_node.start_mark.line + 1))
            seen.add(str(key_node.value))
            _line_map(value_node, key_path, lines, duplicates, visited)
            lines[key_path] = key_node.start_mark.line + 1  # point at the key, not its value
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), lines, duplicates, visited)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` holds with every alias in it expanded, each node counted once (linear time). A
    node that holds itself (`a: &a [*a]`) counts as too many."""
    if id(node) not in sizes:
        sizes[id(node)] = MAX_VALUES + 1  # until it is known: a node met again inside itself is endless
        sizes[id(node)] = min(1 + sum(_expanded(child, sizes) for child in _children(node)), MAX_VALUES + 1)
    return sizes[id(node)]


def _too_many_values(path: Path, root: yaml.Node) -> str | None:
    """One line for a file whose aliases expand past MAX_VALUES, at the innermost node that does."""
    sizes: dict[int, int] = {}
    if _expanded(root, sizes) <= MAX_VALUES:
        return None
    node = root
    while (inner := next((c for c in _children(node) if sizes[id(c)] > MAX_VALUES), None)) is not None:
        if inner is node:
            break
        node = inner
    return (
        f"{path}:{node.start_mark.line + 1}: YAML aliases here expand to more than {MAX_VALUES:,} values "
        "(refer to one anchor many times, or to itself): write the values out instead"
    )


def read_yaml(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file safely; return the data and a map from key path to line number."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a YAML file")
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    text = read_utf8(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        too_many = _too_many_values(path, node) if node is not None else None
        if too_many:
            raise UsageError(too_many)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "1"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}:{line}: invalid YAML: {problem}") from None
    lines: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []
    if node is not None:
        _line_map(node, (), lines, duplicates, set())
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
    return did_you_mean(error["loc"][-1], model.model_fields)


def _unknown_choice(error: ErrorDetails) -> str:
    """A value outside a closed set (a `Literal`) that is close to an allowed one: name both. Far from all of
    them, pydantic's own message lists them ("Input should be 'stop' or 'skip'")."""
    choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
    found = closest(error["input"], choices)
    if not found:
        return error["msg"]
    name = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "")
    # An item of a list names its kind (filters[0]: "unknown filter"); a single value is just "unknown value".
    kind = name.removesuffix("s") if isinstance(error["loc"][-1], int) and name.endswith("s") else "value"
    return f"unknown {kind} {error['input']!r}; did you mean {found!r}?"


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
        if error["type"] == "literal_error" and isinstance(error["input"], str):
            message = _unknown_choice(error)
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
