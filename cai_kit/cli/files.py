"""The file commands of `cai`: check constitution and recipe files, list and copy the shipped ones, print
the stack's versions. Registered on the main group in cli/__init__.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from cai_kit.cli.flags import set_option
from cai_kit.core.errors import UsageError, usage_errors
from cai_kit.core.shipped import find_shipped, named_dir, not_shipped, resolve_yaml, shipped_names

# The kinds `cai validate`, `cai ls` and `cai cp` take by name, searched in this order.
NAMED_KINDS = ("constitution", "recipe")
def is_constitution(data: object) -> bool:
    """A file with `principles`, or with none of the top-level keys only a recipe has, is read as a constitution,
    so a constitution whose `principles` key is misspelt is told so, not checked as a recipe."""
    from cai_kit.core.constitution import Constitution
    from cai_kit.training.recipe import Recipe

    recipe_keys = set(Recipe.model_fields) - set(Constitution.model_fields)
    return isinstance(data, dict) and ("principles" in data or not set(data) & recipe_keys)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@set_option
@usage_errors
def validate(files: tuple[Path, ...], overrides: tuple[str, ...]) -> None:
    """Check constitution or recipe files, or shipped ones by name, without loading a model; every problem at once.

    `--set` checks each recipe as `cai train RECIPE --set ...` would run it.

    \b
    Example:
      cai validate my_constitution.yaml my_recipe.yaml
      cai validate harmless zephyr_cai
      cai validate zephyr_cai --set dpo.trl.loss_type=ipo
    """
    from cai_kit.core.config_file import read_yaml

    problems: list[str] = []
    for spec in files:
        try:
            path = resolve_yaml(spec, NAMED_KINDS)
            data, _ = read_yaml(path)
            if data is None:
                raise UsageError(f"{path}:1: the file is empty (a constitution needs principles, a recipe generate "
                                 "runs or data files)")
            if is_constitution(data):
                from cai_kit.core.constitution import load_constitution

                if overrides:
                    raise UsageError(f"{path}: --set applies to recipes, and this is a constitution")
                constitution = load_constitution(path)
                click.echo(
                    f"{spec}: ok (constitution '{constitution.name}', {len(constitution.principles)} principles)"
                )
            else:
                from cai_kit.training.recipe import load_recipe

                recipe = load_recipe(path, overrides)
                from cai_kit.training.accelerate_config import host_warnings

                for line in host_warnings(recipe.accelerate_config, path):  # not always the host it runs on
                    click.echo(f"warning: {line}", err=True)
                click.echo(f"{spec}: ok (recipe)")
        except UsageError as err:
            problems.extend(err.problems)
    if problems:
        raise UsageError(problems)


@click.command(name="ls")
def list_bundled() -> None:
    """List the shipped constitutions and recipes: every command takes them by name.

    \b
    Example:
      cai ls
    """
    from cai_kit.core.config_file import read_yaml

    for kind in NAMED_KINDS:
        click.echo(f"{kind}s:")
        for name in shipped_names(kind):
            path = named_dir(kind) / f"{name}.yaml"
            data, _ = read_yaml(path)
            about = (data or {}).get("description", "") if kind == "constitution" else _header(path)
            click.echo(f"  {name:<24} {about}")


def _header(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("# yaml-language-server"):
            return line.lstrip("# ").strip()
    return ""


@click.command(name="cp")
@click.argument("name")
@click.argument("dest", type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite the file at DEST if there is one.")
@usage_errors
def copy_bundled(name: str, dest: str, force: bool) -> None:
    """Copy the shipped constitution or recipe NAME (see `cai ls`) to DEST, a file or a folder, so you can edit it.

    Only shipped names are taken; an existing file is kept unless --force.

    \b
    Example:
      cai cp harmless my_constitution.yaml
      cai cp tiny my_recipes/
    """
    from cai_kit.authoring.schema import schema_comment
    from cai_kit.core.files import write_atomic

    found = find_shipped(name, NAMED_KINDS)
    if found is None:  # a name, never a path: `cai cp` is not a general file copy
        raise not_shipped(name, NAMED_KINDS, "not a shipped constitution or recipe name")
    kind, source = found
    folder = Path(dest)
    if dest.endswith(("/", os.sep)) and not folder.is_dir():  # `my_recipes/` means a folder, not a file name
        raise UsageError(f"{dest}: no such folder; create it first")
    target = folder / source.name if folder.is_dir() else folder
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; give a file name")
    if target.exists() and not force:
        raise UsageError(f"{target}: already exists; choose another name, or pass --force to overwrite it")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent}: no such folder; create it first")
    text = source.read_text(encoding="utf-8")
    if text.startswith("# yaml-language-server:"):  # point the copy's editor at the schema from where it now is
        text = schema_comment(kind, target) + text[text.index("\n") :]
    try:
        write_atomic(target, text)
    except OSError as err:
        raise UsageError(f"{target}: cannot write: {err.strerror or err}") from None
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
