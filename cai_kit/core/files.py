"""Writing files so that a reader never sees half of one, and reading JSONL line by line.

Every file cai-kit writes whole (manifests, data cards, views, training data, caches) goes through
`write_atomic`: a hidden temporary file beside the target, fsynced, then renamed over it. A failure
(a full disk, a read-only folder) removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step; on any error the old file (or none) stays, with no temp file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno:  # name the file meant, not the temporary one (or none)
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def append_synced(path: Path, text: str) -> None:
    """Append `text` to `path` and fsync it; a failed write (a full disk) names `path`. A line torn by a
    failure or a kill is for the reader to cut off (`RunFolder.read_rows` does)."""
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as a whole JSONL file, atomically (the folder is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, jsonl_text(rows))


def json_lines(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSONL file; a line that is not JSON adds
    `file:line: not valid JSON (...)` to `problems` and is skipped, so a caller reports every bad line at once."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg})")
