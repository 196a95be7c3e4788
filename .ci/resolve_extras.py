"""Do the base requirements and every extra resolve for a Linux x86_64 CUDA machine? No install, no GPU.

For each of "" (the base), and every extra in pyproject.toml, runs `uv pip compile` for Python 3.12 on
manylinux_2_28 x86_64, the platform of a CUDA cluster node, so the CUDA-only vllm wheels count, and prints
the versions the fast-moving stack resolves to. Exit status 1 when any of them does not resolve, with uv's
explanation. Only package metadata is read (a few MB), never a wheel.

Usage: python .ci/resolve_extras.py [PYPROJECT]   (default: the repository's pyproject.toml)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli on 3.10
    import tomli as tomllib

SHOWN = ("vllm", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "openvino")
PLATFORM, PYTHON = "x86_64-manylinux_2_28", "3.12"


def resolve(pyproject: Path, extra: str | None) -> tuple[bool, str]:
    """(resolved?, the pinned versions of SHOWN or uv's explanation)."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "requirements.txt"
        command = [uv, "pip", "compile", str(pyproject), "--python-platform", PLATFORM, "--python-version", PYTHON,
                   "--quiet", "--no-header", "--output-file", str(out)]
        if extra:
            command += ["--extra", extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            reasons = [line.strip() for line in result.stderr.splitlines()
                       if line.strip() and "managed Python" not in line and "error sending request" not in line
                       and not line.strip().startswith("cause: client error") and "dns error" not in line
                       and "error resolving DNS" not in line]
            return False, "\n    ".join(reasons)
        pins = [line.split()[0] for line in out.read_text().splitlines() if "==" in line and not line.startswith(" ")]
        return True, ", ".join(pin for pin in pins if pin.split("==")[0] in SHOWN)


def main(argv: list[str]) -> int:
    pyproject = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "pyproject.toml"
    extras = list(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("optional-dependencies", {}))
    failed = []
    for extra in [None, *extras]:
        ok, detail = resolve(pyproject, extra)
        label = f".[{extra}]" if extra else "base"
        print(f"{'ok  ' if ok else 'FAIL'} {label} on {PLATFORM}, Python {PYTHON}: {detail}")
        if not ok:
            failed.append(label)
    if failed:
        print(f"resolve_extras: {', '.join(failed)} do not resolve: fix the pins in {pyproject}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
