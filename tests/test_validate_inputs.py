"""`cai validate RECIPE` (and `cai train` before its first stage) checks what the recipe names outside itself:
model folders, constitutions, prompt files and their column, data files. Every problem at once, each as
`file:line: key.path: message`, exit status 2, and `cai train` writes nothing.

The recipes, constitutions, prompt and data files here are written by the tests themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cai_kit.cli import main

REPO = Path(__file__).resolve().parent.parent
HARMLESS = REPO / "constitutions" / "harmless.yaml"


def _bad_inputs(tmp_path: Path) -> Path:
    """A recipe whose every outside input is broken in a different way (line numbers matter below)."""
    (tmp_path / "no_config").mkdir()
    (tmp_path / "bin_only").mkdir()
    (tmp_path / "bin_only" / "config.json").write_text("{}")
    (tmp_path / "bin_only" / "pytorch_model.bin").write_bytes(b"")
    (tmp_path / "broken.yaml").write_text("name: broken\nprinciples:\n  - name: p\n    critiqe: typo\n")
    (tmp_path / "prompts.csv").write_text("id,text\na,hello there\n")
    (tmp_path / "sft.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model: {tmp_path / "no_config"}
output_dir: {tmp_path / "run"}
generate:
  - constitution: {tmp_path / "missing.yaml"}
    prompts: [{tmp_path / "missing.jsonl"}]
    judge_model: {tmp_path / "bin_only"}
  - constitution: {tmp_path / "broken.yaml"}
    prompts: [red_team, {tmp_path / "prompts.csv"}]
    judge_model: not a model!
data:
  sft: [{{path: {tmp_path / "sft.jsonl"}}}]
""")
    return recipe


def test_validate_reports_every_broken_input_at_once(tmp_path):
    recipe = _bad_inputs(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    lines = [line.removeprefix("error: ") for line in result.output.splitlines() if line.startswith("error: ")]
    expected = [
        f"{recipe}:1: model: {tmp_path / 'no_config'}: not a model folder (no config.json)",
        f"{recipe}:4: generate[0].constitution: {tmp_path / 'missing.yaml'}: file not found",
        f"{recipe}:5: generate[0].prompts[0]: {tmp_path / 'missing.jsonl'}: no such file",
        f"{recipe}:6: generate[0].judge_model: {tmp_path / 'bin_only'}: no *.safetensors weights",
        f"{recipe}:7: generate[1].constitution: {tmp_path / 'broken.yaml'}:4: principles[0].critiqe: unknown key",
        f"{recipe}:8: generate[1].prompts[1]: {tmp_path / 'prompts.csv'}:2: no column 'prompt' (columns: id, text)",
        f"{recipe}:9: generate[1].judge_model: not a model!: neither a model folder nor a Hugging Face hub id",
        f"{recipe}:11: data.sft[0].path: {tmp_path / 'sft.jsonl'}:1: the last message must be the assistant's",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, lines)
    assert "Traceback" not in result.output


def test_train_stops_before_its_first_stage_on_a_broken_input(tmp_path):
    recipe = _bad_inputs(tmp_path)
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    assert f"{recipe}:8: generate[1].prompts[1]: " in result.output
    assert not (tmp_path / "run").exists(), "nothing generated, nothing written"


def test_good_inputs_shipped_names_and_hub_ids_validate(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")  # looked for, not read
    (tmp_path / "prompts.csv").write_text("id,text\na,hello there\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model: {tmp_path / "model"}
generate:
  - constitution: {HARMLESS}
    prompts: [{tmp_path / "prompts.csv"}, "hf:some/dataset"]
    column: text
  - constitution: helpful
    judge_model: HuggingFaceTB/SmolLM2-135M-Instruct
""")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{recipe}: ok (recipe)"


def test_validate_checks_a_recipe_with_the_overrides_train_would_run(tmp_path):
    ok = CliRunner().invoke(main, ["validate", "zephyr_cai", "--set", "dpo.trl.loss_type=ipo"])
    assert ok.exit_code == 0 and ok.output.strip() == "zephyr_cai: ok (recipe)", ok.output
    # sigmoid ignores label_smoothing in TRL: the recipe would train plain DPO, so it does not load.
    bad = CliRunner().invoke(main, ["validate", "zephyr_cai", "--set", "dpo.trl.label_smoothing=0.1"])
    assert bad.exit_code == 2 and "dpo.trl.label_smoothing" in bad.output, bad.output
    unknown = CliRunner().invoke(main, ["validate", "zephyr_cai", "--set", "sft.lora.rank=8"])
    assert unknown.exit_code == 2 and "--set sft.lora.rank=8: unknown key sft.lora.rank" in unknown.output
    constitution = CliRunner().invoke(main, ["validate", str(HARMLESS), "--set", "seed=1"])
    assert constitution.exit_code == 2
    assert f"{HARMLESS}: --set applies to recipes, and this is a constitution" in constitution.output
