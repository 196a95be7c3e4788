"""The file commands of `cai`: check constitution and recipe files, list and copy the shipped ones, print
the stack's versions. Registered on the main group in cli/__init__.py.
"""

from __future__ import annotations

from pathlib import Path

import click

from cai_kit.core.errors import UsageError, usage_errors
from cai_kit.core.shipped import shipped_dir

BUNDLED = {kind: shipped_dir(kind) for kind in ("constitutions", "recipes")}
# Top-level keys only a recipe has: a file with none of them (and no `principles`) is read as a constitution,
# so a constitution whose `principles` key is misspelt is told so, not checked as a recipe.
RECIPE_KEYS = {"model", "output_dir", "seed", "stages", "generate", "data", "sft", "dpo", "eval", "rounds"}


def is_constitution(data: object) -> bool:
    return isinstance(data, dict) and ("principles" in data or not set(data) & RECIPE_KEYS)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@usage_errors
def validate(files: tuple[Path, ...]) -> None:
    """Check constitution or recipe files without loading a model; every problem at once.

    \b
    Example:
      cai validate constitutions/harmless.yaml recipes/zephyr_cai.yaml
    """
    from cai_kit.core.config_file import read_yaml

    problems: list[str] = []
    for path in files:
        try:
            data, _ = read_yaml(path)
            if data is None:
                raise UsageError(f"{path}:1: the file is empty (a constitution needs principles, a recipe generate "
                                 "runs or data files)")
            if is_constitution(data):
                from cai_kit.core.constitution import load_constitution

                constitution = load_constitution(path)
                click.echo(
                    f"{path}: ok (constitution '{constitution.name}', {len(constitution.principles)} principles)"
                )
            else:
                from cai_kit.training.recipe import load_recipe

                load_recipe(path)
                click.echo(f"{path}: ok (recipe)")
        except UsageError as err:
            problems.extend(err.problems)
    if problems:
        raise UsageError(problems)


@click.command(name="ls")
def list_bundled() -> None:
    """List the shipped constitutions and recipes.

    \b
    Example:
      cai ls
    """
    from cai_kit.core.config_file import read_yaml

    for kind, folder in BUNDLED.items():
        click.echo(f"{kind}:")
        for path in sorted(folder.glob("*.yaml")):
            data, _ = read_yaml(path)
            about = (data or {}).get("description", "") if kind == "constitutions" else _header(path)
            click.echo(f"  {path.stem:<24} {about}")


def _header(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("# yaml-language-server"):
            return line.lstrip("# ").strip()
    return ""


@click.command(name="cp")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@usage_errors
def copy_bundled(name: str, dest: Path) -> None:
    """Copy a shipped constitution or recipe to DEST so you can edit it.

    \b
    Example:
      cai cp harmless my_constitution.yaml
    """
    matches = [folder / f"{name}.yaml" for folder in BUNDLED.values() if (folder / f"{name}.yaml").is_file()]
    if not matches:
        raise UsageError(f"no shipped constitution or recipe named {name!r} (see `cai ls`)")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest}: already exists; choose another name")
    target = dest / matches[0].name if dest.is_dir() else dest
    from cai_kit.authoring.schema import schema_comment

    text = matches[0].read_text(encoding="utf-8")
    if text.startswith("# yaml-language-server:"):  # point the copy's editor at the schema from where it now is
        kind = "constitution" if matches[0].parent == BUNDLED["constitutions"] else "recipe"
        text = schema_comment(kind, target) + text[text.index("\n") :]
    target.write_text(text, encoding="utf-8")
    click.echo(f"wrote {target}")


@click.command()
def env() -> None:
    """Print versions of cai-kit and its stack, for bug reports.

    \b
    Example:
      cai env
    """
    import importlib.metadata
    import platform

    click.echo(f"python: {platform.python_version()} ({platform.platform()})")
    for package in ["cai-kit", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "vllm"]:
        try:
            click.echo(f"{package}: {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            click.echo(f"{package}: not installed")
    from cai_kit.core.models import cache_dir

    click.echo(f"cache: {cache_dir()}")


COMMANDS = [validate, list_bundled, copy_bundled, env]
