"""The files cai-kit ships: constitutions, recipes and data sets, found through `importlib.resources`.

In the repository they live at the top level (`constitutions/`, `recipes/`, `data/`), the one source;
`cai_kit/shipped/` points at them, and a built wheel carries them there as package data. Code never
looks for them through the repository root, so an installed wheel finds them wherever it runs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

KINDS = ("constitutions", "recipes", "data")


def shipped_dir(kind: str) -> Path:
    """The folder of one kind of shipped file inside the installed package."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped file: {kind!r}")
    return Path(str(resources.files("cai_kit") / "shipped" / kind))


def shipped_file(kind: str, relative: str) -> Path:
    """A shipped file by its path inside its kind's folder (it may not exist: callers say so)."""
    return shipped_dir(kind) / relative
