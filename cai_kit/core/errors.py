"""Errors the CLI turns into one clear line each (exit status 2) instead of a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# A folder that cannot be written: what to do about it, by errno (the path comes from the OSError).
DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device: free some space and rerun the same command (what was finished "
    "is kept and the run resumes)",
    errno.EDQUOT: "over the disk quota: free some space and rerun the same command (what was finished is kept and "
    "the run resumes)",
    errno.EROFS: "the file system is read-only: choose an output folder on a writable one",
    errno.EACCES: "permission denied: choose an output folder you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose an output folder you can write to, or fix its permissions",
}

MAX_PROBLEMS = 20  # lines of problems shown at most (`capped`)


class UsageError(Exception):
    """Bad input from the user: a file, a flag, a model or server that cannot be used.

    `problems` holds one line per problem, already formatted as `file:line: key.path: message`
    where a file is involved, so every problem is reported at once.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def capped(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS lines, then one that says how many more there were: every bad row of a big file is
    reported at once, but not a screenful per row."""
    more = len(problems) - MAX_PROBLEMS
    return problems[:MAX_PROBLEMS] + ([f"... and {more} more problems like these"] if more > 0 else [])


def not_utf8(path: Path, label: str | Path | None = None) -> str:
    """`file:line: not a UTF-8 text file (...)` for a file that does not decode, at its first bad byte.

    The file is read again as bytes: the offset in a UnicodeDecodeError from `read_text` counts from the start
    of the chunk being decoded, not of the file.
    """
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return (
            f"{label or path}:{line}: not a UTF-8 text file (byte 0x{data[err.start]:02X} at byte offset "
            f"{err.start}): save it as UTF-8"
        )
    return f"{label or path}: not a UTF-8 text file: save it as UTF-8"


def read_utf8(path: Path, label: str | Path | None = None) -> str:
    """The text of a file the user gave; a file that is not UTF-8 is one line (`not_utf8`), never a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(not_utf8(path, label)) from None


def disk_problem(err: OSError) -> str | None:
    """One line for a write that failed for want of space or rights, naming the path; None for other errors."""
    if err.errno not in DISK_ERRORS:
        return None
    return f"{err.filename or 'a file'}: {DISK_ERRORS[err.errno]}"


@contextlib.contextmanager
def disk_errors_in(folder: Path) -> Iterator[None]:
    """Name `folder` in disk errors that name no file, and turn a full disk that a library reports as something
    else into OSError(ENOSPC): torch.save's zip writer raises RuntimeError ("unexpected pos ...", "file write
    failed"), safetensors its own error quoting the OS error."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_ERRORS and not err.filename:
            raise OSError(err.errno, err.strerror, str(folder)) from err
        raise
    except UsageError:
        raise
    except Exception as err:
        text = str(err)
        written = any(mark in text for mark in ("unexpected pos", "file write failed", "PytorchStreamWriter"))
        if "No space left on device" in text or "code: 28" in text or (written and _nearly_full(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from err
        raise


def _nearly_full(folder: Path) -> bool:
    existing = next((path for path in (folder, *folder.parents) if path.exists()), Path("."))
    return shutil.disk_usage(existing).free < 1 << 20


def usage_errors(func=None, *, resume: str | None = None):
    """Turn UsageError into one line per problem on stderr and exit status 2, never a traceback.

    Every `cai` command is wrapped in it, in cli.py and in the modules that hold more commands. A write that
    fails for want of space or rights (ENOSPC, EDQUOT, EROFS, EACCES, EPERM) is one line too. Ctrl-C
    (SIGINT) ends with one line and exit status 130 instead of click's bare `Aborted!`; a command whose
    work survives it passes `resume`, which that line says (how to pick the run up again).
    """
    import functools
    import sys

    import click

    if func is None:
        return functools.partial(usage_errors, resume=resume)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            for line in err.problems:
                click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except OSError as err:  # a full disk, a read-only or forbidden folder: one line, not a traceback
            problem = disk_problem(err)
            if problem is None:
                raise
            click.echo(f"error: {problem}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted (Ctrl-C){'; ' + resume if resume else ''}", err=True)
            sys.exit(130)

    return wrapper
