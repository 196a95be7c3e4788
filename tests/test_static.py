"""The linter and the type checker pass on the package, so CI fails on a new lint or type error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_passes():
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes():
    result = _run(sys.executable, "-m", "mypy", "cai_kit")
    assert result.returncode == 0, result.stdout + result.stderr
