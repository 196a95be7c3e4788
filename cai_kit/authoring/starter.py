"""`cai constitution new`: a commented starter constitution that validates as written."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import yaml

from cai_kit.authoring.schema import schema_comment
from cai_kit.core.constitution import load_constitution
from cai_kit.core.errors import UsageError
from cai_kit.core.files import write_atomic


def starter_path(name: str) -> Path:
    """NAME -> NAME.yaml; a name that already ends in .yaml or .yml is kept."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else path.with_name(f"{path.name}.yaml")


def new_constitution(name: str, force: bool = False) -> Path:
    """Write the starter constitution for `name`, atomically; refuse to overwrite unless `force`."""
    if not Path(name).name.strip() or not starter_path(name).stem.strip():  # '', ' ', 'folder/', '.yaml'
        raise UsageError(f"{name!r}: give the constitution a name, e.g. `cai constitution new kind`")
    path = starter_path(name)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give a file name")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; choose another name or pass --force to overwrite it")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such folder")
    template = (resources.files("cai_kit.authoring") / "starter_constitution.yaml").read_text(encoding="utf-8")
    # A name YAML would read as something else (a number, `yes`, text with `: `) is written as a quoted string.
    yaml_name = path.stem if yaml.safe_load(path.stem) == path.stem else json.dumps(path.stem)
    text = template.replace("__YAML_NAME__", yaml_name).replace("__NAME__", path.stem)
    text = schema_comment("constitution", path) + "\n" + text.replace("__FILE__", path.as_posix())
    write_atomic(path, text)
    load_constitution(path)  # the starter must validate as written; a failure here is a bug in this file
    return path
