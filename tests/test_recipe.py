"""Recipe loading: every shipped recipe validates, broken ones give one line per problem, --set works.

No model is loaded here: `cai validate` builds the TRL configs only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.core.shipped import resolve_yaml
from cai_kit.training.recipe import dump_recipe, load_recipe, parse_stages, trl_config

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the hand-written recipes below name constitutions by their path in the checkout


def test_recipes_are_shipped():
    assert {path.name for path in SHIPPED} >= {"tiny.yaml", "zephyr_cai.yaml", "zephyr_cai_mistral7b.yaml"}
    assert {path.name for path in (REPO / "recipes" / "accelerate").glob("*.yaml")} >= {"deepspeed_zero3.yaml",
                                                                                         "fsdp.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_recipe_validates(path):
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (recipe)" in result.output
    text = path.read_text()
    assert text.startswith("#") and f"cai train {path.stem}" in text and "--set" in text  # the header


def test_gpu_recipe_keeps_its_settings():
    recipe = load_recipe(REPO / "recipes" / "zephyr_cai_mistral7b.yaml")
    assert recipe.processes == 8 and recipe.accelerate_config == "deepspeed_zero3"  # a shipped name
    assert resolve_yaml(recipe.accelerate_config, ("accelerate config",)).is_file()
    assert recipe.sft.full_finetune and recipe.dpo.full_finetune
    assert trl_config(recipe, "dpo").beta == pytest.approx(0.01)
    assert trl_config(recipe, "sft").learning_rate == pytest.approx(2e-5)


def test_laptop_recipe_asks_the_model_to_judge_and_falls_back_to_contrast_pairs():
    """Issue 6: both halves use judge-labelled pairs where the judge passes cai judge-check, else contrast
    pairs (the fallback is said in the log and the data card: test_generate)."""
    recipe = load_recipe(REPO / "recipes" / "zephyr_cai.yaml")
    assert {c.stem for c in map(Path, (run.constitution for run in recipe.generate))} == {"harmless", "helpful"}
    assert all(run.pairs == ["judge"] and run.judge_fallback == "contrast" for run in recipe.generate)
    assert not any(run.trust_judge for run in recipe.generate)


def test_laptop_recipe_pairs_everyday_requests_against_refusals():
    """Issue 23: without this run the trained model refused 0.59 of everyday requests (docs: Results, Levers).
    Every principle of its constitution must be a helping one, so that each everyday pair's rejected side
    opens with a refusal and its chosen side is never steered towards one."""
    from cai_kit.core.constitution import load_constitution
    from cai_kit.generation.options import is_helping

    recipe = load_recipe(REPO / "recipes" / "zephyr_cai.yaml")
    everyday = [run for run in recipe.generate if run.prompts == ["everyday"]]
    assert len(everyday) == 1 and everyday[0].limit == 240 and everyday[0].weight > 0
    constitution = load_constitution(everyday[0].constitution)
    assert constitution.principles and all(is_helping(p) for p in constitution.principles)



def test_laptop_recipe_keeps_full_refusals_weights_them_and_runs_two_rounds():
    """Issue 23: the one configuration that moved discrimination off the "one refusal rate" line and met the
    everyday target (docs: Results, Levers): the red-team run keeps a pair only where its chosen answer fully
    refuses (`partial`), those pairs count three times, and a second round regenerates with round 1's model."""
    from cai_kit.generation.options import DEFAULT_FILTERS, FILTERS

    recipe = load_recipe(REPO / "recipes" / "zephyr_cai.yaml")
    red_team, *others = recipe.generate
    assert red_team.prompts == ["red_team"] and red_team.weight == 3
    # The filters it was measured with, `partial` among them (off by default); all of them known filters.
    assert red_team.filters == ["empty", "truncated", "artefact", "unchanged", "refusal", "no_contrast", "partial",
                                "low_margin", "duplicate"]
    assert set(red_team.filters) <= set(FILTERS) and "partial" not in DEFAULT_FILTERS
    assert all(run.filters == DEFAULT_FILTERS and run.weight == 1 for run in others)  # their chosen side complies
    assert recipe.rounds == 2
    # Round 2 trains a smaller adapter (docs: Results, Levers: rank 4 in round 2 only measured best).
    assert (recipe.sft.lora.r, recipe.dpo.lora.r) == (16, 16)
    second = recipe.for_round(2, "runs/zephyr_cai/model")
    assert (second.sft.lora.r, second.sft.lora.alpha, second.dpo.lora.r, second.dpo.lora.alpha) == (4, 8, 4, 8)
    assert load_recipe(REPO / "recipes" / "zephyr_cai.yaml", ["rounds=1"]).rounds == 1  # its header's override

BROKEN = """\
model: tiny-random
sede: 3
processes: two
data:
  sft:
    - path: no/such/file.jsonl
sft:
  trl:
    max_seq_length: 512
"""


def _validate_errors(path: Path, text: str) -> list[str]:
    """`cai validate` on `text` written to `path`: exit status 2, no traceback; return its error lines."""
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_broken_recipe_gives_one_line_per_problem(tmp_path):
    path = tmp_path / "broken.yaml"
    lines = _validate_errors(path, BROKEN)
    assert f"error: {path}:2: sede: unknown key (did you mean 'seed'?)" in lines
    assert any(line.startswith(f"error: {path}:3: processes: ") for line in lines)
    assert f"error: {path}:9: sft.trl.max_seq_length: not an option of trl.SFTConfig (renamed: use 'max_length')" \
        in lines
    assert f"error: {path}:6: data.sft[0].path: file not found: no/such/file.jsonl" in lines
    assert len(lines) == 4  # every problem at once: the schema's, TRL's and the missing file


def test_missing_data_file_and_bad_trl_values(tmp_path):
    path = tmp_path / "r.yaml"
    lines = _validate_errors(path, "data:\n  prefs:\n    - path: gone.jsonl\ndpo:\n  trl:\n    beta: high\n"
                                   "    lr_scheduler_type: cosin\n    eval_strategy: no\n")
    assert len(lines) == 4
    assert lines[0] == f"error: {path}:3: data.prefs[0].path: file not found: gone.jsonl"
    assert lines[1].startswith(f"error: {path}:6: dpo.trl.beta: Input should be a valid number")
    assert lines[2].startswith(f"error: {path}:7: dpo.trl.lr_scheduler_type: cosin is not a valid SchedulerType")
    assert lines[3].startswith(f"error: {path}:8: dpo.trl.eval_strategy: ") and "quote it" in lines[3]


def test_generate_run_may_not_set_model_or_out(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("generate:\n  - constitution: constitutions/harmless.yaml\n    model: other\n")
    with pytest.raises(UsageError, match=r"r.yaml:3: generate\[0\]\.model: set once"):
        load_recipe(path)


def test_yaml_scientific_notation_becomes_a_number(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sft:\n  trl:\n    learning_rate: 2e-5\n")  # YAML 1.1 reads this as a string
    recipe = load_recipe(path)
    assert trl_config(recipe, "sft").learning_rate == pytest.approx(2e-5)
    assert recipe.output_dir == str(Path("runs") / "r")


def test_set_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: tiny-random\ngenerate:\n  - constitution: constitutions/harmless.yaml\n")
    recipe = load_recipe(path, ["seed=7", "sft.trl.num_train_epochs=2", "generate.0.limit=3",
                                "dpo.lora.r=4", "eval={limit: 2}", f"output_dir={tmp_path / 'out'}"])
    assert recipe.seed == 7 and recipe.generate[0].limit == 3 and recipe.dpo.lora.r == 4
    assert recipe.eval is not None and recipe.eval.model_dump(exclude_unset=True) == {"limit": 2}
    assert trl_config(recipe, "sft").num_train_epochs == 2
    assert trl_config(recipe, "sft").output_dir == str(tmp_path / "out" / "sft" / "checkpoints")


def test_bad_set_paths(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("generate:\n  - constitution: constitutions/harmless.yaml\n")
    with pytest.raises(UsageError) as caught:
        load_recipe(path, ["sed=1", "generate.2.limit=1", "sft.lora.rank=4", "noequals", "sft.trl.max_seq_length=9"])
    assert caught.value.problems == [
        "--set sed=1: unknown key sed (did you mean 'seed'?)",
        "--set generate.2.limit=1: generate[2]: the recipe has 1 item(s) there; use an index below that or set "
        "generate=[...]",
        "--set sft.lora.rank=4: unknown key sft.lora.rank",
        "--set noequals: expected key.path=value",
    ]  # the TRL key is checked with the config, after the path problems are fixed
    with pytest.raises(UsageError, match="sft.trl.max_seq_length: not an option"):
        load_recipe(path, ["sft.trl.max_seq_length=9"])


def test_train_cli_reports_bad_set_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["train", "recipes/tiny.yaml", "--set", "sft.trl.warmup_ratio=0.1",
                                       "--stages", "sft"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "sft.trl.warmup_ratio: not an option of trl.SFTConfig (renamed: use 'warmup_steps'" in result.output


def test_parse_stages():
    assert parse_stages("sft, dpo") == ["sft", "dpo"]
    with pytest.raises(UsageError, match="unknown: train"):
        parse_stages("sft,train")


def test_round_overrides_change_their_round_and_every_later_one(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: tiny-random\nrounds: 3\ngenerate:\n  - constitution: constitutions/harmless.yaml\n"
                    "    limit: 4\nround_overrides:\n  2: {sft.lora.r: 4, generate.0.limit: 8}\n"
                    "  3: {sft.lora.r: 2, dpo.trl.beta: 0.3}\n")
    recipe = load_recipe(path)
    assert (recipe.sft.lora.r, recipe.generate[0].limit, trl_config(recipe, "dpo").beta) == (16, 4, 0.1)
    second, third = recipe.for_round(2, "m1"), recipe.for_round(3, "m2")
    assert (second.sft.lora.r, second.generate[0].limit, trl_config(second, "dpo").beta) == (4, 8, 0.1)
    assert (third.sft.lora.r, third.generate[0].limit, trl_config(third, "dpo").beta) == (2, 8, 0.3)
    assert (third.model, third.output_dir, third.seed, third.base_model) == ("m2", str(recipe.out / "round-3"), 2,
                                                                             "tiny-random")
    # The round's recipe.yaml holds the values it ran with, not the changes a second time.
    assert "round_overrides" not in dump_recipe(second) and "r: 4" in dump_recipe(second)
    assert recipe.round_changes(3) == ["sft.lora.r=4", "generate.0.limit=8", "sft.lora.r=2", "dpo.trl.beta=0.3"]


def test_bad_round_overrides_name_the_round_and_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    lines = _validate_errors(path, "rounds: 2\ngenerate:\n  - constitution: constitutions/harmless.yaml\n"
                             "round_overrides:\n  2:\n    sft.lora.rank: 4\n    model: other\n"
                             "    generate.3.limit: 8\n  1: {seed: 1}\n")
    assert lines == [
        f"error: {path}:6: round_overrides.2.sft.lora.rank: unknown key sft.lora.rank",
        f"error: {path}:7: round_overrides.2.model: each round starts from the model of the round before it",
        f"error: {path}:8: round_overrides.2.generate.3.limit: generate[3]: the recipe has 1 item(s) there; use an "
        "index below that or set generate=[...]",
        f"error: {path}:9: round_overrides.1: not a later round: round 1 is the recipe itself, and later rounds "
        "are 2, 3, ...",
    ]
    # Keys that exist, with values the round's recipe rejects: checked on the recipe that round would run.
    path.write_text("rounds: 2\ngenerate:\n  - constitution: constitutions/harmless.yaml\nround_overrides:\n"
                    "  2:\n    sft.lora.r: 0\n    dpo.trl.learning_rat: 1\n")
    with pytest.raises(UsageError) as caught:
        load_recipe(path)
    assert caught.value.problems[0] == (f"{path}:6: round_overrides.2: in round 2, sft.lora.r: "
                                        "Input should be greater than or equal to 1")
    assert caught.value.problems[1].startswith(f"{path}:7: round_overrides.2: in round 2, dpo.trl.learning_rat: "
                                               "not an option of trl.DPOConfig (did you mean 'learning_rate'?)")
    assert len(caught.value.problems) == 2


def test_trl_default_checkpointing_is_kept_without_the_deprecation_warning(tmp_path):
    """TRL sets its default under transformers' deprecated `gradient_checkpointing`; the recipe passes the same
    value under `activation_checkpointing`, so loading a recipe prints no FutureWarning."""
    import dataclasses
    import warnings

    from trl import DPOConfig

    default = next(field.default for field in dataclasses.fields(DPOConfig) if field.name == "gradient_checkpointing")
    path = tmp_path / "r.yaml"
    path.write_text("dpo:\n  trl:\n    beta: 0.2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        recipe = load_recipe(path)
    assert trl_config(recipe, "dpo").activation_checkpointing == default
    path.write_text("dpo:\n  trl:\n    activation_checkpointing: false\n")
    assert trl_config(load_recipe(path), "dpo").activation_checkpointing is False
