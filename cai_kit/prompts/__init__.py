"""Prompt scaffolding as files: `*.jinja` templates rendered in a sandboxed jinja2 environment.

Principle text comes from constitutions as plain data and is passed in as variables; it is never
itself treated as a template, so a constitution cannot run template code.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@cache
def _template(name: str):
    source = resources.files("cai_kit.prompts").joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    return _ENV.from_string(source)


def render(name: str, *, exact: bool = False, **variables: Any) -> str:
    """Render `cai_kit/prompts/<name>.jinja`; a missing variable is an error, not an empty string.

    The text comes back stripped, unless `exact`: a guard prompt (guard_*.jinja) is a model's whole input,
    and the newline it ends with is part of its format.
    """
    text = _template(name).render(**variables)
    return text if exact else text.strip()
