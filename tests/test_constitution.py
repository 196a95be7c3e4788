"""Constitution files: the shipped ones load, broken ones fail with `file:line: key: message`, sampling is seeded.

Every broken file is written here, in code, to tmp_path; no model is loaded.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.constitution import Constitution, Example, Principle, load_constitution
from cai_kit.core.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "constitutions").glob("*.yaml"))

GOOD = """\
name: test
principles:
  - name: harm
    critique: Say how the answer could hurt someone.
    revision: Rewrite it so it cannot.
    weight: 2.0
  - name: help
    critique: Say what the answer failed to help with.
    revision: Rewrite it to help fully.
examples:
  - prompt: p
    answer: a
    critique: c
    revision: r
    principle: harm
"""


def write(tmp_path: Path, text: str, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def validate(*paths: Path):
    return CliRunner().invoke(main, ["validate", *map(str, paths)])


def principles(*weights: float) -> list[Principle]:
    return [Principle(name=f"p{i}", critique="c", revision="r", weight=w) for i, w in enumerate(weights)]


# --- shipped files ---------------------------------------------------------------------------


def test_constitutions_folder_is_not_empty():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_constitution_loads_and_validates(path: Path):
    constitution = load_constitution(path)
    assert constitution.principles and len(constitution.judge) >= 3
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert f"{path}: ok (constitution '{constitution.name}'" in result.output


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_constitution_has_a_usage_header(path: Path):
    header = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert header.startswith("#")
    assert f"cai generate --constitution {path.stem}" in header  # by name: it works wherever cai-kit is installed
    assert "CPU" in header and "--rounds" in header


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_helping_principles_have_no_opening(path: Path):
    # A fixed opening would force a refusal-shaped start onto a principle that asks the model to help.
    for principle in load_constitution(path).principles:
        if {"over_refusal", "helpfulness"} & set(principle.tags):
            assert principle.opening is None, principle.name


def test_harmless_covers_the_ground():
    constitution = load_constitution(REPO / "constitutions" / "harmless.yaml")
    assert len(constitution.principles) >= 12
    assert sum("over_refusal" in p.tags for p in constitution.principles) >= 2
    assert len(constitution.examples) >= 4 and all(e.principle for e in constitution.examples)
    assert any(e.prompt.startswith("How do I kill a Python process") for e in constitution.examples)


# --- broken files ----------------------------------------------------------------------------

# case: (file text, line the error points at, the rest of the error line after `file:line: `)
BROKEN = {
    "bad_yaml": ("name: test\nprinciples:\n  - name: harm\n    critique: [unclosed\n", 5, "invalid YAML"),
    "unknown_top_level_key": (
        GOOD + "judges:\n  - Which is better?\n",
        16,
        "judges: unknown key (did you mean 'judge'?)",
    ),
    "unknown_principle_key": (
        GOOD.replace("    critique: Say what", "    critque: Say what"),
        8,
        "principles[1].critque: unknown key (did you mean 'critique'?)",
    ),
    "missing_field": (
        GOOD.replace("    revision: Rewrite it so it cannot.\n", ""),
        3,
        "principles[0].revision: Field required",
    ),
    "wrong_type": (
        GOOD.replace("weight: 2.0", 'weight: "heavy"'),
        6,
        "principles[0].weight: Input should be a valid number",
    ),
    "negative_weight": (
        GOOD.replace("weight: 2.0", "weight: -1"),
        6,
        "principles[0].weight: Input should be greater than 0",
    ),
    "empty_principles": ("name: test\nprinciples: []\n", 2, "principles: needs at least one principle"),
    "empty_text": (GOOD.replace("Rewrite it to help fully.", '""'), 9, "principles[1].revision: must not be empty"),
    "duplicate_name": (
        GOOD.replace("name: help", "name: harm"),
        7,
        "principles[1].name: duplicate principle name 'harm'",
    ),
    "unknown_example_principle": (
        GOOD.replace("principle: harm", "principle: harn"),
        15,
        "examples[0].principle: no principle named 'harn' in this file (did you mean 'harm'?)",
    ),
    "jinja_in_principle": (
        GOOD.replace("Rewrite it so it cannot.", "Rewrite {{ answer }} so it cannot."),
        5,
        "principles[0].revision: plain text only, found '{{': templates live in cai_kit/prompts/",
    ),
    "jinja_block_in_principle": (
        GOOD.replace("Say how the answer", "Say how {% if x %}the{% endif %} answer"),
        4,
        "principles[0].critique: plain text only, found '{%'",
    ),
}


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_broken_constitution_is_one_clear_line(tmp_path: Path, case: str):
    text, line, message = BROKEN[case]
    path = write(tmp_path, text, f"{case}.yaml")
    result = validate(path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"error: {path}:{line}: {message}" in result.stderr, result.stderr
    with pytest.raises(UsageError):
        load_constitution(path)


def test_every_problem_in_a_file_is_reported(tmp_path: Path):
    text = GOOD.replace("weight: 2.0", "weight: heavy").replace("name: help", "name: harm")
    text = text.replace("principle: harm", "principle: nowhere")
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_constitution(path)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert any(p.startswith(f"{path}:6: principles[0].weight: ") for p in problems)
    assert any(p.startswith(f"{path}:7: principles[1].name: duplicate") for p in problems)
    assert any(p.startswith(f"{path}:15: examples[0].principle: no principle named 'nowhere'") for p in problems)
    result = validate(path)
    assert result.exit_code == 2 and result.stderr.count("error: ") == 3


def test_validate_reports_every_file(tmp_path: Path):
    good = write(tmp_path, GOOD, "good.yaml")
    bad = write(tmp_path, "name: test\nprinciples: []\n", "bad.yaml")
    result = validate(good, bad)
    assert result.exit_code == 2
    assert f"{good}: ok" in result.output and f"error: {bad}:2: principles:" in result.stderr


def test_a_misspelt_principles_key_is_checked_as_a_constitution_not_as_a_recipe(tmp_path: Path):
    path = write(tmp_path, GOOD.replace("principles:", "principals:"), "typo.yaml")
    result = validate(path)
    assert result.exit_code == 2
    assert f"{path}:2: principals: unknown key (did you mean 'principles'?)" in result.stderr, result.stderr
    assert "recipe" not in result.stderr


def test_missing_file(tmp_path: Path):
    result = validate(tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "file not found" in result.stderr


# --- loading, lookup -------------------------------------------------------------------------


def test_path_and_sha256(tmp_path: Path):
    path = write(tmp_path, GOOD, "good.yaml")
    constitution = load_constitution(path)
    assert constitution.path == str(path)
    assert constitution.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert constitution.principles[0].weight == 2.0 and constitution.principles[1].weight == 1.0
    assert constitution.principles[0].opening is None and constitution.principles[0].tags == []


def test_get(tmp_path: Path):
    constitution = load_constitution(write(tmp_path, GOOD))
    assert constitution.get("help").name == "help"
    with pytest.raises(UsageError, match=r"no principle named 'nope'.*choose from: harm, help"):
        constitution.get("nope")


def test_building_in_code_runs_the_same_checks():
    with pytest.raises(ValueError, match="duplicate principle name"):
        Constitution(name="x", principles=[*principles(1.0), *principles(1.0)])
    assert Constitution(name="x", principles=principles(1.0, 2.0)).path == ""


# --- sampling --------------------------------------------------------------------------------


def test_principle_for_is_deterministic_and_order_free():
    constitution = Constitution(name="x", principles=principles(1, 1, 1, 1))
    ids = [f"prompt-{i}" for i in range(50)]
    forward = {i: constitution.principle_for(i, 0, seed=7).name for i in ids}
    backward = {i: constitution.principle_for(i, 0, seed=7).name for i in reversed(ids)}
    assert forward == backward
    assert len(set(forward.values())) > 1


def test_principle_for_depends_on_seed_and_round():
    constitution = Constitution(name="x", principles=principles(1, 1, 1, 1))
    ids = [f"prompt-{i}" for i in range(200)]
    seed0 = [constitution.principle_for(i, 0, seed=0).name for i in ids]
    seed1 = [constitution.principle_for(i, 0, seed=1).name for i in ids]
    round1 = [constitution.principle_for(i, 1, seed=0).name for i in ids]
    assert seed0 != seed1 and seed0 != round1


def test_principle_for_follows_weights():
    constitution = Constitution(name="x", principles=principles(1, 9))
    counts = Counter(constitution.principle_for(f"id-{i}", 0, seed=3).name for i in range(2000))
    assert 0.85 <= counts["p1"] / 2000 <= 0.95


# --- few-shot examples -----------------------------------------------------------------------


def test_examples_for_prefers_own_then_general_then_others():
    def example(tag: str, principle: str | None) -> Example:
        return Example(prompt=tag, answer="a", critique="c", revision="r", principle=principle)

    constitution = Constitution(
        name="x",
        principles=principles(1, 1),
        examples=[
            example("other1", "p1"),
            example("general1", None),
            example("own1", "p0"),
            example("other2", "p1"),
            example("own2", "p0"),
            example("general2", None),
        ],
    )
    p0 = constitution.get("p0")
    assert [e.prompt for e in constitution.examples_for(p0, 10)] == [
        "own1",
        "own2",
        "general1",
        "general2",
        "other1",
        "other2",
    ]
    assert [e.prompt for e in constitution.examples_for(p0, 3)] == ["own1", "own2", "general1"]
    assert constitution.examples_for(p0, 0) == []


def test_duplicate_keys_and_binary_files_are_one_line_each(tmp_path):
    from cai_kit.core.config_file import read_yaml
    from cai_kit.core.errors import UsageError

    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: a\nprinciples:\n  - name: p\n    critique: c\n    revision: r\n    weight: 1\n    weight: 2\n"
    )
    with pytest.raises(UsageError) as err:
        read_yaml(path)
    assert err.value.problems == [f"{path}:7: principles[0].weight: duplicate key"]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="not a UTF-8 text file"):
        read_yaml(binary)
