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


def usage_errors(func):
    """Turn UsageError into one line per problem on stderr and exit status 2, never a traceback.

    Every `cai` command is wrapped in it, in cli.py and in the modules that hold more commands.
    """
    import functools
    import sys

    import click

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            for line in err.problems:
                click.echo(f"error: {line}", err=True)
            sys.exit(2)

    return wrapper
