"""Flags that several `cai` commands share, and flags built from the option schemas: each field's name, type,
choices, default and description make its flag, so `--help` shows what the library really does."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import annotated_types
import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cai_kit.core.suggest import closest


def default(schema: type[BaseModel], name: str) -> Any:
    """The default of one field of an options schema (GenerateOptions, EvalOptions, JudgeCheckOptions)."""
    return schema.model_fields[name].get_default(call_default_factory=True)


def shown(schema: type[BaseModel], name: str) -> str:
    """`  [default: X]` for help texts of options whose click default stays None (unset means: the schema's)."""
    value = default(schema, name)
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"  [default: {text}]"


def flag_name(name: str) -> str:
    """The flag of a schema field: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def choices(field: FieldInfo) -> list[str] | None:
    """The allowed values of a field (or of its list's items): its `Literal`, or the `enum` its schema carries."""
    annotation = _unwrap(field.annotation)
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        return [str(value) for value in typing.get_args(annotation)]
    enum = field.json_schema_extra.get("enum") if isinstance(field.json_schema_extra, dict) else None
    return [str(value) for value in enum] if isinstance(enum, list) else None


class Choice(click.Choice):
    """click's Choice, whose error also names the closest choice."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as err:
            found = closest(value, self.choices)
            if not found:
                raise
            self.fail(f"{err.message} Did you mean {found!r}?", param, ctx)


def _click_type(field: FieldInfo, scalar: Any) -> Any:
    """click's type for one value of `field`: a Choice for a closed set, a range for a bounded number."""
    allowed = choices(field)
    if allowed:
        return Choice(allowed)
    if scalar not in (int, float):
        return None
    bounds: dict[str, Any] = {}
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            bounds["min"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            bounds.update(min=item.gt, min_open=True)
        elif isinstance(item, annotated_types.Le):
            bounds["max"] = item.le
        elif isinstance(item, annotated_types.Lt):
            bounds.update(max=item.lt, max_open=True)
    if not bounds:
        return scalar
    return click.IntRange(**bounds) if scalar is int else click.FloatRange(**bounds)


def field_option(schema: type[BaseModel], name: str, *short: str, **extra: Any) -> Callable[[Any], Any]:
    """The click option of one schema field. Its help is the field's description; its click default stays None
    (a bool flag: False), so an unset flag means the schema's default, which the help shows."""
    field = schema.model_fields[name]
    annotation = _unwrap(field.annotation)
    multiple = typing.get_origin(annotation) is list
    scalar = typing.get_args(annotation)[0] if multiple else annotation
    text = (field.description or "") + (" Repeatable." if multiple else "")
    kwargs: dict[str, Any] = {"multiple": multiple, "required": field.is_required()}
    if scalar is bool:
        if default(schema, name) is not False:
            raise TypeError(f"{schema.__name__}.{name}: a flag is off by default; name the field for what turns on")
        kwargs["is_flag"] = True
    else:
        kwargs["type"] = _click_type(field, scalar)
        if not field.is_required() and default(schema, name) is not None:
            text += shown(schema, name)
    return click.option(flag_name(name), *short, help=text, **{**kwargs, **extra})


def schema_options(
    schema: type[BaseModel], shared: set[str], flags: dict[str, dict[str, Any]]
) -> Callable[[Any], Any]:
    """A click option per field of `schema`, in the schema's order, but the fields in `shared` (whose flags
    other commands share: engine_flags, licence_flags). `flags` gives some their short name (`short`) or a
    click type of their own."""

    def add(func):
        for name in reversed([name for name in schema.model_fields if name not in shared]):
            extra = dict(flags.get(name, {}))
            func = field_option(schema, name, *extra.pop("short", ()), **extra)(func)
        return func

    return add


def schema_values(schema: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The parsed flags as the schema's keyword arguments: repeated flags as lists, unset flags left out."""
    values = {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
    return {key: value for key, value in values.items() if value is not None and value != []}


def options_table(schema: type[BaseModel], shared: dict[str, str], flags: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of a command's options (flag, recipe key, default, what it does), for the docs. `shared`
    and `flags` are what schema_options takes: the flags of the fields that shared flags set, and short names."""
    rows = ["| flag | recipe key | default | what it does |", "| --- | --- | --- | --- |"]
    for name, field in schema.model_fields.items():
        value = default(schema, name) if not field.is_required() else "required"
        value = "unset" if value is None else "off" if value is False else "none" if value == {} else value
        value = ", ".join(map(str, value)) if isinstance(value, list) else value
        flag = shared.get(name) or ", ".join([*flags.get(name, {}).get("short", ()), flag_name(name)])
        allowed = choices(field)
        about = (field.description or "") + (f" One of: {', '.join(allowed)}." if allowed else "")
        about = about.replace("|", "&#124;").replace("<", "&lt;")  # a table cell, where <time> would be a tag
        rows.append(f"| `{flag}` | `{name}` | {value} | {about} |")
    return "\n".join(rows) + "\n"


def constitution_option(func):
    """The required `--constitution/-c` of `cai try` (`cai generate` builds its own from the same field)."""
    from cai_kit.generation.options import GenerateOptions

    return click.option(
        "--constitution",
        "-c",
        required=True,
        type=click.Path(path_type=Path),
        help=GenerateOptions.model_fields["constitution"].description,
    )(func)


def engine_flags(func):
    """`--engine-option KEY=VALUE` and `--base-url URL`, for the commands that load an engine."""
    url_help = "OpenAI-compatible server for --engine openai, e.g. http://127.0.0.1:8000/v1; repeatable."
    option_help = "Engine option, VALUE read as YAML (e.g. max_concurrency=32); repeatable. Docs: Engines."
    func = click.option("--base-url", "base_urls", multiple=True, metavar="URL", help=url_help)(func)
    return click.option("--engine-option", multiple=True, metavar="KEY=VALUE", help=option_help)(func)


def set_option(func):
    """`--set KEY.PATH=VALUE`, the recipe overrides of `cai train` and `cai validate`."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                        help="Override a recipe value (parsed as YAML); repeatable.")(func)


def licence_flags(whose: str):
    """`--model-licence` and `--accept-licence-risk`, for the commands whose outputs train a model."""

    def add(func):
        help_licence = (
            f"A model's licence where its card has none (a bare ID is {whose}). Repeatable; see `cai licence`."
        )
        func = click.option("--model-licence", multiple=True, metavar="[MODEL=]ID", help=help_licence)(func)
        risk_help = "Go ahead where a licence forbids training on a model's outputs."
        return click.option("--accept-licence-risk", is_flag=True, help=risk_help)(func)

    return add
