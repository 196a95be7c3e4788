"""Each option of `cai generate` is declared once, in GenerateOptions: its flag, `cai validate`'s checks, the JSON
schema and the docs' option table come from it, and a misspelt value gets "did you mean" everywhere."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cai_kit.authoring.schema import build_schema
from cai_kit.cli import main
from cai_kit.cli.files import is_constitution
from cai_kit.cli.generate import SHARED, options_markdown
from cai_kit.core.suggest import closest, did_you_mean
from cai_kit.generation.options import FILTERS, PAIR_MODES, Filter, GenerateOptions, PairMode
from cai_kit.training.recipe import GenerateRun

ROOT = Path(__file__).resolve().parents[1]
TYPOS = """\
model: tiny-random
stages: [generate]
generate:
  - constitution: harmless
    filters: [duplicate, duplicat]
    pairs: [revison]
    judge_fallback: contrst
"""


def _params() -> dict[str, click.Option]:
    command = main.commands["generate"]
    return {param.name: param for param in command.params if isinstance(param, click.Option) and param.name}


def test_misspelt_closed_values_in_a_recipe_are_each_one_line_with_a_suggestion(tmp_path):
    path = tmp_path / "typos.yaml"
    path.write_text(TYPOS)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        f"error: {path}:5: generate[0].filters[1]: unknown filter 'duplicat'; did you mean 'duplicate'?",
        f"error: {path}:6: generate[0].pairs[0]: unknown pair 'revison'; did you mean 'revision'?",
        f"error: {path}:7: generate[0].judge_fallback: unknown value 'contrst'; did you mean 'contrast'?",
    ]


def test_a_misspelt_choice_on_the_command_line_is_a_usage_error_with_a_suggestion():
    result = CliRunner().invoke(main, ["generate", "-c", "harmless", "--filters", "duplicat"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "'--filters'" in errors[0] and errors[0].endswith("Did you mean 'duplicate'?")


def test_the_closed_sets_are_literals_and_the_lists_come_from_them():
    assert FILTERS == list(typing.get_args(Filter)) and PAIR_MODES == list(typing.get_args(PairMode))
    with pytest.raises(ValueError, match="judge_fallback"):
        GenerateOptions(constitution="harmless", judge_fallback="judge")
    with pytest.raises(ValueError, match="on_error"):
        GenerateOptions(constitution="harmless", on_error="ignore")


def test_every_field_has_a_description():
    for schema in (GenerateOptions, GenerateRun):
        missing = [name for name, field in schema.model_fields.items() if not (field.description or "").strip()]
        assert not missing, f"{schema.__name__} fields without Field(description=...): {missing}"


def test_every_field_is_a_flag_whose_help_is_its_description():
    params = _params()
    flags = {opt for param in params.values() for opt in param.opts}
    for name, field in GenerateOptions.model_fields.items():
        if name in SHARED:  # set by a flag that other commands share (engine_flags, licence_flags)
            assert all(flag.split()[0] in flags for flag in SHARED[name].split(", ")), name
            continue
        assert name in params, f"GenerateOptions.{name} has no flag of `cai generate`"
        assert f"--{name.replace('_', '-')}" in params[name].opts
        assert (params[name].help or "").startswith(field.description or "-"), name


def test_flags_keep_their_names_and_short_options():
    params = _params()
    for name, short in {"constitution": "-c", "prompts": "-p", "model": "-m", "out": "-o"}.items():
        assert short in params[name].opts, name
    choices = {name: list(getattr(params[name].type, "choices", [])) for name in ("pairs", "filters", "on_error")}
    assert choices == {"pairs": PAIR_MODES, "filters": FILTERS, "on_error": ["stop", "skip"]}
    assert params["pairs"].multiple and params["filters"].multiple and params["trust_judge"].is_flag


def test_help_shows_the_example_and_the_defaults():
    text = CliRunner().invoke(main, ["generate", "--help"], terminal_width=1000, max_content_width=1000).output
    assert "Example:" in text and "[default: 48]" in text and "[default: revision]" in text


def test_the_schema_carries_every_description_and_the_closed_sets():
    generate = build_schema("recipe")["$defs"]["GenerateRun"]["properties"]
    assert [name for name, prop in generate.items() if not prop.get("description")] == []
    assert generate["pairs"]["items"]["enum"] == PAIR_MODES
    assert generate["filters"]["items"]["enum"] == FILTERS
    assert {"enum": ["revision", "contrast"], "type": "string"} in generate["judge_fallback"]["anyOf"]
    assert generate["on_error"]["enum"] == ["stop", "skip"]
    assert "auto" in generate["engine"]["enum"]
    shipped = json.loads((ROOT / "cai_kit" / "schemas" / "recipe.schema.json").read_text(encoding="utf-8"))
    assert shipped["$defs"]["GenerateRun"]["properties"]["filters"]["items"]["enum"] == FILTERS


def test_the_docs_option_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- options-table:")) + len("-->\n")
    table = text[start : text.index("<!-- options-table end -->")]
    assert table == options_markdown(), "paste cai_kit.cli.generate.options_markdown() into docs/cli.md"


def test_a_file_with_any_recipe_key_is_read_as_a_recipe():
    assert not is_constitution({"processes": 2}) and not is_constitution({"round_overrides": {}})
    assert is_constitution({"principals": []}) and is_constitution({"principles": [], "model": "x"})


def test_one_did_you_mean_helper():
    assert closest("sede", ["seed", "model"]) == "seed" and closest("zzz", ["seed"]) is None
    assert did_you_mean("sede", ["seed"]) == " (did you mean 'seed'?)" and did_you_mean("zzz", ["seed"]) == ""
