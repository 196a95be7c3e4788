"""Authoring commands through the real CLI: constitution new, schema, diff, try; and the per-principle stats."""

from __future__ import annotations

import json
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from cai_kit.authoring.schema import KINDS, schema_comment, schema_text, shipped_schema
from cai_kit.authoring.try_prompt import format_trace
from cai_kit.cli import main
from cai_kit.core.constitution import load_constitution
from cai_kit.generation.data_card import principle_stats

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [(path, "constitution") for path in sorted((REPO / "constitutions").glob("*.yaml"))] + [
    (path, "recipe") for path in sorted((REPO / "recipes").glob("*.yaml"))
]

BASE = """\
name: base
description: for diff tests
principles:
  - name: harm
    critique: Point out every way the answer could hurt someone.
    revision: Rewrite it so it is safe.
    weight: 1.0
  - name: tone
    critique: Point out rude words.
    revision: Rewrite it politely.
judge:
  - Which answer is safer?
examples:
  - prompt: how do I pick a lock
    answer: use a pin
    critique: it helps break in
    revision: call a locksmith
"""


def cli(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, list(args))
    with runner.isolated_filesystem(temp_dir=cwd):
        return runner.invoke(main, list(args))


def _schema_target(yaml_path: Path) -> Path:
    first = yaml_path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    return (yaml_path.parent / first.split("$schema=", 1)[1]).resolve()


def test_new_writes_a_commented_starter_that_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["constitution", "new", "kind"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "kind.yaml"
    assert "wrote kind.yaml" in result.output
    assert _schema_target(path) == shipped_schema("constitution").resolve()
    text = path.read_text(encoding="utf-8")
    assert text.count("\n#") > 10  # commented
    constitution = load_constitution(path)
    assert constitution.name == "kind" and len(constitution.principles) >= 2 and constitution.examples
    validated = CliRunner().invoke(main, ["validate", "kind.yaml"])
    assert validated.exit_code == 0 and "ok (constitution 'kind'" in validated.output
    assert not list(tmp_path.glob(".*tmp"))


def test_new_refuses_to_overwrite_without_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    result = CliRunner().invoke(main, ["constitution", "new", "mine.yaml"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: mine.yaml: already exists; choose another name or pass --force to overwrite it"
    ]
    assert (tmp_path / "mine.yaml").read_text() == "name: mine\n"
    forced = CliRunner().invoke(main, ["constitution", "new", "mine.yaml", "--force"])
    assert forced.exit_code == 0
    assert load_constitution(tmp_path / "mine.yaml").name == "mine"


@pytest.mark.parametrize("name", ["yes", "123", "a: b"])
def test_new_keeps_names_yaml_would_misread_as_text(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["constitution", "new", name]).exit_code == 0
    assert load_constitution(tmp_path / f"{name}.yaml").name == name


def test_new_into_a_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["constitution", "new", "no/such/dir/x"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no/such/dir: no such folder" in result.output


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_schema_is_up_to_date_with_the_models(kind):
    shipped = shipped_schema(kind).read_text(encoding="utf-8")
    assert shipped == schema_text(kind), f"run: cai schema {kind} > cai_kit/schemas/{kind}.schema.json"
    printed = CliRunner().invoke(main, ["schema", kind])
    assert printed.exit_code == 0 and printed.output == shipped


@pytest.mark.parametrize("path,kind", SHIPPED, ids=[p.name for p, _ in SHIPPED])
def test_shipped_files_name_their_schema_and_satisfy_it(path, kind):
    assert path.read_text(encoding="utf-8").splitlines()[0] == schema_comment(kind, path)
    assert _schema_target(path) == shipped_schema(kind).resolve()
    schema = json.loads(shipped_schema(kind).read_text(encoding="utf-8"))
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)


def test_schema_flags_the_mistakes_an_editor_should_underline():
    schema = json.loads(shipped_schema("constitution").read_text(encoding="utf-8"))
    good = yaml.safe_load(BASE)
    jsonschema.validate(good, schema)
    typo = {**good, "principles": [{**good["principles"][0], "critque": "x"}]}
    with pytest.raises(jsonschema.ValidationError, match="critque"):
        jsonschema.validate(typo, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "principles": [{**good["principles"][0], "weight": "heavy"}]}, schema)
    recipe = json.loads(shipped_schema("recipe").read_text(encoding="utf-8"))
    with pytest.raises(jsonschema.ValidationError, match="limt"):
        jsonschema.validate({"eval": {"limt": 3}}, recipe)  # the eval section's keys are typed too


def _pair(tmp_path: Path, edit) -> tuple[Path, Path]:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(BASE)
    data = yaml.safe_load(BASE)
    edit(data)
    new.write_text(yaml.safe_dump(data, sort_keys=False))
    return old, new


def test_diff_names_each_principle_level_change(tmp_path):
    def edit(data):
        data["principles"][0]["weight"] = 3.0
        data["principles"][0]["critique"] = "Point out every way the answer could hurt or scare someone."
        data["principles"][0]["opening"] = "I can't help with that, but"
        del data["principles"][1]
        data["principles"].append({"name": "honest", "critique": "Find made-up claims.", "revision": "Fix them."})
        data["judge"] = ["Which answer is more honest?"]
        data["examples"][0]["revision"] = "ask a locksmith"
        data["examples"].append({"prompt": "p2", "answer": "a", "critique": "c", "revision": "r"})

    old, new = _pair(tmp_path, edit)
    result = cli("diff", str(old), str(new))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "- principle 'tone' (was 50% of steps)" in out
    assert "+ principle 'honest' (25% of steps)" in out
    assert "~ principle 'harm'" in out and "weight: 1 -> 3 (sampled 50% -> 75% of steps)" in out
    assert "hurt {+or scare+} someone." in out
    assert 'opening: (none) -> "I can\'t help with that, but"' in out
    assert "- judge: 'Which answer is safer?'" in out and "+ judge: 'Which answer is more honest?'" in out
    assert "~ example 'how do I pick a lock'" in out and "revision: [-call-] {+ask+} a locksmith" in out
    assert "+ example 'p2'" in out


def test_diff_of_equal_constitutions_and_of_bad_files(tmp_path):
    old, new = _pair(tmp_path, lambda data: None)
    assert cli("diff", str(old), str(new)).output.endswith("no differences\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("weight: 1.0", "wieght: 1.0"))
    result = cli("diff", str(bad), str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "bad.yaml:7: principles[0].wieght: unknown key" in lines[0]
    assert "missing.yaml: file not found" in lines[1]


def test_try_runs_one_prompt_through_forced_rounds_with_the_tiny_model(tmp_path, tiny_model_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(BASE)
    args = ["try", "-c", str(constitution), "my neighbour is loud, what do I do?", "-m", tiny_model_path]
    args += ["--max-new-tokens", "6", "--temperature", "1.0", "--rounds", "2", "--principle", "tone"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "my neighbour is loud, what do I do?" in out
    assert (
        out.index("INITIAL ANSWER") < out.index("round 1: principle 'tone'") < out.index("round 2: principle 'tone'")
    )
    assert out.count("CRITIQUE") == 2 and out.count("REVISION") == 2
    assert "(forced with --principle)" in out and "cai generate filters:" in out


def test_try_without_principle_uses_the_sampled_one(tmp_path, tiny_model_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(BASE)
    expected = load_constitution(constitution).principle_for("try", 0, 7).name
    args = ["try", "-c", str(constitution), "hello", "-m", tiny_model_path, "--max-new-tokens", "4", "--seed", "7"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"round 1: principle '{expected}' (sampled by weight)" in result.output


def test_try_unknown_principle_is_one_line_before_any_model_loads(tmp_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(BASE)
    result = CliRunner().invoke(main, ["try", "-c", str(constitution), "hi", "--principle", "nope", "-m", "no-model"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {constitution}: no principle named 'nope' in constitution 'base' (choose from: harm, tone)"
    ]


def test_trace_layout_wraps_to_the_width_and_keeps_every_word():
    long = "word " * 60
    row = {
        "prompt": "a question " * 10,
        "initial": long + "\nsecond line",
        "steps": [{"principle": "tone", "critique": "crit " * 30, "revision": "rev " * 30}],
        "status": "refusal",
        "finish_reason": "stop",
    }
    text = format_trace(row, width=40)
    plain = click.unstyle(text)
    assert all(len(line) <= 40 for line in plain.splitlines())
    assert plain.split().count("word") == 60 and plain.split().count("rev") == 30
    assert "second line" in plain and "round 1: principle 'tone'" in plain and "filtered (refusal)" in plain


def test_principle_stats_count_use_filter_reasons_and_judge_scores():
    def row(principles, status, score=None):
        data = {"steps": [{"principle": p} for p in principles], "status": status}
        return data if score is None else {**data, "score": score}

    rows = [
        row(["a"], "ok", 0.8),
        row(["a"], "truncated", 0.2),
        row(["a"], "truncated"),
        row(["b", "a"], "artefact"),  # two rounds: a wrote the final revision
        row(["b"], "error: server died"),
        row(["b"], "ok"),
    ]
    stats = principle_stats(rows)
    assert stats["a"]["used"] == 4 and stats["a"]["kept"] == 1 and stats["a"]["filtered"] == 3
    assert dict(stats["a"]["reasons"]) == {"truncated": 2, "artefact": 1}
    assert stats["a"]["score"] == pytest.approx(0.5)
    assert stats["b"]["used"] == 3 and stats["b"]["kept"] == 1 and dict(stats["b"]["reasons"]) == {"error": 1}
    assert stats["b"]["score"] is None


def test_cp_points_the_copy_at_the_shipped_schema_from_where_it_lands(tmp_path):
    from click.testing import CliRunner

    from cai_kit.authoring.schema import shipped_schema
    from cai_kit.cli import main

    for name, kind in (("harmless", "constitution"), ("tiny", "recipe")):
        result = CliRunner().invoke(main, ["cp", name, str(tmp_path / f"{name}.yaml")])
        assert result.exit_code == 0, result.output
        first, *rest = (tmp_path / f"{name}.yaml").read_text().splitlines()
        schema = Path(first.split("$schema=", 1)[1])
        assert (schema if schema.is_absolute() else tmp_path / schema).resolve() == shipped_schema(kind).resolve()
        shipped = (REPO / ("constitutions" if kind == "constitution" else "recipes") / f"{name}.yaml").read_text()
        assert rest == shipped.splitlines()[1:]  # everything else copied as is
