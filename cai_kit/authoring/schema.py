"""JSON Schemas of the two files users edit, built from the pydantic models, for editors to complete and check keys.

The shipped copies live in `cai_kit/schemas/` and are named in the first line of every shipped
constitution and recipe (`# yaml-language-server: $schema=...`, read by the YAML language server in
VS Code, Neovim, Helix and others). `cai schema KIND` prints a fresh one; a test fails when a
shipped copy falls behind the models.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError

KINDS = ("constitution", "recipe")
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def build_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema for `kind` ("constitution" or "recipe")."""
    if kind == "constitution":
        from cai_kit.core.constitution import Constitution

        schema = Constitution.model_json_schema()
    elif kind == "recipe":
        schema = _recipe_schema()
    else:
        raise UsageError(f"no schema named {kind!r}; choose from: {', '.join(KINDS)}")
    return {"$schema": DRAFT, **schema}


def _recipe_schema() -> dict[str, Any]:
    from cai_kit.training.recipe import RECIPE_OWNED, Recipe

    schema = Recipe.model_json_schema()
    # Keys the recipe sets itself are errors inside its sections; leave them out so editors do not offer them.
    generate = schema["$defs"]["GenerateRun"]
    for key in RECIPE_OWNED:
        generate["properties"].pop(key, None)
    return schema


def schema_text(kind: str) -> str:
    return json.dumps(build_schema(kind), indent=2, ensure_ascii=False) + "\n"


def shipped_schema(kind: str) -> Path:
    """The schema file installed with the package."""
    return Path(str(resources.files("cai_kit") / "schemas" / f"{kind}.schema.json"))


def schema_comment(kind: str, yaml_path: str | Path) -> str:
    """The first line that names the schema, which editors read.

    Relative to the YAML file inside this checkout (so the shipped files work wherever it is cloned),
    an absolute path elsewhere (so a new file keeps working when it is moved around).
    """
    schema = shipped_schema(kind).resolve()
    folder = Path(yaml_path).resolve().parent
    inside = folder.is_relative_to(schema.parents[2])
    return f"# yaml-language-server: $schema={Path(os.path.relpath(schema, folder) if inside else schema).as_posix()}"
