"""Flags that several `cai` commands share, and defaults read from the option schemas (so `--help` shows
what the library really does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel


def default(schema: type[BaseModel], name: str) -> Any:
    """The default of one field of an options schema (GenerateOptions, EvalOptions, JudgeCheckOptions)."""
    return schema.model_fields[name].get_default(call_default_factory=True)


def shown(schema: type[BaseModel], name: str) -> str:
    """`  [default: X]` for help texts of options whose click default stays None (unset means: the schema's)."""
    value = default(schema, name)
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"  [default: {text}]"


def constitution_option(func):
    """The required `--constitution/-c` of the commands that run a constitution (generate, try)."""
    return click.option(
        "--constitution",
        "-c",
        required=True,
        type=click.Path(path_type=Path),
        help="Constitution: a YAML file, or a shipped name (`cai ls`).",
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
