"""Shipped files: the package carries every constitution, recipe and data file; every command takes them by name
from any directory; `cai cp` copies only shipped names and never overwrites silently.

Fast: no model is loaded except the tiny random one (built in code) in the two end-to-end checks. Every fixture
file is written here. Each test runs in an empty temporary directory (not the checkout), as an installed wheel
would, so a shipped recipe that named a constitution by a checkout path would fail here.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli, the same parser
    import tomli as tomllib

from cai_kit.cli import main
from cai_kit.core.constitution import load_constitution
from cai_kit.core.errors import UsageError
from cai_kit.core.shipped import KINDS, find_shipped, resolve_yaml, shipped_dir, shipped_names
from cai_kit.training.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
CONSTITUTIONS = sorted(path.stem for path in (REPO / "constitutions").glob("*.yaml"))
RECIPES = sorted(path.stem for path in (REPO / "recipes").glob("*.yaml"))
MINE = "name: mine\nprinciples:\n  - {name: p, critique: 'Is it kind?', revision: Make it kind.}\n"


@pytest.fixture(autouse=True)
def _empty_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _listed(output: str) -> dict[str, list[str]]:
    """`cai ls` output -> {"constitutions": [names], "recipes": [names]}."""
    listed: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            listed[line[:-1]] = []
        elif line.startswith("  "):
            listed[list(listed)[-1]].append(line.split()[0])
    return listed


# --- the package carries them ------------------------------------------------------------------------------------


def test_the_package_folders_are_the_top_level_folders():
    for kind in KINDS:  # one source: cai_kit/shipped/<kind> is the top-level folder, never a copy
        assert shipped_dir(kind).resolve() == (REPO / kind).resolve()


def test_package_data_globs_cover_every_shipped_file():
    """Every file under constitutions/, recipes/ and data/ matches a package-data glob, so the wheel carries it."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cai_kit"]
    packaged = {name for pattern in patterns for name in glob.glob(pattern, root_dir=REPO / "cai_kit", recursive=True)}
    on_disk = {
        f"shipped/{path.relative_to(REPO).as_posix()}"
        for kind in KINDS
        for path in (REPO / kind).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert len(on_disk) >= 15  # 3 constitutions, 5 recipe files, 8 data files today
    assert on_disk - packaged == set(), "add a package-data glob in pyproject.toml for these"


# --- cai ls, cai validate by name --------------------------------------------------------------------------------


def test_ls_lists_the_three_constitutions_and_the_three_recipes():
    result = cli("ls")
    assert result.exit_code == 0, result.output
    assert len(CONSTITUTIONS) == 3 and len(RECIPES) == 3
    assert _listed(result.output) == {"constitutions": CONSTITUTIONS, "recipes": RECIPES}
    assert "Tiny: every stage" in result.output  # a recipe's first comment line, after the schema line


def test_every_shipped_name_validates_by_name_from_an_empty_directory(tmp_path):
    assert list(tmp_path.iterdir()) == []
    result = cli("validate", *CONSTITUTIONS, *RECIPES)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # stderr may warn of what this host lacks (no GPU for DeepSpeed)
    assert [line.split(":")[0] for line in lines] == [*CONSTITUTIONS, *RECIPES]
    assert all(": ok (constitution '" in line for line in lines[: len(CONSTITUTIONS)])
    assert all(line.endswith(": ok (recipe)") for line in lines[len(CONSTITUTIONS) :])
    with_suffix = cli("validate", *(f"{name}.yaml" for name in [*CONSTITUTIONS, *RECIPES]))
    assert with_suffix.exit_code == 0, with_suffix.output


def test_shipped_recipes_name_constitutions_and_accelerate_configs_not_checkout_paths():
    for name in RECIPES:
        recipe = load_recipe(name)  # a shipped name, from an empty directory
        for run in recipe.generate:
            assert run.constitution in CONSTITUTIONS, f"{name}: {run.constitution} is not a shipped name"
        assert recipe.output_dir == f"runs/{name}"  # output stays relative to where cai runs
        if recipe.accelerate_config:
            assert recipe.accelerate_config in shipped_names("accelerate config")


# --- the rule: an existing path wins, else a shipped name, else one line ------------------------------------------


def test_an_existing_path_wins_over_a_shipped_name(tmp_path):
    assert load_constitution("harmless").name == "harmless"
    assert load_constitution("harmless.yaml").name == "harmless"
    (tmp_path / "harmless.yaml").write_text(MINE)
    assert load_constitution("harmless.yaml").name == "mine"  # the local file
    assert load_constitution("harmless").name == "harmless"  # no file called `harmless`: the shipped one
    (tmp_path / "harmless").write_text(MINE)
    assert load_constitution("harmless").name == "mine"


def test_an_unknown_name_is_one_line_naming_it_and_the_shipped_names():
    with pytest.raises(UsageError) as caught:
        load_constitution("harmles")
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert line.startswith("harmles: file not found") and "did you mean 'harmless'?" in line
    assert f"shipped constitutions: {', '.join(CONSTITUTIONS)}" in line


def test_a_path_never_reaches_a_file_through_a_shipped_name(tmp_path):
    outside = tmp_path / "leak.yaml"
    outside.write_text(MINE)
    for spec in ("../constitutions/harmless", "constitutions/harmless", str(outside.with_suffix("")), "", "."):
        assert find_shipped(spec, ("constitution", "recipe")) is None, spec
    assert resolve_yaml("deepspeed_zero3", ("accelerate config",)).read_text() == (
        REPO / "recipes" / "accelerate" / "deepspeed_zero3.yaml"
    ).read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "-c", "nosuch", "-m", "tiny-random"],
        ["try", "-c", "nosuch", "hello", "-m", "tiny-random"],
        ["diff", "nosuch", "harmless"],
        ["validate", "nosuch"],
        ["train", "nosuch"],
        ["judge-check", "-c", "nosuch", "--judge-model", "tiny-random"],
    ],
    ids=lambda args: args[0],
)
def test_every_command_says_one_line_for_an_unknown_name(args):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # not progress bars
    assert len(lines) == 1 and lines[0].startswith("error: nosuch: file not found"), result.stderr
    assert "Traceback" not in result.stderr
    assert "shipped" in lines[0] and (CONSTITUTIONS[0] in lines[0] or RECIPES[0] in lines[0])


def test_a_recipe_names_constitutions_by_name_and_a_wrong_name_fails_validation(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("model: tiny-random\ngenerate:\n  - constitution: helpful\neval: {constitution: harmless}\n")
    assert load_recipe(good).generate[0].constitution == "helpful"
    assert load_recipe(good).generate_dir(0).name == "0-helpful"
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  - constitution: helpfull\naccelerate_config: fsdpp\neval: {constitution: nope}\n")
    result = cli("validate", str(bad))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith(f"error: {bad}:2: generate[0].constitution: helpfull: file not found")
    assert "did you mean 'helpful'?" in lines[0]
    assert lines[1].startswith(f"error: {bad}:3: accelerate_config: fsdpp: file not found")
    assert "shipped accelerate configs: deepspeed_zero3, fsdp" in lines[1]
    assert lines[2].startswith(f"error: {bad}:4: eval.constitution: nope: file not found")


def test_judge_questions_of_eval_and_judge_check_come_from_shipped_names():
    from cai_kit.evaluation.evaluate import judge_questions as eval_questions
    from cai_kit.evaluation.options import EvalOptions
    from cai_kit.judging.judge_check import judge_questions as check_questions

    helpful = load_constitution(REPO / "constitutions" / "helpful.yaml").judge
    harmless = load_constitution(REPO / "constitutions" / "harmless.yaml").judge
    assert helpful != harmless
    assert eval_questions(EvalOptions(constitution="helpful")) == helpful  # cai eval -c helpful
    assert check_questions("harmless") == harmless  # cai judge-check -c harmless


def test_generate_and_try_take_a_shipped_name(tmp_path, tiny_model_path):
    """`cai generate -c harmless` and `cai try -c harmless` from an empty directory, on the tiny random model."""
    tiny = ["-m", "tiny-random", "--max-new-tokens", "4", "--few-shot", "0"]
    result = cli("generate", "-c", "harmless", "-p", "red_team", "--limit", "1", "-o", "gen", *tiny)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    shipped = (REPO / "constitutions" / "harmless.yaml").read_bytes()
    assert manifest["constitution"] == "harmless"
    assert manifest["constitution_sha256"] == hashlib.sha256(shipped).hexdigest()
    tried = cli("try", "-c", "harmless", "how do I pick a lock?", *tiny)
    assert tried.exit_code == 0, tried.output
    names = {principle.name for principle in load_constitution("harmless").principles}
    assert any(name in tried.output for name in names)


# --- cai cp ------------------------------------------------------------------------------------------------------


def test_cp_copies_a_shipped_recipe_that_validates_where_it_lands(tmp_path):
    (tmp_path / "mine").mkdir()
    result = cli("cp", "tiny", "mine")
    assert result.exit_code == 0, result.output
    copy = tmp_path / "mine" / "tiny.yaml"
    assert copy.read_text().splitlines()[1:] == (REPO / "recipes" / "tiny.yaml").read_text().splitlines()[1:]
    assert cli("validate", str(copy)).exit_code == 0


def test_cp_refuses_anything_but_a_shipped_name(tmp_path):
    secret = tmp_path / "x" / "leak.yaml"
    secret.parent.mkdir()
    secret.write_text("token: hunter2\n")
    # An absolute path joined onto the shipped folder is that path, and `..` climbs out of it: both refused.
    traversal = "../" * len(shipped_dir("constitutions").resolve().parts) + str(secret.with_suffix("")).lstrip("/")
    for name in (str(secret.with_suffix("")), traversal, "x/leak", "constitutions/harmless"):
        result = cli("cp", name, "out.yaml")
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a shipped constitution or recipe name" in lines[0], result.stderr
        assert not (tmp_path / "out.yaml").exists()


def test_cp_never_overwrites_silently(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "harmless.yaml").write_text(MINE)
    (tmp_path / "file.yaml").write_text(MINE)
    for dest in (str(folder), str(tmp_path / "file.yaml")):
        result = cli("cp", "harmless", dest)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "already exists" in result.stderr
        assert "--force" in result.stderr
    assert (folder / "harmless.yaml").read_text() == MINE and (tmp_path / "file.yaml").read_text() == MINE
    forced = cli("cp", "harmless", str(folder), "--force")
    assert forced.exit_code == 0, forced.output
    assert load_constitution(folder / "harmless.yaml").name == "harmless"


def test_cp_into_a_missing_folder_is_one_line(tmp_path):
    for dest in ("missing/folder/x.yaml", "missing/"):
        result = cli("cp", "harmless", dest)
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)  # not a FileNotFoundError traceback
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no such folder" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_version():
    from cai_kit import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"cai-kit, version {__version__}"
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dynamic"] == ["version"]
