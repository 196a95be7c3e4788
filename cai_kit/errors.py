"""Errors the CLI turns into one clear line each (exit status 2) instead of a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a file, a flag, a model or server that cannot be used.

    `problems` holds one line per problem, already formatted as `file:line: key.path: message`
    where a file is involved, so every problem is reported at once.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
