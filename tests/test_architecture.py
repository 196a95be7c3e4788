"""The package's shape: stages are layered and acyclic (import-linter, configured in pyproject.toml), no
module imports another module's private names, and no module grows past one concept's length, nor a function
past a screen."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cai_kit"
MAX_LINES = 400
# A function a reader can hold at once. The aim is 60 lines; the few between 60 and this limit are named in
# docs/contributing.md and get split when next touched.
MAX_FUNCTION_LINES = 80


def _lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter's command line in `cwd` (which holds the pyproject.toml) on the package found in
    `package_parent`."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    return subprocess.run(
        [*command, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_new_cycle_or_an_upward_import_breaks_the_contracts(tmp_path):
    """The guard can fail: a copy of the package with a cycle inside core and an import from core up into
    training breaks both contracts."""
    shutil.copytree(PACKAGE, tmp_path / "cai_kit", ignore=shutil.ignore_patterns("__pycache__", "shipped"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "cai_kit" / "core" / "errors.py").open("a", encoding="utf-8") as handle:
        handle.write("\nfrom cai_kit.core import models  # noqa\nfrom cai_kit.training import train  # noqa\n")
    result = _lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout, result.stdout
    assert "cai_kit.core.errors -> cai_kit.training.train" in result.stdout


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cai_kit"):
                found += [
                    f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_no_module_is_longer_than_one_concept():
    lengths = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _modules()}
    long = [f"{path.relative_to(ROOT)} ({n} lines)" for path, n in lengths.items() if n > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines: {', '.join(long)}"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_every_stage_is_a_package():
    stages = {"cli", "core", "engines", "prompts", "generation", "judging", "training", "evaluation", "licensing"}
    stages.add("authoring")
    assert all((PACKAGE / stage / "__init__.py").is_file() for stage in stages)
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not flat, f"modules outside a stage package: {flat}"
