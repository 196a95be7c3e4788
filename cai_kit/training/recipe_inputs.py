"""What a recipe names outside itself, checked before any stage runs: every problem at once.

`cai train` ran the generate stages before it found that a later one named a missing constitution or
prompt file, a CSV without the column, a broken data file, or a model folder without config.json; and
`cai validate` said `ok`. These checks read the raw recipe data (as `recipe._file_problems` does), so
they show even when the schema has problems too, and load nothing heavy: each constitution and prompt
file is parsed, each data file's rows are checked, and a model is looked for on disk (a hub id is only
checked for its form: nothing can be asked of the Hub offline).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cai_kit.core.config_file import KeyPath, format_key_path, line_of
from cai_kit.core.errors import UsageError
from cai_kit.core.models import TINY_MODEL_NAME

# A Hugging Face repo id: NAME or OWNER/NAME, letters, digits, '-', '_' and '.'.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")


def model_problem(spec: str, served: bool = False) -> str | None:
    """Why `spec` names no model cai-kit can load, without loading it or asking the Hub; None if it may.

    `served`: the name may be a model an OpenAI-compatible server serves (any text), when it is no path."""
    if spec in ("default", TINY_MODEL_NAME):
        return None
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            return f"{spec}: not a model folder (no config.json)"
        if not any(path.glob("*.safetensors")):
            return f"{spec}: no *.safetensors weights (cai-kit loads safetensors only, never pickled .bin files)"
        return None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        return f"{spec}: model folder not found"
    if not served and not HUB_ID.fullmatch(spec):
        return f"{spec}: neither a model folder nor a Hugging Face hub id (NAME or OWNER/NAME)"
    return None


def input_problems(path: str | Path, data: dict[str, Any], lines: dict[KeyPath, int]) -> list[str]:
    """`file:line: key.path: message` for each constitution, prompt set, data file and model the recipe names
    that `cai train` could not use."""
    found: list[tuple[KeyPath, str]] = []
    runs = [(index, run) for index, run in enumerate(_list(data.get("generate"))) if isinstance(run, dict)]
    served = any(run.get("engine") == "openai" for _, run in runs)
    for key, spec in [(("model",), data.get("model", "default"))] + [
        (("generate", index, "judge_model"), run.get("judge_model")) for index, run in runs
    ]:
        if isinstance(spec, str) and (problem := model_problem(spec, served)):
            found.append((key, problem))
    for index, run in runs:
        found += _constitution_problems(("generate", index, "constitution"), run.get("constitution"))
        found += _prompt_problems(("generate", index), run)
    section = data.get("data")
    for kind, stage in (("sft", "sft"), ("prefs", "dpo")):
        items = _list(section.get(kind)) if isinstance(section, dict) else []
        for index, item in enumerate(items):
            file = item.get("path") if isinstance(item, dict) else None
            if isinstance(file, str) and Path(file).is_file():  # a missing one is _file_problems' to report
                found += _rows_problems(("data", kind, index, "path"), Path(file), stage)
    return [f"{path}:{line_of(lines, key)}: {format_key_path(key)}: {message}" for key, message in found]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _constitution_problems(key: KeyPath, value: Any) -> list[tuple[KeyPath, str]]:
    """The constitution must load; a value that is no file may be a shipped constitution's name (`harmless`)."""
    from cai_kit.core.constitution import load_constitution
    from cai_kit.core.shipped import find_shipped

    if not isinstance(value, str) or not value:
        return []  # the schema reports a missing or non-text constitution
    path = Path(value)
    if path.is_dir():
        return [(key, f"{value}: is a folder, not a constitution file")]
    if not path.is_file():
        found = find_shipped(value, ("constitution",))
        if found is None:
            return []  # the recipe's file check names it, with the shipped names to choose from
        path = found[1]
    try:
        load_constitution(path)
    except UsageError as err:
        return [(key, problem) for problem in err.problems]
    return []


def _prompt_problems(where: KeyPath, run: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """Each prompt set loads with the run's `column` (hf: sets are left to the run: the Hub is not asked here)."""
    from cai_kit.core.prompt_sets import load_prompts
    from cai_kit.generation.options import DEFAULT_PROMPTS

    given = run.get("prompts", DEFAULT_PROMPTS)
    column = run.get("column", "prompt")
    if not isinstance(given, list) or not isinstance(column, str):
        return []  # the schema reports it
    problems = []
    for index, spec in enumerate(given):
        if not isinstance(spec, str) or spec.startswith("hf:"):
            continue
        key = (*where, "prompts", index) if "prompts" in run else where
        try:
            load_prompts(spec, column=column)
        except UsageError as err:
            problems += [(key, problem) for problem in err.problems]
    return problems


def _rows_problems(key: KeyPath, path: Path, stage: str) -> list[tuple[KeyPath, str]]:
    """Every row of a data file in the shape its stage trains on (the first 20 problems, as the mix says them)."""
    from cai_kit.training.data_mix import read_rows

    try:
        read_rows(path, stage)
    except UsageError as err:
        return [(key, problem) for problem in err.problems]
    return []
