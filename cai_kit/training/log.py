"""The one way `cai train` talks to the user: a prefixed line on stderr, flushed (training runs for hours,
often under a scheduler that buffers)."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(f"cai train: {message}", file=sys.stderr, flush=True)
