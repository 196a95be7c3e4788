"""The files cai-kit ships: constitutions, recipes and data sets, found through `importlib.resources`,
and the one rule by which a command line or a recipe names a constitution, recipe or accelerate config.

In the repository they live at the top level (`constitutions/`, `recipes/`, `data/`), the one source;
`cai_kit/shipped/` points at them, and a built wheel carries them there as package data. Code never
looks for them through the repository root, so an installed wheel finds them wherever it runs.

The rule (`resolve_yaml`): an existing file wins, so a local `harmless.yaml` is never shadowed; else a
shipped name, with or without `.yaml` (`harmless`, `tiny.yaml`); else one line that names the file and
lists the shipped names. A shipped name is only ever looked up in the list of shipped names, never joined
onto a folder, so `../../x` can never reach a file outside the package.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from cai_kit.core.errors import UsageError

KINDS = ("constitutions", "recipes", "data")
# The kinds of YAML file that can be named, and where each lives under cai_kit/shipped/.
NAMED = {"constitution": "constitutions", "recipe": "recipes", "accelerate config": "recipes/accelerate"}


def shipped_dir(kind: str) -> Path:
    """The folder of one kind of shipped file inside the installed package."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped file: {kind!r}")
    return Path(str(resources.files("cai_kit") / "shipped" / kind))


def shipped_file(kind: str, relative: str) -> Path:
    """A shipped file by its path inside its kind's folder (it may not exist: callers say so)."""
    return shipped_dir(kind) / relative


def named_dir(kind: str) -> Path:
    """The folder of the shipped YAML files of a kind in NAMED ("constitution", "recipe", "accelerate config")."""
    top, _, sub = NAMED[kind].partition("/")
    return shipped_dir(top) / sub if sub else shipped_dir(top)


def shipped_names(kind: str) -> list[str]:
    """The names of the shipped files of a kind in NAMED: their file names without `.yaml`, sorted."""
    return sorted(path.stem for path in named_dir(kind).glob("*.yaml"))


def find_shipped(name: str, kinds: tuple[str, ...]) -> tuple[str, Path] | None:
    """The kind and file of the shipped file called `name` (with or without .yaml), the first of `kinds`
    that has one; None when none does."""
    stem = name.removesuffix(".yaml")
    for kind in kinds:
        if stem in shipped_names(kind):  # membership in the list: a path never reaches the file system here
            return kind, named_dir(kind) / f"{stem}.yaml"
    return None


def not_shipped(spec: str | Path, kinds: tuple[str, ...], problem: str) -> UsageError:
    """One line: `spec: problem; shipped <kind>s: a, b, c`, with the closest name when there is one."""
    listing = "; ".join(f"shipped {kind}s: {', '.join(shipped_names(kind))}" for kind in kinds)
    names = [name for kind in kinds for name in shipped_names(kind)]
    close = difflib.get_close_matches(Path(str(spec)).name.removesuffix(".yaml"), names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UsageError(f"{spec}: {problem}{hint}; {listing}")


def resolve_yaml(spec: str | Path, kinds: tuple[str, ...]) -> Path:
    """The file a constitution, recipe or accelerate config given as `spec` is read from (see the module's rule).

    `kinds` are keys of NAMED, searched in order; raise UsageError (one line) when `spec` is neither.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise UsageError(f"{spec}: is a folder, not a YAML file")
    found = find_shipped(str(spec), kinds)
    if found is None:
        raise not_shipped(spec, kinds, "file not found, and no shipped file of that name")
    return found[1]
