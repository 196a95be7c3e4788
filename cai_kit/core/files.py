"""Writing files so that a reader never sees half of one, and reading JSONL line by line.

JSONL is split on "\n" alone, everywhere: `str.splitlines()` also splits on U+2028, U+2029, U+0085,
\x0b, \x0c and \x1c-\x1e, which are data inside a JSON string. Rows are written with those characters
escaped too, so that other readers that split the same way still see one row per line.

Every file cai-kit writes whole (manifests, data cards, views, training data, caches) goes through
`write_atomic`: a hidden temporary file beside the target, fsynced, then renamed over it. A failure
(a full disk, a read-only folder) removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cai_kit.core.errors import read_utf8


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


# Characters that `str.splitlines()` and some editors take for line breaks, and that `json.dumps` leaves raw
# with ensure_ascii=False (it already escapes \x0b, \x0c and \x1c-\x1e as control characters).
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def jsonl_line(row: Any) -> str:
    """One JSONL line, newline included: UTF-8 kept readable, but no character inside that reads as a line break."""
    text = json.dumps(row, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        if char in text:  # only inside strings: json.dumps writes none of them elsewhere
            text = text.replace(char, escaped)
    return text + "\n"


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(jsonl_line(row) for row in rows)


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of JSONL text, split on newlines alone."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as a whole JSONL file, atomically (the folder is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, jsonl_text(rows))


def json_lines(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSONL file; a line that is not JSON adds
    `file:line: not valid JSON (...)` to `problems` and is skipped, so a caller reports every bad line at once."""
    for number, line in numbered_lines(read_utf8(path)):  # a file that is not UTF-8: one line, no traceback
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg})")


def whole_safetensors(path: Path) -> bool:
    """A safetensors file holds an 8-byte header length, a JSON header with every tensor's byte range, then
    the data: it is whole when the header parses and the file reaches the end of the last tensor."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return False
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            return False
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return size >= 8 + length + max(ends, default=0)


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_abandoned(folder: Path, prefix: str) -> None:
    """Remove the work folders `<prefix><pid>-...` in `folder` whose process is gone (a kill leaves a
    TemporaryDirectory behind); one whose process still runs (another process at work) is left alone."""
    for path in folder.glob(f"{prefix}*"):
        pid = path.name.removeprefix(prefix).split("-")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
