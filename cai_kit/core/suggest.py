"""The closest allowed name to a misspelt one ("did you mean ...?"), for every error that names a key or a value."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: object, choices: Iterable[object], cutoff: float = 0.6) -> str | None:
    """The allowed name nearest to `word` (difflib's ratio at least `cutoff`), or None when none is near."""
    close = difflib.get_close_matches(str(word), [str(choice) for choice in choices], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: object, choices: Iterable[object], cutoff: float = 0.6) -> str:
    """` (did you mean 'x'?)` to end an error line with, or "" when no allowed name is near `word`."""
    found = closest(word, choices, cutoff)
    return f" (did you mean '{found}'?)" if found else ""
