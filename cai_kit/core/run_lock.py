"""One writer per run folder: `cai generate`, `cai train` and `cai eval` hold a lock on their output folder.

Two processes appending to one `generations.jsonl` would each write every id, and both would exit 0. The
lock is an OS file lock (`flock` on POSIX, `msvcrt.locking` on Windows) on `.cai-kit.lock` inside the
folder, which also holds the holder's PID for the error message. The OS drops the lock when its process
dies, however it dies, so a lock left by a killed run is taken over by the next one without a word.

A process may take the same folder's lock again (a recipe's stages, or a test, calling a stage twice);
it is released when the outermost holder is done.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from cai_kit.core.errors import UsageError

LOCK_FILE = ".cai-kit.lock"
_held: dict[Path, tuple[int, int]] = {}  # lock file -> (file descriptor, how many holders in this process)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "another process"


def _acquire(folder: Path, command: str, name: str) -> int:
    """Lock `folder` (which must exist) and return the lock file's descriptor, or stop with one line."""
    path = folder / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise UsageError(
                f"{folder}: {_holder(path)} is writing this folder ({name}); wait for it to finish or stop "
                f"it, or give {command} another output folder"
            )
        # The previous holder may have removed the file between our open and our lock: then we hold a lock
        # on a file nobody else can see, and must lock the file now at that path instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:  # a full disk: the lock holds without the PID, and the run's first write says what is wrong
        pass
    return fd


def _release(path: Path, fd: int) -> None:
    # Removed before it is unlocked: a process that opened it meanwhile sees it gone and tries again.
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


@contextlib.contextmanager
def run_lock(folder: Path, command: str, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold the lock on `folder` while the block runs; `command` names the flag or key the user sets to pick
    another folder, e.g. "--out". A second process stops at once with one line. A folder this call creates is
    removed again if the block leaves it empty (bad input found after the lock was taken). `name` is the lock
    file's: processes that may share a folder (the machines of one training run) each take their own."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: is a file, not a folder; give {command} a folder (new or one to resume)")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = (folder / name).resolve()
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
    else:
        _held[key] = (_acquire(folder, command, name), 1)
    try:
        yield
    finally:
        fd, count = _held.pop(key)
        if count > 1:
            _held[key] = (fd, count - 1)
        else:
            _release(folder / name, fd)
            if made and folder.is_dir() and not any(folder.iterdir()):  # a run that stopped before writing
                folder.rmdir()
